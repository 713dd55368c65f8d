//! The PostgreSQL the outbox tests use: a throwaway cluster `scripts/test.sh` starts (see
//! `scripts/pg-cluster.sh`), named by environment variables. Without one, the tests that need
//! it say "skipped: ..." and pass.

use shoal::outbox::tokio_postgres::{self, NoTls};

/// The cluster's connection URL.
pub const URL_VAR: &str = "SHOAL_TEST_PG_URL";
/// The cluster's folder (for [`restart_database`]).
pub const DIR_VAR: &str = "SHOAL_TEST_PG_DIR";

/// The test database's URL, or `None` after printing why `test` is skipped.
pub fn database(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!(
                "skipped: {test}: no PostgreSQL ({URL_VAR} is not set; ./scripts/test.sh starts \
                 a throwaway cluster)"
            );
            None
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema(test: &str) -> String {
    format!("t_{test}_{:08x}", rand::random::<u32>())
}

/// A plain connection to `url` (its driver runs on the current runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Removes what an outbox in `schema` left: its replication slot, publication and tables.
pub async fn drop_outbox(url: &str, schema: &str) {
    let client = connect(url).await;
    let slot = format!("{schema}_outbox");
    // The slot may still be held for a moment by a tail that is stopping.
    for _ in 0..50 {
        let dropped = client
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await;
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if dropped.is_ok() && left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {schema}_outbox; DROP SCHEMA IF EXISTS {schema} CASCADE;"
        ))
        .await
        .unwrap();
}

/// Restarts the test cluster at once, as a crash of the server would (`pg_ctl stop -m
/// immediate`, then start). Panics without one.
pub fn restart_database() {
    let dir = std::env::var(DIR_VAR).expect("SHOAL_TEST_PG_DIR names the test cluster");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-cluster.sh");
    let status = std::process::Command::new(script)
        .args(["restart", &dir])
        .status()
        .unwrap();
    assert!(status.success(), "restarting the test cluster failed");
}
