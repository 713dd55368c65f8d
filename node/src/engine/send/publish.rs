//! Publishing: one event, or a batch on one topic and key, to every audience of its topic.
//!
//! A publish is one operation with one delivery per audience ([`super::super::fanout`]: each
//! subscriber group, each ungrouped subscriber). Its events are checked (topic, policy, one
//! topic and key per batch, the batch size) and encoded once, and every copy's head is made
//! before anything is sent, so a publish that cannot be sent fails whole. Copies for members
//! of a multicast channel may go on the channel without a delivery each
//! ([`super::super::multicast_copies`]). Best-effort copies, background publishes and topics
//! nobody subscribes to are done at once (a background event may first wait for the turn's
//! end, [`super::staged`]); a reliable publish's caller waits for every audience's
//! acknowledgement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::codec::EncodedHead;
use shoal_proto::{MessageId, To};
use smallvec::SmallVec;

use super::super::action::{Done, OpId};
use super::super::delivery::Spec;
use super::super::fanout::Audience;
use super::super::ordering::Destination;
use super::super::peers::Route;
use super::super::{Engine, topic};
use super::{Each, OpKind, encoded_head, new_op};
use crate::options::{MAX_BATCH_EVENTS, PublishOptions, Reliability};
use crate::receipts::{Deliveries, PublishReceipt};
use crate::{Error, Message};

/// The events of one `publish` call: usually one, kept inline (no allocation for a single
/// event), or a batch.
pub(crate) type Events = SmallVec<[Message; 1]>;

/// What [`Engine::publish`] started.
#[derive(Debug)]
pub(crate) enum Publishing {
    /// Wait for this operation.
    Waiting(OpId),
    /// Nothing to wait for: best-effort copies were written (or dropped), a background
    /// publish goes on by itself, or nobody subscribes.
    Done(PublishReceipt),
}

/// How the events of one publish travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// One event of one call.
    Lone,
    /// A batch: one call's events, handled in order as one run.
    Batch,
    /// Separate calls' events, each handled on its own and with a result of its own
    /// ([`super::each`]).
    Each,
}

impl<H: Clone> Engine<H> {
    /// Publishes `events` (one, or a batch on one topic and key) to every audience of their
    /// topic. `now` is asked for only if they go now: a background event while others are on
    /// their way waits for the turn's end instead, which needs no clock (staged.rs).
    pub(crate) fn publish(
        &mut self,
        mut events: Events,
        batched: bool,
        options: &PublishOptions,
        now: impl FnOnce() -> Instant,
    ) -> Result<Publishing, Error> {
        if let Some(staged) = self.stage_if_due(&mut events, batched, options) {
            return staged.map(Publishing::Done);
        }
        let shape = if batched { Shape::Batch } else { Shape::Lone };
        self.publish_shaped(&mut events, shape, options, now())
    }

    /// Publishes the events of separate calls, all on one topic without a key, reliably and
    /// waited for, as one operation in which each event is handled on its own and has a
    /// result of its own ([`super::each`]): [`Done::PublishedEach`] when waited for, or
    /// [`Publishing::Done`] with the first event's receipt when nobody subscribes.
    ///
    /// Refused before anything is taken from `events` (so that each can be published alone
    /// and hear its own error) when they cannot go together or one breaks a limit.
    pub(crate) fn publish_each(
        &mut self,
        events: &mut Events,
        options: &PublishOptions,
        now: Instant,
    ) -> Result<Publishing, Error> {
        let reliable = options.reliability == Reliability::Reliable;
        if !reliable || options.background {
            return Err(Error::InvalidBatch(
                "separate events travel together only when reliable and waited for".into(),
            ));
        }
        self.may_travel_together(events)?;
        self.publish_shaped(events, Shape::Each, options, now)
    }

    /// Whether separate calls' messages may travel together ([`Engine::publish_each`],
    /// [`Engine::send_each`]): not on a node with a multicast channel, whose copies go one
    /// event at a time. Fixed when the engine is made.
    pub(crate) fn may_gather(&self) -> bool {
        self.channels.is_none()
    }

    /// Publishes `events` (taken only once they passed every check that concerns them all).
    pub(super) fn publish_shaped(
        &mut self,
        events: &mut Events,
        shape: Shape,
        options: &PublishOptions,
        now: Instant,
    ) -> Result<Publishing, Error> {
        let batched = shape == Shape::Batch;
        if let Some(policy) = &options.retry {
            policy.check("PublishOptions::retry")?;
        }
        let reliable = options.reliability == Reliability::Reliable;
        let kind = if options.background && reliable {
            OpKind::Background
        } else {
            OpKind::Publish
        };
        self.accepting(kind)?;
        if kind == OpKind::Background && shape != Shape::Each {
            let bytes = events.iter().map(|e| e.payload().len()).sum();
            self.room_for_background(events.len(), bytes)?;
        }
        let Some(first) = events.first() else {
            return Err(Error::InvalidBatch(
                "a batch needs at least one event".into(),
            ));
        };
        let topic = first.env.name.clone();
        topic::check_topic(&topic).map_err(Error::Topic)?;
        // A topic this node's policy forbids fails here, before anything is sent (authz.rs).
        self.authorize_publish(&topic)?;
        // Separate calls' events may have keys of their own (`parts.rs`).
        let key = first.env.partition_key.clone();
        if events
            .iter()
            .any(|e| e.name() != topic || (shape != Shape::Each && e.key() != key.as_deref()))
        {
            return Err(Error::InvalidBatch(
                "the events of a batch must share one topic and one partition key".into(),
            ));
        }
        if events.len() > MAX_BATCH_EVENTS {
            return Err(Error::InvalidBatch(format!(
                "{} events; a batch holds at most {MAX_BATCH_EVENTS}",
                events.len()
            )));
        }
        let (envelopes, items) = self.first_attempt(events, batched)?;
        let limits = &self.config.limits;
        let count = envelopes.len() as u64;
        self.stats.published += count;
        if shape == Shape::Each {
            self.stats.gathered += count;
        }
        let audiences = self.peers.audiences(&self.conns, &topic, now);
        if audiences.is_empty() {
            self.stats.events_unrouted += count;
        }
        let policy = options
            .retry
            .clone()
            .unwrap_or_else(|| self.config.retry.clone());
        let hold = options.hold_for.unwrap_or(self.config.event_hold);
        // Every copy's head is made (and the batch checked against the frame limit with it)
        // before anything is sent. Audiences for the same recipient share one (every
        // ungrouped subscriber's copy is `To::Instance`): it is looked up once.
        let mut heads: SmallVec<[(To, Arc<EncodedHead>); 2]> =
            SmallVec::with_capacity(audiences.len());
        for (audience, _) in audiences.iter() {
            let to = match audience {
                Audience::Group(group) => To::Group(group.clone()),
                Audience::Instance(_) => To::Instance,
            };
            let head = match heads.last() {
                Some((last, head)) if *last == to => Arc::clone(head),
                _ => encoded_head(
                    &mut self.out.heads,
                    &envelopes[0],
                    to.clone(),
                    (reliable, batched),
                    items.iter().map(|(_, item)| item),
                    limits,
                )?,
            };
            heads.push((to, head));
        }
        let id = envelopes[0].id;
        let mut op = new_op(kind, envelopes, items, heads.len());
        if shape == Shape::Each {
            op.each = Some(Box::new(Each::new(op.messages.len())));
        }
        let op = self.out.insert_op(op);
        // On a multicast channel, copies to its members need no delivery each at first
        // (multicast_copies.rs); a keyed event's copies wait for their key's turn as
        // deliveries.
        let lone = reliable && shape == Shape::Lone && count == 1 && key.is_none();
        let on_channel = self.channels.is_some() && self.channel_may_take(&topic, lone);
        for (copy, (_, head)) in audiences.iter().zip(heads) {
            let audience = &copy.0;
            let spec = Spec {
                policy: policy.clone(),
                fail_fast: false,
                // An ungrouped subscriber that is gone is gone for good (a restart is a new
                // node): its copy is not held, only a group's is.
                hold: Some(match audience {
                    Audience::Instance(_) => Duration::ZERO,
                    Audience::Group(_) => hold,
                }),
                reliable,
                ordered: batched,
            };
            if on_channel && self.stage_copy(op, &topic, copy, &head, &spec, now) {
                continue;
            }
            let route = Route::Audience {
                topic: topic.clone(),
                audience: audience.clone(),
            };
            if shape == Shape::Each {
                self.add_each_delivery(op, route, head, spec, now); // parts.rs
                continue;
            }
            // Best-effort copies are not retried, so they need no turn.
            let slot = key
                .as_ref()
                .filter(|_| reliable)
                .map(|k| (Destination::of(&route), k.clone()));
            self.add_delivery(op, route, head, spec, slot, now);
        }
        // Best-effort copies and topics nobody subscribes to are done at once (a background
        // publish too: nothing would ever end its operation).
        let nobody = self
            .out
            .ops
            .get(op)
            .is_some_and(|o| o.open == 0 && o.result.is_none());
        if nobody {
            self.forget_op(op);
            return Ok(Publishing::Done(empty_receipt(id)));
        }
        if kind == OpKind::Background {
            return Ok(Publishing::Done(empty_receipt(id)));
        }
        // Separate calls' events: each caller takes its own result, even one there already.
        if shape == Shape::Each {
            return Ok(Publishing::Waiting(op));
        }
        match self.take_result(op) {
            Some(Ok(Done::Published(receipt))) => Ok(Publishing::Done(receipt)),
            Some(Ok(other)) => Err(Error::Internal(format!("unexpected result {other:?}"))),
            Some(Err(e)) => Err(e),
            None => Ok(Publishing::Waiting(op)),
        }
    }
}

pub(super) fn empty_receipt(id: MessageId) -> PublishReceipt {
    PublishReceipt {
        id,
        deliveries: Deliveries::default(),
        dropped: Vec::new(),
    }
}
