//! Requests made while other calls wait travel to the engine together
//! (`node/src/runtime/gather.rs`, `node/src/engine/send/each_request.rs`): each caller still
//! gets its own reply, as soon as it comes (a slow handler holds its own caller only), and a
//! refused or timed-out request fails its own caller only.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::{Error, HandlerError, Message, MessageId, Node};
use shoal_tests::{Mesh, WAIT};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// How many times each request was handled, by id.
type Handled = Arc<Mutex<HashMap<MessageId, usize>>>;

/// A `pricing` node whose `quote` handler counts what it handles and replies
/// `price of <payload>` after a turn of its runtime; for the payload `refuse` it fails for
/// good, and for `hold` it waits until `release` is notified. And a `shop` node that knows it.
async fn pricing_and_shop(mesh: &Mesh, release: &Arc<Notify>) -> (Node, Node, Handled) {
    let pricing = mesh.start("pricing", &[]).await;
    let handled: Handled = Arc::default();
    let seen = Arc::clone(&handled);
    let release = Arc::clone(release);
    pricing.handle("quote", move |msg: Message| {
        *seen.lock().unwrap().entry(msg.id()).or_default() += 1;
        let payload = String::from_utf8_lossy(msg.payload()).into_owned();
        let release = Arc::clone(&release);
        async move {
            match payload.as_str() {
                "refuse" => return Err(HandlerError::permanent("no such product")),
                "hold" => release.notified().await,
                _ => tokio::task::yield_now().await,
            }
            Ok(format!("price of {payload}"))
        }
    });
    let shop = mesh.start("shop", &[pricing.local_addr()]).await;
    shop.wait_for_instances("pricing", 1, WAIT).await.unwrap();
    (pricing, shop, handled)
}

/// Requests `payloads` from one task each, all made at once, each waiting `wait` at most;
/// each task returns its payload, its request's id and its result.
fn request_from_tasks(
    shop: &Node,
    payloads: impl IntoIterator<Item = String>,
    wait: Duration,
) -> JoinSet<(String, MessageId, Result<Message, Error>)> {
    let mut calls = JoinSet::new();
    for payload in payloads {
        let shop = shop.clone();
        calls.spawn(async move {
            let request = Message::command("quote", payload.clone());
            let id = request.id();
            (payload, id, shop.request("pricing", request, wait).await)
        });
    }
    calls
}

/// Asserts that `reply` answers request `id` for `payload`.
fn assert_answers(reply: &Message, id: MessageId, payload: &str) {
    assert_eq!(reply.correlation_id(), Some(id));
    assert_eq!(
        reply.payload().as_ref(),
        format!("price of {payload}").as_bytes()
    );
}

async fn many_requests_each_answered_once(shop: &Node, handled: &Handled) {
    let calls = request_from_tasks(shop, (0..300).map(|i| i.to_string()), WAIT);
    let results = timeout(WAIT, calls.join_all())
        .await
        .expect("a request never returned");
    for (payload, id, result) in &results {
        assert_answers(result.as_ref().unwrap(), *id, payload);
    }
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 300);
    assert!(handled.values().all(|n| *n == 1), "each handled once");
    assert!(shop.stats().gathered > 0, "{:?}", shop.stats());
}

#[tokio::test(flavor = "current_thread")]
async fn requests_from_many_tasks_travel_together_each_answered_by_its_own_reply() {
    let mesh = Mesh::new();
    let (_pricing, shop, handled) = pricing_and_shop(&mesh, &Arc::default()).await;
    many_requests_each_answered_once(&shop, &handled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_multi_thread_runtime_too_requests_travel_together() {
    let mesh = Mesh::new();
    let (_pricing, shop, handled) = pricing_and_shop(&mesh, &Arc::default()).await;
    many_requests_each_answered_once(&shop, &handled).await;
}

/// The others' callers have their replies while one request's handler is still running.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_request_holds_its_own_caller_only() {
    let mesh = Mesh::new();
    let release = Arc::new(Notify::new());
    let (_pricing, shop, handled) = pricing_and_shop(&mesh, &release).await;
    // The first call goes alone (no other waits); the held one and the others after it
    // travel together.
    let first = request_from_tasks(&shop, ["first".to_owned()], WAIT);
    let held = request_from_tasks(&shop, ["hold".to_owned()], WAIT);
    let others = request_from_tasks(&shop, (0..50).map(|i| i.to_string()), WAIT);
    let results = timeout(WAIT, others.join_all())
        .await
        .expect("the others waited for the held request");
    for (payload, id, result) in &results {
        assert_answers(result.as_ref().unwrap(), *id, payload);
    }
    assert_eq!(
        shop.stats().gathered,
        51,
        "the held one went with the others"
    );
    // The held handler is running (it was handled before the others' replies came back).
    assert_eq!(handled.lock().unwrap().len(), 52);
    timeout(WAIT, first.join_all()).await.unwrap();
    release.notify_one();
    let held = timeout(WAIT, held.join_all()).await.unwrap();
    let (payload, id, result) = &held[0];
    assert_answers(result.as_ref().unwrap(), *id, payload);
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_or_timed_out_request_fails_its_own_caller_only() {
    let mesh = Mesh::new();
    let release = Arc::new(Notify::new());
    let (_pricing, shop, _handled) = pricing_and_shop(&mesh, &release).await;
    let wait = Duration::from_secs(2);
    // The first call goes alone (no other waits); the others travel together.
    let payloads = ["first", "refuse", "hold"].into_iter().map(str::to_owned);
    let calls = request_from_tasks(&shop, payloads.chain((0..20).map(|i| i.to_string())), wait);
    let results = timeout(WAIT, calls.join_all()).await.unwrap();
    for (payload, id, result) in &results {
        match (payload.as_str(), result) {
            ("refuse", Err(Error::DeadLettered(letter))) => assert_eq!(letter.message.id(), *id),
            ("hold", Err(Error::Timeout(after))) => assert_eq!(*after, wait),
            (_, Ok(reply)) => assert_answers(reply, *id, payload),
            (payload, other) => panic!("{payload}: {other:?}"),
        }
    }
    assert_eq!(
        shop.stats().gathered,
        22,
        "the refused and held ones went with the others"
    );
}
