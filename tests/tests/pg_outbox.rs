//! The PostgreSQL outbox on a real database (the throwaway cluster of `scripts/test.sh`), in
//! both relay modes: what is committed arrives once and in order per key, what is rolled
//! back never does; several relays share the work; the slot is confirmed; bad set-ups,
//! damaged rows, dead rows and the inbox behave. Skipped (and passing) without a database.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shoal::outbox::{
    Destination, OutboxError, OutboxStore, PostgresOptions, PostgresOutbox, RelayMode, RelayOptions,
};
use shoal::{HandlerError, Message, MessageId, Node};
use shoal_tests::postgres::{connect, database, drop_outbox, fresh_schema, test_options};
use shoal_tests::{Mesh, wait_instances};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// A sending node of `orders` relaying `outbox`.
async fn publisher(mesh: &Mesh, outbox: &Arc<PostgresOutbox>, peer: &Node) -> Node {
    let node = mesh
        .builder("orders")
        .peer(peer.local_addr())
        .outbox(
            Arc::clone(outbox) as Arc<dyn OutboxStore>,
            RelayOptions::default().poll(Duration::from_millis(200)),
        )
        .start()
        .await
        .unwrap();
    wait_instances(&node, "billing", 1).await;
    node
}

/// A `billing` node whose handler reports `(key, payload)` of every `bill` command.
async fn receiver(mesh: &Mesh) -> (Node, mpsc::UnboundedReceiver<(MessageId, String, String)>) {
    receiver_at(mesh, shoal_tests::loopback()).await
}

/// [`receiver`] listening on `addr`.
async fn receiver_at(
    mesh: &Mesh,
    addr: std::net::SocketAddr,
) -> (Node, mpsc::UnboundedReceiver<(MessageId, String, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let node = mesh
        .start_with(mesh.builder("billing").listen(addr), &[])
        .await;
    node.handle("bill", move |msg: Message| {
        let key = msg.key().unwrap_or_default().to_owned();
        let _ = tx.send((
            msg.id(),
            key,
            String::from_utf8_lossy(msg.payload()).into_owned(),
        ));
        async { Ok::<_, HandlerError>(()) }
    });
    (node, rx)
}

/// Enqueues keyed commands `first..first + count` (keys `k0`..`k{keys-1}`, payload `n`) in
/// transactions of `per_tx`; every fifth transaction is rolled back. Returns the committed
/// ones' ids.
async fn enqueue(
    outbox: &PostgresOutbox,
    (first, count): (u64, u64),
    keys: u64,
    per_tx: u64,
) -> HashSet<MessageId> {
    let mut client = outbox.pool().get().await.unwrap();
    let mut committed = HashSet::new();
    let count = first + count;
    let mut n = first;
    let mut batch = 0;
    while n < count {
        let tx = client.transaction().await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..per_tx.min(count - n) {
            let msg = Message::command("bill", n.to_string()).with_key(format!("k{}", n % keys));
            outbox
                .enqueue(&tx, &Destination::Service("billing".into()), &msg)
                .await
                .unwrap();
            ids.push(msg.id());
            n += 1;
        }
        batch += 1;
        if batch % 5 == 0 {
            tx.rollback().await.unwrap();
        } else {
            outbox.commit(tx).await.unwrap();
            committed.extend(ids);
        }
    }
    committed
}

/// Receives until every id of `committed` arrived; checks none came twice or uncommitted
/// and that each key's payloads rise.
async fn receive_all(
    rx: &mut mpsc::UnboundedReceiver<(MessageId, String, String)>,
    committed: &HashSet<MessageId>,
) {
    let mut got = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    while got.len() < committed.len() {
        let (id, key, payload) = timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {} arrived", got.len(), committed.len()))
            .unwrap();
        assert!(committed.contains(&id), "a rolled-back message arrived");
        assert!(got.insert(id), "{id} arrived twice");
        let n: u64 = payload.parse().unwrap();
        if let Some(before) = last.insert(key.clone(), n) {
            assert!(before < n, "key {key}: {n} after {before}");
        }
    }
}

/// Waits (bounded) until the outbox has no pending rows.
async fn drained(outbox: &PostgresOutbox) {
    let waited = timeout(WAIT, async {
        // Not synchronisation: the relay deletes rows as acks arrive; this samples it.
        while outbox.stats().await.unwrap().pending > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "not drained: {:?}", outbox.stats().await);
}

async fn one_relay_delivers_committed_rows_in_key_order(mode: RelayMode, name: &str) {
    let Some(url) = database(name) else { return };
    let schema = fresh_schema(name);
    let mesh = Mesh::new();
    let outbox = Arc::new(
        PostgresOutbox::connect(&url, test_options(&schema, mode))
            .await
            .unwrap(),
    );
    // Rows committed before the relay starts are found in the table; later ones arrive
    // through notifications or the log.
    let mut committed = enqueue(&outbox, (0, 60), 4, 3).await;
    let (billing, mut rx) = receiver(&mesh).await;
    let orders = publisher(&mesh, &outbox, &billing).await;
    committed.extend(enqueue(&outbox, (60, 600), 7, 6).await);
    receive_all(&mut rx, &committed).await;
    drained(&outbox).await;
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    orders.shutdown().await;
    billing.shutdown().await;
    drop(outbox);
    drop_outbox(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_relay_delivers_committed_rows_once_in_key_order() {
    one_relay_delivers_committed_rows_in_key_order(RelayMode::Polling, "poll_one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tail_delivers_committed_rows_once_in_key_order() {
    one_relay_delivers_committed_rows_in_key_order(RelayMode::LogTailing, "tail_one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_polling_relays_share_the_rows_and_keep_order_per_key() {
    let Some(url) = database("poll_two") else {
        return;
    };
    let schema = fresh_schema("poll_two");
    let mesh = Mesh::new();
    let (billing, mut rx) = receiver(&mesh).await;
    let a = Arc::new(
        PostgresOutbox::connect(&url, test_options(&schema, RelayMode::Polling))
            .await
            .unwrap(),
    );
    let b = Arc::new(
        PostgresOutbox::connect(&url, test_options(&schema, RelayMode::Polling))
            .await
            .unwrap(),
    );
    let node_a = publisher(&mesh, &a, &billing).await;
    let node_b = publisher(&mesh, &b, &billing).await;
    // Both instances write; both relay. Keys are shared between them.
    let (from_a, from_b) = tokio::join!(enqueue(&a, (0, 300), 10, 4), enqueue(&b, (0, 300), 10, 5));
    let committed: HashSet<MessageId> = from_a.union(&from_b).copied().collect();
    // Per key, each writer's payloads rise, but the two writers interleave: check order
    // within each writer's messages only (payloads restart at 0 for each), by id set.
    let mut got = HashSet::new();
    let mut last: HashMap<(bool, String), u64> = HashMap::new();
    while got.len() < committed.len() {
        let (id, key, payload) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert!(committed.contains(&id), "a rolled-back message arrived");
        assert!(got.insert(id), "{id} arrived twice");
        let n: u64 = payload.parse().unwrap();
        let writer = from_a.contains(&id);
        if let Some(before) = last.insert((writer, key.clone()), n) {
            assert!(before < n, "key {key}: {n} after {before}");
        }
    }
    drained(&a).await;
    node_a.shutdown().await;
    node_b.shutdown().await;
    billing.shutdown().await;
    drop_outbox(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_confirmed_once_rows_are_acknowledged() {
    let Some(url) = database("tail_slot") else {
        return;
    };
    let schema = fresh_schema("tail_slot");
    let mesh = Mesh::new();
    let outbox = Arc::new(
        PostgresOutbox::connect(&url, test_options(&schema, RelayMode::LogTailing))
            .await
            .unwrap(),
    );
    // The receiver is not up yet: the rows wait, unacknowledged. (That the slot is not
    // confirmed past them meanwhile is a unit test of the tail's bookkeeping: the server's
    // position moves with other sessions' WAL too.)
    let billing_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let orders = mesh
        .builder("orders")
        .peer(billing_addr)
        .outbox(
            Arc::clone(&outbox) as Arc<dyn OutboxStore>,
            RelayOptions::default().poll(Duration::from_millis(200)),
        )
        .start()
        .await
        .unwrap();
    let sql = connect(&url).await;
    let lsn = async || -> String {
        sql.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0)
    };
    let confirmed_past = async |lsn: &str| -> bool {
        sql.query_one(
            "SELECT confirmed_flush_lsn > $2::text::pg_lsn FROM pg_replication_slots
             WHERE slot_name = $1",
            &[&format!("{schema}_outbox"), &lsn],
        )
        .await
        .unwrap()
        .get(0)
    };
    let before = lsn().await;
    let committed = enqueue(&outbox, (0, 40), 3, 2).await;
    let (billing, mut rx) = receiver_at(&mesh, billing_addr).await;
    receive_all(&mut rx, &committed).await;
    drained(&outbox).await;
    let confirmed = timeout(WAIT, async {
        while !confirmed_past(&before).await {
            // Not synchronisation: the server learns the position from the tail's status
            // updates (about every second); this samples it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        confirmed.is_ok(),
        "slot not confirmed past {before} once acknowledged"
    );
    orders.shutdown().await;
    billing.shutdown().await;
    drop_outbox(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_set_ups_are_clear_errors() {
    let Some(url) = database("setup") else { return };
    let err = PostgresOutbox::connect(&url, PostgresOptions::default().schema("Bad-Name"))
        .await
        .unwrap_err();
    assert!(matches!(err, OutboxError::Setup(_)), "{err}");
    assert!(err.to_string().contains("schema name"), "{err}");
    let err = PostgresOutbox::connect(
        "postgres://postgres@127.0.0.1:1/postgres",
        PostgresOptions::default().connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OutboxError::Database(_)), "{err}");
    // A role without the REPLICATION attribute cannot tail the log, and is told so.
    let sql = connect(&url).await;
    let role = format!("plain_{:08x}", rand::random::<u32>());
    sql.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOREPLICATION; GRANT CREATE ON DATABASE postgres TO {role}"
    ))
    .await
    .unwrap();
    let schema = fresh_schema("setup");
    let plain = url.replacen("postgres@", &format!("{role}@"), 1);
    let err = PostgresOutbox::connect(&plain, test_options(&schema, RelayMode::LogTailing))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OutboxError::Setup(m) if m.contains("REPLICATION")),
        "{err}"
    );
    // The same role may poll.
    let polling = PostgresOutbox::connect(&plain, test_options(&schema, RelayMode::Polling)).await;
    assert!(polling.is_ok(), "{:?}", polling.err());
    drop(polling);
    drop_outbox(&url, &schema).await;
    sql.batch_execute(&format!(
        "REVOKE CREATE ON DATABASE postgres FROM {role}; DROP ROLE {role}"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_damaged_and_dead_rows_and_the_inbox() {
    let Some(url) = database("rows") else { return };
    let schema = fresh_schema("rows");
    let mesh = Mesh::new();
    let outbox = Arc::new(
        PostgresOutbox::connect(
            &url,
            test_options(&schema, RelayMode::Polling).max_pending(3),
        )
        .await
        .unwrap(),
    );
    let committed = enqueue(&outbox, (0, 3), 3, 1).await;
    assert_eq!(committed.len(), 3);
    // The fourth is refused, and the transaction stays usable.
    let mut client = outbox.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let err = outbox
        .enqueue(
            &tx,
            &Destination::Service("billing".into()),
            &Message::command("bill", "x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OutboxError::Full {
                pending: 3,
                limit: 3
            }
        ),
        "{err}"
    );
    tx.execute("SELECT 1", &[]).await.unwrap();
    drop(tx);
    // A damaged row is marked dead with its reason when the relay reads it; the others go.
    let damaged = committed.iter().next().copied().unwrap();
    client
        .execute(
            &format!(
                "UPDATE {schema}.outbox SET frame = '\\x00000005ffff'::bytea WHERE message_id = $1"
            ),
            &[&&damaged.as_u128().to_be_bytes()[..]],
        )
        .await
        .unwrap();
    let (billing, mut rx) = receiver(&mesh).await;
    let orders = publisher(&mesh, &outbox, &billing).await;
    for _ in 0..2 {
        let (id, ..) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_ne!(id, damaged);
    }
    drained(&outbox).await;
    let dead = outbox.dead_rows(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, damaged);
    assert!(dead[0].reason.contains("unreadable"), "{}", dead[0].reason);
    assert_eq!(outbox.stats().await.unwrap().dead, 1);
    // A dead row, requeued, goes with its id.
    client
        .execute(
            &format!("DELETE FROM {schema}.outbox WHERE message_id = $1"),
            &[&&damaged.as_u128().to_be_bytes()[..]],
        )
        .await
        .unwrap();
    let mended = Message::command("bill", "7").with_key("k0");
    // (Another handle on the same outbox: this one's count of pending rows is a second old.)
    let writer = PostgresOutbox::connect(&url, test_options(&schema, RelayMode::Polling))
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    writer
        .enqueue(&tx, &Destination::Service("billing".into()), &mended)
        .await
        .unwrap();
    tx.execute(
        &format!("UPDATE {schema}.outbox SET state = 2, dead_ms = 0 WHERE state = 0"),
        &[],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox.stats().await.unwrap().dead, 1);
    assert_eq!(outbox.requeue_dead().await.unwrap(), 1);
    let (id, ..) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(id, mended.id());
    drained(&outbox).await;

    // The inbox: an effect applied once per id, whoever delivers it.
    client
        .batch_execute(&format!("CREATE TABLE {schema}.effects (n INT NOT NULL)"))
        .await
        .unwrap();
    let id = Message::command("x", "").id();
    let insert = format!("INSERT INTO {schema}.effects (n) VALUES (1)");
    for expect in [Some(1), None, None] {
        let insert = insert.clone();
        let applied = outbox
            .apply_once(id, move |tx| {
                Box::pin(async move { tx.execute(&insert, &[]).await })
            })
            .await
            .unwrap();
        assert_eq!(applied, expect);
    }
    let effects: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.effects"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(effects, 1);
    assert_eq!(
        outbox.prune_inbox(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert_eq!(outbox.prune_inbox(Duration::ZERO).await.unwrap(), 1);
    orders.shutdown().await;
    billing.shutdown().await;
    drop(client);
    drop_outbox(&url, &schema).await;
}

/// A row carries the trace of its enqueue: the context current at the call (given here with
/// `in_scope`, the future awaited outside it) is stored with the message, and the relay's
/// send carries it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_carries_the_trace_of_its_enqueue() {
    let name = "pg_trace";
    let Some(url) = database(name) else { return };
    let schema = fresh_schema(name);
    let mesh = Mesh::new();
    let outbox = Arc::new(
        PostgresOutbox::connect(&url, test_options(&schema, RelayMode::Polling))
            .await
            .unwrap(),
    );
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let billing = mesh.start_with(mesh.builder("billing"), &[]).await;
    billing.handle("bill", move |msg: Message| {
        let _ = seen_tx.send(msg.header("traceparent").map(str::to_owned));
        async { Ok::<_, HandlerError>(()) }
    });
    let orders = publisher(&mesh, &outbox, &billing).await;
    let ctx = shoal::TraceContext::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        None,
    )
    .unwrap();
    let (destination, msg) = (
        Destination::Service("billing".into()),
        Message::command("bill", "1"),
    );
    let mut client = outbox.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let enqueued = ctx
        .clone()
        .in_scope(|| outbox.enqueue(&tx, &destination, &msg));
    enqueued.await.unwrap();
    outbox.commit(tx).await.unwrap();
    let header = timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap();
    assert_eq!(header, Some(ctx.traceparent()));
    drained(&outbox).await;
    orders.shutdown().await;
    billing.shutdown().await;
    drop(outbox);
    drop_outbox(&url, &schema).await;
}
