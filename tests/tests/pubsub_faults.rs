//! Publish/subscribe under faults, on real sockets: an instance killed during a 10,000-event
//! fan-out, and per-key order kept while instances die and join.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::{HandlerError, Message, MessageId, Node};
use shoal_tests::{Mesh, WAIT, audience_sizes, until, wait_instances};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::timeout;

const TOPIC: &str = "order.created";

/// One handler run: service, instance, message id, attempt.
type Run = (usize, usize, MessageId, u32);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_each_handle_every_event_while_an_instance_is_killed() {
    const EVENTS: usize = 10_000;
    const SERVICES: [&str; 3] = ["invoice", "shipping", "audit"];
    const KILL_AFTER: usize = 2_000;
    let mesh = Mesh::new();
    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(Notify::new());
    let mut nodes: Vec<Vec<Node>> = Vec::new();
    for (s, service) in SERVICES.iter().enumerate() {
        let mut instances = Vec::new();
        for i in 0..2 {
            let node = mesh.start(service, &[]).await;
            let (runs, handled, reached) = (
                Arc::clone(&runs),
                Arc::clone(&handled),
                Arc::clone(&reached),
            );
            node.subscribe(TOPIC, move |msg: Message| {
                runs.lock().unwrap().push((s, i, msg.id(), msg.attempt()));
                if handled.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                    reached.notify_one();
                }
                async { Ok::<_, HandlerError>(()) }
            })
            .await
            .unwrap();
            instances.push(node);
        }
        nodes.push(instances);
    }
    let addrs: Vec<_> = nodes.iter().flatten().map(Node::local_addr).collect();
    let publisher = mesh.start("orders", &addrs).await;
    publisher
        .wait_for_subscribers(TOPIC, 3, WAIT)
        .await
        .unwrap();
    for service in SERVICES {
        wait_instances(&publisher, service, 2).await;
    }
    until(&publisher, "every instance's subscription known", |n| {
        audience_sizes(n, TOPIC) == [2, 2, 2]
    })
    .await;

    // Every publish call is made up front; they run concurrently.
    let mut publishes = JoinSet::new();
    let mut published = Vec::new();
    for i in 0..EVENTS {
        let event = Message::event(TOPIC, (i as u32).to_be_bytes().to_vec());
        published.push(event.id());
        publishes.spawn(publisher.publish(event));
    }
    timeout(WAIT, reached.notified())
        .await
        .expect("events flowing");
    let victim = &nodes[0][0];
    victim.abort();

    let mut failures = Vec::new();
    timeout(Duration::from_secs(60), async {
        while let Some(joined) = publishes.join_next().await {
            match joined.unwrap() {
                Ok(receipt) => assert_eq!(receipt.deliveries.len(), 3, "{receipt:?}"),
                Err(e) => failures.push(e.to_string()),
            }
        }
    })
    .await
    .expect("every publish resolved within 60 s");
    assert!(
        failures.is_empty(),
        "{} publishes failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    let runs = runs.lock().unwrap().clone();
    let published: HashSet<MessageId> = published.into_iter().collect();
    let mut duplicates = 0;
    for (s, service) in SERVICES.iter().enumerate() {
        let mut by_id: HashMap<MessageId, Vec<(usize, u32)>> = HashMap::new();
        for &(rs, instance, id, attempt) in &runs {
            if rs == s {
                by_id.entry(id).or_default().push((instance, attempt));
            }
        }
        let ids: HashSet<MessageId> = by_id.keys().copied().collect();
        assert_eq!(
            ids, published,
            "{service}: handled ids differ from the published ones"
        );
        for (id, handled) in &by_id {
            if handled.len() == 1 {
                continue;
            }
            // A second run is only ever the redelivery of a copy the killed instance handled
            // but could not ack before it died.
            assert_eq!(
                s, 0,
                "{service} (untouched) handled {id} twice: {handled:?}"
            );
            assert_eq!(handled.len(), 2, "{service}: {id}: {handled:?}");
            assert_eq!(
                handled[0].0, 0,
                "{id}: a duplicate starts on the killed instance"
            );
            assert!(
                handled[1].0 == 1 && handled[1].1 > handled[0].1,
                "{id}: {handled:?}"
            );
            duplicates += 1;
        }
    }
    eprintln!(
        "{EVENTS} events x {} services: {} handler runs, {duplicates} redelivered after the kill",
        SERVICES.len(),
        runs.len()
    );
}

/// A subscriber whose handler never finishes holds back only its own copies: the other groups
/// get every event at once, its group's copies are retried on its other instance, and a group
/// with no other instance has its copies dead-lettered, as the retry policy says.
#[tokio::test(flavor = "current_thread")]
async fn a_subscriber_that_never_acks_stalls_nobody_else() {
    const EVENTS: usize = 50;
    let mesh = Mesh::new();
    let never = |_msg: Message| async {
        std::future::pending::<()>().await;
        Ok::<_, HandlerError>(())
    };
    let (fast_tx, mut fast_rx) = tokio::sync::mpsc::unbounded_channel();
    let fast = mesh.start("fast", &[]).await;
    fast.subscribe(TOPIC, move |msg: Message| {
        let _ = fast_tx.send(msg.id());
        async { Ok::<_, HandlerError>(()) }
    })
    .await
    .unwrap();
    let stuck = mesh.start("billing", &[]).await;
    stuck.subscribe(TOPIC, never).await.unwrap();
    let healthy = mesh.start("billing", &[]).await;
    healthy
        .subscribe(TOPIC, |_msg: Message| async { Ok::<_, HandlerError>(()) })
        .await
        .unwrap();
    let blackhole = mesh.start("archive", &[]).await;
    blackhole.subscribe(TOPIC, never).await.unwrap();

    let policy = shoal::RetryPolicy {
        max_attempts: 3,
        ack_timeout: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(10),
        ..shoal::RetryPolicy::default()
    };
    let addrs: Vec<_> = [&fast, &stuck, &healthy, &blackhole]
        .map(|n| n.local_addr())
        .into();
    let publisher = mesh
        .start_with(mesh.builder("orders").retry_policy(policy), &addrs)
        .await;
    until(&publisher, "every subscription known", |n| {
        audience_sizes(n, TOPIC) == [1, 2, 1]
    })
    .await;

    let mut publishes = JoinSet::new();
    for i in 0..EVENTS {
        publishes.spawn(publisher.publish(Message::event(TOPIC, i.to_string())));
    }
    // The fast group has every event before the first stuck copy times out (2 s) and is
    // retried: nothing of it waited for the stuck subscribers.
    timeout(WAIT, async {
        for _ in 0..EVENTS {
            fast_rx.recv().await.unwrap();
        }
    })
    .await
    .expect("the fast group got every event");
    assert_eq!(
        publisher.stats().retries,
        0,
        "the fast group was held back until the stuck copies were retried"
    );

    let mut dead = 0;
    while let Some(joined) = timeout(WAIT, publishes.join_next()).await.unwrap() {
        match joined.unwrap() {
            Err(shoal::Error::DeadLettered(letter)) => {
                assert_eq!(letter.group.as_deref(), Some("group `archive`"), "{letter}");
                assert!(letter.last_failure.contains("no ack"), "{letter}");
                dead += 1;
            }
            other => panic!("the archive copy should be dead-lettered: {other:?}"),
        }
    }
    assert_eq!(dead, EVENTS);
    // Billing's copies that went to the stuck instance were retried on the healthy one.
    assert_eq!(healthy.stats().handled, EVENTS as u64);
    assert_eq!(stuck.stats().handled, 0);
    assert_eq!(publisher.stats().dead_lettered, EVENTS as u64);
}
