//! The outbox relay on real sockets: messages committed with domain rows wait while no
//! receiver is up, then all arrive once one appears; rolled-back ones never do.
#![cfg(feature = "outbox")]
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shoal::outbox::rusqlite::{Connection, TransactionBehavior};
use shoal::outbox::{Destination, OutboxStore, RelayOptions, SqliteOutbox};
use shoal::{HandlerError, MeshCa, Message, MessageId, Node};
use tokio::time::timeout;

#[path = "outbox/held.rs"]
mod held;
mod outbox_fixture;
use outbox_fixture::{Fixture, node, publisher};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "current_thread")]
async fn committed_messages_wait_for_a_receiver_then_all_arrive_once() {
    let fx = Fixture::new("relay");
    let path = fx.path.clone();
    let outbox = Arc::new(SqliteOutbox::open(&path).unwrap());
    let ca = fx.ca.clone();
    let orders = publisher(
        &ca,
        &outbox,
        RelayOptions::default().poll(Duration::from_millis(100)),
    )
    .start()
    .await
    .unwrap();

    let mut conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .unwrap();
    let mut committed = HashSet::new();
    for i in 0..40 {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO orders (id) VALUES (?1)", [i])
            .unwrap();
        let command = Message::command("create-invoice", format!("order {i}"));
        outbox
            .enqueue(&tx, &Destination::Service("invoice".into()), &command)
            .unwrap();
        let event = Message::event("order.created", format!("order {i}"));
        outbox.enqueue(&tx, &Destination::Publish, &event).unwrap();
        if i % 4 == 3 {
            drop(tx); // rolled back: neither message may ever arrive
        } else {
            outbox.commit(tx).unwrap();
            committed.insert(command.id());
            committed.insert(event.id());
        }
    }
    assert_eq!(
        outbox.stats().unwrap().pending,
        60,
        "nobody to deliver to yet"
    );

    // The receiver starts late: everything committed arrives, once.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageId>();
    let invoice = node(&ca, "invoice")
        .peer(orders.local_addr())
        .start()
        .await
        .unwrap();
    let tx2 = tx.clone();
    invoice.handle("create-invoice", move |msg: Message| {
        let _ = tx2.send(msg.id());
        async { Ok::<_, HandlerError>(()) }
    });
    invoice
        .subscribe("order.created", move |msg: Message| {
            let _ = tx.send(msg.id());
            async { Ok::<_, HandlerError>(()) }
        })
        .await
        .unwrap();
    let mut got = HashSet::new();
    while got.len() < committed.len() {
        let id = timeout(WAIT, rx.recv())
            .await
            .expect("all committed messages arrive")
            .unwrap();
        assert!(got.insert(id), "{id} handled twice");
    }
    assert_eq!(got, committed);
    pending_falls_to(&outbox, 0, "delivered rows leave the outbox").await;
    orders.shutdown().await;
    invoice.shutdown().await;
}

/// One test's database, in a folder of its own that is removed when the test ends, and its
/// mesh CA.

#[tokio::test(flavor = "current_thread")]
async fn keyed_rows_kept_for_later_keep_their_order() {
    let fx = Fixture::new("order");
    let path = fx.path.clone();
    let outbox = Arc::new(SqliteOutbox::open(&path).unwrap());
    let ca = fx.ca.clone();
    let orders = publisher(
        &ca,
        &outbox,
        RelayOptions::default().poll(Duration::from_secs(30)),
    )
    .start()
    .await
    .unwrap();
    let mut conn = Connection::open(&path).unwrap();
    for i in 0..60 {
        let tx = conn.transaction().unwrap();
        let event = Message::event("order.changed", format!("{}/{i}", i % 3))
            .with_key(format!("k{}", i % 3));
        outbox.enqueue(&tx, &Destination::Publish, &event).unwrap();
        outbox.commit(tx).unwrap();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let billing = node(&ca, "billing")
        .peer(orders.local_addr())
        .start()
        .await
        .unwrap();
    billing
        .subscribe("order.changed", move |msg: Message| {
            let _ = tx.send(String::from_utf8_lossy(msg.payload()).into_owned());
            async { Ok::<_, HandlerError>(()) }
        })
        .await
        .unwrap();
    let mut per_key: Vec<Vec<usize>> = vec![Vec::new(); 3];
    for _ in 0..60 {
        let body = timeout(WAIT, rx.recv())
            .await
            .expect("all rows arrive")
            .unwrap();
        let (key, seq) = body.split_once('/').unwrap();
        per_key[key.parse::<usize>().unwrap()].push(seq.parse().unwrap());
    }
    for (key, seqs) in per_key.iter().enumerate() {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, &sorted, "key {key} out of order");
        assert_eq!(seqs.len(), 20);
    }
    orders.shutdown().await;
    billing.shutdown().await;
}

/// Waits (at most [`WAIT`]) until the outbox holds at most `rows` pending rows (acknowledged
/// rows are removed a few milliseconds after their ack; the store has no event to await).
async fn pending_falls_to(outbox: &SqliteOutbox, rows: u64, what: &str) {
    let fall = async {
        while outbox.stats().unwrap().pending > rows {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, fall)
        .await
        .unwrap_or_else(|_| panic!("not within {WAIT:?}: {what}"));
}

/// The fixture's outbox, the `orders` node relaying it with `options`, and an `audit`
/// subscriber of `order.created` (with its events) that `orders` already sees.
async fn publisher_and_audit(
    fx: &Fixture,
    options: RelayOptions,
) -> (
    Arc<SqliteOutbox>,
    Node,
    Node,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let outbox = Arc::new(SqliteOutbox::open(&fx.path).unwrap());
    let orders = publisher(&fx.ca, &outbox, options).start().await.unwrap();
    let (audit, audit_rx) = subscriber(&fx.ca, "audit", orders.local_addr()).await;
    orders
        .wait_for_subscribers("order.created", 1, WAIT)
        .await
        .unwrap();
    (outbox, orders, audit, audit_rx)
}

/// A subscriber of `topic` in `group` that forwards each event's payload.
async fn subscriber(
    ca: &MeshCa,
    group: &str,
    peer: std::net::SocketAddr,
) -> (Node, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let node = node(ca, group).peer(peer).start().await.unwrap();
    node.subscribe("order.created", move |msg: Message| {
        let _ = tx.send(String::from_utf8_lossy(msg.payload()).into_owned());
        async { Ok::<_, HandlerError>(()) }
    })
    .await
    .unwrap();
    (node, rx)
}

async fn publish_rows(outbox: &SqliteOutbox, conn: &mut Connection, bodies: &[&str]) {
    for body in bodies {
        let tx = conn.transaction().unwrap();
        let event = Message::event("order.created", body.to_string());
        outbox.enqueue(&tx, &Destination::Publish, &event).unwrap();
        outbox.commit(tx).unwrap();
    }
}

async fn receive(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(
            timeout(WAIT, rx.recv())
                .await
                .expect("event arrives")
                .unwrap(),
        );
    }
    got.sort();
    got
}

#[tokio::test(flavor = "current_thread")]
async fn a_group_seen_before_a_restart_gets_the_events_published_while_it_is_away() {
    let fx = Fixture::new("groups");
    let path = fx.path.clone();
    let ca = fx.ca.clone();
    let options = RelayOptions::default().poll(Duration::from_millis(50));
    let outbox = Arc::new(SqliteOutbox::open(&path).unwrap());
    let orders = publisher(&ca, &outbox, options.clone())
        .start()
        .await
        .unwrap();
    let (audit, mut audit_rx) = subscriber(&ca, "audit", orders.local_addr()).await;
    let (billing, mut billing_rx) = subscriber(&ca, "billing", orders.local_addr()).await;
    // Both groups must be known before the first event, or it goes to the one seen first.
    orders
        .wait_for_subscribers("order.created", 2, WAIT)
        .await
        .unwrap();
    let mut conn = outbox.connect().unwrap();
    publish_rows(&outbox, &mut conn, &["first"]).await;
    assert_eq!(receive(&mut billing_rx, 1).await, ["first"]);
    assert_eq!(receive(&mut audit_rx, 1).await, ["first"]);
    timeout(WAIT, async {
        while outbox.groups(Duration::from_secs(60)).unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the relay records the groups it sees");

    // Billing goes away; the publisher restarts (a new node, its memory gone) and publishes
    // while billing is away and audit is up.
    billing.shutdown().await;
    orders.shutdown().await;
    drop(outbox);
    let outbox = Arc::new(SqliteOutbox::open(&path).unwrap());
    let orders = publisher(&ca, &outbox, options.clone())
        .peer(audit.local_addr())
        .start()
        .await
        .unwrap();
    orders
        .wait_for_subscribers("order.created", 1, WAIT)
        .await
        .unwrap();
    let mut conn = outbox.connect().unwrap();
    publish_rows(&outbox, &mut conn, &["a", "b", "c"]).await;
    assert_eq!(receive(&mut audit_rx, 3).await, ["a", "b", "c"]);
    assert!(outbox.stats().unwrap().pending > 0, "held for billing");
    let (billing, mut billing_rx) = subscriber(&ca, "billing", orders.local_addr()).await;
    assert_eq!(receive(&mut billing_rx, 3).await, ["a", "b", "c"]);
    for n in [&orders, &audit, &billing] {
        n.shutdown().await;
    }
}

/// Rows waiting for a receiver that is away (a group not up yet, a service with no instance)
/// must not hold back the rows the others can take: more of them than the relay keeps in
/// flight at once (256) are committed first, and the live group still gets every event.
#[tokio::test(flavor = "current_thread")]
async fn rows_waiting_for_an_absent_receiver_do_not_hold_back_the_others() {
    let fx = Fixture::new("absent");
    let ca = fx.ca.clone();
    let (outbox, orders, audit, mut audit_rx) = publisher_and_audit(
        &fx,
        RelayOptions::default()
            .poll(Duration::from_millis(50))
            .expect_group("order.*", "billing"),
    )
    .await;
    // 300 commands for a service that has no instance, then 600 events that billing (away)
    // and audit (up) both must get.
    let mut conn = outbox.connect().unwrap();
    let tx = conn.transaction().unwrap();
    for n in 0..300 {
        let command = Message::command("post", format!("entry {n}"));
        let ledger = Destination::Service("ledger".into());
        outbox.enqueue(&tx, &ledger, &command).unwrap();
    }
    outbox.commit(tx).unwrap();
    let bodies: Vec<String> = (0..600).map(|n| format!("order {n:03}")).collect();
    let tx = conn.transaction().unwrap();
    for body in &bodies {
        let event = Message::event("order.created", body.clone());
        outbox.enqueue(&tx, &Destination::Publish, &event).unwrap();
    }
    outbox.commit(tx).unwrap();
    let mut expected = bodies.clone();
    expected.sort();
    assert_eq!(receive(&mut audit_rx, 600).await, expected);

    let (billing, mut billing_rx) = subscriber(&ca, "billing", orders.local_addr()).await;
    assert_eq!(receive(&mut billing_rx, 600).await, expected);
    pending_falls_to(
        &outbox,
        300,
        "every event leaves the outbox; the commands wait for the ledger",
    )
    .await;
    for n in [&orders, &audit, &billing] {
        n.shutdown().await;
    }
}

/// A group gone for good (decommissioned) is forgotten with `Node::forget_group`: the events
/// held for it leave the outbox, and new ones no longer wait for it.
#[tokio::test(flavor = "current_thread")]
async fn a_forgotten_group_no_longer_holds_events() {
    let fx = Fixture::new("forget");
    let path = fx.path.clone();
    let ca = fx.ca.clone();
    let outbox = Arc::new(SqliteOutbox::open(&path).unwrap());
    let orders = publisher(
        &ca,
        &outbox,
        RelayOptions::default().poll(Duration::from_millis(50)),
    )
    .start()
    .await
    .unwrap();
    let (audit, mut audit_rx) = subscriber(&ca, "audit", orders.local_addr()).await;
    let (billing, mut billing_rx) = subscriber(&ca, "billing", orders.local_addr()).await;
    // Both groups must be known before the first event, or it goes to the one seen first.
    orders
        .wait_for_subscribers("order.created", 2, WAIT)
        .await
        .unwrap();
    let mut conn = outbox.connect().unwrap();
    publish_rows(&outbox, &mut conn, &["first"]).await;
    assert_eq!(receive(&mut billing_rx, 1).await, ["first"]);
    assert_eq!(receive(&mut audit_rx, 1).await, ["first"]);
    billing.shutdown().await;
    publish_rows(&outbox, &mut conn, &["a", "b"]).await;
    assert_eq!(receive(&mut audit_rx, 2).await, ["a", "b"]);
    pending_falls_to(&outbox, 2, "the first row leaves").await;
    assert_eq!(outbox.stats().unwrap().pending, 2, "held for billing");

    let forgotten = orders
        .forget_group("order.created", "billing")
        .await
        .unwrap();
    assert!(forgotten);
    pending_falls_to(&outbox, 0, "the held rows leave").await;
    assert!(
        !outbox
            .groups(Duration::from_secs(3600))
            .unwrap()
            .iter()
            .any(|(_, g)| g == "billing")
    );
    assert!(
        orders
            .subscribers("order.created")
            .iter()
            .all(|(g, _)| g.as_deref() != Some("billing")),
        "{:?}",
        orders.subscribers("order.created")
    );
    publish_rows(&outbox, &mut conn, &["c"]).await;
    assert_eq!(receive(&mut audit_rx, 1).await, ["c"]);
    pending_falls_to(&outbox, 0, "a new event no longer waits for billing").await;
    assert!(
        !orders
            .forget_group("order.created", "billing")
            .await
            .unwrap()
    );
    for n in [&orders, &audit] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_expected_group_gets_events_published_before_it_ever_subscribed() {
    let fx = Fixture::new("expect");
    let ca = fx.ca.clone();
    let (outbox, orders, audit, mut audit_rx) = publisher_and_audit(
        &fx,
        RelayOptions::default()
            .poll(Duration::from_millis(50))
            .expect_group("order.*", "billing"),
    )
    .await;
    let mut conn = outbox.connect().unwrap();
    publish_rows(&outbox, &mut conn, &["x", "y"]).await;
    assert_eq!(receive(&mut audit_rx, 2).await, ["x", "y"]);
    let (billing, mut billing_rx) = subscriber(&ca, "billing", orders.local_addr()).await;
    assert_eq!(receive(&mut billing_rx, 2).await, ["x", "y"]);
    for n in [&orders, &audit, &billing] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_database_locked_while_the_relay_runs_loses_no_row() {
    let fx = Fixture::new("locked");
    let path = fx.path.clone();
    let quick = shoal::outbox::OutboxOptions::default().busy_timeout(Duration::from_millis(50));
    let outbox = Arc::new(SqliteOutbox::open_with(&path, quick).unwrap());
    let ca = fx.ca.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageId>();
    let invoice = node(&ca, "invoice").start().await.unwrap();
    invoice.handle("create-invoice", move |msg: Message| {
        let _ = tx.send(msg.id());
        async { Ok::<_, HandlerError>(()) }
    });
    let orders = node(&ca, "orders")
        .peer(invoice.local_addr())
        .outbox(
            Arc::clone(&outbox) as Arc<dyn OutboxStore>,
            RelayOptions::default().poll(Duration::from_millis(50)),
        )
        .start()
        .await
        .unwrap();
    orders.wait_for_instances("invoice", 1, WAIT).await.unwrap();
    let mut conn = outbox.connect().unwrap();
    let mut sent = HashSet::new();
    for i in 0..20 {
        let tx = conn.transaction().unwrap();
        let command = Message::command("create-invoice", format!("{i}"));
        outbox
            .enqueue(&tx, &Destination::Service("invoice".into()), &command)
            .unwrap();
        sent.insert(command.id());
        // Another process takes the write lock right after the commit: the relay can read
        // and deliver, but cannot record the acknowledgements for a while.
        tx.commit().unwrap();
    }
    let mut holder = Connection::open(&path).unwrap();
    let exclusive = holder
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    outbox.notifier().notify_one();
    let mut got = HashSet::new();
    while got.len() < sent.len() {
        let id = timeout(WAIT, rx.recv()).await.expect("delivered").unwrap();
        got.insert(id);
    }
    assert_eq!(outbox.stats().unwrap().pending, 20, "acks not recorded yet");
    // A few relay cycles fail to record, then the lock goes away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    exclusive.rollback().unwrap();
    pending_falls_to(&outbox, 0, "rows leave once the lock is gone").await;
    assert_eq!(got, sent);
    assert_eq!(orders.stats().dead_lettered, 0);
    orders.shutdown().await;
    invoice.shutdown().await;
}
