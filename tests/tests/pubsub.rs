//! Publish/subscribe on real sockets: groups, wildcards, ungrouped subscribers, unsubscribe,
//! subscribers that appear late, best-effort events, and events with replies.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::{
    HandlerError, Message, MessageId, Node, PublishOptions, Reliability, SubscribeOptions,
};
use shoal_tests::{Mesh, WAIT, audience_sizes, until};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Which node handled which event, for which subscription.
type Seen = Arc<Mutex<Vec<(String, MessageId)>>>;

/// Subscribes `node` to `pattern` with `options`, recording `(label, id)` for every event.
async fn record(
    node: &Node,
    options: SubscribeOptions,
    label: &str,
    seen: &Seen,
) -> shoal::Subscription {
    let (seen, label) = (Arc::clone(seen), label.to_owned());
    node.subscribe_with(options, move |msg: Message| {
        seen.lock().unwrap().push((label.clone(), msg.id()));
        async { Ok::<_, HandlerError>(()) }
    })
    .await
    .unwrap()
}

fn count(seen: &Seen, label: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(l, _)| l == label)
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn each_group_gets_each_event_once_and_ungrouped_instances_each_get_a_copy() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let mut subscribers = Vec::new();
    for (i, service) in ["invoice", "invoice", "invoice", "audit", "audit"]
        .iter()
        .enumerate()
    {
        let node = mesh.start(service, &[]).await;
        record(
            &node,
            SubscribeOptions::new("order.created"),
            service,
            &seen,
        )
        .await;
        if *service == "audit" {
            let label = format!("cache-{i}");
            record(
                &node,
                SubscribeOptions::new("order.*").every_instance(),
                &label,
                &seen,
            )
            .await;
        }
        subscribers.push(node);
    }
    let addrs: Vec<_> = subscribers.iter().map(Node::local_addr).collect();
    let publisher = mesh.start("orders", &addrs).await;
    // Two groups and two ungrouped instances.
    publisher
        .wait_for_subscribers("order.created", 4, WAIT)
        .await
        .unwrap();

    let mut ids = Vec::new();
    for i in 0..200u32 {
        let receipt = publisher
            .publish(Message::event("order.created", i.to_be_bytes().to_vec()))
            .await
            .unwrap();
        assert_eq!(receipt.deliveries.len(), 4, "{receipt:?}");
        ids.push(receipt.id);
    }
    // `publish` resolved after every audience acked: the handlers have run.
    for label in ["invoice", "audit", "cache-3", "cache-4"] {
        let got: Vec<MessageId> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(got.len(), ids.len(), "{label}");
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "{label} handled an event twice");
    }
    // The invoice group spread its events over its instances.
    let busy = subscribers[..3]
        .iter()
        .filter(|n| n.stats().handled > 0)
        .count();
    assert!(busy >= 2, "one invoice instance took every event");
}

#[tokio::test(flavor = "current_thread")]
async fn wildcards_select_topics_like_nats() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let sub = mesh.start("listener", &[]).await;
    record(
        &sub,
        SubscribeOptions::new("orders.*").group("star"),
        "star",
        &seen,
    )
    .await;
    record(
        &sub,
        SubscribeOptions::new("orders.>").group("rest"),
        "rest",
        &seen,
    )
    .await;
    record(
        &sub,
        SubscribeOptions::new("*.eu.>").group("eu"),
        "eu",
        &seen,
    )
    .await;
    let publisher = mesh.start("pub", &[sub.local_addr()]).await;
    publisher
        .wait_for_subscribers("orders.eu.created", 2, WAIT)
        .await
        .unwrap();

    for topic in [
        "orders.created",
        "orders.eu.created",
        "orders",
        "invoices.eu.paid",
    ] {
        publisher.publish(Message::event(topic, "x")).await.unwrap();
    }
    assert_eq!(
        count(&seen, "star"),
        1,
        "orders.* matches only orders.created"
    );
    assert_eq!(
        count(&seen, "rest"),
        2,
        "orders.> matches both orders topics with a suffix"
    );
    assert_eq!(
        count(&seen, "eu"),
        2,
        "*.eu.> matches orders.eu.created and invoices.eu.paid"
    );
    assert_eq!(
        publisher.stats().events_unrouted,
        1,
        "`orders` had no subscriber"
    );

    let bad = publisher.publish(Message::event("orders.*", "x")).await;
    assert!(matches!(bad, Err(shoal::Error::Topic(_))), "{bad:?}");
    let bad = sub
        .subscribe("orders.>.x", |_| async { Ok::<_, HandlerError>(()) })
        .await;
    assert!(matches!(bad, Err(shoal::Error::Topic(_))), "{bad:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn unsubscribe_stops_delivery_and_the_group_moves_to_its_other_instance() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let a = mesh.start("billing", &[]).await;
    let b = mesh.start("billing", &[]).await;
    let sub_a = record(&a, SubscribeOptions::new("order.created"), "a", &seen).await;
    record(&b, SubscribeOptions::new("order.created"), "b", &seen).await;
    let publisher = mesh
        .start("orders", &[a.local_addr(), b.local_addr()])
        .await;
    until(&publisher, "both billing instances known", |n| {
        audience_sizes(n, "order.created") == [2]
    })
    .await;

    sub_a.unsubscribe().await;
    // The unsubscribe reaches the publisher as a frame: wait for it to count one instance.
    until(&publisher, "the unsubscribe reached the publisher", |n| {
        audience_sizes(n, "order.created") == [1]
    })
    .await;
    for _ in 0..50 {
        let receipt = publisher
            .publish(Message::event("order.created", "x"))
            .await
            .unwrap();
        assert_eq!(receipt.deliveries[0].node, b.id());
    }
    assert_eq!(count(&seen, "a"), 0);
    assert_eq!(count(&seen, "b"), 50);
}

#[tokio::test(flavor = "current_thread")]
async fn late_subscribers_miss_earlier_events_and_departed_groups_are_held_for() {
    let mesh = Mesh::new();
    let seen: Seen = Arc::default();
    let publisher = mesh
        .start_with(
            mesh.builder("orders")
                .hold_events_for(Duration::from_secs(10)),
            &[],
        )
        .await;
    // Nobody subscribed: the event goes nowhere, and that is counted, not an error.
    let receipt = publisher
        .publish(Message::event("order.created", "early"))
        .await
        .unwrap();
    assert!(receipt.deliveries.is_empty());

    let first = mesh.start("billing", &[publisher.local_addr()]).await;
    record(
        &first,
        SubscribeOptions::new("order.created"),
        "first",
        &seen,
    )
    .await;
    publisher
        .wait_for_subscribers("order.created", 1, WAIT)
        .await
        .unwrap();
    publisher
        .publish(Message::event("order.created", "x"))
        .await
        .unwrap();
    assert_eq!(
        count(&seen, "first"),
        1,
        "the late joiner did not get the early event"
    );

    // The group's only instance crashes: the next event is held until a new one subscribes.
    first.abort();
    until(&publisher, "the crash noticed", |n| {
        audience_sizes(n, "order.created") == [0]
    })
    .await;
    let held = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(Message::event("order.created", "held"))
                .await
        }
    });
    let second = mesh.start("billing", &[publisher.local_addr()]).await;
    record(
        &second,
        SubscribeOptions::new("order.created"),
        "second",
        &seen,
    )
    .await;
    let receipt = timeout(WAIT, held).await.unwrap().unwrap().unwrap();
    assert_eq!(receipt.deliveries[0].node, second.id());
    assert_eq!(count(&seen, "second"), 1);

    // Held no longer than asked: with no instance, the copy is dead-lettered with a reason.
    second.abort();
    until(&publisher, "the second crash noticed", |n| {
        audience_sizes(n, "order.created") == [0]
    })
    .await;
    let options = PublishOptions::default().hold_for(Duration::from_millis(200));
    let err = publisher
        .publish_with(Message::event("order.created", "lost"), options)
        .await
        .unwrap_err();
    let shoal::Error::DeadLettered(letter) = err else {
        panic!("{err}")
    };
    assert!(
        letter
            .last_failure
            .contains("no live instance of group `billing`"),
        "{letter}"
    );
    assert_eq!(publisher.dead_letters().len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn best_effort_events_are_not_acked_and_drops_are_counted() {
    let mesh = Mesh::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = mesh.start("metrics", &[]).await;
    sub.subscribe("cpu.load", move |msg: Message| {
        let _ = tx.send(msg.id());
        async { Ok::<_, HandlerError>(()) }
    })
    .await
    .unwrap();
    let publisher = mesh.start("host", &[sub.local_addr()]).await;
    publisher
        .wait_for_subscribers("cpu.load", 1, WAIT)
        .await
        .unwrap();
    let receipt = publisher
        .publish_with(
            Message::event("cpu.load", "0.5"),
            PublishOptions::best_effort(),
        )
        .await
        .unwrap();
    assert_eq!(receipt.deliveries.len(), 1);
    let got = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, receipt.id);
    assert_eq!(
        publisher.stats().acked,
        0,
        "best-effort copies are not acknowledged"
    );

    // The group's instance is gone: the copy is dropped and counted, not held.
    sub.abort();
    until(&publisher, "the crash noticed", |n| {
        audience_sizes(n, "cpu.load") == [0]
    })
    .await;
    let mut options = PublishOptions::best_effort();
    options.reliability = Reliability::BestEffort;
    let receipt = publisher
        .publish_with(Message::event("cpu.load", "0.7"), options)
        .await
        .unwrap();
    assert_eq!(receipt.dropped, vec!["group `metrics`".to_owned()]);
    assert_eq!(publisher.stats().events_dropped, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn events_with_a_return_address_collect_one_reply_per_group() {
    let mesh = Mesh::new();
    let mut subscribers = Vec::new();
    for service in ["pricing", "stock"] {
        let node = mesh.start(service, &[]).await;
        let name = service.to_owned();
        node.subscribe("quote.requested", move |_msg: Message| {
            let name = name.clone();
            async move { Ok::<_, HandlerError>(format!("{name} ok")) }
        })
        .await
        .unwrap();
        subscribers.push(node);
    }
    let addrs: Vec<_> = subscribers.iter().map(Node::local_addr).collect();
    let publisher = mesh.start("shop", &addrs).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    publisher.handle("quote.answers", move |msg: Message| {
        let _ = tx.send((
            msg.correlation_id(),
            String::from_utf8_lossy(msg.payload()).into_owned(),
        ));
        async { Ok::<_, HandlerError>(()) }
    });
    publisher
        .wait_for_subscribers("quote.requested", 2, WAIT)
        .await
        .unwrap();
    let receipt = publisher
        .publish(Message::event("quote.requested", "sku-1").with_reply_channel("quote.answers"))
        .await
        .unwrap();
    let mut answers = HashMap::new();
    for _ in 0..2 {
        let (correlation, body) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(correlation, Some(receipt.id));
        answers.insert(body, ());
    }
    assert!(
        answers.contains_key("pricing ok") && answers.contains_key("stock ok"),
        "{answers:?}"
    );
}
