//! Events of separate `publish` calls that travel as one operation, each with a result of its
//! own.
//!
//! A node with many `publish` calls in flight gathers the lone events published in one turn
//! of its runtime (`runtime/gather.rs`) and hands them to the engine together
//! ([`Engine::publish_each`]). They become one operation with one delivery per audience, as a
//! batch does, so what a batch shares (the operation, the audiences, each audience's delivery,
//! attempt, timer and ack) is paid once for all of them. Unlike a batch's, the events stay
//! independent:
//!
//! - they are not a run: each is handled on its own, in any order, as if published alone;
//! - a refusal is the refused event's alone: a permanent nack dead-letters that event (its
//!   caller gets [`Error::DeadLettered`]) and the attempt goes on for the others; a retryable
//!   one is retried with the others not acknowledged, as a lone event's would be;
//! - each caller gets a receipt with its own event's id, or its own error
//!   ([`Done::PublishedEach`]).
//!
//! What the events share is what lone events to the same audiences would have had anyway:
//! the instance each audience's copies went to and the attempts the delivery took, which the
//! receipts report alike.

use smallvec::SmallVec;

use super::super::Engine;
use super::super::action::Done;
use super::super::outcome::letter;
use super::{DeliveryId, Op};
use crate::Error;
use crate::receipts::PublishReceipt;

/// The largest payload of an event that travels with others: a larger one gains little from
/// sharing (its bytes cost more than the bookkeeping), and the events' frames stay far
/// below [`MIN_FRAME_LEN`].
pub(crate) const MAX_PAYLOAD: usize = 16 * 1024;

/// The smallest frame limit (`Limits::max_frame_len`) under which events travel together:
/// with it, an event of at most [`MAX_PAYLOAD`] whose headers and names keep to the limits
/// always fits a frame, so that nothing is refused once the events were taken.
pub(crate) const MIN_FRAME_LEN: usize = 1024 * 1024;

/// What became of each event of an operation made of separate calls' events.
#[derive(Debug)]
pub(crate) struct Each {
    /// An event's own failure (a dead letter), by its index in the operation.
    errors: SmallVec<[Option<Error>; 8]>,
}

impl Each {
    pub(super) fn new(events: usize) -> Self {
        Self {
            errors: (0..events).map(|_| None).collect(),
        }
    }

    /// Event `index` failed with `error`; its first failure is the one its caller hears.
    pub(in crate::engine) fn failed(&mut self, index: usize, error: impl FnOnce() -> Error) {
        if let Some(slot) = self.errors.get_mut(index) {
            slot.get_or_insert_with(error);
        }
    }

    /// Each event's result once every delivery ended: its own failure, the operation's (one
    /// that stopped every delivery), or a receipt listing the audiences' copies.
    pub(in crate::engine) fn results(&mut self, op: &mut Op) -> Done {
        let results = op
            .messages
            .iter()
            .zip(self.errors.iter_mut())
            .map(|(message, error)| match (error.take(), &op.error) {
                (Some(e), _) => Err(e),
                (None, Some(e)) => Err(e.duplicate()),
                (None, None) => Ok(PublishReceipt {
                    id: message.id,
                    deliveries: op.copies.clone(),
                    dropped: op.dropped.clone(),
                }),
            })
            .collect();
        op.error = None;
        Done::PublishedEach(results)
    }
}

impl<H: Clone> Engine<H> {
    /// The receiver refused message `index` of `d` for good: in an operation of separate
    /// events, that event alone is dead-lettered (and not sent again), and the attempt goes
    /// on for the others. Says whether `d` is such a delivery; if not, nothing changed.
    pub(in crate::engine) fn refuse_alone(
        &mut self,
        d: DeliveryId,
        index: usize,
        reason: &str,
    ) -> bool {
        let Some(del) = self.out.deliveries.get(d) else {
            return false;
        };
        let Some(op) = self.out.ops.get(del.op).filter(|o| o.each.is_some()) else {
            return false;
        };
        let Some(envelope) = op.messages.get(index) else {
            return false;
        };
        let letter = letter(del, envelope, reason);
        let op = del.op;
        if let Some(del) = self.out.deliveries.get_mut(d)
            && let Some(done) = del.acked.get_mut(index)
            && !*done
        {
            *done = true;
            del.acked_count += 1;
        }
        if let Some(each) = self.out.ops.get_mut(op).and_then(|o| o.each.as_deref_mut()) {
            each.failed(index, || Error::DeadLettered(Box::new(letter.clone())));
        }
        self.note_dead_lettered(d); // metrics/hooks.rs
        self.record_dead_letter(letter);
        true
    }

    /// Whether the operation of `d` is made of separate calls' events.
    pub(in crate::engine) fn of_separate_events(&self, d: DeliveryId) -> bool {
        self.out
            .deliveries
            .get(d)
            .and_then(|del| self.out.ops.get(del.op))
            .is_some_and(|o| o.each.is_some())
    }
}
