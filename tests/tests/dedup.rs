//! The receiver's dedup window: redeliveries of one message id are acknowledged without
//! running the handler again, whether they come from a hand-written client or from a node
//! retrying after an ack timeout.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shoal::{HandlerError, Message, MessageId, RetryPolicy, SendOptions};
use shoal_proto::{Frame, Limits, codec};
use shoal_tests::{
    Mesh, RawPeer, WAIT, acks, deliver, envelope, nacks, next_event, wait_instances,
};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// Reads until the node's nack of message `seq`, which must not have been acked before it.
async fn nack_without_ack(raw: &mut RawPeer, seq: u64) -> shoal_proto::Nack {
    let (frame, skipped) = raw.read_until(WAIT, 16, |f| nacks(f, seq)).await;
    assert!(!skipped.iter().any(|f| acks(f, seq)), "{skipped:?}");
    let Frame::Nack(nack) = frame else {
        unreachable!()
    };
    nack
}

/// Encodes several frames into one buffer, so they go out in one write.
fn batch(frames: &[Frame]) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    for frame in frames {
        codec::encode(frame, &Limits::default(), &mut buf).unwrap();
    }
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_duplicates_run_the_handler_once_and_are_all_acked() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    let handler_runs = Arc::clone(&runs);
    billing.handle("create-invoice", move |msg: Message| {
        let runs = Arc::clone(&handler_runs);
        let started_tx = started_tx.clone();
        let mut release_rx = release_rx.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            started_tx.send(msg.id()).unwrap();
            let _ = release_rx.wait_for(|released| *released).await;
            Ok(())
        }
    });
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;
    assert_eq!(raw.server_hello.node_id, billing.id());
    assert_eq!(raw.server_hello.service, "billing");

    // Two copies back to back (messages 0 and 1 of this connection), then a ping: the pong
    // proves both copies were read.
    let env = envelope("create-invoice", b"order 42");
    let id = env.id;
    raw.send_raw(&batch(&[
        deliver(0, &env),
        deliver(1, &env),
        Frame::Ping(1),
    ]))
    .await;
    let (_, before) = raw
        .read_until(WAIT, 16, |f| matches!(f, Frame::Pong(1)))
        .await;
    assert!(
        !before.iter().any(|f| acks(f, 0) || acks(f, 1)),
        "acked before the handler finished: {before:?}"
    );
    assert_eq!(timeout(WAIT, started_rx.recv()).await.unwrap(), Some(id));
    assert_eq!(
        billing.stats().duplicates,
        1,
        "the second copy is a duplicate"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // The running handler's ack answers both copies.
    release_tx.send(true).unwrap();
    let (first, _) = raw.read_until(WAIT, 16, |f| acks(f, 0)).await;
    if !acks(&first, 1) {
        raw.read_until(WAIT, 16, |f| acks(f, 1)).await;
    }

    // Later redeliveries (a sender's retries, attempt 2 and 3) are acked again, not handled.
    for attempt in [2, 3] {
        let mut again = env.clone();
        again.attempt = attempt;
        let seq = u64::from(attempt);
        raw.send_frame(&deliver(seq, &again)).await;
        raw.read_until(WAIT, 16, |f| acks(f, seq)).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert!(started_rx.try_recv().is_err());
    let stats = billing.stats();
    assert_eq!(stats.handled, 1, "{stats:?}");
    assert_eq!(stats.duplicates, 3, "{stats:?}");
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_ids_are_not_mistaken_for_duplicates() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler_runs = Arc::clone(&runs);
    billing.handle("create-invoice", move |_msg: Message| {
        handler_runs.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;
    let envs: Vec<_> = (0..20)
        .map(|_| envelope("create-invoice", b"same body"))
        .collect();
    let frames: Vec<Frame> = (0..).zip(&envs).map(|(seq, e)| deliver(seq, e)).collect();
    raw.send_raw(&batch(&frames)).await;
    let mut unacked: std::collections::HashSet<u64> = (0..envs.len() as u64).collect();
    for _ in 0..40 {
        if unacked.is_empty() {
            break;
        }
        if let Frame::Ack(ack) = raw.next_frame(WAIT).await.unwrap() {
            for seq in ack.ranges.iter().flat_map(|r| r.iter()) {
                unacked.remove(&seq);
            }
        }
    }
    assert!(unacked.is_empty(), "not acked: {unacked:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 20);
    assert_eq!(billing.stats().duplicates, 0);
    billing.shutdown().await;
}

/// A node that retries because its ack did not come in time (the handler outlived a short
/// `ack_timeout`) sends the same id to the same instance again: the handler still runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_an_ack_timeout_does_not_run_the_handler_twice() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler_runs = Arc::clone(&runs);
    billing.handle("create-invoice", move |_msg: Message| {
        let first = handler_runs.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                // Slower than the sender's ack timeout: its ack "gets lost".
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(())
        }
    });

    let policy = RetryPolicy {
        ack_timeout: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    let msg = Message::command("create-invoice", "order 42");
    let id = msg.id();
    let receipt = timeout(
        WAIT,
        shop.send_with("billing", msg, SendOptions::with_retry(policy)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(receipt.id, id);
    assert_eq!(receipt.node, billing.id());
    assert!(receipt.attempts >= 2, "{receipt:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    let stats = billing.stats();
    assert_eq!(stats.handled, 1, "{stats:?}");
    assert!(stats.duplicates >= 1, "{stats:?}");
    assert!(shop.stats().retries >= 1);
    shop.shutdown().await;
    billing.shutdown().await;
}

/// A message whose handler failed is not remembered as done: a redelivery runs the handler
/// again (retryable) or is refused again, never acknowledged as if it had succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_messages_are_not_acked_on_redelivery() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler_runs = Arc::clone(&runs);
    billing.handle("create-invoice", move |_msg: Message| {
        handler_runs.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(HandlerError::permanent("unknown order")) }
    });
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;
    let env = envelope("create-invoice", b"order 42");
    for attempt in [1, 2] {
        let mut copy = env.clone();
        copy.attempt = attempt;
        let seq = u64::from(attempt);
        raw.send_frame(&deliver(seq, &copy)).await;
        let nack = nack_without_ack(&mut raw, seq).await;
        assert!(!nack.retryable);
        assert!(nack.reason.contains("unknown order"), "{}", nack.reason);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    billing.shutdown().await;
}

/// A synchronous request for `name`, from `raw` (its reply comes back on `raw`'s connection).
fn request_envelope(raw: &RawPeer, name: &str) -> shoal_proto::Envelope {
    let mut env = envelope(name, b"order 42");
    env.reply_to = Some(shoal_proto::ReturnAddress {
        service: "shop".into(),
        node: Some(raw.node_id),
        channel: Default::default(),
    });
    env
}

/// Whether `frame` is the reply to the synchronous request `id`; returns its body.
fn reply_body(frame: &Frame, id: MessageId) -> Option<bytes::Bytes> {
    match frame {
        Frame::Reply(env) if env.correlation_id == Some(id) && env.name.is_empty() => {
            Some(env.payload.clone())
        }
        _ => None,
    }
}

/// Reads until the reply to request `id` (message `seq`) came; returns its body. The reply is
/// the request's answer: no ack of `seq` comes before it (a node acks a message before it
/// writes anything else queued with it, so an ack sent beside the reply would be read first).
async fn reply_alone(raw: &mut RawPeer, id: MessageId, seq: u64) -> bytes::Bytes {
    for _ in 0..16 {
        let frame = raw.next_frame(WAIT).await.unwrap();
        assert!(
            !acks(&frame, seq),
            "message {seq} was acked beside its reply"
        );
        if let Some(body) = reply_body(&frame, id) {
            return body;
        }
    }
    panic!("no reply to {id} (message {seq})");
}

/// A request whose reply was lost (a dropped connection, say) is retried by the requester with
/// the same id. The handler must not run again, but the retry must get the reply: an ack alone
/// would leave the requester waiting for its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_gets_the_reply_again_without_running_the_handler() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler_runs = Arc::clone(&runs);
    billing.handle("quote", move |_msg: Message| {
        let n = handler_runs.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok(bytes::Bytes::from(format!("quote #{n}"))) }
    });
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;
    let env = request_envelope(&raw, "quote");
    let id = env.id;
    for attempt in [1, 2, 3] {
        let mut copy = env.clone();
        copy.attempt = attempt;
        let seq = u64::from(attempt);
        raw.send_frame(&deliver(seq, &copy)).await;
        let body = reply_alone(&mut raw, id, seq).await;
        assert_eq!(body, "quote #1", "attempt {attempt}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    let stats = billing.stats();
    assert_eq!(
        (stats.duplicates, stats.replies_resent),
        (2, 2),
        "{stats:?}"
    );
    billing.shutdown().await;
}

/// With no reply kept (here the cache is switched off), a retried request that was already
/// handled is refused for good with the reason, rather than acked without an answer: the
/// requester learns at once instead of waiting for its timeout, and the handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_whose_reply_is_gone_is_refused_with_the_reason() {
    let mesh = Mesh::new();
    let billing = mesh
        .start_with(mesh.builder("billing").reply_cache(0), &[])
        .await;
    let runs = Arc::new(AtomicU32::new(0));
    let handler_runs = Arc::clone(&runs);
    billing.handle("quote", move |_msg: Message| {
        handler_runs.fetch_add(1, Ordering::SeqCst);
        async { Ok(bytes::Bytes::from_static(b"a quote")) }
    });
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;
    let mut env = request_envelope(&raw, "quote");
    let id = env.id;
    raw.send_frame(&deliver(0, &env)).await;
    assert_eq!(reply_alone(&mut raw, id, 0).await, "a quote");

    env.attempt = 2;
    raw.send_frame(&deliver(1, &env)).await;
    let nack = nack_without_ack(&mut raw, 1).await;
    assert!(!nack.retryable);
    assert!(nack.reason.contains("reply is no longer kept"), "{nack:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(billing.stats().replies_missing, 1);
    billing.shutdown().await;
}

/// The user's view of the two tests above: the reply and the ack are lost with the connection
/// (the relay between the nodes drops everything right after the handler ran). The requester
/// retries on a new connection and gets the reply the handler gave the first time, which ran
/// once. Without the kept reply the retry would be acked only and `request` would time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_reply_was_lost_with_its_connection_still_gets_it() {
    let mesh = Mesh::new();
    let fast = |service| {
        mesh.builder(service)
            .liveness(Duration::from_millis(100), Duration::from_millis(500))
    };
    let billing = mesh.start_with(fast("billing"), &[]).await;
    let relay = Arc::new(shoal_tests::UdpRelay::start(billing.local_addr()).await);
    let shop = mesh.start_with(fast("shop"), &[relay.addr()]).await;
    wait_instances(&shop, "billing", 1).await;

    let runs = Arc::new(AtomicU32::new(0));
    let handler_runs = Arc::clone(&runs);
    let handler_relay = Arc::clone(&relay);
    billing.handle("quote", move |_msg: Message| {
        let n = handler_runs.fetch_add(1, Ordering::SeqCst) + 1;
        // The reply and the ack are written into a dead link.
        handler_relay.cut(true);
        async move { Ok(bytes::Bytes::from(format!("quote #{n}"))) }
    });
    let mut events = shop.events();
    let request = tokio::spawn(shop.request("billing", Message::command("quote", "book"), WAIT));
    next_event(
        &mut events,
        WAIT,
        |e| matches!(e, shoal::NodeEvent::PeerDown { node, .. } if *node == billing.id()),
    )
    .await;
    relay.cut(false);

    let reply = timeout(WAIT, request).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.payload(), "quote #1");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert!(billing.stats().duplicates >= 1, "{:?}", billing.stats());
    shop.shutdown().await;
    billing.shutdown().await;
}
