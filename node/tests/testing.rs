//! The test kit's own tests (`shoal::testing`): a test written with it catches a handler that
//! is not idempotent, passes once the handler uses the inbox or the dedup window; dropped
//! acks make senders retry; partitions hold deliveries until healed; faults replay from their
//! seed; failures list what the probe saw; virtual time makes long timeouts cost nothing.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shoal::testing::{Expect, Failure, Fault, TestMesh};
use shoal::{Error, HandlerError, Message, Node};

/// How the invoice service under test guards against handling an order twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Not at all: every run of the handler publishes an invoice.
    Nothing,
    /// The persistent inbox: the order's message id is recorded in SQLite, and a message
    /// whose id is already there is acknowledged without a second invoice.
    #[cfg(feature = "outbox")]
    Inbox,
}

/// The service under test: one `invoice.created` (payload: the order) per `order.created`
/// handled, and a count of the handler's runs.
async fn invoice(mesh: &TestMesh, guard: Guard) -> Result<(Node, Arc<AtomicU32>), Error> {
    let node = mesh.builder("invoice")?.start().await?;
    let runs = Arc::new(AtomicU32::new(0));
    #[cfg(feature = "outbox")]
    let inbox = match guard {
        Guard::Inbox => {
            let store = shoal::outbox::SqliteOutbox::open(mesh.dir().join("invoice.db"))
                .map_err(|e| Error::Config(e.to_string()))?;
            Some(Arc::new(std::sync::Mutex::new(store.connect().unwrap())))
        }
        Guard::Nothing => None,
    };
    let (publisher, counter) = (node.clone(), Arc::clone(&runs));
    node.subscribe("order.created", move |order: Message| {
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "outbox")]
        let first = inbox.as_ref().is_none_or(|conn| {
            let mut conn = conn.lock().unwrap();
            shoal::outbox::SqliteOutbox::apply_once(&mut conn, order.id(), |_| Ok(()))
                .unwrap()
                .is_some()
        });
        #[cfg(not(feature = "outbox"))]
        let first = guard == Guard::Nothing;
        let node = publisher.clone();
        async move {
            if first {
                let invoice = Message::event("invoice.created", order.payload().clone());
                node.publish(invoice)
                    .await
                    .map_err(|e| HandlerError::retryable(e.to_string()))?;
            }
            Ok(())
        }
    })
    .await?;
    mesh.wait_for("invoice").await?;
    Ok((node, runs))
}

/// The black-box check: one order in, exactly one invoice out, whatever the faults.
async fn invoices_once(mesh: &TestMesh) -> Result<(), Error> {
    mesh.publish(Message::event("order.created", "order-7"))
        .await?;
    mesh.expect(Expect::published("invoice.created").payload("order-7"))
        .await?;
    mesh.wait_idle().await?;
    mesh.expect_none(Expect::published("invoice.created")).await
}

async fn mesh() -> TestMesh {
    let mesh = TestMesh::start().await.unwrap();
    mesh.subscribe("invoice.created").await.unwrap();
    mesh
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handler_that_is_not_idempotent_fails_under_duplicates() {
    let mesh = mesh().await;
    let (_invoice, runs) = invoice(&mesh, Guard::Nothing).await.unwrap();
    mesh.inject(Fault::duplicate(1.0).to("invoice"));

    let err = invoices_once(&mesh).await.unwrap_err();
    let Error::Expectation(failed) = &err else {
        panic!("not an expectation failure: {err}");
    };
    // The second invoice is what the test reports, with everything the probe saw.
    let Failure::Unexpected(extra) = &failed.failure else {
        panic!("{err}");
    };
    assert_eq!(extra.len(), 1, "{err}");
    assert_eq!(&extra[0].message.payload()[..], b"order-7");
    assert_eq!(runs.load(Ordering::Relaxed), 2);
    let text = err.to_string();
    assert!(text.contains("the probe saw 2 message(s)"), "{text}");
    assert!(
        text.contains(&format!("SHOAL_TEST_SEED={}", mesh.seed())),
        "{text}"
    );
}

#[cfg(feature = "outbox")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_same_test_passes_once_the_handler_uses_the_inbox() {
    let mesh = mesh().await;
    let (_invoice, runs) = invoice(&mesh, Guard::Inbox).await.unwrap();
    mesh.inject(Fault::duplicate(1.0).to("invoice"));

    invoices_once(&mesh).await.unwrap();
    // The handler did run twice: the inbox, not luck, kept the second invoice out.
    assert_eq!(runs.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_dedup_window_absorbs_duplicates_on_the_wire() {
    let mesh = mesh().await;
    let (invoice, runs) = invoice(&mesh, Guard::Nothing).await.unwrap();
    let fault = mesh.inject(Fault::duplicate_on_wire(1.0).to("invoice"));

    invoices_once(&mesh).await.unwrap();
    assert_eq!(mesh.hits(fault), 1);
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert_eq!(invoice.stats().duplicates, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_ack_makes_the_sender_retry_on_virtual_time() {
    let real = std::time::Instant::now();
    let mesh = mesh().await;
    let (_invoice, runs) = invoice(&mesh, Guard::Nothing).await.unwrap();
    // The probe's publish of the order: its first ack from the invoice service is lost.
    let lost = mesh.inject(
        Fault::drop_acks(1.0)
            .to("probe")
            .from("invoice")
            .channel("order.created")
            .times(1),
    );

    let receipt = mesh
        .publish(Message::event("order.created", "order-7"))
        .await
        .unwrap();
    assert_eq!(receipt.deliveries.len(), 1);
    assert_eq!(receipt.deliveries[0].attempts, 2, "{receipt:?}");
    mesh.expect(Expect::published("invoice.created").payload("order-7"))
        .await
        .unwrap();
    mesh.wait_idle().await.unwrap();
    mesh.expect_none(Expect::published("invoice.created"))
        .await
        .unwrap();
    assert_eq!(mesh.hits(lost), 1);
    // The retry came after the sender's 5 s ack timeout, on tokio's paused clock; the
    // receiver's dedup window answered it without running the handler again.
    assert!(
        mesh.elapsed() >= Duration::from_secs(5),
        "{:?}",
        mesh.elapsed()
    );
    assert!(
        real.elapsed() < mesh.elapsed(),
        "virtual time did not apply"
    );
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    assert_eq!(mesh.probe().stats().retries, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_partition_holds_deliveries_until_healed() {
    let mesh = mesh().await;
    let (invoice, runs) = invoice(&mesh, Guard::Nothing).await.unwrap();
    let probe = mesh.probe().clone();
    probe
        .wait_for_subscribers("order.created", 1, Duration::from_secs(5))
        .await
        .unwrap();
    let cut = mesh.partition("probe", &invoice);

    let publish = tokio::spawn(async move {
        probe
            .publish(Message::event("order.created", "order-7"))
            .await
    });
    mesh.expect_none(Expect::published("invoice.created").within(Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 0);
    assert!(mesh.hits(cut) > 0);

    assert!(mesh.heal(cut));
    mesh.expect(Expect::published("invoice.created").payload("order-7"))
        .await
        .unwrap();
    let receipt = publish.await.unwrap().unwrap();
    assert!(receipt.deliveries[0].attempts > 1, "{receipt:?}");
    mesh.wait_idle().await.unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
}

/// Sends ten commands one after the other to a stand-in through a lossy link and returns
/// the attempt each arrived with.
async fn attempts_under_loss(seed: u64) -> Vec<u32> {
    let mesh = TestMesh::configure().seed(seed).start().await.unwrap();
    let ledger = mesh.stand_in("ledger").await.unwrap();
    ledger.record("ledger.book");
    mesh.wait_for("ledger").await.unwrap();
    mesh.inject(Fault::drop(0.5).to("ledger"));
    for i in 0..10 {
        mesh.send(
            "ledger",
            Message::command("ledger.book", format!("entry-{i}")),
        )
        .await
        .unwrap();
    }
    mesh.recorded()
        .iter()
        .map(|r| r.message.attempt())
        .collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn faults_replay_from_their_seed() {
    let first = attempts_under_loss(42).await;
    assert_eq!(first.len(), 10);
    assert!(first.iter().any(|&a| a > 1), "no loss at all: {first:?}");
    assert_eq!(attempts_under_loss(42).await, first);
}

/// Sends `count` commands to the `ledger` stand-in at once (all with `key`, or none) under
/// `reorder(1.0)` and returns the payloads in the order the stand-in got them.
async fn arrival_order(count: usize, key: Option<&str>) -> Vec<String> {
    let mesh = TestMesh::configure().seed(7).start().await.unwrap();
    let ledger = mesh.stand_in("ledger").await.unwrap();
    ledger.record("ledger.book");
    mesh.wait_for("ledger").await.unwrap();
    mesh.inject(Fault::reorder(1.0).to("ledger"));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..count {
        let mut msg = Message::command("ledger.book", i.to_string());
        if let Some(key) = key {
            msg = msg.with_key(key);
        }
        let probe = mesh.probe().clone();
        sends.spawn(async move { probe.send("ledger", msg).await });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap().unwrap();
    }
    mesh.recorded()
        .iter()
        .map(|r| String::from_utf8_lossy(r.message.payload()).into_owned())
        .collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reorder_shuffles_unkeyed_messages_and_keys_stay_in_order() {
    let sent: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let mut unkeyed = arrival_order(20, None).await;
    assert_ne!(unkeyed, sent, "nothing overtook anything");
    unkeyed.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(unkeyed, sent, "each arrived once");
    assert_eq!(arrival_order(20, Some("account-1")).await, sent);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_expectation_that_fails_lists_what_was_seen() {
    let mesh = mesh().await;
    let _invoice = invoice(&mesh, Guard::Nothing).await.unwrap();
    mesh.publish(Message::event("order.created", "order-7"))
        .await
        .unwrap();

    let err = mesh
        .expect(Expect::published("invoice.created").payload("order-8"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("expected an event published on `invoice.created` with payload \"order-8\""),
        "{text}"
    );
    assert!(text.contains("but none came"), "{text}");
    assert!(text.contains("payload \"order-7\""), "{text}");
    // The unclaimed invoice is still there for the right expectation.
    mesh.expect(Expect::published("invoice.created").payload("order-7"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn requests_and_stand_ins_are_recorded() {
    let mesh = TestMesh::start().await.unwrap();
    let ledger = mesh.stand_in("ledger").await.unwrap();
    ledger.reply("ledger.balance", |_| "100");
    // The service under test: asks the ledger, answers the probe.
    let billing = mesh.builder("billing").unwrap().start().await.unwrap();
    let asker = billing.clone();
    billing.handle("billing.quote", move |_: Message| {
        let node = asker.clone();
        async move {
            let balance = node
                .request(
                    "ledger",
                    Message::command("ledger.balance", "acct-1"),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| HandlerError::retryable(e.to_string()))?;
            Ok(balance.payload().clone())
        }
    });
    mesh.wait_for("billing").await.unwrap();

    let reply = mesh
        .request("billing", Message::command("billing.quote", "q-1"))
        .await
        .unwrap();
    assert_eq!(&reply.payload()[..], b"100");
    mesh.expect(Expect::sent("ledger", "ledger.balance").payload("acct-1"))
        .await
        .unwrap();
    mesh.expect(Expect::reply().to("billing.quote").payload("100"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn kill_cuts_a_node_off_and_a_restart_takes_over() {
    let mesh = mesh().await;
    let (invoice1, _) = invoice(&mesh, Guard::Nothing).await.unwrap();
    mesh.kill(&invoice1).await.unwrap();
    assert!(mesh.probe().peers().iter().all(|p| p.node != invoice1.id()));

    let (_invoice2, runs) = invoice(&mesh, Guard::Nothing).await.unwrap();
    invoices_once(&mesh).await.unwrap();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
}

/// An instance that shut down but is still held is not waited for: `wait_for` looks at the
/// instance that runs (the stopped one never learns the probe's subscriptions again).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stopped_instance_still_held_does_not_hold_up_wait_for() {
    let mesh = mesh().await;
    let first = mesh.builder("invoice").unwrap().start().await.unwrap();
    mesh.wait_for("invoice").await.unwrap();
    first.shutdown().await;
    let _second = mesh.builder("invoice").unwrap().start().await.unwrap();
    let ready = mesh.wait_for("invoice").await;
    assert!(ready.is_ok(), "{ready:?}");
    drop(first);
}

/// README.md's "Testing your service", verbatim, with the service it starts.
#[cfg(feature = "outbox")]
mod readme {
    use shoal::testing::{Expect, Fault, TestMesh};
    use shoal::{Error, Message};

    /// The service under test, as its own crate has it: one `invoice.created` per
    /// `order.created`, the order's message id recorded in the inbox with the effect.
    mod my_invoice_service {
        use std::path::Path;
        use std::sync::{Arc, Mutex};

        use shoal::outbox::SqliteOutbox;
        use shoal::{Error, HandlerError, Message, Node, NodeBuilder};

        pub(super) async fn start(builder: NodeBuilder, dir: &Path) -> Result<Node, Error> {
            let inbox = SqliteOutbox::open(dir.join("invoice.db"))
                .map_err(|e| Error::Config(e.to_string()))?;
            let conn = Arc::new(Mutex::new(inbox.connect().unwrap()));
            let node = builder.start().await?;
            let publisher = node.clone();
            node.subscribe("order.created", move |order: Message| {
                let mut db = conn.lock().unwrap();
                let first = SqliteOutbox::apply_once(&mut db, order.id(), |_| Ok(()));
                drop(db);
                let node = publisher.clone();
                async move {
                    let first = first.map_err(|e| HandlerError::retryable(e.to_string()))?;
                    if first.is_some() {
                        let invoice = Message::event("invoice.created", order.payload().clone());
                        node.publish(invoice)
                            .await
                            .map_err(|e| HandlerError::retryable(e.to_string()))?;
                    }
                    Ok(())
                }
            })
            .await?;
            Ok(node)
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn one_invoice_per_order_even_when_duplicated() -> Result<(), Error> {
        let mesh = TestMesh::start().await?; // an ephemeral CA and a probe node, on 127.0.0.1
        mesh.subscribe("invoice.created").await?; // the probe records what the service publishes
        let _invoice = my_invoice_service::start(mesh.builder("invoice")?, mesh.dir()).await?;
        mesh.wait_for("invoice").await?;
        mesh.inject(Fault::duplicate(1.0).to("invoice")); // every order arrives twice
        mesh.publish(Message::event("order.created", "order-42"))
            .await?;
        mesh.expect(Expect::published("invoice.created").payload("order-42"))
            .await?;
        mesh.wait_idle().await?; // no handler running, nothing in flight, outbox empty
        mesh.expect_none(Expect::published("invoice.created"))
            .await?; // and no second one
        Ok(())
    }
}
