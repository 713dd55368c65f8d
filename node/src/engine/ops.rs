//! Operations after they start: their results, cancellation by a caller who gave up, the end
//! of their last delivery, and what a stopping node does with them.

use std::time::{Duration, Instant};

use super::action::{Action, Done, OpId};
use super::delivery::{State, no_instance_reason};
use super::send::{DeliveryId, OpKind};
use super::{Engine, Lifecycle};
use crate::Error;
use crate::receipts::PublishReceipt;

impl<H: Clone> Engine<H> {
    /// Request `op`'s caller waits `timeout` at most: then, unanswered, it ends with
    /// [`Error::Timeout`]. The delivery keeps its own deadline; this one ends the whole
    /// request, so an answer that is merely late is a timeout, not a dead letter.
    pub(super) fn time_out_request(&mut self, op: OpId, timeout: Duration, now: Instant) {
        let Some(at) = now.checked_add(timeout) else {
            return; // never
        };
        if let Some(o) = self.out.ops.get_mut(op) {
            o.deadline = Some(at);
            self.out.request_deadlines.insert((at, op), timeout);
            self.deadline_at(at);
        }
    }

    /// Ends the requests whose callers stopped waiting by `now`: with [`Error::Timeout`] when
    /// the message may have reached a handler (an attempt is on its way), or dead-lettered
    /// with the reason, as a send would be at its deadline, when it has not: no instance is
    /// connected, or the instances tried refused it (no handler) and it waits to be retried.
    pub(super) fn expire_requests(&mut self, now: Instant) {
        while let Some(entry) = self.out.request_deadlines.first_entry()
            && entry.key().0 <= now
        {
            let ((_, op), timeout) = entry.remove_entry();
            let Some(o) = self.out.ops.get_mut(op) else {
                continue;
            };
            o.deadline = None;
            if o.result.is_some() {
                continue;
            }
            if let Some((d, reason)) = self.undelivered(op, now) {
                self.dead_letter(d, reason, now); // outcome.rs: sets the op's error
            }
            self.stop_deliveries(op, now);
            let error = self
                .out
                .ops
                .get_mut(op)
                .and_then(|o| o.error.take())
                .unwrap_or(Error::Timeout(timeout));
            self.complete(op, Err(error));
        }
    }

    /// A delivery of request `op` whose message has reached no handler by `now`, with why:
    /// it waits for an instance, or for its next attempt after a failed one. `None` while an
    /// attempt is on its way (its handler may be running: the request then times out).
    fn undelivered(&self, op: OpId, now: Instant) -> Option<(DeliveryId, String)> {
        let o = self.out.ops.get(op)?;
        o.deliveries.iter().find_map(|&d| {
            let del = self.out.deliveries.get(d).filter(|del| del.op == op)?;
            match del.state {
                State::Instance => Some((d, no_instance_reason(del, now))),
                State::Flight { .. } | State::Channel(_) => None,
                _ if !del.last_failure.is_empty() => Some((d, del.last_failure.clone())),
                _ => None,
            }
        })
    }

    /// Takes the result of an operation that completed ([`Action::Complete`]); the operation
    /// is then forgotten.
    pub(crate) fn take_result(&mut self, op: OpId) -> Option<Result<Done, Error>> {
        let result = self.out.ops.get_mut(op)?.result.take()?;
        self.forget_op(op);
        Some(result)
    }

    /// The caller gave up on `op` (dropped its future): its deliveries stop. A message
    /// already on its way may still be handled.
    pub(crate) fn cancel(&mut self, op: OpId, now: Instant) {
        self.stop_deliveries(op, now);
        self.forget_op(op);
    }

    /// Stops every delivery of `op`, without ending it.
    pub(super) fn stop_deliveries(&mut self, op: OpId, now: Instant) {
        self.end_deliveries(op, false, now);
    }

    /// `op`'s answer came (a synchronous request's reply, which stands for its ack): the
    /// attempt in flight succeeded, in the statistics and metrics as an ack would have it,
    /// and every other delivery stops. Does not end `op`.
    pub(super) fn answer_deliveries(&mut self, op: OpId, now: Instant) {
        self.end_deliveries(op, true, now);
    }

    fn end_deliveries(&mut self, op: OpId, answered: bool, now: Instant) {
        self.drop_copies(op); // multicast_copies.rs
        let Some(o) = self.out.ops.get_mut(op) else {
            return;
        };
        // Those waiting for their key's turn go first: a turn one of the others holds would
        // pass to them as it ends, and they would make an attempt (`parts.rs`: an
        // operation's message may wait behind another of the same operation). Its items
        // would not be written (the writer skips those of a delivery gone), but it might ask
        // for a connection or be dead-lettered.
        let mut ds = std::mem::take(&mut o.deliveries);
        ds.sort_by_key(|d| {
            self.out
                .deliveries
                .get(*d)
                .is_none_or(|del| del.state != State::Turn)
        });
        for d in ds {
            match self.out.deliveries.get(d) {
                Some(del) if del.op == op => {
                    if answered && matches!(del.state, State::Flight { .. }) {
                        self.succeed(d, now);
                    } else {
                        self.abandon(d, now);
                    }
                }
                _ => {}
            }
        }
    }

    pub(super) fn forget_op(&mut self, op: OpId) {
        let Some(o) = self.out.ops.get(op) else {
            return;
        };
        if o.kind == OpKind::Request {
            // Each of its requests (several when they travelled together).
            for m in &o.messages {
                if self.out.replies.get(&m.id).is_some_and(|(o, _)| *o == op) {
                    self.out.replies.remove(&m.id);
                }
            }
        }
        let kind = o.kind;
        self.out.remove_op(op);
        if kind == OpKind::Ping {
            self.out.pongs.retain(|_, (p, _)| *p != op);
        }
    }

    /// Ends `op` with `result` and tells whoever waits.
    pub(super) fn complete(&mut self, op: OpId, result: Result<Done, Error>) {
        let Some(o) = self.out.ops.get_mut(op) else {
            return;
        };
        if !o.kind.waited() {
            self.out.remove_op(op);
            return;
        }
        if o.result.is_none() {
            o.result = Some(result);
            self.actions.push_back(Action::Complete(op));
        }
    }

    /// A delivery of `op` ended; when it was the last, the operation ends.
    pub(super) fn delivery_ended(&mut self, op: OpId) {
        let Some(o) = self.out.ops.get_mut(op) else {
            return;
        };
        o.open = o.open.saturating_sub(1);
        if o.open > 0 {
            return;
        }
        // Background sends and publishes, asynchronous replies: nobody takes a result.
        if !o.kind.waited() {
            return self.out.remove_op(op);
        }
        let result = match o.kind {
            // Separate calls' messages (send/each.rs): a result for each.
            OpKind::Send | OpKind::Publish if o.each.is_some() => {
                let mut each = o.each.take().expect("checked above");
                Ok(each.results(o))
            }
            OpKind::Send => match (o.sent, o.error.take()) {
                (Some(receipt), _) => Ok(Done::Sent(receipt)),
                (None, Some(e)) => Err(e),
                (None, None) => Err(Error::ShuttingDown),
            },
            // Separate calls' requests (send/each_request.rs): each caller was told of its
            // own; those still waiting for a reply wait on (their timeout bounds the wait).
            OpKind::Request if o.each.is_some() => return self.end_if_answered(op),
            OpKind::Request => match o.error.take() {
                Some(e) => Err(e),
                // Acknowledged; the reply may still be on its way (the caller's timeout
                // bounds the wait).
                None => return,
            },
            OpKind::Publish => match o.error.take() {
                Some(e) => Err(e),
                None => Ok(Done::Published(PublishReceipt {
                    id: o.messages[0].id,
                    deliveries: std::mem::take(&mut o.copies).into(),
                    dropped: std::mem::take(&mut o.dropped),
                })),
            },
            OpKind::Ping | OpKind::Background | OpKind::Reply => return,
        };
        self.complete(op, result);
    }

    /// Refuses new calls once the node stops taking work.
    pub(super) fn accepting(&self, kind: OpKind) -> Result<(), Error> {
        match (self.lifecycle, kind) {
            (Lifecycle::Running, _) | (Lifecycle::Stopping, OpKind::Reply) => Ok(()),
            _ => Err(Error::ShuttingDown),
        }
    }

    /// Ends every call a user waits for with [`Error::ShuttingDown`]; background work goes on.
    pub(super) fn stop_user_ops(&mut self, now: Instant) {
        let waited: Vec<OpId> = self
            .out
            .ops
            .iter()
            .filter(|(_, o)| o.kind.waited() && o.result.is_none())
            .map(|(id, _)| id)
            .collect();
        for op in waited {
            self.stop_deliveries(op, now);
            self.complete(op, Err(Error::ShuttingDown));
        }
    }
}
