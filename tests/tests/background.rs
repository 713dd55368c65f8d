//! Background publishing over sockets (`Node::publish_background`, and `publish_with` with
//! `PublishOptions::background`): events published in a loop while others are on their way
//! are staged by the engine and go together (`node/src/engine/send/staged.rs`), each still
//! handled once; staged events count towards the backlog's limit; a node that shuts down
//! delivers what it staged.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use shoal::{BacklogLimit, Error, Message, MessageId, Node, PublishOptions};
use shoal_tests::{Mesh, WAIT, handled_once};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;

const TOPIC: &str = "order.created";

/// An `audit` subscriber that reports each event it handled, once `gate` lets it (a permit
/// per event, given back), and an `orders` publisher built by `orders` that knows the
/// subscription.
async fn audit_and_orders(
    mesh: &Mesh,
    gate: Arc<Semaphore>,
    orders: shoal::NodeBuilder,
) -> (Node, Node, mpsc::UnboundedReceiver<MessageId>) {
    let audit = mesh.start("audit", &[]).await;
    let (seen_tx, seen) = mpsc::unbounded_channel();
    audit
        .subscribe(TOPIC, move |msg: Message| {
            let (seen_tx, gate) = (seen_tx.clone(), Arc::clone(&gate));
            async move {
                let _permit = gate.acquire().await.unwrap();
                seen_tx.send(msg.id()).unwrap();
                Ok(())
            }
        })
        .await
        .unwrap();
    let orders = mesh.start_with(orders, &[audit.local_addr()]).await;
    orders.wait_for_subscribers(TOPIC, 1, WAIT).await.unwrap();
    (audit, orders, seen)
}

/// Publishes `event` in the background by one of the two calls (`Node::publish_background`
/// when `sync`), which differ only in what they return; returns its id.
async fn publish_in_background(orders: &Node, event: Message, sync: bool) -> MessageId {
    let id = event.id();
    if sync {
        assert_eq!(orders.publish_background(event).unwrap(), id);
        return id;
    }
    let receipt = orders
        .publish_with(event, PublishOptions::background())
        .await
        .unwrap();
    assert_eq!(receipt.id, id);
    assert!(receipt.deliveries.is_empty(), "nobody waits for the copies");
    id
}

/// Publishes `n` background events from one loop, by either call in turn, yielding every 64
/// (as a service streaming events would, to let the node work); returns their ids.
async fn publish_in_a_loop(orders: &Node, n: usize) -> HashSet<MessageId> {
    let mut ids = HashSet::new();
    for i in 0..n {
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
        let event = Message::event(TOPIC, i.to_string());
        ids.insert(publish_in_background(orders, event, i % 2 == 0).await);
    }
    ids
}

async fn events_in_a_loop_are_staged_and_each_handled_once() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (_audit, orders, mut seen) = audit_and_orders(&mesh, gate, mesh.builder("orders")).await;
    let published = publish_in_a_loop(&orders, 3000).await;
    assert_eq!(handled_once(&mut seen, 3000).await, published);
    let stats = orders.stats();
    assert_eq!(stats.published, 3000);
    // The first of each burst goes alone; the others were staged, and went together.
    assert!(stats.gathered >= 2000, "{stats:?}");
    assert_eq!(stats.background_refused, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn background_events_in_a_loop_are_staged_and_each_handled_once() {
    events_in_a_loop_are_staged_and_each_handled_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_events_in_a_loop_are_staged_and_each_handled_once_on_two_workers() {
    events_in_a_loop_are_staged_and_each_handled_once().await;
}

#[tokio::test(flavor = "current_thread")]
async fn staged_events_count_towards_the_backlog_and_the_one_past_it_is_refused() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(0));
    let builder = mesh.builder("orders").max_background_publishes(50);
    let (_audit, orders, mut seen) = audit_and_orders(&mesh, Arc::clone(&gate), builder).await;
    // The subscriber holds every event: the first is on its way, the 49 others are staged.
    let published = publish_in_a_loop(&orders, 50).await;
    let event = Message::event(TOPIC, "one too many");
    match orders
        .publish_with(event, PublishOptions::background())
        .await
    {
        Err(Error::Backlog {
            limit: BacklogLimit::Events(50),
        }) => {}
        other => panic!("the 51st is refused: {other:?}"),
    }
    match orders.publish_background(Message::event(TOPIC, "one too many")) {
        Err(Error::Backlog {
            limit: BacklogLimit::Events(50),
        }) => {}
        other => panic!("the 51st is refused by publish_background: {other:?}"),
    }
    assert_eq!(orders.stats().background_refused, 2);
    gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(handled_once(&mut seen, 50).await, published);
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_that_shuts_down_delivers_what_it_staged() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (_audit, orders, mut seen) = audit_and_orders(&mesh, gate, mesh.builder("orders")).await;
    // No yield: every event but the first is still staged when the shutdown begins.
    let mut published = HashSet::new();
    for i in 0..500 {
        let event = Message::event(TOPIC, i.to_string());
        published.insert(publish_in_background(&orders, event, i % 2 == 0).await);
    }
    assert!(orders.stats().published < 500, "staged, not published yet");
    orders.shutdown().await;
    assert_eq!(handled_once(&mut seen, 500).await, published);
    assert!(orders.dead_letters().is_empty());
}

/// Keyed events keep their key's order across both kinds of call: background ones go in
/// their key's turn after the awaited ones called before them, gathered or not
/// (`Driver::call_in_order`).
#[tokio::test(flavor = "current_thread")]
async fn keyed_background_events_keep_their_order_among_awaited_ones() {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (_audit, orders, mut seen) = audit_and_orders(&mesh, gate, mesh.builder("orders")).await;
    let (mut published, mut waiting) = (Vec::new(), Vec::new());
    // Every call starts before any is awaited: a publish starts at the call.
    for i in 0..40 {
        let event = Message::event(TOPIC, i.to_string()).with_key("customer-7");
        published.push(event.id());
        if i % 4 == 3 {
            orders.publish_background(event).unwrap();
        } else {
            waiting.push(orders.publish(event));
        }
    }
    for receipt in waiting {
        receipt.await.unwrap();
    }
    let mut order = Vec::new();
    timeout(WAIT, async {
        while order.len() < published.len() {
            order.push(seen.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {} handled", order.len(), published.len()));
    assert_eq!(order, published, "handled in the order published");
}

/// A producer that yields after every call (as one awaiting anything ready at once between
/// its events does) adds one event per turn of the runtime. Its events still leave many per
/// write: the node sends what is staged once two turns in a row add none
/// (`runtime/gather.rs`), not at every turn's end, which made a write (a system call and a
/// packet) per event.
/// Publishes 3,000 events, yielding after each; all are handled once. Returns the
/// publisher's writes.
async fn yielding_after_each() -> u64 {
    let mesh = Mesh::new();
    let gate = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (_audit, orders, mut seen) = audit_and_orders(&mesh, gate, mesh.builder("orders")).await;
    let before = orders.stats().writes;
    let mut published = HashSet::new();
    for i in 0..3000 {
        let event = Message::event(TOPIC, i.to_string());
        published.insert(orders.publish_background(event).unwrap());
        tokio::task::yield_now().await;
    }
    assert_eq!(handled_once(&mut seen, 3000).await, published);
    orders.stats().writes - before
}

#[tokio::test(flavor = "current_thread")]
async fn events_of_a_producer_yielding_after_each_leave_many_per_write() {
    let writes = yielding_after_each().await;
    // One write per event before; now tens of events per write (at most 256, and what a
    // millisecond adds: 75-82 writes in a debug build, 12 in a release one). Loose, for a
    // loaded machine: a write per three events at most.
    assert!(writes < 1000, "{writes} writes for 3,000 events");
}

/// On two workers the producer and the node's tasks take turns unevenly: every event is
/// still handled once, and they still share writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_producer_yielding_after_each_are_handled_on_two_workers() {
    let writes = yielding_after_each().await;
    assert!(writes < 3000, "{writes} writes for 3,000 events");
}
