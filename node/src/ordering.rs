//! Per-key ordering on the sending side: messages that share a partition key and a
//! destination go one at a time, in the order they were sent.
//!
//! A message with a key waits for its turn before its first attempt and keeps the turn until
//! it is acknowledged or dead-lettered, retries included. So the receiver never sees message
//! *n + 1* of a key before *n* was handled, even when *n* had to be retried on another
//! instance; messages with other keys pass meanwhile. Turns are handed out first come, first
//! served (Tokio's mutex is fair), in the order the sends were first polled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::sync::lock;

type Slot = Arc<tokio::sync::Mutex<()>>;

/// The turns of every (destination, key) pair with a message in progress.
#[derive(Debug, Default)]
pub(crate) struct KeyOrder {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

/// The right to send the next message of one key; the next message's turn comes when it is
/// dropped.
pub(crate) struct Turn<'a> {
    order: &'a KeyOrder,
    slot_key: (String, String),
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyOrder {
    /// Waits until every earlier message for `destination` with `key` is done.
    pub(crate) async fn turn(&self, destination: &str, key: &str) -> Turn<'_> {
        let slot_key = (destination.to_owned(), key.to_owned());
        let slot = Arc::clone(lock(&self.slots).entry(slot_key.clone()).or_default());
        let guard = slot.lock_owned().await;
        Turn {
            order: self,
            slot_key,
            guard: Some(guard),
        }
    }

    /// Keys with a message in progress or waiting (for tests and stats).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.slots).len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut slots = lock(&self.order.slots);
        drop(self.guard.take());
        // Nobody else holds or waits for this key: forget it, so memory follows live keys.
        // (The map's reference is the only one left; a waiter would hold a clone.)
        if slots
            .get(&self.slot_key)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.slot_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn one_key_waits_other_keys_pass_and_slots_are_freed() {
        let order = Arc::new(KeyOrder::default());
        let first = order.turn("billing", "customer-1").await;
        // Another key of the same destination and the same key elsewhere are not blocked.
        let other = order.turn("billing", "customer-2").await;
        let elsewhere = order.turn("audit", "customer-1").await;
        drop((other, elsewhere));

        let order2 = Arc::clone(&order);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn(async move {
            let _second = order2.turn("billing", "customer-1").await;
            let _ = tx.send(());
        });
        tokio::task::yield_now().await;
        assert!(
            rx.try_recv().is_err(),
            "the second message waits for the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the second gets its turn")
            .expect("no panic");
        assert_eq!(order.len(), 0, "no slot is kept for idle keys");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn turns_come_in_the_order_asked() {
        let order = Arc::new(KeyOrder::default());
        let first = order.turn("svc", "k").await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (order, tx) = (Arc::clone(&order), tx.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = order.turn("svc", "k").await;
                let _ = tx.send(i);
                tokio::task::yield_now().await;
            }));
            tokio::task::yield_now().await; // task i asks before task i + 1
        }
        drop(first);
        for task in tasks {
            task.await.expect("no panic");
        }
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
}
