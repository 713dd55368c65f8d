//! The outbox relay and held copies: a row's `keep_trying` bounds its delivery from the row's
//! creation, also for an event copy that was held for an away group and then gets its full
//! retries once an instance is back (its retry deadline counts from the end of its hold).
#![cfg(feature = "outbox")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal::outbox::{Destination, RelayOptions, SqliteOutbox};
use shoal::{HandlerError, Message, RetryPolicy};
use tokio::time::timeout;

mod outbox_fixture;
use outbox_fixture::{Fixture, node, publisher};

const WAIT: Duration = Duration::from_secs(20);

/// An event row for the expected group `billing`, kept trying 4 s. Billing comes after 1.5 s
/// and refuses every copy with a retryable error: the held copy, retried from then on with a
/// fresh retry deadline, would be retried until that ran out and the row marked dead with the
/// handler's refusal; it is marked dead at its `keep_trying` instead, saying so.
#[tokio::test(flavor = "current_thread")]
async fn a_held_row_is_given_up_keep_trying_after_it_was_enqueued() {
    let fx = Fixture::new("hold");
    let ca = fx.ca.clone();
    let outbox = Arc::new(SqliteOutbox::open(&fx.path).unwrap());
    let keep_trying = Duration::from_secs(4);
    let options = RelayOptions::default()
        .poll(Duration::from_millis(50))
        .keep_trying(keep_trying)
        .expect_group("order.*", "billing");
    // Short backoffs: without the bound, the copy would be retried close to its deadline.
    let orders = publisher(&ca, &outbox, options)
        .retry_policy(RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..RetryPolicy::default()
        })
        .start()
        .await
        .unwrap();
    let mut conn = outbox.connect().unwrap();
    let tx = conn.transaction().unwrap();
    let event = Message::event("order.created", "o-1");
    outbox.enqueue(&tx, &Destination::Publish, &event).unwrap();
    outbox.commit(tx).unwrap();
    let enqueued = Instant::now();

    // Billing comes while the row is held (after the publish's own first look for it).
    tokio::time::sleep_until((enqueued + Duration::from_millis(1500)).into()).await;
    let billing = node(&ca, "billing")
        .peer(orders.local_addr())
        .start()
        .await
        .unwrap();
    let (tx, mut refused) = tokio::sync::mpsc::unbounded_channel();
    billing
        .subscribe("order.created", move |_m: Message| {
            let _ = tx.send(());
            async { Err::<(), _>(HandlerError::retryable("not ready")) }
        })
        .await
        .unwrap();
    timeout(WAIT, refused.recv())
        .await
        .expect("the held copy reaches billing")
        .unwrap();

    let dead = timeout(WAIT, async {
        loop {
            let dead = outbox.dead_rows(10).unwrap();
            if !dead.is_empty() {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the row is marked dead");
    assert!(dead[0].reason.contains("keep_trying"), "{}", dead[0].reason);
    orders.shutdown().await;
    billing.shutdown().await;
}
