//! Stopping a node: a graceful `shutdown` finishes running handlers and flushes their acks
//! before saying goodbye; `abort` drops everything like a crash.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use shoal::{Error, Message, Node, NodeEvent, RetryPolicy, SendOptions};
use shoal_proto::Frame;
use shoal_tests::{
    Mesh, RawPeer, WAIT, acks, deliver, envelope, nacks, next_event, wait_instances,
};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// Registers a handler for `name` that reports each message id on the returned receiver
/// when it starts, then waits until the returned sender says `true`.
fn gated_handler(
    node: &Node,
    name: &str,
) -> (
    mpsc::UnboundedReceiver<shoal::MessageId>,
    watch::Sender<bool>,
) {
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    node.handle(name, move |msg: Message| {
        let started_tx = started_tx.clone();
        let mut release_rx = release_rx.clone();
        async move {
            let _ = started_tx.send(msg.id());
            let _ = release_rx.wait_for(|released| *released).await;
            Ok(())
        }
    });
    (started_rx, release_tx)
}

/// Polls `fut` once, so a `shutdown` has begun (the node is stopping) without finishing.
async fn begin(fut: &mut Pin<Box<impl Future<Output = ()>>>) {
    let finished = tokio::select! {
        biased;
        () = fut.as_mut() => true,
        () = std::future::ready(()) => false,
    };
    assert!(
        !finished,
        "shutdown finished while a handler was still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_running_handler_and_acks_it() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    let (mut started, release) = gated_handler(&billing, "slow");
    let mut shop_events = shop.events();

    let msg = Message::command("slow", "in progress");
    let id = msg.id();
    let send = {
        let shop = shop.clone();
        tokio::spawn(async move { shop.send("billing", msg).await })
    };
    assert_eq!(timeout(WAIT, started.recv()).await.unwrap(), Some(id));

    let mut shutdown = Box::pin(billing.shutdown());
    begin(&mut shutdown).await;
    // The node is stopping: it takes no new work of its own.
    let refused = billing.send("shop", Message::command("x", "")).await;
    assert!(matches!(refused, Err(Error::ShuttingDown)), "{refused:?}");

    release.send(true).unwrap();
    timeout(WAIT, shutdown).await.expect("shutdown hung");
    let receipt = timeout(WAIT, send)
        .await
        .unwrap()
        .unwrap()
        .expect("the in-progress message was not acked");
    assert_eq!(receipt.id, id);
    assert_eq!(receipt.node, billing.id());
    assert_eq!(receipt.attempts, 1);
    assert_eq!(billing.stats().handled, 1);

    let billing_id = billing.id();
    let down = next_event(
        &mut shop_events,
        WAIT,
        |e| matches!(e, NodeEvent::PeerDown { node, .. } if *node == billing_id),
    )
    .await;
    eprintln!("the peer saw {down:?}");
    assert!(shop.peers().is_empty(), "{:?}", shop.peers());

    // After shutdown every entry point refuses at once.
    let err = billing
        .send("shop", Message::command("x", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    let err = billing
        .request("shop", Message::command("x", ""), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    billing.shutdown().await; // a second call is harmless
    shop.shutdown().await;
}

/// The same, watched on the wire: while stopping, the node refuses new deliveries with a
/// retryable nack, acks the one in progress when its handler finishes, then says goodbye and
/// finishes its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_on_the_wire_nacks_new_work_then_acks_and_says_goodbye() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let (mut started, release) = gated_handler(&billing, "slow");
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;

    let first = envelope("slow", b"in progress");
    raw.send_frame(&deliver(0, &first)).await;
    assert_eq!(timeout(WAIT, started.recv()).await.unwrap(), Some(first.id));

    let mut shutdown = Box::pin(billing.shutdown());
    begin(&mut shutdown).await;
    let second = envelope("slow", b"too late");
    raw.send_frame(&deliver(1, &second)).await;

    // Drive the shutdown while reading what the node says.
    let node_side = async {
        let mut frames = Vec::new();
        let mut nacked = false;
        for _ in 0..16 {
            match raw.next_frame(WAIT).await {
                Ok(frame) => {
                    if nacks(&frame, 1) && !nacked {
                        nacked = true;
                        release.send(true).unwrap();
                    }
                    frames.push(frame);
                }
                Err(end) => return (frames, end),
            }
        }
        panic!("too many frames: {frames:?}");
    };
    let ((frames, end), ()) = timeout(2 * WAIT, async {
        tokio::join!(node_side, async {
            timeout(WAIT, shutdown.as_mut())
                .await
                .expect("shutdown hung");
        })
    })
    .await
    .unwrap();
    eprintln!("frames: {frames:?}; then {end}");

    let position = |pred: &dyn Fn(&Frame) -> bool| frames.iter().position(pred);
    let nack = position(&|f| nacks(f, 1)).expect("the new delivery was not refused");
    let Frame::Nack(refusal) = &frames[nack] else {
        unreachable!()
    };
    assert!(refusal.retryable, "{refusal:?}");
    assert!(refusal.reason.contains("shutting down"), "{refusal:?}");
    let ack = position(&|f| acks(f, 0)).expect("the in-progress delivery was not acked");
    let goodbye = position(&|f| matches!(f, Frame::Goodbye(_))).expect("no goodbye before the end");
    assert!(ack < goodbye, "the ack must come before the goodbye");
    assert!(
        !frames.iter().any(|f| acks(f, 1)),
        "the refused delivery was acked"
    );
    assert_eq!(billing.stats().handled, 1);
}

/// A peer that reads slowly still gets the acks and the goodbye a shutting-down node flushed,
/// even if it reads them only after the node closed the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_slow_reader_see_its_ack_and_goodbye() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel();
    billing.handle("quick", move |msg: Message| {
        let _ = ran_tx.send(msg.id());
        async { Ok(()) }
    });
    let mut raw = RawPeer::connect(&mesh, "shop", billing.local_addr()).await;
    let env = envelope("quick", b"x");
    raw.send_frame(&deliver(0, &env)).await;
    // The handler ran (shutdown waits for it to finish), without reading the node's stream.
    assert_eq!(timeout(WAIT, ran_rx.recv()).await.unwrap(), Some(env.id));
    timeout(WAIT, billing.shutdown()).await.unwrap();
    // Only now read what the node sent.
    let (_, skipped) = raw
        .read_until(WAIT, 16, |f| matches!(f, Frame::Goodbye(_)))
        .await;
    assert!(skipped.iter().any(|f| acks(f, 0)), "{skipped:?}");
}

/// A handler that outlives the grace period does not hold `shutdown` forever; its sender gets
/// no ack and gives up under its own retry policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_a_handler_after_the_grace_period() {
    let mesh = Mesh::new();
    let grace = Duration::from_millis(300);
    let billing = mesh
        .start_with(mesh.builder("billing").shutdown_grace(grace), &[])
        .await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    let (mut started, release) = gated_handler(&billing, "stuck");

    let policy = RetryPolicy {
        deadline: Duration::from_millis(1500),
        ..RetryPolicy::default()
    };
    let send = {
        let shop = shop.clone();
        tokio::spawn(async move {
            shop.send_with(
                "billing",
                Message::command("stuck", ""),
                SendOptions::with_retry(policy),
            )
            .await
        })
    };
    timeout(WAIT, started.recv()).await.unwrap().unwrap();
    let began = Instant::now();
    timeout(WAIT, billing.shutdown())
        .await
        .expect("shutdown hung");
    let took = began.elapsed();
    assert!(took >= grace, "did not wait for the handler: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let result = timeout(WAIT, send).await.unwrap().unwrap();
    let Err(Error::DeadLettered(letter)) = result else {
        panic!("expected a dead letter, got {result:?}")
    };
    eprintln!("shutdown took {took:?}; the sender gave up: {letter}");
    release.send(true).unwrap();
    shop.abort();
}

/// `abort` is a crash: the running handler is dropped, and the sender retries on another
/// instance, which handles the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_drops_the_running_handler_and_the_sender_fails_over() {
    let mesh = Mesh::new();
    let first = mesh.start("billing", &[]).await;
    let second = mesh.start("billing", &[]).await;
    let shop = mesh
        .start("shop", &[first.local_addr(), second.local_addr()])
        .await;
    wait_instances(&shop, "billing", 2).await;

    // On the first instance the handler hangs and reports when its future is dropped.
    let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel::<()>();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    first.handle("job", move |msg: Message| {
        let started_tx = started_tx.clone();
        let guard = DropSignal(dropped_tx.clone());
        async move {
            let _guard = guard;
            let _ = started_tx.send(msg.id());
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    second.handle("job", move |msg: Message| {
        let done_tx = done_tx.clone();
        async move {
            let _ = done_tx.send((msg.id(), msg.attempt()));
            Ok(())
        }
    });

    // Send until one lands on the first instance (the router picks at random between equally
    // loaded instances: 40 tries all missing it has a chance of 2^-40).
    let mut stuck = None;
    for _ in 0..40 {
        let msg = Message::command("job", "");
        let id = msg.id();
        let shop = shop.clone();
        let mut send = tokio::spawn(async move { shop.send("billing", msg).await });
        tokio::select! {
            started = started_rx.recv() => {
                assert_eq!(started, Some(id));
                stuck = Some((id, send));
                break;
            }
            done = timeout(WAIT, &mut send) => {
                let receipt = done.unwrap().unwrap().unwrap();
                assert_eq!(receipt.node, second.id());
                done_rx.recv().await.unwrap();
            }
        }
    }
    let (id, send) = stuck.expect("no message went to the first instance");

    first.abort();
    timeout(WAIT, dropped_rx.recv())
        .await
        .expect("the running handler was not dropped")
        .unwrap();
    let receipt = timeout(WAIT, send).await.unwrap().unwrap().unwrap();
    assert_eq!(receipt.id, id);
    assert_eq!(receipt.node, second.id());
    assert_eq!(receipt.attempts, 2);
    assert_eq!(timeout(WAIT, done_rx.recv()).await.unwrap(), Some((id, 2)));
    assert_eq!(first.stats().handled, 0);
    let err = first
        .send("shop", Message::command("x", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    second.shutdown().await;
    shop.abort();
}

/// A node whose static peer has just gone away still shuts down promptly.
///
/// Regression guard: with quinn's default initial RTT (333 ms) the half-open redial to the
/// vanished peer took about 3 s to drain; the node's transport starts from 10 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_when_a_static_peer_is_gone() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    let mut events = shop.events();
    billing.shutdown().await;
    let billing_id = billing.id();
    next_event(
        &mut events,
        WAIT,
        |e| matches!(e, NodeEvent::PeerDown { node, .. } if *node == billing_id),
    )
    .await;
    let began = Instant::now();
    timeout(WAIT, shop.shutdown()).await.unwrap();
    let took = began.elapsed();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
}

/// Sends on its channel when dropped.
struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}
