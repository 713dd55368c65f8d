//! Per-key ordering on the sending side: messages that share a partition key and a
//! destination go one at a time, in the order they were sent.
//!
//! A message with a key takes a numbered ticket for its (destination, key) when `send` or
//! `publish` is *called*, so the order is the order of the calls, whatever order the returned
//! futures are polled or spawned in. It waits until the tickets before it are done, and keeps
//! its turn (retries included) until it is acknowledged or dead-lettered. So the receiver never
//! sees message *n + 1* of a key before *n* was handled, even when *n* had to be retried on
//! another instance; messages with other keys pass meanwhile. A ticket dropped before its turn
//! (a cancelled send) is skipped.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::sync::lock;

/// The tickets of every (destination, key) with a message in progress or waiting.
#[derive(Debug, Default)]
pub(crate) struct KeyOrder {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The number the next ticket gets.
    next: u64,
    /// The ticket whose turn it is.
    serving: u64,
    /// Tickets dropped before their turn.
    abandoned: BTreeSet<u64>,
    turn_passed: Arc<Notify>,
}

/// A message's place in its key's order; the next ticket's turn comes when it is dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    order: Arc<KeyOrder>,
    slot: (String, String),
    number: u64,
}

impl KeyOrder {
    /// Takes the next ticket for `key` at `destination`.
    pub(crate) fn ticket(self: &Arc<Self>, destination: String, key: String) -> Ticket {
        let slot = (destination, key);
        let mut slots = lock(&self.slots);
        let state = slots.entry(slot.clone()).or_default();
        let number = state.next;
        state.next += 1;
        Ticket {
            order: Arc::clone(self),
            slot,
            number,
        }
    }

    /// Keys with a message in progress or waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.slots).len()
    }
}

impl Ticket {
    /// Waits until every earlier ticket of this key is done.
    pub(crate) async fn turn(&self) {
        loop {
            let notify = {
                let slots = lock(&self.order.slots);
                match slots.get(&self.slot) {
                    Some(state) if state.serving != self.number => Arc::clone(&state.turn_passed),
                    _ => return,
                }
            };
            let passed = notify.notified();
            tokio::pin!(passed);
            // Registered before checking again, so a turn passing in between is not missed.
            passed.as_mut().enable();
            let still_waiting = lock(&self.order.slots)
                .get(&self.slot)
                .is_some_and(|s| s.serving != self.number);
            if !still_waiting {
                return;
            }
            passed.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut slots = lock(&self.order.slots);
        let Some(state) = slots.get_mut(&self.slot) else {
            return;
        };
        if state.serving == self.number {
            state.serving += 1;
            while state.abandoned.remove(&state.serving) {
                state.serving += 1;
            }
            state.turn_passed.notify_waiters();
        } else {
            state.abandoned.insert(self.number);
        }
        // No ticket left: forget the key, so memory follows the keys in use.
        if state.serving == state.next {
            slots.remove(&self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ticket(order: &Arc<KeyOrder>, dest: &str, key: &str) -> Ticket {
        order.ticket(dest.into(), key.into())
    }

    async fn has_turn(t: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(20), t.turn())
            .await
            .is_ok()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_key_waits_other_keys_pass_and_slots_are_freed() {
        let order = Arc::new(KeyOrder::default());
        let first = ticket(&order, "billing", "customer-1");
        let second = ticket(&order, "billing", "customer-1");
        let other = ticket(&order, "billing", "customer-2");
        let elsewhere = ticket(&order, "audit", "customer-1");
        assert!(has_turn(&first).await);
        assert!(has_turn(&other).await && has_turn(&elsewhere).await);
        assert!(
            !has_turn(&second).await,
            "the second message waits for the first"
        );
        drop(first);
        assert!(has_turn(&second).await);
        drop((second, other, elsewhere));
        assert_eq!(order.len(), 0, "no slot is kept for idle keys");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn turns_follow_ticket_order_whatever_the_polling_order() {
        let order = Arc::new(KeyOrder::default());
        let tickets: Vec<Ticket> = (0..20).map(|_| ticket(&order, "svc", "k")).collect();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        // Spawned (and so first polled) in reverse order.
        for (i, t) in tickets.into_iter().enumerate().rev() {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                t.turn().await;
                let _ = tx.send(i);
                tokio::task::yield_now().await;
                drop(t);
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("every ticket gets its turn")
                .expect("no panic");
        }
        let got: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_ticket_dropped_before_its_turn_is_skipped() {
        let order = Arc::new(KeyOrder::default());
        let first = ticket(&order, "svc", "k");
        let cancelled = ticket(&order, "svc", "k");
        let third = ticket(&order, "svc", "k");
        drop(cancelled);
        assert!(!has_turn(&third).await);
        drop(first);
        assert!(has_turn(&third).await);
        drop(third);
        assert_eq!(order.len(), 0);
    }
}
