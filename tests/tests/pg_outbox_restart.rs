//! The PostgreSQL outbox across a restart of the database itself (stopped at once, as a
//! crash of the server, then started again) while orders are written, relayed and applied,
//! in both relay modes, one after the other (in a test binary of their own, so no other test
//! shares the restart): every committed order is applied exactly once, none rolled back is,
//! and each customer's orders are applied in order. Skipped (and passing) without a database.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use shoal::RetryPolicy;
use shoal::outbox::{OutboxStore, PostgresOutbox, RelayMode, RelayOptions};
use shoal_tests::Mesh;
use shoal_tests::postgres::{
    Ledger, database, fresh_schema, restart_database, take_orders, test_options,
};

const ORDERS: u64 = 1_000;
const WAIT: Duration = Duration::from_secs(60);

async fn database_restarted_mid_run(url: &str, mode: RelayMode) {
    let schema = fresh_schema("restart");
    let mesh = Mesh::new();
    let ledger = Ledger::start(&mesh, url).await;
    let outbox = Arc::new(
        PostgresOutbox::connect(
            url,
            test_options(&schema, mode).connect_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap(),
    );
    let orders = mesh
        .builder("orders")
        .peer(ledger.node.local_addr())
        // The ledger's handler fails (retryably) until its database is back: the default
        // eight attempts, about 5 s of backoff, can run out before a restart under load is
        // over (once in CI: one order dead-lettered, 899 of 900 applied). Keep trying for as
        // long as the test waits.
        .retry_policy(RetryPolicy {
            ack_timeout: Duration::from_secs(1),
            max_attempts: 1_000,
            deadline: WAIT,
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        })
        .outbox(
            Arc::clone(&outbox) as Arc<dyn OutboxStore>,
            RelayOptions::default().poll(Duration::from_millis(200)),
        )
        .start()
        .await
        .unwrap();
    let writer = Arc::clone(&outbox);
    let writing = tokio::spawn(async move { take_orders(&writer, ORDERS, |_| {}).await });
    ledger.wait_applied(300, WAIT).await;
    // Blocking: the script stops and starts the server (a fraction of a second).
    tokio::task::spawn_blocking(restart_database).await.unwrap();
    eprintln!(
        "{mode:?}: database restarted after {} effects",
        ledger.applied()
    );
    writing.await.unwrap();
    ledger.finish(url, &schema, WAIT).await;
    orders.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarted_mid_run_loses_nothing_and_applies_nothing_twice() {
    let Some(url) = database("restart") else {
        return;
    };
    for mode in [RelayMode::Polling, RelayMode::LogTailing] {
        database_restarted_mid_run(&url, mode).await;
    }
}
