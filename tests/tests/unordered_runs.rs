//! Events that travelled together (an unordered run: background events published in a loop)
//! go to their handler together (`node/src/engine/receive/unordered.rs`), over sockets: a
//! handler that has to wait holds up none of the others, and a failed event stops none of
//! them.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use shoal::{HandlerError, Message, MessageId, Node};
use shoal_tests::{Mesh, WAIT, handled_once};
use tokio::sync::{Barrier, mpsc};

const TOPIC: &str = "order.created";

/// Publishes events `0..n` in the background from one loop that does not yield: all but the
/// first are staged, and go as one run. Returns their ids.
fn publish_run(orders: &Node, n: usize) -> Vec<MessageId> {
    (0..n)
        .map(|i| {
            let event = Message::event(TOPIC, i.to_string());
            orders.publish_background(event).unwrap()
        })
        .collect()
}

/// An `audit` subscriber whose handler is `handle`, given each event and a sender for the
/// ids it reports, and an `orders` publisher that knows the subscription; returns them and
/// the reports.
async fn audit_and_orders<F, Fut>(
    mesh: &Mesh,
    handle: F,
) -> (Node, Node, mpsc::UnboundedReceiver<MessageId>)
where
    F: Fn(Message, mpsc::UnboundedSender<MessageId>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let audit = mesh.start("audit", &[]).await;
    let (seen_tx, seen) = mpsc::unbounded_channel();
    audit
        .subscribe(TOPIC, move |msg: Message| handle(msg, seen_tx.clone()))
        .await
        .unwrap();
    let orders = mesh.start("orders", &[audit.local_addr()]).await;
    orders.wait_for_subscribers(TOPIC, 1, WAIT).await.unwrap();
    (audit, orders, seen)
}

/// Eight handlers, each waiting until all eight have started: they finish only if they run
/// side by side.
async fn handlers_that_wait_run_side_by_side() {
    const EVENTS: usize = 8;
    let mesh = Mesh::new();
    let barrier = Arc::new(Barrier::new(EVENTS));
    let (audit, orders, mut seen) = audit_and_orders(&mesh, move |msg, seen_tx| {
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            seen_tx.send(msg.id()).unwrap();
            Ok(())
        }
    })
    .await;
    let ids: HashSet<_> = publish_run(&orders, EVENTS).into_iter().collect();
    assert_eq!(handled_once(&mut seen, EVENTS).await, ids);
    orders.shutdown().await;
    assert_eq!(orders.stats().retries, 0);
    audit.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn handlers_that_wait_on_events_that_travelled_together_run_side_by_side() {
    handlers_that_wait_run_side_by_side().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_wait_on_events_that_travelled_together_run_side_by_side_on_two_workers() {
    handlers_that_wait_run_side_by_side().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_event_among_events_that_travelled_together_stops_none_of_the_others() {
    const EVENTS: usize = 20;
    let mesh = Mesh::new();
    let (audit, orders, mut seen) = audit_and_orders(&mesh, |msg, seen_tx| async move {
        seen_tx.send(msg.id()).unwrap();
        if msg.payload().as_ref() == b"7" {
            return Err(HandlerError::permanent("not this one"));
        }
        Ok(())
    })
    .await;
    let ids: HashSet<_> = publish_run(&orders, EVENTS).into_iter().collect();
    assert_eq!(
        handled_once(&mut seen, EVENTS).await,
        ids,
        "each handled once"
    );
    // A graceful shutdown waits for every background copy's end: acknowledged, or
    // dead-lettered.
    orders.shutdown().await;
    let stats = orders.stats();
    // In an ordered run the events after the failed one are refused, and sent again.
    assert_eq!(stats.retries, 0, "{stats:?}");
    assert_eq!(orders.dead_letters().len(), 1, "the failed one");
    assert_eq!(audit.stats().handled, EVENTS as u64 - 1);
    audit.shutdown().await;
}

/// Handlers that wait a moment on every third event, on two workers: a waiting handler's
/// task may finish on the other worker at once, and every event is still handled once and
/// acknowledged (its task starts only after the engine heard of the events before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_wait_a_moment_on_two_workers_handle_each_event_once() {
    const EVENTS: usize = 3000;
    let mesh = Mesh::new();
    let (audit, orders, mut seen) = audit_and_orders(&mesh, |msg, seen_tx| async move {
        if msg.payload().as_ref().last().is_some_and(|b| b % 3 == 0) {
            tokio::task::yield_now().await;
        }
        seen_tx.send(msg.id()).unwrap();
        Ok(())
    })
    .await;
    // In chunks of 100, yielding between them, as a producing service would.
    let mut ids = HashSet::new();
    for _ in 0..EVENTS / 100 {
        ids.extend(publish_run(&orders, 100));
        tokio::task::yield_now().await;
    }
    assert_eq!(handled_once(&mut seen, EVENTS).await, ids);
    orders.shutdown().await;
    assert!(orders.dead_letters().is_empty());
    assert_eq!(audit.stats().handled, EVENTS as u64);
    audit.shutdown().await;
}
