//! A misbehaving handler, a busy peer or an abandoned shutdown must not hurt anyone else.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use shoal::{Error, Message, NodeEvent};
use shoal_tests::{Mesh, WAIT, next_event, wait_instances};
use tokio::sync::{Notify, watch};
use tokio::time::timeout;

/// A handler closure that panics before it even returns its future is caught like a panic
/// inside the future: the message is refused permanently, counted as a handler error, and
/// the id is not left "in progress" for later copies to be silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_before_its_future_is_refused_not_stuck() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    billing.handle("charge", |msg: Message| {
        assert!(!msg.payload().is_empty(), "empty charge");
        async { Ok(()) }
    });
    let err = timeout(WAIT, shop.send("billing", Message::command("charge", "")))
        .await
        .unwrap()
        .unwrap_err();
    let Error::DeadLettered(letter) = err else {
        panic!("expected a dead letter, got {err:?}")
    };
    assert_eq!(letter.attempts, 1, "{letter}");
    assert!(letter.last_failure.contains("panicked"), "{letter}");
    assert_eq!(billing.stats().handler_errors, 1);
    assert_eq!(billing.stats().duplicates, 0);
    // The node still works.
    let ok = timeout(WAIT, shop.send("billing", Message::command("charge", "5")))
        .await
        .unwrap();
    assert!(ok.is_ok(), "{ok:?}");
    shop.shutdown().await;
    billing.shutdown().await;
}

/// Handler slots are per peer: a peer whose deliveries keep every slot busy slows only its
/// own stream. Another peer's messages are still read, handled and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_fills_its_handler_slots_does_not_stall_others() {
    let mesh = Mesh::new();
    let billing = mesh
        .start_with(mesh.builder("billing").max_concurrent_handlers(1), &[])
        .await;
    let (release, released) = watch::channel(false);
    billing.handle("slow", move |_msg: Message| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            Ok(())
        }
    });
    billing.handle("quick", |_msg: Message| async { Ok(()) });
    let busy = mesh.start("shop", &[billing.local_addr()]).await;
    let other = mesh.start("audit", &[billing.local_addr()]).await;
    wait_instances(&busy, "billing", 1).await;
    wait_instances(&other, "billing", 1).await;

    let mut slow = Vec::new();
    for _ in 0..3 {
        let busy = busy.clone();
        slow.push(tokio::spawn(async move {
            busy.send("billing", Message::command("slow", "")).await
        }));
    }
    for _ in 0..20 {
        timeout(WAIT, other.send("billing", Message::command("quick", "")))
            .await
            .expect("another peer's slow handlers stalled this peer")
            .unwrap();
    }
    release.send_replace(true);
    for task in slow {
        timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    }
    other.shutdown().await;
    busy.shutdown().await;
    billing.shutdown().await;
}

/// A shutdown whose future is dropped before it finished (a caller's timeout) must not leave
/// a half-stopped node behind: dropping the last handle then stops it, and its peers see it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_shutdown_still_stops_the_node() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh.start("shop", &[billing.local_addr()]).await;
    wait_instances(&shop, "billing", 1).await;
    let mut events = shop.events();
    let busy = Arc::new(Notify::new());
    billing.handle("slow", {
        let busy = Arc::clone(&busy);
        move |_msg: Message| {
            let busy = Arc::clone(&busy);
            async move {
                busy.notified().await;
                Ok(())
            }
        }
    });
    let pending = tokio::spawn({
        let shop = shop.clone();
        async move { shop.send("billing", Message::command("slow", "")).await }
    });
    // Let the handler start, then give up on the shutdown almost at once (it waits for it).
    timeout(WAIT, async {
        while shop.peers().first().is_none_or(|p| p.in_flight == 0) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let billing_id = billing.id();
    let _ = timeout(std::time::Duration::from_millis(50), billing.shutdown()).await;
    drop(billing);
    next_event(
        &mut events,
        WAIT,
        |e| matches!(e, NodeEvent::PeerDown { node, .. } if *node == billing_id),
    )
    .await;
    pending.abort();
    shop.shutdown().await;
}
