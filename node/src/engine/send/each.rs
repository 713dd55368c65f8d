//! Messages of separate calls that travel as one operation, each with a result of its own:
//! lone events of `publish` calls on one topic, or commands of `send` calls to one service.
//!
//! A node with many calls in flight gathers the lone events published, or commands sent, in
//! one turn of its runtime (`runtime/gather.rs`) and hands them to the engine together
//! ([`Engine::publish_each`], [`Engine::send_each`]). They become one operation with one
//! delivery per audience (or one to the service), as a batch does, so what a batch shares
//! (the operation, the audiences, each delivery's attempt, timer and ack) is paid once for all
//! of them. Unlike a batch's, the messages stay independent:
//!
//! - they are not a run: each is handled on its own, in any order, as if sent alone;
//! - a refusal is the refused message's alone: a permanent nack dead-letters that message
//!   (its caller gets [`Error::DeadLettered`]) and the attempt goes on for the others; a
//!   retryable one is retried with the others not acknowledged, once the attempt's other
//!   messages are answered;
//! - each caller gets a receipt with its own message's id, or its own error
//!   ([`Done::PublishedEach`], [`Done::SentEach`]).
//!
//! What the messages share is what lone messages to the same destinations would have had
//! anyway: the instance each delivery went to and the attempts it took, which the receipts
//! report alike. Keyed messages keep their keys' turns and instances: those that cannot share
//! a delivery get deliveries of their own, each carrying part of the operation
//! (`parts.rs`), and their events' receipts list their own copies.

use std::time::Instant;

use shoal_proto::{NodeId, To};
use smallvec::SmallVec;

use super::super::Engine;
use super::super::action::{Action, Done, OpId};
use super::super::delivery::Spec;
use super::super::outcome::letter;
use super::super::peers::{Route, Target};
use super::{DeliveryId, Events, Op, OpKind, encoded_head, new_op};
use crate::receipts::{Deliveries, EventDelivery, PublishReceipt, Receipt};
use crate::{Error, Message};

/// The largest payload of an event that travels with others: a larger one gains little from
/// sharing (its bytes cost more than the bookkeeping), and the events' frames stay far
/// below [`MIN_FRAME_LEN`].
pub(crate) const MAX_PAYLOAD: usize = 16 * 1024;

/// The smallest frame limit (`Limits::max_frame_len`) under which events travel together:
/// with it, an event of at most [`MAX_PAYLOAD`] whose headers and names keep to the limits
/// always fits a frame, so that nothing is refused once the events were taken.
pub(crate) const MIN_FRAME_LEN: usize = 1024 * 1024;

/// What became of each message of an operation made of separate calls' messages.
#[derive(Debug)]
pub(crate) struct Each {
    /// A message's own failure (a dead letter), by its index in the operation.
    errors: SmallVec<[Option<Error>; 8]>,
    /// Commands waited for: the instance and attempt that acknowledged each, for its own
    /// receipt (a command acknowledged before the instance of a later attempt failed names the
    /// one that handled it, not the one the others went on to); empty otherwise (events,
    /// requests, background commands: no receipt names an instance).
    handled: SmallVec<[Option<(NodeId, u32)>; 8]>,
    /// Events: the copies made by deliveries that carried only some of them (keyed events
    /// at their keys' instances, `parts.rs`); empty otherwise.
    part_copies: Vec<EventDelivery>,
    /// Which of `part_copies` each event's are.
    copied_by: Vec<SmallVec<[u32; 2]>>,
    /// Events: the audiences each event's own deliveries dropped, when they were not the
    /// same for all (`parts.rs`); empty otherwise (rare: an audience gone on purpose).
    dropped_by: Vec<SmallVec<[String; 1]>>,
    /// Requests: which were answered (their callers have their replies); empty otherwise
    /// (`each_request.rs`).
    replied: Vec<bool>,
}

impl Each {
    /// For `messages` events, or commands nobody waits for.
    pub(super) fn new(messages: usize) -> Self {
        Self {
            errors: (0..messages).map(|_| None).collect(),
            handled: SmallVec::new(),
            part_copies: Vec::new(),
            copied_by: Vec::new(),
            dropped_by: Vec::new(),
            replied: Vec::new(),
        }
    }

    /// For commands waited for: each with a receipt naming the instance that handled it.
    fn of_commands(messages: usize) -> Self {
        Self {
            handled: SmallVec::from_elem(None, messages),
            ..Self::new(messages)
        }
    }

    /// For requests: each answered by its own reply (`each_request.rs`).
    pub(in crate::engine) fn of_requests(messages: usize) -> Self {
        Self {
            replied: vec![false; messages],
            ..Self::new(messages)
        }
    }

    /// Request `index` got its reply: `true` if it was still waiting for it (not answered,
    /// nor failed, before).
    pub(in crate::engine) fn reply(&mut self, index: usize) -> bool {
        let failed = self.errors.get(index).is_none_or(Option::is_some);
        match self.replied.get_mut(index) {
            Some(replied) if !*replied && !failed => {
                *replied = true;
                true
            }
            _ => false,
        }
    }

    /// Whether every request was answered or failed.
    pub(in crate::engine) fn all_answered(&self) -> bool {
        self.replied
            .iter()
            .zip(&self.errors)
            .all(|(replied, failed)| *replied || failed.is_some())
    }

    /// The copies of `audience` for the events `members` were dropped.
    pub(in crate::engine) fn dropped(
        &mut self,
        members: impl Iterator<Item = usize>,
        audience: &str,
    ) {
        if self.dropped_by.is_empty() {
            self.dropped_by
                .resize_with(self.errors.len(), SmallVec::new);
        }
        for index in members {
            if let Some(dropped) = self.dropped_by.get_mut(index) {
                dropped.push(audience.to_owned());
            }
        }
    }

    /// The events `members` were delivered as `copy` says.
    pub(in crate::engine) fn copied(
        &mut self,
        members: impl Iterator<Item = usize>,
        copy: EventDelivery,
    ) {
        if self.copied_by.is_empty() {
            self.copied_by.resize_with(self.errors.len(), SmallVec::new);
        }
        let at = self.part_copies.len() as u32;
        self.part_copies.push(copy);
        for index in members {
            if let Some(copies) = self.copied_by.get_mut(index) {
                copies.push(at);
            }
        }
    }

    /// Message `index` failed with `error`; its first failure is the one its caller hears
    /// (a request's, unless it had its reply). For a request, returns a copy of that first
    /// failure to tell its caller now.
    fn failed(&mut self, index: usize, error: impl FnOnce() -> Error) -> Option<Error> {
        if self.replied.get(index).copied().unwrap_or(false) {
            return None;
        }
        let slot = self.errors.get_mut(index)?;
        if slot.is_some() {
            return None;
        }
        let error = slot.insert(error());
        (!self.replied.is_empty()).then(|| error.duplicate())
    }

    /// Each message's result once every delivery ended: its own failure, the operation's
    /// (one that stopped every delivery), or a receipt with its own id: for an event, listing
    /// the audiences' copies; for a command, naming the instance that handled it.
    pub(in crate::engine) fn results(&mut self, op: &mut Op) -> Done {
        let error = op.error.take();
        let each = op
            .messages
            .iter()
            .zip(self.errors.iter_mut())
            .map(|(message, failed)| match (failed.take(), &error) {
                (Some(e), _) => Err(e),
                (None, Some(e)) => Err(e.duplicate()),
                (None, None) => Ok(message.id),
            });
        match op.kind {
            OpKind::Send => Done::SentEach(
                each.zip(&self.handled)
                    .map(|(result, handled)| {
                        let id = result?;
                        let (node, attempts) = handled.ok_or(Error::ShuttingDown)?;
                        Ok(Receipt { id, node, attempts })
                    })
                    .collect(),
            ),
            // The events went to the same audiences together: their receipts share one list,
            // unless keyed events went to their keys' instances (each lists its own).
            _ => {
                let deliveries = deliveries(
                    (&self.part_copies, &self.copied_by),
                    op.messages.len(),
                    std::mem::take(&mut op.copies),
                );
                let dropped_by = &self.dropped_by;
                Done::PublishedEach(
                    each.zip(deliveries)
                        .enumerate()
                        .map(|(index, (result, deliveries))| {
                            let dropped = match dropped_by.get(index) {
                                Some(own) => op.dropped.iter().chain(own).cloned().collect(),
                                None => op.dropped.clone(),
                            };
                            Ok(PublishReceipt {
                                id: result?,
                                deliveries,
                                dropped,
                            })
                        })
                        .collect(),
                )
            }
        }
    }
}

impl<H: Clone> Engine<H> {
    /// Sends the commands of separate calls, all to `service` with the default options, as
    /// one operation in which each is handled on its own and has a result of its own
    /// ([`Done::SentEach`]). Keyed ones keep their keys' turns and instances (`parts.rs`).
    ///
    /// Refused before anything is taken from `messages` (so that each can be sent alone and
    /// hear its own error) when they cannot go together or one breaks a limit.
    pub(crate) fn send_each(
        &mut self,
        service: &str,
        messages: &mut Events,
        now: Instant,
    ) -> Result<OpId, Error> {
        let each = Each::of_commands(messages.len());
        self.each_to_service(OpKind::Send, service, messages, each, now)
    }

    /// Starts an operation of `kind` (commands, or requests: `each_request.rs`) made of
    /// separate calls' `messages` to `service`, with one delivery to the service for all,
    /// keyed ones at their keys' instances and in their keys' turns (`parts.rs`). `each`
    /// keeps what becomes of each message.
    ///
    /// Refused before anything is taken from `messages` when they cannot go together.
    pub(super) fn each_to_service(
        &mut self,
        kind: OpKind,
        service: &str,
        messages: &mut Events,
        each: Each,
        now: Instant,
    ) -> Result<OpId, Error> {
        self.check_service(service)?;
        self.accepting(kind)?;
        self.may_travel_together(messages)?;
        let (envelopes, items) = self.first_attempt(messages, false)?;
        let limits = &self.config.limits;
        let head = encoded_head(
            &mut self.out.heads,
            &envelopes[0],
            To::Handler,
            (true, false),
            items.iter().map(|(_, item)| item),
            limits,
        )?;
        let spec = Spec::point_to_point(self.config.retry.clone());
        let route = Route::Service(Target::service(self.names.get(service)));
        self.stats.gathered += envelopes.len() as u64;
        let mut op = new_op(kind, envelopes, items, 1);
        op.each = Some(Box::new(each));
        let op = self.out.insert_op(op);
        self.add_each_delivery(op, route, head, spec, now); // parts.rs
        Ok(op)
    }

    /// Refuses messages that cannot travel together, before anything is taken from them:
    /// none, or one too large or that breaks a limit (it would fail them all once taken).
    pub(in crate::engine) fn may_travel_together(&self, messages: &Events) -> Result<(), Error> {
        if messages.is_empty() {
            return Err(Error::InvalidBatch(
                "separate calls' messages travel together only when there are some".into(),
            ));
        }
        messages
            .iter()
            .try_for_each(|message| self.travels_with_others(message))
    }

    /// Whether `message` may travel with others (see [`Engine::may_travel_together`]): not
    /// too large, within every limit, on a node whose frames hold any such message.
    pub(in crate::engine) fn travels_with_others(&self, message: &Message) -> Result<(), Error> {
        let limits = &self.config.limits;
        if limits.max_frame_len < MIN_FRAME_LEN || message.payload().len() > MAX_PAYLOAD {
            return Err(Error::InvalidBatch(
                "a message too large to travel with others".into(),
            ));
        }
        shoal_proto::validate_envelope(message.envelope(), limits)
            .map_err(|e| Error::InvalidBatch(format!("a message breaks a limit: {e}")))
    }

    /// An attempt of `d` ends (answered, failed or abandoned): in an operation of separate
    /// commands, those it acknowledged note the instance and the attempt, for their receipts.
    pub(in crate::engine) fn note_answered(&mut self, d: DeliveryId) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        if !matches!(del.route, Route::Service(_)) {
            return;
        }
        let Some(each) = self
            .out
            .ops
            .get_mut(del.op)
            .and_then(|o| o.each.as_deref_mut())
        else {
            return;
        };
        let (node, attempts) = (del.node, del.retry.attempts().max(1));
        let Some(node) = node else {
            return;
        };
        for (index, (handled, acked)) in each.handled.iter_mut().zip(&del.acked).enumerate() {
            if *acked && handled.is_none() && del.carries(index) {
                *handled = Some((node, attempts));
            }
        }
    }

    /// The receiver refused message `index` of `d` for good: in an operation of separate
    /// calls' messages, that message alone is dead-lettered (and not sent again), and the
    /// attempt goes on for the others. Says whether `d` is such a delivery; if not, nothing changed.
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
        self.fail_one(op, index, || Error::DeadLettered(Box::new(letter.clone())));
        self.note_dead_lettered(d); // metrics/hooks.rs
        self.record_dead_letter(letter);
        true
    }

    /// Message `index` of `op`, an operation of separate calls' messages, failed with
    /// `error`, unless it failed or was answered before. A request's caller hears it now
    /// ([`Action::Answered`]); the others' hear it when the operation ends.
    pub(in crate::engine) fn fail_one(
        &mut self,
        op: OpId,
        index: usize,
        error: impl FnOnce() -> Error,
    ) {
        let Some(o) = self.out.ops.get_mut(op) else {
            return;
        };
        if let Some(error) = o.each.as_deref_mut().and_then(|e| e.failed(index, error))
            && let Ok(index) = u32::try_from(index)
        {
            self.actions.push_back(Action::Answered {
                op,
                index,
                result: Err(error),
            });
            self.end_if_answered(op); // each_request.rs
        }
    }

    /// Whether the operation of `d` is made of separate calls' messages.
    pub(in crate::engine) fn of_separate_calls(&self, d: DeliveryId) -> bool {
        self.out
            .deliveries
            .get(d)
            .and_then(|del| self.out.ops.get(del.op))
            .is_some_and(|o| o.each.is_some())
    }
}

/// Each event's list of copies: `shared` (those of deliveries that carried all), then
/// its own. Events with the same copies share one list.
fn deliveries(
    (part_copies, copied_by): (&[EventDelivery], &[SmallVec<[u32; 2]>]),
    events: usize,
    shared: Vec<EventDelivery>,
) -> Vec<Deliveries> {
    if copied_by.is_empty() {
        return vec![Deliveries::from(shared); events];
    }
    let mut made: SmallVec<[(&[u32], Deliveries); 4]> = SmallVec::new();
    copied_by
        .iter()
        .map(|own| {
            if let Some((_, list)) = made.iter().find(|(set, _)| *set == own.as_slice()) {
                return list.clone();
            }
            let copies = own.iter().filter_map(|at| part_copies.get(*at as usize));
            let list = Deliveries::from(shared.iter().chain(copies).cloned().collect::<Vec<_>>());
            made.push((own, list.clone()));
            list
        })
        .collect()
}
