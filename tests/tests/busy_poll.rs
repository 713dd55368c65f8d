//! Busy polling (`NodeBuilder::busy_poll`): a node polls for input after each activity, stops
//! by itself once a window passes without any, and stops with the node. By default
//! (`NodeBuilder::busy_poll_under_load`) a node polls only once its messages travel in
//! batches; a zero window turns polling off.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shoal::{HandlerError, Message, Node};
use shoal_tests::{Mesh, WAIT, wait_instances};
use tokio::time::timeout;

/// A `billing` node (built by `builder`) answering `echo` requests, and a `shop` node with the
/// default busy polling (under load only) that dials it.
async fn pair(mesh: &Mesh, billing: shoal::NodeBuilder) -> (Node, Node) {
    let billing = mesh.start_with(billing, &[]).await;
    billing.handle("echo", |msg: Message| async move {
        Ok::<_, HandlerError>(msg.payload().clone())
    });
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    (billing, shop)
}

async fn round_trips(shop: &Node, count: usize) {
    for i in 0..count {
        let reply = timeout(
            WAIT,
            shop.request("billing", Message::command("echo", format!("{i}")), WAIT),
        )
        .await
        .expect("request hung")
        .unwrap();
        assert_eq!(reply.payload().as_ref(), format!("{i}").as_bytes());
    }
}

/// Waits (at most [`WAIT`]) until `node` has spent some time busy polling, and returns it.
/// Polling time is counted when a period of polling ends, so this returns only once one has
/// ended.
async fn polled(node: &Node) -> Duration {
    let waited = Instant::now();
    loop {
        let spent = node.stats().busy_poll_time;
        if !spent.is_zero() {
            return spent;
        }
        assert!(
            waited.elapsed() < WAIT,
            "no period of busy polling ended within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Messages flow as usual, the polling node's periods of polling end by themselves once its
/// window passes without activity, and a node with the default, sending one message at a
/// time, never polls.
#[tokio::test]
async fn a_polling_node_polls_after_activity_and_stops_by_itself() {
    let mesh = Mesh::new();
    let started = Instant::now();
    let (billing, shop) = pair(
        &mesh,
        mesh.builder("billing").busy_poll(Duration::from_millis(20)),
    )
    .await;
    round_trips(&shop, 20).await;
    let spent = polled(&billing).await;
    assert!(
        spent <= started.elapsed(),
        "polled {spent:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(shop.stats().busy_poll_time, Duration::ZERO);
    billing.shutdown().await;
    shop.shutdown().await;
}

/// A window that never passes (`Duration::MAX`) polls until the node stops: its shutdown ends
/// the polling (and counts it), on tokio's multi-thread runtime too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stops_with_the_node() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh, mesh.builder("billing").busy_poll(Duration::MAX)).await;
    round_trips(&shop, 5).await;
    assert_eq!(
        billing.stats().busy_poll_time,
        Duration::ZERO,
        "a window that never passes ended"
    );
    timeout(WAIT, billing.shutdown())
        .await
        .expect("shutdown hung");
    assert!(!billing.stats().busy_poll_time.is_zero());
    shop.shutdown().await;
}

/// By default a node polls once its messages travel in batches: a batch of events (one frame
/// of many messages to each subscriber) makes its publisher (default) and a subscriber
/// (`busy_poll_under_load` with a window of its own) poll, and a subscriber built with a zero
/// window never does, up to and including its shutdown (which ends and counts any polling).
#[tokio::test]
async fn a_batch_makes_nodes_poll_by_default_and_a_zero_window_never_polls() {
    const TOPIC: &str = "orders.placed";
    const EVENTS: usize = 50;
    let mesh = Mesh::new();
    let quiet = mesh
        .start_with(mesh.builder("audit").busy_poll(Duration::ZERO), &[])
        .await;
    let billing = mesh
        .start_with(
            mesh.builder("billing")
                .busy_poll_under_load(Duration::from_micros(50)),
            &[],
        )
        .await;
    let (handled, mut handled_rx) = tokio::sync::mpsc::unbounded_channel();
    for node in [&quiet, &billing] {
        let handled = handled.clone();
        node.subscribe(TOPIC, move |_: Message| {
            let _ = handled.send(());
            async { Ok::<_, HandlerError>(()) }
        })
        .await
        .unwrap();
    }
    let shop = mesh
        .start("shop", &[quiet.local_addr(), billing.local_addr()])
        .await;
    shop.wait_for_subscribers(TOPIC, 2, WAIT).await.unwrap();

    let events = (0..EVENTS)
        .map(|i| Message::event(TOPIC, format!("{i}")))
        .collect();
    timeout(WAIT, shop.publish_batch(events))
        .await
        .expect("publish_batch hung")
        .unwrap();
    for _ in 0..2 * EVENTS {
        timeout(WAIT, handled_rx.recv())
            .await
            .expect("an event was not handled")
            .unwrap();
    }
    polled(&shop).await;
    polled(&billing).await;
    for node in [&shop, &billing, &quiet] {
        timeout(WAIT, node.shutdown()).await.expect("shutdown hung");
    }
    assert_eq!(quiet.stats().busy_poll_time, Duration::ZERO);
}
