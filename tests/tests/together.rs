//! Lone events published and commands sent while other calls wait travel to the engine
//! together (`node/src/runtime/gather.rs`): every caller still gets its own receipt or error,
//! a refused message fails only its own caller, a caller that gives up before its message was
//! handed over takes it back, and one call at a time is never held.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal::{Error, HandlerError, Message, MessageId, Node};
use shoal_tests::{Mesh, WAIT};
use tokio::task::JoinSet;
use tokio::time::timeout;

const TOPIC: &str = "order.created";

/// How many times each event was handled, by id.
type Handled = Arc<Mutex<HashMap<MessageId, usize>>>;

/// A `ledger` subscriber that counts what it handles and refuses for good, at once, the events
/// whose payload is `refuse` (the others take a turn of its runtime); and an `orders`
/// publisher that knows the subscription.
async fn ledger_and_orders(mesh: &Mesh, refuse: &'static str) -> (Node, Node, Handled) {
    let ledger = mesh.start("ledger", &[]).await;
    let handled: Handled = Arc::default();
    let seen = Arc::clone(&handled);
    ledger
        .subscribe(TOPIC, move |msg: Message| {
            *seen.lock().unwrap().entry(msg.id()).or_default() += 1;
            let refused = msg.payload().as_ref() == refuse.as_bytes();
            async move {
                if refused {
                    return Err(HandlerError::permanent("no such order"));
                }
                // The others finish later than the refusal: their acks come after it.
                tokio::task::yield_now().await;
                Ok(())
            }
        })
        .await
        .unwrap();
    let orders = mesh.start("orders", &[ledger.local_addr()]).await;
    orders.wait_for_subscribers(TOPIC, 1, WAIT).await.unwrap();
    (ledger, orders, handled)
}

/// Publishes `n` events from `n` tasks at once; each task returns its event's id and result.
async fn publish_from_tasks(
    orders: &Node,
    n: usize,
) -> Vec<(MessageId, Result<shoal::PublishReceipt, Error>)> {
    let mut calls = JoinSet::new();
    for i in 0..n {
        let orders = orders.clone();
        calls.spawn(async move {
            let event = Message::event(TOPIC, i.to_string());
            let id = event.id();
            (id, orders.publish(event).await)
        });
    }
    timeout(WAIT, calls.join_all())
        .await
        .expect("a publish never returned")
}

#[tokio::test(flavor = "current_thread")]
async fn events_published_from_many_tasks_travel_together_each_with_its_own_receipt() {
    let mesh = Mesh::new();
    let (_ledger, orders, handled) = ledger_and_orders(&mesh, "never").await;
    let results = publish_from_tasks(&orders, 300).await;
    for (id, result) in &results {
        let receipt = result.as_ref().unwrap();
        assert_eq!(receipt.id, *id, "each caller's receipt names its own event");
        assert_eq!(receipt.deliveries.len(), 1, "{receipt:?}");
    }
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 300);
    assert!(handled.values().all(|n| *n == 1), "each handled once");
    let stats = orders.stats();
    assert_eq!(stats.published, 300);
    assert!(
        stats.gathered > 0,
        "published while others waited, yet none travelled together: {stats:?}"
    );
}

/// On tokio's multi-thread runtime (what `#[tokio::main]` gives a service) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_multi_thread_runtime_too_events_travel_together() {
    let mesh = Mesh::new();
    let (_ledger, orders, handled) = ledger_and_orders(&mesh, "never").await;
    let results = publish_from_tasks(&orders, 300).await;
    for (id, result) in &results {
        assert_eq!(result.as_ref().unwrap().id, *id);
    }
    assert!(handled.lock().unwrap().values().all(|n| *n == 1));
    assert_eq!(handled.lock().unwrap().len(), 300);
    let stats = orders.stats();
    assert!(stats.gathered > 0, "{stats:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_event_fails_its_own_caller_only() {
    let mesh = Mesh::new();
    let (_ledger, orders, handled) = ledger_and_orders(&mesh, "13").await;
    let results = publish_from_tasks(&orders, 100).await;
    let mut refused = 0;
    for (id, result) in &results {
        match result {
            Err(Error::DeadLettered(letter)) => {
                assert_eq!(letter.message.id(), *id);
                assert_eq!(letter.message.payload().as_ref(), b"13");
                refused += 1;
            }
            Ok(receipt) => assert_eq!(receipt.id, *id),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 1, "only the refused event's caller failed");
    assert_eq!(orders.dead_letters().len(), 1);
    assert!(orders.stats().gathered > 0);
    assert!(handled.lock().unwrap().values().all(|n| *n == 1));
}

#[tokio::test(flavor = "current_thread")]
async fn one_publish_at_a_time_is_never_held_for_others() {
    let mesh = Mesh::new();
    let (_ledger, orders, handled) = ledger_and_orders(&mesh, "never").await;
    for i in 0..20 {
        timeout(WAIT, orders.publish(Message::event(TOPIC, i.to_string())))
            .await
            .expect("publish hung")
            .unwrap();
    }
    assert_eq!(handled.lock().unwrap().len(), 20);
    assert_eq!(orders.stats().gathered, 0, "nothing waited beside them");
}

#[tokio::test(flavor = "current_thread")]
async fn a_publish_given_up_before_it_was_handed_over_is_not_sent() {
    let mesh = Mesh::new();
    let (_ledger, orders, handled) = ledger_and_orders(&mesh, "never").await;
    // A publish in flight: the next ones are gathered for this turn.
    let first = orders.publish(Message::event(TOPIC, "first"));
    let given_up = Message::event(TOPIC, "given up");
    let given_up_id = given_up.id();
    drop(orders.publish(given_up));
    let last = orders.publish(Message::event(TOPIC, "last"));
    let (first, last) = timeout(WAIT, async { tokio::join!(first, last) })
        .await
        .expect("publish hung");
    first.unwrap();
    last.unwrap();
    let stats = orders.stats();
    assert_eq!(
        stats.published, 2,
        "the event given up never reached the engine"
    );
    assert_eq!(stats.gathered, 1, "the last one was gathered");
    assert!(!handled.lock().unwrap().contains_key(&given_up_id));
}

/// A `billing` node whose `charge` handler counts what it handles and declines for good, at
/// once, the command whose payload is `decline` (the others take a turn of its runtime); and
/// a `shop` node that knows it.
async fn billing_and_shop(mesh: &Mesh, decline: &'static str) -> (Node, Node, Handled) {
    let billing = mesh.start("billing", &[]).await;
    let handled: Handled = Arc::default();
    let seen = Arc::clone(&handled);
    billing.handle("charge", move |msg: Message| {
        *seen.lock().unwrap().entry(msg.id()).or_default() += 1;
        let declined = msg.payload().as_ref() == decline.as_bytes();
        async move {
            if declined {
                return Err(HandlerError::permanent("card declined"));
            }
            tokio::task::yield_now().await;
            Ok(())
        }
    });
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    shop.wait_for_instances("billing", 1, WAIT).await.unwrap();
    (billing, shop, handled)
}

#[tokio::test(flavor = "current_thread")]
async fn commands_sent_from_many_tasks_travel_together_and_a_declined_one_fails_alone() {
    let mesh = Mesh::new();
    let (billing, shop, handled) = billing_and_shop(&mesh, "42").await;
    let mut calls = JoinSet::new();
    for i in 0..300 {
        let shop = shop.clone();
        calls.spawn(async move {
            let command = Message::command("charge", i.to_string());
            let id = command.id();
            (id, shop.send("billing", command).await)
        });
    }
    let results = timeout(WAIT, calls.join_all())
        .await
        .expect("a send never returned");
    let mut declined = 0;
    for (id, result) in &results {
        match result {
            Ok(receipt) => {
                assert_eq!(
                    receipt.id, *id,
                    "each caller's receipt names its own command"
                );
                assert_eq!(receipt.node, billing.id());
            }
            Err(Error::DeadLettered(letter)) => {
                assert_eq!(letter.message.payload().as_ref(), b"42");
                declined += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(declined, 1, "only the declined command's caller failed");
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 300);
    assert!(handled.values().all(|n| *n == 1), "each handled once");
    assert!(shop.stats().gathered > 0, "{:?}", shop.stats());
}
