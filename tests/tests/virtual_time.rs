//! Retry deadlines in virtual time (`tokio::time::pause`): long policies checked in
//! milliseconds of real time. The schedule itself (backoff, jitter bounds, attempt limits) is
//! unit-tested without any clock in `node/src/core/retry.rs`, and the dedup window's ageing in
//! `node/src/engine/dedup.rs`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant as WallClock};

use shoal::{Error, Message, RetryPolicy, SendOptions};
use shoal_tests::Mesh;

/// With no instance of the service, `send` waits for one (it does not poll) and dead-letters
/// exactly at the policy's deadline, with the reason and no attempt made.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_send_with_no_instance_dead_letters_at_its_deadline() {
    let mesh = Mesh::new();
    let shop = mesh.start("shop", &[]).await;
    let policy = RetryPolicy {
        deadline: Duration::from_secs(30),
        ..RetryPolicy::default()
    };
    let (virtual_start, wall_start) = (tokio::time::Instant::now(), WallClock::now());
    let err = shop
        .send_with(
            "ghost",
            Message::command("anything", "x"),
            SendOptions::with_retry(policy),
        )
        .await
        .unwrap_err();
    let waited = virtual_start.elapsed();
    let Error::DeadLettered(letter) = err else {
        panic!("expected a dead letter, got {err:?}")
    };
    assert_eq!(letter.attempts, 0, "{letter}");
    assert!(
        letter
            .last_failure
            .contains("no instance of service `ghost`"),
        "{letter}"
    );
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_millis(30_100),
        "dead-lettered after {waited:?} of virtual time"
    );
    assert!(
        wall_start.elapsed() < Duration::from_secs(5),
        "virtual time was not used"
    );
    shop.abort();
}
