//! Rows the relay holds back (past `max_waiting`, or behind their key): they stay in the
//! store, keep their order, and never hide the rows committed after them.

use super::*;

/// Past `max_waiting` rows waiting for an absent service, further ones stay in the store, and
/// the rows behind them that can go still go; when the service appears, every row arrives.
#[tokio::test(flavor = "current_thread")]
async fn rows_past_max_waiting_stay_in_the_store_without_blocking_the_rest() {
    let fx = Fixture::new("cap");
    let ca = fx.ca.clone();
    let options = RelayOptions::default()
        .poll(Duration::from_millis(50))
        .max_waiting(100);
    let (outbox, orders, audit, mut audit_rx) = publisher_and_audit(&fx, options).await;
    let mut conn = outbox.connect().unwrap();
    let tx = conn.transaction().unwrap();
    let entries: Vec<String> = (0..300).map(|n| format!("entry {n:03}")).collect();
    for entry in &entries {
        let command = Message::command("post", entry.clone());
        let ledger = Destination::Service("ledger".into());
        outbox.enqueue(&tx, &ledger, &command).unwrap();
    }
    let bodies: Vec<String> = (0..300).map(|n| format!("order {n:03}")).collect();
    for body in &bodies {
        let event = Message::event("order.created", body.clone());
        outbox.enqueue(&tx, &Destination::Publish, &event).unwrap();
    }
    outbox.commit(tx).unwrap();
    assert_eq!(receive(&mut audit_rx, 300).await, bodies);
    pending_falls_to(&outbox, 300, "the events leave the outbox").await;
    assert_eq!(outbox.stats().unwrap().pending, 300, "the commands wait");

    let (tx, mut ledger_rx) = tokio::sync::mpsc::unbounded_channel();
    let ledger = node(&ca, "ledger")
        .peer(orders.local_addr())
        .start()
        .await
        .unwrap();
    ledger.handle("post", move |msg: Message| {
        let _ = tx.send(String::from_utf8_lossy(msg.payload()).into_owned());
        async { Ok::<_, HandlerError>(()) }
    });
    assert_eq!(receive(&mut ledger_rx, 300).await, entries);
    for n in [&orders, &audit, &ledger] {
        n.shutdown().await;
    }
}

/// Commits `n` commands for the service `ledger` (absent in these tests), keyed with `key` if
/// given, then one `order.created` event, in one transaction.
fn commit_commands_then_an_event(outbox: &SqliteOutbox, n: usize, key: Option<&str>) {
    let mut conn = outbox.connect().unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..n {
        let mut command = Message::command("post", format!("entry {i}"));
        if let Some(key) = key {
            command = command.with_key(key);
        }
        let ledger = Destination::Service("ledger".into());
        outbox.enqueue(&tx, &ledger, &command).unwrap();
    }
    let event = Message::event("order.created", "after the commands");
    outbox.enqueue(&tx, &Destination::Publish, &event).unwrap();
    outbox.commit(tx).unwrap();
}

/// Rows held back in the store (past `max_waiting`, or behind their key) do not hide the rows
/// committed after them, however many they are: the relay's cursor moves past them.
#[tokio::test(flavor = "current_thread")]
async fn any_number_of_held_rows_does_not_hide_the_rows_behind_them() {
    for (name, max_waiting, key) in [("held-cap", 100, None), ("held-key", 16_384, Some("c-1"))] {
        let fx = Fixture::new(name);
        let options = RelayOptions::default()
            .poll(Duration::from_millis(50))
            .max_waiting(max_waiting);
        let (outbox, orders, audit, mut audit_rx) = publisher_and_audit(&fx, options).await;
        // Far more than the relay reads in one pass (in flight + 4 x 256).
        commit_commands_then_an_event(&outbox, 2_000, key);
        assert_eq!(
            receive(&mut audit_rx, 1).await,
            ["after the commands"],
            "{name}"
        );
        for n in [&orders, &audit] {
            n.shutdown().await;
        }
    }
}

/// A keyed event held back by `max_waiting` holds back the later rows of its key, even on a
/// topic whose audience is up: order per key wins over the cap.
#[tokio::test(flavor = "current_thread")]
async fn a_row_held_by_max_waiting_keeps_its_key_in_order() {
    let fx = Fixture::new("cap-order");
    let outbox = Arc::new(SqliteOutbox::open(&fx.path).unwrap());
    let options = RelayOptions::default()
        .poll(Duration::from_millis(50))
        .max_waiting(1)
        .expect_group("order.*", "billing");
    let orders = publisher(&fx.ca, &outbox, options).start().await.unwrap();
    let (tx, mut audit_rx) = tokio::sync::mpsc::unbounded_channel();
    let audit = node(&fx.ca, "audit")
        .peer(orders.local_addr())
        .start()
        .await
        .unwrap();
    for topic in ["order.created", "payment.done"] {
        let tx = tx.clone();
        audit
            .subscribe(topic, move |msg: Message| {
                let _ = tx.send(String::from_utf8_lossy(msg.payload()).into_owned());
                async { Ok::<_, HandlerError>(()) }
            })
            .await
            .unwrap();
    }
    orders
        .wait_for_subscribers("payment.done", 1, WAIT)
        .await
        .unwrap();
    // r1 waits for billing and takes the one waiting place; r2 (key K) must wait in the
    // store; r3 (key K, only audit subscribes) must wait for r2.
    let mut conn = outbox.connect().unwrap();
    let txn = conn.transaction().unwrap();
    for (topic, key, body) in [
        ("order.created", "X", "r1"),
        ("order.created", "K", "r2"),
        ("payment.done", "K", "r3"),
    ] {
        let event = Message::event(topic, body).with_key(key);
        outbox.enqueue(&txn, &Destination::Publish, &event).unwrap();
    }
    outbox.commit(txn).unwrap();
    let first = timeout(WAIT, audit_rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, "r1");
    let (billing, mut billing_rx) = subscriber(&fx.ca, "billing", orders.local_addr()).await;
    let mut rest = Vec::new();
    for _ in 0..2 {
        rest.push(timeout(WAIT, audit_rx.recv()).await.unwrap().unwrap());
    }
    assert_eq!(rest, ["r2", "r3"], "key K out of order");
    assert_eq!(receive(&mut billing_rx, 2).await, ["r1", "r2"]);
    for n in [&orders, &audit, &billing] {
        n.shutdown().await;
    }
}

/// Forgetting the only group of a topic: the events held for it leave the outbox too.
#[tokio::test(flavor = "current_thread")]
async fn forgetting_the_only_group_empties_the_outbox() {
    let fx = Fixture::new("forget-only");
    let outbox = Arc::new(SqliteOutbox::open(&fx.path).unwrap());
    let options = RelayOptions::default().poll(Duration::from_millis(50));
    let orders = publisher(&fx.ca, &outbox, options).start().await.unwrap();
    let (billing, mut billing_rx) = subscriber(&fx.ca, "billing", orders.local_addr()).await;
    let mut conn = outbox.connect().unwrap();
    publish_rows(&outbox, &mut conn, &["first"]).await;
    assert_eq!(receive(&mut billing_rx, 1).await, ["first"]);
    billing.shutdown().await;
    // Billing is remembered with no instance: events published now are held for it.
    let held_for_billing = |node: &Node| {
        node.subscribers("order.created") == [(Some("billing".to_owned()), Vec::new())]
    };
    let mut events = orders.events();
    timeout(WAIT, async {
        while !held_for_billing(&orders) {
            let _ = events.recv().await;
        }
    })
    .await
    .expect("billing is remembered once its instance left");
    let published = orders.stats().published;
    publish_rows(&outbox, &mut conn, &["a", "b"]).await;
    pending_falls_to(&outbox, 2, "the first row leaves").await;
    // The relay has published both (their copies are held for billing); the node has no
    // event for that.
    timeout(WAIT, async {
        while orders.stats().published < published + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the relay publishes the rows");
    let forgotten = orders.forget_group("order.created", "billing").await;
    assert!(forgotten.unwrap());
    pending_falls_to(&outbox, 0, "the rows held for the forgotten group leave").await;
    orders.shutdown().await;
}
