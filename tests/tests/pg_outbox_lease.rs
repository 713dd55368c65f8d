//! A polling relay that loses its lease while its process lives: its database connections are
//! cut and it may not log in again, so its renewals fail while its node keeps running. Once
//! the lease lapses it stops delivering the rows it claimed (the node stops retrying them),
//! and the other relay, which claims them after the lease, delivers each once. Without that,
//! both relays deliver the rows when the receiver comes. Skipped (and passing) without a
//! database.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal::outbox::tokio_postgres::Client;
use shoal::outbox::{Destination, OutboxStore, PostgresOutbox, RelayMode, RelayOptions};
use shoal::{HandlerError, Message, MessageId, Node};
use shoal_tests::postgres::{connect, database, drop_outbox, fresh_schema, test_options};
use shoal_tests::{Mesh, wait_instances};
use tokio::sync::mpsc;
use tokio::time::timeout;

const ROWS: usize = 20;
const WAIT: Duration = Duration::from_secs(20);

/// An `orders` node relaying `outbox`, with `billing` at `billing` (not up yet).
async fn orders(mesh: &Mesh, outbox: &Arc<PostgresOutbox>, billing: std::net::SocketAddr) -> Node {
    mesh.builder("orders")
        .peer(billing)
        .outbox(
            Arc::clone(outbox) as Arc<dyn OutboxStore>,
            RelayOptions::default().poll(Duration::from_millis(200)),
        )
        .start()
        .await
        .unwrap()
}

/// Waits (bounded) until `check` holds. Not synchronisation: the database's state changes
/// as relays claim rows; this samples it.
async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let waited = timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// How many pending rows `relay` (any relay if `None`) has claimed.
async fn claimed(sql: &Client, schema: &str, relay: Option<&str>) -> i64 {
    sql.query_one(
        &format!(
            "SELECT count(*) FROM {schema}.outbox
             WHERE state = 0 AND claimed_by IS NOT NULL AND ($1::text IS NULL OR claimed_by = $1)"
        ),
        &[&relay],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_relay_that_lost_its_lease_stops_delivering_its_rows() {
    let Some(url) = database("lease_lost") else {
        return;
    };
    let schema = fresh_schema("lease_lost");
    let sql = connect(&url).await;
    // Instance A logs in as a role of its own, so that it alone can be shut out.
    let role = format!("{schema}_a");
    sql.batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
        .await
        .unwrap();
    let url_a = url.replacen("://postgres@", &format!("://{role}@"), 1);
    assert_ne!(url_a, url, "the test cluster's URL names the postgres role");
    let mesh = Mesh::new();
    let billing_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let a = Arc::new(
        PostgresOutbox::connect(&url_a, test_options(&schema, RelayMode::Polling))
            .await
            .unwrap(),
    );
    let node_a = orders(&mesh, &a, billing_addr).await;

    // Billing is not up: A claims the rows and its deliveries wait for a receiver.
    let mut committed = HashSet::new();
    {
        let mut client = a.pool().get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        for n in 0..ROWS {
            let msg = Message::command("bill", n.to_string());
            a.enqueue(&tx, &Destination::Service("billing".into()), &msg)
                .await
                .unwrap();
            committed.insert(msg.id());
        }
        a.commit(tx).await.unwrap();
    }
    until("A claimed every row", || async {
        claimed(&sql, &schema, None).await == ROWS as i64
    })
    .await;
    let holder: String = sql
        .query_one(
            &format!("SELECT min(claimed_by) FROM {schema}.outbox WHERE state = 0"),
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // A loses the database for good, its node still running: connections cut, no login.
    sql.batch_execute(&format!(
        "ALTER ROLE {role} NOLOGIN;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';"
    ))
    .await
    .unwrap();
    // B relays the same outbox and takes A's rows once A's lease lapsed.
    let b = Arc::new(
        PostgresOutbox::connect(&url, test_options(&schema, RelayMode::Polling))
            .await
            .unwrap(),
    );
    let node_b = orders(&mesh, &b, billing_addr).await;
    until("B claimed A's rows", || async {
        claimed(&sql, &schema, Some(&holder)).await == 0
            && claimed(&sql, &schema, None).await == ROWS as i64
    })
    .await;

    // Billing comes up, and both instances of orders connect to it.
    let (tx, mut rx) = mpsc::unbounded_channel::<MessageId>();
    let billing = mesh
        .start_with(mesh.builder("billing").listen(billing_addr), &[])
        .await;
    billing.handle("bill", move |msg: Message| {
        let _ = tx.send(msg.id());
        async { Ok::<_, HandlerError>(()) }
    });
    wait_instances(&billing, "orders", 2).await;
    let mut got = HashSet::new();
    while got.len() < ROWS {
        let id = timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {ROWS} arrived", got.len()))
            .unwrap();
        assert!(committed.contains(&id), "a message never enqueued arrived");
        assert!(got.insert(id), "{id} was handled twice");
    }
    until("B's outbox drained", || async {
        b.stats().await.unwrap().pending == 0
    })
    .await;
    // A delivering too would show here: each row arriving twice, the second one a duplicate.
    let stats = billing.stats();
    assert_eq!(
        stats.duplicates, 0,
        "rows arrived from the relay that lost its lease: {stats:?}"
    );
    assert_eq!(stats.handled, ROWS as u64);
    assert_eq!(
        node_a.stats().acked,
        0,
        "A delivered rows after its lease lapsed"
    );

    node_a.abort(); // its shutdown would wait for a database it may not reach
    node_b.shutdown().await;
    billing.shutdown().await;
    drop_outbox(&url, &schema).await;
    sql.batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}
