//! Keyed messages travel to the engine together too (`node/src/runtime/gather.rs`,
//! `node/src/engine/parts.rs`): each key's messages are still handled one at a time in the
//! order of their calls, also when a keyed call that is not gathered follows gathered ones.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal::{Message, Node, RetryPolicy, SendOptions};
use shoal_tests::{Mesh, WAIT};
use tokio::task::JoinSet;
use tokio::time::timeout;

const TOPIC: &str = "order.created";

/// What a handler saw, in the order its runs started: (key, payload).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn record(seen: &Seen, msg: &Message) {
    let key = msg.key().unwrap_or_default().to_owned();
    let payload = String::from_utf8_lossy(msg.payload()).into_owned();
    seen.lock().unwrap().push((key, payload));
}

/// Awaits `calls` one after the other: they were all made (and took their places) before.
async fn in_turn<F: Future>(calls: Vec<F>) -> Vec<F::Output> {
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        results.push(call.await);
    }
    results
}

/// Asserts that every key's messages were handled once each, numbered 0, 1, 2, ... in that
/// order, `per_key` of them for each of `keys` keys.
fn assert_in_order(seen: &Seen, keys: usize, per_key: usize) {
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (key, payload) in seen.lock().unwrap().iter() {
        by_key
            .entry(key.clone())
            .or_default()
            .push(payload.parse().unwrap());
    }
    assert_eq!(by_key.len(), keys, "every key handled");
    for (key, order) in by_key {
        assert_eq!(
            order,
            (0..per_key).collect::<Vec<_>>(),
            "{key}: each once, in call order"
        );
    }
}

/// What was handled under `key`, in the order the runs started.
fn payloads_of(seen: &Seen, key: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, payload)| payload.clone())
        .collect()
}

/// A `ledger` subscriber to `order.*` recording its runs (each takes a turn of its runtime),
/// and an `orders` node that knows it subscribes to each of `topics`.
async fn ledger_and_orders(mesh: &Mesh, topics: &[&str]) -> (Node, Node, Seen) {
    let ledger = mesh.start("ledger", &[]).await;
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    ledger
        .subscribe("order.*", move |msg: Message| {
            record(&log, &msg);
            async move {
                tokio::task::yield_now().await;
                Ok(())
            }
        })
        .await
        .unwrap();
    let orders = mesh.start("orders", &[ledger.local_addr()]).await;
    for topic in topics {
        orders.wait_for_subscribers(topic, 1, WAIT).await.unwrap();
    }
    (ledger, orders, seen)
}

/// A `billing` node recording its `charge` runs (each takes a turn of its runtime) and a
/// `shop` node that knows it.
async fn billing_and_shop(mesh: &Mesh) -> (Node, Node, Seen) {
    let billing = mesh.start("billing", &[]).await;
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    billing.handle("charge", move |msg: Message| {
        record(&log, &msg);
        async move {
            tokio::task::yield_now().await;
            Ok(())
        }
    });
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    shop.wait_for_instances("billing", 1, WAIT).await.unwrap();
    (billing, shop, seen)
}

/// 48 tasks, each calling `send` four times with its own key before awaiting any: the first
/// calls of different keys travel together, the later ones of a key wait for their turns.
#[tokio::test(flavor = "current_thread")]
async fn keyed_commands_from_many_tasks_travel_together_in_call_order_per_key() {
    let mesh = Mesh::new();
    let (billing, shop, seen) = billing_and_shop(&mesh).await;
    let mut tasks = JoinSet::new();
    for task in 0..48 {
        let shop = shop.clone();
        tasks.spawn(async move {
            let calls: Vec<_> = (0..4)
                .map(|n| {
                    let command =
                        Message::command("charge", n.to_string()).with_key(format!("cart-{task}"));
                    shop.send("billing", command)
                })
                .collect();
            in_turn(calls).await
        });
    }
    let results = timeout(WAIT, tasks.join_all()).await.expect("a send hung");
    for receipt in results.into_iter().flatten() {
        assert_eq!(receipt.unwrap().node, billing.id());
    }
    assert_in_order(&seen, 48, 4);
    assert!(shop.stats().gathered > 0, "{:?}", shop.stats());
}

/// The same for events, on tokio's multi-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_events_from_many_tasks_travel_together_in_call_order_per_key() {
    let mesh = Mesh::new();
    let (ledger, orders, seen) = ledger_and_orders(&mesh, &[TOPIC]).await;
    let mut tasks = JoinSet::new();
    for task in 0..48 {
        let orders = orders.clone();
        tasks.spawn(async move {
            let calls: Vec<_> = (0..4)
                .map(|n| {
                    let event =
                        Message::event(TOPIC, n.to_string()).with_key(format!("order-{task}"));
                    orders.publish(event)
                })
                .collect();
            in_turn(calls).await
        });
    }
    let results = timeout(WAIT, tasks.join_all())
        .await
        .expect("a publish hung");
    for receipt in results.into_iter().flatten() {
        let receipt = receipt.unwrap();
        assert_eq!(receipt.deliveries.len(), 1, "{receipt:?}");
        assert_eq!(receipt.deliveries[0].node, ledger.id());
    }
    assert_in_order(&seen, 48, 4);
    assert!(orders.stats().gathered > 0, "{:?}", orders.stats());
}

/// A keyed call that goes to the engine at once (it has options of its own) comes after the
/// keyed call of its key gathered before it, not before.
#[tokio::test(flavor = "current_thread")]
async fn a_keyed_call_that_goes_at_once_comes_after_one_gathered_before_it() {
    let mesh = Mesh::new();
    let (_billing, shop, seen) = billing_and_shop(&mesh).await;
    // A call in flight: the next plain one is gathered for this turn.
    let busy = shop.send("billing", Message::command("charge", "0").with_key("other"));
    let gathered = shop.send("billing", Message::command("charge", "0").with_key("cart"));
    let options = SendOptions::with_retry(RetryPolicy::default());
    let at_once = shop.send_with(
        "billing",
        Message::command("charge", "1").with_key("cart"),
        options,
    );
    let (busy, gathered, at_once) = timeout(WAIT, async { tokio::join!(busy, gathered, at_once) })
        .await
        .expect("a send hung");
    busy.unwrap();
    gathered.unwrap();
    at_once.unwrap();
    assert_eq!(shop.stats().gathered, 1, "the second call was gathered");
    let cart = payloads_of(&seen, "cart");
    assert_eq!(cart, ["0", "1"], "in call order");
}

/// Keyed events on two topics for one subscriber group keep their call order: those gathered
/// for one topic do not all go before those gathered for the other.
#[tokio::test(flavor = "current_thread")]
async fn keyed_events_on_two_topics_for_one_group_keep_their_call_order() {
    let mesh = Mesh::new();
    let (_ledger, orders, seen) = ledger_and_orders(&mesh, &[TOPIC, "order.paid"]).await;
    // A call in flight: the next ones are gathered for this turn.
    let busy = orders.publish(Message::event(TOPIC, "0").with_key("other"));
    let calls: Vec<_> = [TOPIC, "order.paid", TOPIC, "order.paid"]
        .into_iter()
        .enumerate()
        .map(|(n, topic)| orders.publish(Message::event(topic, n.to_string()).with_key("cart")))
        .collect();
    timeout(WAIT, busy).await.expect("hung").unwrap();
    for call in calls {
        timeout(WAIT, call).await.expect("hung").unwrap();
    }
    assert_eq!(orders.stats().gathered, 4, "all four were gathered");
    let cart = payloads_of(&seen, "cart");
    assert_eq!(cart, ["0", "1", "2", "3"], "in call order");
}
