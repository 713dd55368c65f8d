//! Handler failures and missing handlers: a permanent error dead-letters at once, a retryable
//! one is retried until it succeeds, and a message nobody handles yet is retried until a
//! handler appears or its deadline passes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_handler_error_dead_letters_at_once() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let runs = Arc::new(AtomicU32::new(0));
    let runs2 = Arc::clone(&runs);
    billing.handle("create-invoice", move |_msg: Message| {
        runs2.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(HandlerError::permanent("order 42 does not exist")) }
    });

    let msg = Message::command("create-invoice", "order 42");
    let id = msg.id();
    let err = timeout(WAIT, shop.send("billing", msg))
        .await
        .unwrap()
        .unwrap_err();
    let Error::DeadLettered(letter) = err else {
        panic!("expected a dead letter, got {err:?}")
    };
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.service, "billing");
    assert_eq!(letter.message.id(), id);
    assert!(
        letter.last_failure.contains("order 42 does not exist"),
        "{}",
        letter.last_failure
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let letters = shop.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message.id(), id);
    assert_eq!(shop.stats().dead_lettered, 1);
    assert_eq!(shop.stats().retries, 0);
    assert_eq!(billing.stats().handler_errors, 1);
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_handler_error_is_retried_until_success() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    billing.handle("create-invoice", move |msg: Message| {
        let seen = Arc::clone(&seen2);
        async move {
            let mut seen = seen.lock().unwrap();
            seen.push((msg.id(), msg.attempt(), msg.is_redelivery()));
            if seen.len() < 3 {
                Err(HandlerError::retryable("database briefly down"))
            } else {
                Ok(())
            }
        }
    });

    let msg = Message::command("create-invoice", "order 42");
    let id = msg.id();
    let receipt = timeout(WAIT, shop.send("billing", msg))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.attempts, 3);
    assert_eq!(receipt.node, billing.id());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(id, 1, false), (id, 2, true), (id, 3, true)]
    );
    assert_eq!(shop.stats().retries, 2);
    assert_eq!(shop.stats().acked, 1);
    assert_eq!(billing.stats().handler_errors, 2);
    assert_eq!(billing.stats().handled, 1);
    assert!(shop.dead_letters().is_empty());
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_without_a_handler_is_retried_then_dead_lettered_naming_it() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let msg = Message::command("refund-everything", "order 42");
    let id = msg.id();
    // "No handler" is retryable (a handler may be registered just after start, or another
    // instance may have it), so a short policy bounds the test.
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let err = timeout(
        WAIT,
        shop.send_with("billing", msg, SendOptions::with_retry(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    let Error::DeadLettered(letter) = err else {
        panic!("expected a dead letter, got {err:?}")
    };
    assert_eq!(letter.attempts, 3, "{letter}");
    assert_eq!(letter.message.id(), id);
    assert!(
        letter.last_failure.contains("refund-everything"),
        "the reason names the message: {}",
        letter.last_failure
    );
    assert!(letter.to_string().contains("refund-everything"), "{letter}");
    assert_eq!(billing.stats().unhandled, 3);
    assert_eq!(shop.dead_letters().len(), 1);
    shop.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_registered_after_the_first_delivery_still_gets_it() {
    let mesh = Mesh::new();
    let (billing, shop) = pair(&mesh).await;
    let sending = tokio::spawn({
        let shop = shop.clone();
        async move { shop.send("billing", Message::command("late", "x")).await }
    });
    // Register only once the first attempt has been refused (no event marks a refusal, so
    // the counter is watched, bounded by WAIT).
    timeout(WAIT, async {
        while billing.stats().unhandled == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first attempt was never refused");
    let (tx, mut rx) = mpsc::unbounded_channel();
    billing.handle("late", move |msg: Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(msg.attempt());
            Ok(())
        }
    });
    let receipt = timeout(WAIT, sending).await.unwrap().unwrap().unwrap();
    assert!(
        receipt.attempts >= 2,
        "the first attempt was refused: {receipt:?}"
    );
    assert_eq!(
        timeout(WAIT, rx.recv()).await.unwrap(),
        Some(receipt.attempts)
    );
    shop.shutdown().await;
    billing.shutdown().await;
}
