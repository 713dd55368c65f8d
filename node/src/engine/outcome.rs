//! How a delivery ends: acknowledged, dropped, failed, dead-lettered or abandoned, and what
//! its end frees (the turn of its key, its operation's wait).

use std::time::Instant;

use shoal_proto::{Envelope, NodeId};
use smallvec::SmallVec;

use super::Engine;
use super::delivery::{Delivery, State};
use super::ordering::KeyTurns;
use super::peers::Route;
use super::send::{DeliveryId, OpKind};
use crate::dead_letter::DeadLetter;
use crate::receipts::{EventDelivery, Receipt};
use crate::{Error, Message};

impl<H: Clone> Engine<H> {
    /// `d` was acknowledged in full.
    pub(super) fn succeed(&mut self, d: DeliveryId, now: Instant) {
        self.note_acked(d, now); // metrics/hooks.rs
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let (node, attempts) = (del.node, del.retry.attempts().max(1));
        let node = node.unwrap_or(NodeId::from_u128(0));
        self.stats.acked += u64::from(del.spec.reliable);
        let copy = match &del.route {
            Route::Service(_) => {
                if let Some(op) = self.out.ops.get_mut(del.op) {
                    op.sent = Some(Receipt {
                        id: op.messages[0].id,
                        node,
                        attempts,
                    });
                }
                None
            }
            Route::Audience { audience, .. } => Some(EventDelivery {
                group: audience.wire_group().map(str::to_owned),
                node,
                attempts,
            }),
        };
        if let Some(copy) = copy
            && let Some(copy) = self.copied_part(d, copy) // parts.rs
            && let Some(op) = self.out.deliveries.get(d).and_then(|del| self.out.ops.get_mut(del.op))
        {
            op.copies.push(copy);
        }
        self.finish(d, now);
    }

    /// `d`'s audience is gone (it unsubscribed on purpose, or was forgotten), or a
    /// best-effort copy found no room or no instance: the copy is dropped, and counted.
    pub(super) fn gone(&mut self, d: DeliveryId, now: Instant) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        self.stats.events_dropped += 1;
        if let (Some(op), Route::Audience { audience, .. }) =
            (self.out.ops.get_mut(del.op), &del.route)
        {
            tracing::debug!(id = %op.messages[0].id, "copy for {audience} dropped");
            let audience = audience.to_string();
            // A delivery carrying some events only (parts.rs) drops theirs alone.
            match (&del.part, op.each.as_deref_mut()) {
                (Some(part), Some(each)) => each.dropped(part.members(), &audience),
                _ => op.dropped.push(audience),
            }
        }
        self.finish(d, now);
    }

    /// Ends `d` with `error` (no dead letter: the caller hears why).
    pub(super) fn fail(&mut self, d: DeliveryId, error: Error, now: Instant) {
        if let Some(op) = self
            .out
            .deliveries
            .get(d)
            .and_then(|del| self.out.ops.get_mut(del.op))
        {
            op.error.get_or_insert(error);
        }
        self.finish(d, now);
    }

    /// Gives up on `d`: every message not acknowledged becomes a dead letter.
    pub(super) fn dead_letter(&mut self, d: DeliveryId, reason: String, now: Instant) {
        self.note_dead_lettered(d); // metrics/hooks.rs
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let mut letters: Vec<(usize, DeadLetter)> = Vec::new();
        if let Some(op) = self.out.ops.get(del.op) {
            for (index, envelope) in op.messages.iter().enumerate() {
                if !del.acked.get(index).copied().unwrap_or(false) {
                    letters.push((index, letter(del, envelope, &reason)));
                }
            }
        }
        let op = del.op;
        if let Some(o) = self.out.ops.get_mut(op) {
            if o.each.is_some() {
                // Separate calls' messages (send/each.rs): each caller hears of its own.
                for (index, letter) in &letters {
                    self.fail_one(op, *index, || Error::DeadLettered(Box::new(letter.clone())));
                }
            } else if let Some((_, first)) = letters.first() {
                o.error
                    .get_or_insert_with(|| Error::DeadLettered(Box::new(first.clone())));
            }
        }
        for (_, letter) in letters {
            self.record_dead_letter(letter);
        }
        self.finish(d, now);
    }

    /// `d` ended: it leaves its key's turn (the next one goes) and its operation.
    pub(super) fn finish(&mut self, d: DeliveryId, now: Instant) {
        self.abandon_flight(d);
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let op = del.op;
        let next = leave_turns(&mut self.out.turns, del, d);
        // Dropped where it lies: a delivery is a few hundred bytes, not worth moving out.
        self.out.deliveries.remove(d);
        self.delivery_ended(op);
        for next in next {
            self.take_turn(next, now);
        }
    }

    /// `next` gets its key's turn: its attempt goes. A held one (a hold of its own, as keyed
    /// events behind a held one have) gets its retries from here, as a held delivery does
    /// when an instance is back (README, "Where the promise ends").
    pub(super) fn take_turn(&mut self, next: DeliveryId, now: Instant) {
        if let Some(del) = self.out.deliveries.get_mut(next)
            && del.spec.hold.is_some()
        {
            del.retry.restart_clock(now);
        }
        self.bump(next, State::Backoff);
        self.attempt(next, now);
    }

    /// Stops `d` without ending its operation (its caller gave up, or the node stops).
    pub(super) fn abandon(&mut self, d: DeliveryId, now: Instant) {
        self.abandon_flight(d);
        if let Some(del) = self.out.deliveries.remove(d) {
            for next in leave_turns(&mut self.out.turns, &del, d) {
                self.take_turn(next, now);
            }
        }
    }

    /// Ends every background delivery still going (the node stops): background sends and
    /// copies of background publishes become dead letters saying so; asynchronous replies
    /// are dropped.
    pub(super) fn stop_background_ops(&mut self, now: Instant) {
        // Copies on the multicast channel end as their deliveries would.
        self.materialize_all_copies();
        let open: Vec<DeliveryId> = self.out.deliveries.keys().collect();
        for d in open {
            let Some(op) = self.out.deliveries.get(d).map(|del| del.op) else {
                continue;
            };
            match self.out.ops.get(op).map(|o| o.kind) {
                Some(OpKind::Background) => {
                    let reason = "the node stopped before this message was delivered";
                    self.dead_letter(d, reason.into(), now);
                }
                Some(OpKind::Reply) => {
                    tracing::debug!("reply not delivered: the node stopped");
                    self.abandon(d, now);
                    self.out.remove_op(op);
                }
                _ => self.abandon(d, now),
            }
        }
    }
}

/// The dead letter of `envelope`, a message of `del` that was not delivered.
pub(super) fn letter(del: &Delivery, envelope: &Envelope, reason: &str) -> DeadLetter {
    let (service, group) = match &del.route {
        Route::Service(target) => (target.service.to_string(), None),
        Route::Audience { audience, .. } => (String::new(), Some(audience.to_string())),
    };
    DeadLetter {
        service,
        group,
        message: Message::from_envelope(envelope.clone()),
        attempts: del.retry.attempts(),
        last_failure: reason.to_owned(),
    }
}

/// `d` (`del`) leaves the turns it holds or waits for; returns the deliveries whose turn it is
/// now.
fn leave_turns(turns: &mut KeyTurns, del: &Delivery, d: DeliveryId) -> SmallVec<[DeliveryId; 1]> {
    del.slots
        .iter()
        .filter_map(|slot| turns.leave(slot, d))
        .collect()
}
