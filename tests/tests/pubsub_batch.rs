//! Batches of events (`publish_batch`): handled in order, once per group, retried whole with
//! the events already handled skipped, refused when malformed, dead-lettered event by event;
//! a node aborted mid-batch handles nothing after the abort.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use shoal::{Error, HandlerError, Message, Node, RetryPolicy};
use shoal_tests::{Mesh, WAIT, audience_sizes, until};
use tokio::sync::Notify;

const TOPIC: &str = "stock.moved";

fn batch(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::event(TOPIC, i.to_string()).with_key("warehouse-1"))
        .collect()
}

fn seq(msg: &Message) -> usize {
    std::str::from_utf8(msg.payload()).unwrap().parse().unwrap()
}

/// Records `(label, seq)` for every event handled.
type Seen = Arc<Mutex<Vec<(String, usize)>>>;

async fn subscriber(mesh: &Mesh, service: &str, label: &str, seen: &Seen) -> Node {
    let node = mesh.start(service, &[]).await;
    let (seen, label) = (Arc::clone(seen), label.to_owned());
    node.subscribe(TOPIC, move |msg: Message| {
        seen.lock().unwrap().push((label.clone(), seq(&msg)));
        async { Ok::<_, HandlerError>(()) }
    })
    .await
    .unwrap();
    node
}

/// A `ledger` node whose handler records each event it handles in `seen` with its attempt,
/// yields once (has to wait) before finishing the events in `waits`, and fails event
/// `fails` the first time it gets it.
async fn ledger_failing_once(mesh: &Mesh, seen: &Seen, fails: usize, waits: &[usize]) -> Node {
    let node = mesh.start("ledger", &[]).await;
    let failed_once = Arc::new(AtomicBool::new(false));
    let (seen, waits) = (Arc::clone(seen), waits.to_vec());
    node.subscribe(TOPIC, move |msg: Message| {
        let (n, attempt) = (seq(&msg), msg.attempt());
        let (seen, failed, wait) = (
            Arc::clone(&seen),
            Arc::clone(&failed_once),
            waits.contains(&n),
        );
        async move {
            if wait {
                tokio::task::yield_now().await;
            }
            if n == fails && !failed.swap(true, Ordering::SeqCst) {
                return Err(HandlerError::retryable("database busy"));
            }
            seen.lock().unwrap().push((format!("attempt {attempt}"), n));
            Ok(())
        }
    })
    .await
    .unwrap();
    node
}

/// A `warehouse` node that publishes to `subscriber`, once it knows the subscription.
async fn warehouse(mesh: &Mesh, subscriber: &Node) -> Node {
    let publisher = mesh.start("warehouse", &[subscriber.local_addr()]).await;
    publisher
        .wait_for_subscribers(TOPIC, 1, WAIT)
        .await
        .unwrap();
    publisher
}

/// Asserts that `seen` holds the events of `batch(10)` once each, in order, the first
/// `retried` of them on their first attempt and the others on the second.
fn once_in_order_retried_from(seen: &Seen, retried: usize) {
    let seen = seen.lock().unwrap().clone();
    let order: Vec<usize> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        order,
        (0..10).collect::<Vec<_>>(),
        "each event once, in order: {seen:?}"
    );
    assert!(
        seen[..retried].iter().all(|(a, _)| a == "attempt 1"),
        "{seen:?}"
    );
    assert!(
        seen[retried..].iter().all(|(a, _)| a == "attempt 2"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_reaches_each_group_once_in_order() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let nodes = [
        subscriber(&mesh, "ledger", "ledger-a", &seen).await,
        subscriber(&mesh, "ledger", "ledger-b", &seen).await,
        subscriber(&mesh, "audit", "audit", &seen).await,
    ];
    let addrs: Vec<_> = nodes.iter().map(Node::local_addr).collect();
    let publisher = mesh.start("warehouse", &addrs).await;
    until(&publisher, "every subscription known", |n| {
        audience_sizes(n, TOPIC) == [1, 2]
    })
    .await;

    for round in 0..3 {
        let receipt = publisher.publish_batch(batch(100)).await.unwrap();
        assert_eq!(receipt.deliveries.len(), 2, "round {round}: {receipt:?}");
    }
    let seen = seen.lock().unwrap().clone();
    let audit: Vec<usize> = seen
        .iter()
        .filter(|(l, _)| l == "audit")
        .map(|(_, s)| *s)
        .collect();
    let ledger: Vec<usize> = seen
        .iter()
        .filter(|(l, _)| l != "audit")
        .map(|(_, s)| *s)
        .collect();
    let expected: Vec<usize> = (0..3).flat_map(|_| 0..100).collect();
    assert_eq!(audit, expected);
    assert_eq!(ledger, expected, "one ledger instance per event, in order");
    // One key: every batch went to the same ledger instance.
    let labels: std::collections::HashSet<&str> = seen
        .iter()
        .filter(|(l, _)| l != "audit")
        .map(|(l, _)| l.as_str())
        .collect();
    assert_eq!(labels.len(), 1, "{labels:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_retried_after_a_failure_resends_only_what_was_not_handled() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let node = ledger_failing_once(&mesh, &seen, 5, &[]).await;
    let publisher = warehouse(&mesh, &node).await;

    let receipt = publisher.publish_batch(batch(10)).await.unwrap();
    assert_eq!(receipt.deliveries[0].attempts, 2);
    once_in_order_retried_from(&seen, 5);
    // The five acknowledged events are not sent again: the retry carries the other five.
    assert_eq!(
        node.stats().duplicates,
        0,
        "the retry resent only what was not acknowledged"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_batches_are_refused_and_failed_ones_dead_letter_every_event() {
    let mesh = Mesh::new();
    let node = mesh.start("ledger", &[]).await;
    node.subscribe(TOPIC, |_msg: Message| async {
        Err::<(), _>(HandlerError::permanent("schema mismatch"))
    })
    .await
    .unwrap();
    let policy = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let publisher = mesh
        .start_with(
            mesh.builder("warehouse").retry_policy(policy),
            &[node.local_addr()],
        )
        .await;
    publisher
        .wait_for_subscribers(TOPIC, 1, WAIT)
        .await
        .unwrap();

    let empty = publisher.publish_batch(Vec::new()).await;
    assert!(matches!(empty, Err(Error::InvalidBatch(_))), "{empty:?}");
    let mut mixed = batch(2);
    mixed.push(Message::event("stock.counted", "x"));
    let mixed = publisher.publish_batch(mixed).await;
    assert!(matches!(mixed, Err(Error::InvalidBatch(_))), "{mixed:?}");

    let events = batch(4);
    let ids: Vec<_> = events.iter().map(Message::id).collect();
    let err = publisher.publish_batch(events).await.unwrap_err();
    assert!(matches!(err, Error::DeadLettered(_)), "{err}");
    let letters = publisher.dead_letters();
    let lettered: Vec<_> = letters.iter().map(|l| l.message.id()).collect();
    assert_eq!(lettered, ids, "one dead letter per event of the batch");
    assert!(
        letters
            .iter()
            .all(|l| l.last_failure.contains("schema mismatch"))
    );
}

/// A batch holding an event that a single publish is handling right now is not acked until
/// that handler is done: the event is never reported delivered while it may still fail.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_waits_for_its_events_that_are_being_handled_elsewhere() {
    let mesh = Mesh::new();
    let node = mesh.start("ledger", &[]).await;
    let release = Arc::new(Notify::new());
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (release2, runs2) = (Arc::clone(&release), Arc::clone(&runs));
    node.subscribe(TOPIC, move |_msg: Message| {
        runs2.fetch_add(1, Ordering::SeqCst);
        let _ = started_tx.send(());
        let release = Arc::clone(&release2);
        async move {
            release.notified().await;
            Ok::<_, HandlerError>(())
        }
    })
    .await
    .unwrap();
    let policy = RetryPolicy {
        max_attempts: 10_000,
        initial_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    let publisher = mesh
        .start_with(
            mesh.builder("warehouse").retry_policy(policy),
            &[node.local_addr()],
        )
        .await;
    publisher
        .wait_for_subscribers(TOPIC, 1, WAIT)
        .await
        .unwrap();

    let event = Message::event(TOPIC, "1");
    let single = tokio::spawn(publisher.publish(event.clone()));
    tokio::time::timeout(WAIT, started.recv()).await.unwrap();
    let batched = tokio::spawn(publisher.publish_batch(vec![event]));
    // While the handler runs, the batch is refused (retryably) again and again, never acked.
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        while !batched.is_finished() {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        early.is_err(),
        "the batch was acked while its event was still being handled"
    );
    release.notify_one();
    tokio::time::timeout(WAIT, single)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, batched)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the event was handled once");
}

/// The receiver hands a batch's events to its handler together, in one trip: an event whose
/// handler has to wait holds up the rest, which then go on in order, and a failure stops
/// them (the rest is retried, and only the rest).
#[tokio::test(flavor = "current_thread")]
async fn a_batch_goes_on_after_a_handler_that_waits_and_stops_at_a_failure() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    // Events 3 and 7 wait before they finish; 7 fails the first time.
    let node = ledger_failing_once(&mesh, &seen, 7, &[3, 7]).await;
    let publisher = warehouse(&mesh, &node).await;

    let receipt = tokio::time::timeout(WAIT, publisher.publish_batch(batch(10)))
        .await
        .expect("the batch was handled")
        .unwrap();
    assert_eq!(receipt.deliveries[0].attempts, 2);
    once_in_order_retried_from(&seen, 7);
    assert_eq!(node.stats().duplicates, 0, "only the rest was sent again");
}

/// A `ledger` node whose handler records each event it handles in `seen`; the handler of
/// event `on` aborts the node, after yielding once (has to wait) when `wait`, and notifies
/// the returned `Notify` that it did.
async fn ledger_aborting_on(
    mesh: &Mesh,
    seen: &Seen,
    on: usize,
    wait: bool,
) -> (Node, Arc<Notify>) {
    let node = mesh.start("ledger", &[]).await;
    let (this, crashed) = (Arc::new(OnceLock::<Node>::new()), Arc::new(Notify::new()));
    let (handled, me, done) = (Arc::clone(seen), Arc::clone(&this), Arc::clone(&crashed));
    node.subscribe(TOPIC, move |msg: Message| {
        let n = seq(&msg);
        handled.lock().unwrap().push(("ledger".into(), n));
        let (me, done) = (Arc::clone(&me), Arc::clone(&done));
        async move {
            if n == on {
                if wait {
                    tokio::task::yield_now().await;
                }
                me.get().unwrap().abort();
                done.notify_one();
            }
            Ok::<_, HandlerError>(())
        }
    })
    .await
    .unwrap();
    this.set(node.clone()).unwrap();
    (node, crashed)
}

/// The events handled, in order.
fn handled(seen: &Seen) -> Vec<usize> {
    seen.lock().unwrap().iter().map(|(_, s)| *s).collect()
}

/// A node aborted while a batch is being handled (here by the handler of event 3 itself, as
/// if the process crashed as it ended) starts no handler on the events after it: like a
/// crashed process, it runs nothing once the abort has returned. With `wait`, event 3's
/// handler has to wait first, so the rest goes on in its task; otherwise in the driver's.
async fn aborted_on_event_3(wait: bool) {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let (node, crashed) = ledger_aborting_on(&mesh, &seen, 3, wait).await;
    let publisher = warehouse(&mesh, &node).await;

    let batch = publisher.publish_batch(batch(10));
    tokio::select! {
        _ = batch => panic!("the batch was acked by a node that crashed on it"),
        () = crashed.notified() => {}
        () = tokio::time::sleep(WAIT) => panic!("event 3 was not handled within {WAIT:?}"),
    }
    // On this one-thread runtime the handlers' loop finished its turn before this runs: had
    // it gone on after the abort, event 4 would be in `seen` now.
    assert_eq!(
        handled(&seen),
        [0, 1, 2, 3],
        "nothing handled after the abort"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_aborted_node_starts_no_handler_on_the_rest_of_a_batch() {
    aborted_on_event_3(false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_aborted_node_starts_no_handler_after_one_that_waited() {
    aborted_on_event_3(true).await;
}

/// Two events that arrive together, each its own run: the handler of the first aborts its
/// node, and the second's handler does not start.
#[tokio::test(flavor = "current_thread")]
async fn an_aborted_node_starts_no_handler_on_what_arrived_with_the_event() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let (node, crashed) = ledger_aborting_on(&mesh, &seen, 0, false).await;
    let publisher = warehouse(&mesh, &node).await;
    // Both leave in one write, before this task waits.
    let _calls = (
        publisher.publish(Message::event(TOPIC, "0")),
        publisher.publish(Message::event(TOPIC, "1")),
    );
    tokio::time::timeout(WAIT, crashed.notified())
        .await
        .expect("event 0 handled");
    assert_eq!(handled(&seen), [0], "nothing handled after the abort");
}
