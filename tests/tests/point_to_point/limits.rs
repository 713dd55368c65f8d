//! Where point-to-point delivery meets its limits: a full window, oversized messages and
//! replies, the ack timeout, and a requester that shuts down right after its reply.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_send_on_a_full_window_returns_busy() {
    let mesh = Mesh::new();
    let billing = mesh.start("billing", &[]).await;
    let shop = mesh
        .start_with(
            mesh.builder("shop").max_in_flight_per_peer(1),
            &[billing.local_addr()],
        )
        .await;
    wait_instances(&shop, "billing", 1).await;

    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let handler_barrier = Arc::clone(&barrier);
    billing.handle("slow", move |msg: Message| {
        let started_tx = started_tx.clone();
        let barrier = Arc::clone(&handler_barrier);
        async move {
            started_tx.send(msg.id()).unwrap();
            barrier.wait().await;
            Ok(())
        }
    });

    let first = Message::command("slow", "1");
    let first_id = first.id();
    let shop2 = shop.clone();
    let first_send = tokio::spawn(async move { shop2.send("billing", first).await });
    // The handler runs, so the only in-flight permit to billing is taken.
    assert_eq!(
        timeout(WAIT, started_rx.recv()).await.unwrap(),
        Some(first_id)
    );
    assert_eq!(shop.peers()[0].in_flight, 1);

    let started = Instant::now();
    let err = timeout(
        WAIT,
        shop.send_with(
            "billing",
            Message::command("slow", "2"),
            SendOptions::fail_fast(),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, Error::Busy { service } if service == "billing"),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fail-fast waited"
    );
    assert!(started_rx.try_recv().is_err(), "the refused message ran");

    timeout(WAIT, barrier.wait()).await.unwrap();
    let receipt = timeout(WAIT, first_send).await.unwrap().unwrap().unwrap();
    assert_eq!(receipt.id, first_id);
    assert!(shop.dead_letters().is_empty(), "Busy is not a dead letter");
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_fails_to_encode_and_is_not_sent() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let runs = Arc::new(AtomicU32::new(0));
    let runs2 = Arc::clone(&runs);
    billing.handle("upload", move |_msg: Message| {
        runs2.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });

    let max = Limits::default().max_frame_len;
    let big = Message::document("upload", vec![7u8; max + 1]);
    let err = timeout(WAIT, shop.send("billing", big))
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        Error::Encode(shoal_proto::EncodeError::LimitExceeded {
            limit,
            actual,
            max: m,
        }) => {
            assert_eq!(*limit, "max_frame_len");
            assert!(*actual > max);
            assert_eq!(*m, max);
        }
        other => panic!("expected an encode error, got {other:?}"),
    }
    // Nothing left: no dead letter, no retry, the in-flight permit returned; the next small
    // message is the only one the receiver ever sees.
    assert!(shop.dead_letters().is_empty());
    assert_eq!(shop.stats().retries, 0);
    assert_eq!(shop.peers()[0].in_flight, 0);
    timeout(
        WAIT,
        shop.send("billing", Message::document("upload", "small")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(billing.stats().malformed_frames, 0);
    assert_eq!(billing.stats().handled, 1);
    shop.shutdown().await;
    billing.shutdown().await;
}

/// A handler whose reply is too large for the wire: the request fails at once with the reason
/// (the reply's encode error), not with a timeout, and the next request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_to_send_fails_the_request_with_the_reason() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    billing.handle("export", |msg: Message| async move {
        let len = if msg.payload() == "all" {
            Limits::default().max_frame_len + 1
        } else {
            10
        };
        Ok(bytes::Bytes::from(vec![1u8; len]))
    });
    let started = Instant::now();
    let err = timeout(
        WAIT,
        shop.request("billing", Message::command("export", "all"), WAIT),
    )
    .await
    .unwrap()
    .unwrap_err();
    match &err {
        Error::DeadLettered(letter) => {
            assert!(
                letter.last_failure.contains("reply was not sent"),
                "{letter:?}"
            );
            assert!(letter.last_failure.contains("max_frame_len"), "{letter:?}");
        }
        other => panic!("expected a dead letter with the reason, got {other:?}"),
    }
    assert!(started.elapsed() < WAIT / 2, "took {:?}", started.elapsed());
    let small = timeout(
        WAIT,
        shop.request("billing", Message::command("export", "one"), WAIT),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(small.payload().len(), 10);
    shop.shutdown().await;
    billing.shutdown().await;
}

/// A per-message retry policy's ack timeout is honoured, and the dead letter says which one
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_reason_names_the_policy_in_force() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    billing.handle("slow", move |_msg: Message| {
        let mut release_rx = release_rx.clone();
        async move {
            let _ = release_rx.wait_for(|released| *released).await;
            Ok(())
        }
    });
    let policy = RetryPolicy {
        max_attempts: 1,
        ack_timeout: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    let started = Instant::now();
    let err = timeout(
        WAIT,
        shop.send_with(
            "billing",
            Message::command("slow", "x"),
            SendOptions::with_retry(policy),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    release_tx.send(true).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let Error::DeadLettered(letter) = err else {
        panic!("{err:?}")
    };
    assert!(
        letter.last_failure.contains("200ms"),
        "reason names the ack timeout in force: {}",
        letter.last_failure
    );
    shop.shutdown().await;
    billing.shutdown().await;
}

/// A synchronous reply is one frame on the requester's connection, neither acked nor retried:
/// a requester that shuts down the moment its reply arrives leaves the replier nothing to
/// retry, no dead letter, and a prompt shutdown of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_shutdown_right_after_a_reply_leaves_nothing_to_retry() {
    let mesh = Mesh::new();
    for round in 0..40 {
        let pricing = mesh.start("billing", &[]).await;
        let shop = mesh.start("shop", &[pricing.local_addr()]).await;
        wait_instances(&shop, "billing", 1).await;
        pricing.handle("quote", |_msg: Message| async { Ok("25") });
        let reply = timeout(
            WAIT,
            shop.request("billing", Message::command("quote", "x"), WAIT),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(reply.payload(), "25");
        shop.shutdown().await;
        let started = Instant::now();
        timeout(WAIT, pricing.shutdown()).await.unwrap();
        let stats = pricing.stats();
        assert_eq!(stats.retries, 0, "round {round}: {stats:?}");
        assert!(pricing.dead_letters().is_empty(), "round {round}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: the replier's shutdown took {:?}",
            started.elapsed()
        );
    }
}
