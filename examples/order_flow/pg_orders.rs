//! The orders service on PostgreSQL (`--postgres URL`): two instances share one database;
//! `orders-a` takes the even orders and `orders-b` the odd ones, each order and its event in
//! one transaction. Their relays tail the transaction log: one tails, the other stands by
//! and takes over when it dies. Progress lines: `order N`, `tailing`, `standing by`,
//! `drained`.

use std::sync::Arc;
use std::time::Duration;

use shoal::outbox::tokio_postgres::{self, NoTls};
use shoal::outbox::{Destination, OutboxStore, PostgresOptions, PostgresOutbox, RelayMode};
use shoal::{Message, NodeBuilder};

use crate::services::{ORDER_CREATED, Result, relay_options};

/// The schema of the orders service's tables (orders, outbox, ...).
pub(crate) const SCHEMA: &str = "order_flow";

/// Takes this instance's half of the orders, resuming after its last one.
pub(crate) async fn take_orders(
    builder: NodeBuilder,
    url: &str,
    instance: &str,
    orders: u64,
) -> Result<()> {
    let parity = u64::from(instance.ends_with("-b"));
    let outbox = Arc::new(
        PostgresOutbox::connect(
            url,
            PostgresOptions::default()
                .schema(SCHEMA)
                .relay(RelayMode::LogTailing)
                .lease(Duration::from_secs(2)),
        )
        .await?,
    );
    let node = builder
        .outbox(Arc::clone(&outbox) as Arc<dyn OutboxStore>, relay_options())
        .start()
        .await?;
    report_tailing(Arc::clone(&outbox));
    let mut client = outbox.pool().get().await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {SCHEMA}.orders (id BIGINT PRIMARY KEY, item TEXT NOT NULL)"
        ))
        .await?;
    let last: Option<i64> = client
        .query_one(
            &format!("SELECT MAX(id) FROM {SCHEMA}.orders WHERE id % 2 = $1"),
            &[&(parity as i64)],
        )
        .await?
        .get(0);
    let next = last.map_or(parity, |id| id as u64 + 2);
    for id in (next..orders).step_by(2) {
        let tx = client.transaction().await?;
        tx.execute(
            &format!("INSERT INTO {SCHEMA}.orders (id, item) VALUES ($1, $2)"),
            &[&(id as i64), &format!("item-{}", id % 7)],
        )
        .await?;
        let event = Message::event(ORDER_CREATED, id.to_string()).with_key(format!("order-{id}"));
        outbox.enqueue(&tx, &Destination::Publish, &event).await?;
        outbox.commit(tx).await?;
        if id % 100 < 2 {
            println!("order {id}");
        }
        // A steady flow (about 500 orders a second per instance), so crashes land mid-run.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("all orders taken");
    while outbox.stats().await?.pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("drained");
    std::future::pending::<()>().await;
    drop(node);
    Ok(())
}

/// Prints `tailing` when this instance's relay starts tailing the log and `standing by`
/// when it stops (samples [`PostgresOutbox::relaying`]).
fn report_tailing(outbox: Arc<PostgresOutbox>) {
    tokio::spawn(async move {
        let mut was = None;
        loop {
            let now = outbox.relaying();
            if was != Some(now) {
                println!("{}", if now { "tailing" } else { "standing by" });
                was = Some(now);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// The orders committed, by id.
pub(crate) async fn committed(url: &str) -> Result<Vec<u64>> {
    let client = connect(url).await?;
    Ok(client
        .query(&format!("SELECT id FROM {SCHEMA}.orders"), &[])
        .await?
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect())
}

/// Rows pending in the outbox.
pub(crate) async fn pending(url: &str) -> Result<i64> {
    let client = connect(url).await?;
    Ok(client
        .query_one(
            &format!("SELECT count(*) FROM {SCHEMA}.outbox WHERE state = 0"),
            &[],
        )
        .await?
        .get(0))
}

/// Removes what an earlier run left (the schema, its publication and replication slot), so
/// each run starts from nothing.
pub(crate) async fn clear(url: &str) -> Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = '{SCHEMA}_outbox' AND NOT active;
             DROP PUBLICATION IF EXISTS {SCHEMA}_outbox;
             DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;"
        ))
        .await?;
    Ok(())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
