//! Point-to-point delivery between two real nodes: acks, request/response (synchronous and
//! asynchronous), handler errors, retries, dead letters, timeouts, backpressure and limits.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::{Error, HandlerError, Limits, Message, MessageKind, Node, RetryPolicy, SendOptions};
use shoal_proto::Frame;
use shoal_tests::{Mesh, RawPeer, WAIT, wait_instances};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A `billing` node and a `shop` node that dials it, connected.
async fn pair(mesh: &Mesh) -> (Node, Node) {
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    (billing, shop)
}

/// Hundreds of sends in flight at once, answered together: the node wakes their callers a slice
/// at a time (`runtime/wakeups.rs`), and every caller returns.
#[tokio::test]
async fn hundreds_of_callers_answered_together_all_return() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    billing.handle("ping", |_msg: Message| async { Ok(()) });
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let shop = shop.clone();
        calls.spawn(async move {
            shop.send("billing", Message::command("ping", format!("{i}")))
                .await
        });
    }
    let returned = timeout(WAIT, async {
        let mut returned = 0;
        while let Some(sent) = calls.join_next().await {
            sent.unwrap().unwrap();
            returned += 1;
        }
        returned
    })
    .await
    .expect("a caller was never woken");
    assert_eq!(returned, 300);
}

/// On tokio's multi-thread runtime (what `#[tokio::main]` gives a service) too, a handler that
/// finishes at once runs where its message was read: no task for each, and the acks of those
/// read together leave in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_finish_at_once_need_no_task_of_their_own() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let tasks = Arc::new(Mutex::new(HashSet::new()));
    {
        let tasks = Arc::clone(&tasks);
        billing.handle("ping", move |_msg: Message| {
            let tasks = Arc::clone(&tasks);
            async move {
                // Polled first where the message was read: the connection's task.
                tasks.lock().unwrap().insert(tokio::task::try_id());
                Ok(())
            }
        });
    }
    for i in 0..10 {
        timeout(
            WAIT,
            shop.send("billing", Message::command("ping", format!("{i}"))),
        )
        .await
        .expect("send hung")
        .unwrap();
    }
    // Each send went on a quiet connection: written at once, by itself.
    assert!(shop.stats().writes >= 10, "{:?}", shop.stats());
    let tasks = tasks.lock().unwrap();
    assert_eq!(
        tasks.len(),
        1,
        "ten handlers ran in {} tasks: {tasks:?}",
        tasks.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_resolves_on_ack_with_a_correct_receipt() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    billing.handle("create-invoice", move |msg: Message| {
        let tx = tx.clone();
        async move {
            tx.send((
                msg.id(),
                msg.attempt(),
                msg.header("tenant").map(str::to_owned),
            ))
            .unwrap();
            Ok(())
        }
    });

    let msg = Message::command("create-invoice", "order 42").with_header("tenant", "acme");
    let id = msg.id();
    let receipt = timeout(WAIT, shop.send("billing", msg))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.id, id);
    assert_eq!(receipt.node, billing.id());
    assert_eq!(receipt.attempts, 1);

    // The handler ran exactly once, before the ack.
    assert_eq!(
        rx.try_recv().unwrap(),
        (id, 1, Some("acme".to_owned())),
        "handler saw the message"
    );
    assert!(rx.try_recv().is_err(), "handler ran more than once");

    let sent = shop.stats();
    assert_eq!(sent.acked, 1, "{sent:?}");
    assert_eq!(sent.retries, 0, "{sent:?}");
    assert_eq!(sent.dead_lettered, 0, "{sent:?}");
    let got = billing.stats();
    assert_eq!(got.handled, 1, "{got:?}");
    assert_eq!(got.duplicates, 0, "{got:?}");
    assert!(shop.dead_letters().is_empty());

    let peers = shop.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].node, billing.id());
    assert_eq!(peers[0].service, "billing");
    assert_eq!(peers[0].in_flight, 0);
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_gets_the_reply_correlated_with_the_request() {
    let mesh = Mesh::new();
    let (pricing, shop) = pair(&mesh).await;
    pricing.handle("quote", |msg: Message| async move {
        Ok(format!(
            "price for {} is 25",
            String::from_utf8_lossy(msg.payload())
        ))
    });

    for item in ["book", "pen"] {
        let request = Message::command("quote", item);
        let id = request.id();
        let reply = timeout(
            WAIT,
            shop.request("billing", request, Duration::from_secs(5)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(reply.payload(), &format!("price for {item} is 25"));
        assert_eq!(reply.correlation_id(), Some(id));
        assert_eq!(reply.kind(), MessageKind::Reply);
    }
    assert_eq!(pricing.stats().handled, 2);
    shop.shutdown().await;
    pricing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_reply_reaches_the_reply_channel_handler() {
    let mesh = Mesh::new();
    let (pricing, shop) = pair(&mesh).await;
    pricing.handle("quote", |msg: Message| async move {
        assert_eq!(msg.reply_to().unwrap().channel, "quote-replies");
        Ok("25 EUR")
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    shop.handle("quote-replies", move |msg: Message| {
        let tx = tx.clone();
        async move {
            tx.send(msg).unwrap();
            Ok(())
        }
    });

    let request = Message::command("quote", "book").with_reply_channel("quote-replies");
    let id = request.id();
    let receipt = timeout(WAIT, shop.send("billing", request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.id, id);
    let reply = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(reply.correlation_id(), Some(id));
    assert_eq!(reply.payload(), "25 EUR");
    assert_eq!(reply.name(), "quote-replies");
    assert_eq!(reply.kind(), MessageKind::Reply);
    assert!(rx.try_recv().is_err(), "one reply only");
    pricing.shutdown().await;
    shop.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_service_without_instances_dead_letters_after_the_deadline() {
    let mesh = Mesh::new();
    let shop = mesh.start("shop", &[]).await;
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..RetryPolicy::default()
    };
    let msg = Message::command("create-invoice", "order 42");
    let id = msg.id();
    let started = Instant::now();
    let err = timeout(
        WAIT,
        shop.send_with("ghost", msg, SendOptions::with_retry(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    let took = started.elapsed();
    let Error::DeadLettered(letter) = err else {
        panic!("expected a dead letter, got {err:?}")
    };
    assert!(
        took >= Duration::from_millis(290),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "gave up late: {took:?}");
    assert_eq!(letter.message.id(), id);
    assert_eq!(letter.service, "ghost");
    assert_eq!(letter.attempts, 0, "nothing was ever sent: {letter}");
    assert!(
        letter.last_failure.contains("no instance") && letter.last_failure.contains("ghost"),
        "{}",
        letter.last_failure
    );
    assert_eq!(shop.dead_letters().len(), 1);
    assert_eq!(shop.stats().dead_lettered, 1);
    shop.shutdown().await;
}

/// A request whose delivery is acknowledged but never answered ends with `Error::Timeout`
/// after the requested time, and leaves no dead letter. The "replier" is a hand-driven client
/// registered as `billing` that acks the request and never replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_a_reply_times_out() {
    let mesh = Mesh::new();
    let shop = mesh.start("shop", &[]).await;
    let mut billing = RawPeer::connect(&mesh, "billing", shop.local_addr()).await;
    wait_instances(&shop, "billing", 1).await;

    let wait = Duration::from_millis(300);
    let request = Message::command("quote", "book");
    let id = request.id();
    let started = Instant::now();
    let requesting = {
        let shop = shop.clone();
        tokio::spawn(async move { shop.request("billing", request, wait).await })
    };
    let (frame, _) = billing
        .read_until(WAIT, 16, |f| matches!(f, Frame::Messages(_)))
        .await;
    let Frame::Messages(run) = frame else {
        unreachable!()
    };
    let seq = run.first_seq;
    let env = run.items[0].clone().into_envelope(&run.head);
    assert_eq!(env.id, id);
    let reply_to = env
        .reply_to
        .clone()
        .expect("a request names its return address");
    assert_eq!(reply_to.service, "shop");
    assert_eq!(reply_to.node, Some(shop.id()));
    assert!(reply_to.channel.is_empty(), "{reply_to:?}");
    billing
        .send_frame(&Frame::Ack(shoal_proto::Ack {
            ranges: vec![shoal_proto::SeqRange { start: seq, len: 1 }],
        }))
        .await;

    let result = timeout(WAIT, requesting).await.unwrap().unwrap();
    let took = started.elapsed();
    match result {
        Err(Error::Timeout(d)) => assert_eq!(d, wait),
        other => panic!("expected Error::Timeout after {took:?}, got {other:?}"),
    }
    assert!(took >= wait && took < Duration::from_secs(3), "{took:?}");
    assert!(shop.dead_letters().is_empty(), "{:?}", shop.dead_letters());
    // The raw peer never answers a goodbye, so a graceful shutdown would wait out its grace.
    shop.abort();
}

/// A reply answers its request whether an ack comes before it (how nodes of earlier releases
/// answer) or not (this release: the reply alone), and the request counts as acknowledged
/// once either way. The answering side is a hand-driven client registered as `billing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_answers_its_request_with_or_without_an_ack_before_it() {
    let mesh = Mesh::new();
    let shop = mesh.start("shop", &[]).await;
    let mut billing = RawPeer::connect(&mesh, "billing", shop.local_addr()).await;
    wait_instances(&shop, "billing", 1).await;
    for (round, ack_first) in [(1u64, true), (2, false)] {
        let request = Message::command("quote", "book");
        let requesting = {
            let shop = shop.clone();
            tokio::spawn(async move { shop.request("billing", request, WAIT).await })
        };
        let (frame, _) = billing
            .read_until(WAIT, 16, |f| matches!(f, Frame::Messages(_)))
            .await;
        let Frame::Messages(run) = frame else {
            unreachable!()
        };
        let request = run.items[0].clone().into_envelope(&run.head);
        if ack_first {
            billing
                .send_frame(&Frame::Ack(shoal_proto::Ack {
                    ranges: vec![shoal_proto::SeqRange {
                        start: run.first_seq,
                        len: 1,
                    }],
                }))
                .await;
        }
        let mut reply = shoal_proto::Envelope::new(
            shoal_proto::MessageId::from_u128(u128::from(round)),
            MessageKind::Reply,
            "",
            0,
            bytes::Bytes::from(format!("quote #{round}")),
        );
        reply.correlation_id = Some(request.id);
        billing.send_frame(&Frame::Reply(Box::new(reply))).await;
        let answer = timeout(WAIT, requesting).await.unwrap().unwrap().unwrap();
        assert_eq!(answer.payload(), format!("quote #{round}").as_bytes());
        assert_eq!(shop.stats().acked, round, "ack first: {ack_first}");
    }
    // The raw peer never answers a goodbye, so a graceful shutdown would wait out its grace.
    shop.abort();
}

/// A request to a handler that returns nothing still gets a reply, with an empty body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_a_handler_without_a_body_gets_an_empty_reply() {
    let mesh = Mesh::new();
    let (pricing, shop) = pair(&mesh).await;
    pricing.handle("quote", |_msg: Message| async { Ok(()) });
    let request = Message::command("quote", "book");
    let id = request.id();
    let reply = timeout(WAIT, shop.request("billing", request, WAIT))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.payload().is_empty());
    assert_eq!(reply.correlation_id(), Some(id));
    assert_eq!(pricing.stats().handled, 1);
    pricing.shutdown().await;
    shop.abort();
}

/// A request whose handler is still running when the timeout passes must end with
/// `Error::Timeout` and leave no dead letter behind.
///
/// Regression guard: the delivery used to be bounded by the request's timeout, so the two
/// fired in the same tick and the request ended as a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_while_the_handler_runs_is_a_timeout() {
    let mesh = Mesh::new();
    let (pricing, shop) = pair(&mesh).await;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    pricing.handle("quote", move |_msg: Message| {
        let mut release_rx = release_rx.clone();
        async move {
            let _ = release_rx.wait_for(|released| *released).await;
            Ok("too late")
        }
    });
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let result = timeout(
            WAIT,
            shop.request(
                "billing",
                Message::command("quote", "book"),
                Duration::from_millis(100),
            ),
        )
        .await
        .unwrap();
        outcomes.push(result.map_err(|e| e.to_string()));
    }
    release_tx.send(true).unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Err(e) if e.starts_with("no reply within"))),
        "{outcomes:#?}"
    );
    assert!(shop.dead_letters().is_empty(), "{:#?}", shop.dead_letters());
    shop.abort();
    pricing.abort();
}

#[path = "point_to_point/limits.rs"]
mod limits;

#[path = "point_to_point/handler_errors.rs"]
mod handler_errors;
