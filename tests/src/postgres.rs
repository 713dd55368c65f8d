//! The PostgreSQL the outbox tests use: a throwaway cluster `scripts/test.sh` starts (see
//! `scripts/pg-cluster.sh`), named by environment variables. Without one, the tests that need
//! it say "skipped: ..." and pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal::outbox::tokio_postgres::{self, NoTls};
use shoal::outbox::{Destination, PostgresOptions, PostgresOutbox, RelayMode};
use shoal::{HandlerError, Message, Node};

use crate::Mesh;

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

/// The options the tests use: tables in `schema`, relayed in `mode`, a short lease (so a
/// dead relay's rows move on within seconds).
pub fn test_options(schema: &str, mode: RelayMode) -> PostgresOptions {
    PostgresOptions::default()
        .schema(schema)
        .relay(mode)
        .lease(std::time::Duration::from_secs(2))
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

/// Orders the crash and restart tests take; order `id` is rolled back when `id % 10 == 9`.
pub const ORDERS_KEYS: u64 = 50;

/// Whether order `id` is rolled back instead of committed.
pub fn rolled_back(id: u64) -> bool {
    id % 10 == 9
}

/// Takes orders up to `upto` (excluded) as a service would: each in one transaction with its
/// `create-invoice` command (keyed by customer, `c{id % ORDERS_KEYS}`), every tenth rolled
/// back. Resumes after the last order in the database. A failed transaction (the database
/// restarting) is retried, unless its commit went through before the error. Calls
/// `progress` after each order.
pub async fn take_orders(outbox: &PostgresOutbox, upto: u64, mut progress: impl FnMut(u64)) {
    let schema = outbox.schema().to_owned();
    let client = outbox.pool().get().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.orders (id BIGINT PRIMARY KEY)"
        ))
        .await
        .unwrap();
    let next: i64 = client
        .query_one(
            &format!("SELECT COALESCE(MAX(id) + 1, 0) FROM {schema}.orders"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for id in next as u64..upto {
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "orders not taken in time"
            );
            match take_order(outbox, &schema, id).await {
                Ok(()) => break,
                Err(e) => {
                    // Did the commit go through before the connection broke?
                    if order_exists(outbox, &schema, id).await == Some(true) {
                        break;
                    }
                    eprintln!("order {id} failed ({e}); again");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        progress(id);
    }
}

async fn take_order(outbox: &PostgresOutbox, schema: &str, id: u64) -> Result<(), String> {
    let mut client = outbox.pool().get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute(
        &format!("INSERT INTO {schema}.orders (id) VALUES ($1)"),
        &[&(id as i64)],
    )
    .await
    .map_err(|e| e.to_string())?;
    let command = Message::command("create-invoice", id.to_string())
        .with_key(format!("c{}", id % ORDERS_KEYS));
    outbox
        .enqueue(&tx, &Destination::Service("invoice".into()), &command)
        .await
        .map_err(|e| e.to_string())?;
    if rolled_back(id) {
        tx.rollback().await.map_err(|e| e.to_string())
    } else {
        outbox.commit(tx).await.map_err(|e| e.to_string())
    }
}

async fn order_exists(outbox: &PostgresOutbox, schema: &str, id: u64) -> Option<bool> {
    let client = outbox.pool().get().await.ok()?;
    let row = client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {schema}.orders WHERE id = $1)"),
            &[&(id as i64)],
        )
        .await
        .ok()?;
    Some(row.get(0))
}

/// The orders committed in `schema`.
pub async fn committed_orders(url: &str, schema: &str) -> HashSet<u64> {
    connect(url)
        .await
        .query(&format!("SELECT id FROM {schema}.orders"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
}

/// The receiving service of the crash tests: `invoice` applies each `create-invoice` once
/// with the PostgreSQL inbox (its own schema), recording the order of application.
pub struct Ledger {
    /// The node.
    pub node: Node,
    /// Its outbox handle (used for the inbox only).
    pub inbox: Arc<PostgresOutbox>,
    applied: Arc<AtomicU64>,
}

impl Ledger {
    /// Starts `invoice` with its inbox in a fresh schema.
    pub async fn start(mesh: &Mesh, url: &str) -> Self {
        let schema = fresh_schema("ledger");
        let inbox = Arc::new(
            PostgresOutbox::connect(url, PostgresOptions::default().schema(&schema))
                .await
                .unwrap(),
        );
        inbox
            .pool()
            .get()
            .await
            .unwrap()
            .batch_execute(&format!(
                "CREATE TABLE {schema}.effects (n BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL)"
            ))
            .await
            .unwrap();
        let node = mesh.start("invoice", &[]).await;
        let applied = Arc::new(AtomicU64::new(0));
        let (outbox, count) = (Arc::clone(&inbox), Arc::clone(&applied));
        let insert = format!("INSERT INTO {schema}.effects (order_id) VALUES ($1)");
        node.handle("create-invoice", move |msg: Message| {
            let (outbox, count, insert) = (Arc::clone(&outbox), Arc::clone(&count), insert.clone());
            async move {
                let order: i64 = String::from_utf8_lossy(msg.payload()).parse().unwrap_or(-1);
                let applied = outbox
                    .apply_once(msg.id(), move |tx| {
                        Box::pin(async move { tx.execute(&insert, &[&order]).await })
                    })
                    .await
                    .map_err(|e| HandlerError::retryable(e.to_string()))?;
                if applied.is_some() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, HandlerError>(())
            }
        });
        Self {
            node,
            inbox,
            applied,
        }
    }

    /// Effects applied so far (by this process).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` effects are applied.
    pub async fn wait_applied(&self, n: u64, within: std::time::Duration) {
        assert!(
            self.applied_within(n, within).await,
            "{} of {n} effects applied within {within:?}",
            self.applied()
        );
    }

    /// Waits until at least `n` effects are applied or `within` has passed; says which.
    async fn applied_within(&self, n: u64, within: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        while self.applied() < n {
            if started.elapsed() >= within {
                return false;
            }
            // Not synchronisation: effects are applied by handlers; this samples the count.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// Checks the books against the committed orders: each applied exactly once, none that
    /// was rolled back, and each customer's orders applied in order.
    pub async fn check(&self, committed: &HashSet<u64>) {
        let client = self.inbox.pool().get().await.unwrap();
        let rows = client
            .query(
                &format!(
                    "SELECT order_id FROM {}.effects ORDER BY n",
                    self.inbox.schema()
                ),
                &[],
            )
            .await
            .unwrap();
        let mut seen = HashSet::new();
        let mut last: HashMap<u64, u64> = HashMap::new();
        for row in &rows {
            let id = row.get::<_, i64>(0) as u64;
            assert!(seen.insert(id), "order {id} applied twice");
            assert!(
                committed.contains(&id),
                "order {id} applied but never committed"
            );
            let key = id % ORDERS_KEYS;
            if let Some(before) = last.insert(key, id) {
                assert!(
                    before < id,
                    "customer c{key}: order {id} applied after {before}"
                );
            }
        }
        let missing: Vec<_> = committed.difference(&seen).take(10).collect();
        assert!(
            missing.is_empty(),
            "committed but never applied: {missing:?}"
        );
    }
    /// Effects recorded in the ledger's database. The books, not [`Ledger::applied`]: an
    /// effect whose commit went through while its handler saw the connection fail (the
    /// database restarting) is retried, found applied by the inbox, and not counted again.
    async fn recorded(&self) -> Option<u64> {
        let client = self.inbox.pool().get().await.ok()?;
        let sql = format!("SELECT count(*) FROM {}.effects", self.inbox.schema());
        let row = client.query_one(&sql, &[]).await.ok()?;
        Some(row.get::<_, i64>(0) as u64)
    }

    /// Waits (bounded) until every order committed in the sender's `schema` is in the books,
    /// checks them ([`Ledger::check`]), then stops and removes both schemas.
    pub async fn finish(self, url: &str, schema: &str, within: std::time::Duration) {
        let committed = committed_orders(url, schema).await;
        let want = committed.len() as u64;
        let started = std::time::Instant::now();
        let mut recorded = self.recorded().await.unwrap_or(0);
        while recorded < want && started.elapsed() < within {
            // Not synchronisation: effects are applied by handlers; this samples the books.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            recorded = self.recorded().await.unwrap_or(recorded);
        }
        // Short of them in time, the check says which orders are missing (not only how many).
        self.check(&committed).await;
        assert!(
            recorded >= want,
            "{recorded} of {want} effects recorded within {within:?} ({} counted by handlers)",
            self.applied()
        );
        self.node.shutdown().await;
        drop_outbox(url, schema).await;
        drop_outbox(url, self.inbox.schema()).await;
    }
}
