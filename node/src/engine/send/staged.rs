//! Background events published one by one while others are on their way wait for the end of
//! the runtime's turn, and go together.
//!
//! A background publish ([`crate::PublishOptions::background`]) returns at once: nobody
//! waits for its copies. A service streaming events that way paid for a whole operation per
//! event (its deliveries, attempt, timer, and the engine's work on each ack), where events
//! published together can share them, as the events of many waiting callers do
//! ([`super::each`], `runtime/gather.rs`).
//!
//! So a lone, unkeyed background event published while other background events are on their
//! way is **staged**. It is checked at once, so that its call hears every error it would have
//! heard alone: a node that stops, the backlog's limit, a bad topic, the node's policy (a
//! message that breaks a limit is not staged, and fails alone). Then it waits, with the others
//! of its topic, until the IO layer calls [`Engine::publish_staged`]. The engine asks for that
//! call with [`Action::PublishStaged`] when the first is staged, and the runtime makes it once
//! the tasks ready then have run. There each topic's events become one operation in which
//! each event is handled, retried and dead-lettered on its own.
//!
//! An event published when no background event is on its way goes at once, as before: an idle
//! node adds no delay. Staged events count towards the backlog's caps
//! (`Config::max_background_publishes`, which counts events, not operations, and
//! `max_background_bytes`). Events go to the engine an operation (at most
//! [`MAX_BATCH_EVENTS`]) per call, and at most [`MAX_STAGED_TOPICS`] topics have staged
//! events. A node that stops publishes what is staged first (graceful: delivered within the
//! grace period; killed: dead-lettered, as every background copy not delivered).

use std::time::Instant;

use shoal_proto::SmolStr;

use super::super::action::Action;
use super::super::{Engine, topic};
use super::OpKind;
use super::publish::{Events, Shape, empty_receipt};
use crate::options::{MAX_BATCH_EVENTS, PublishOptions, Reliability};
use crate::receipts::PublishReceipt;
use crate::{BacklogLimit, DeadLetter, Error, Message};

/// Background events waiting for [`Engine::publish_staged`], by topic.
#[derive(Debug, Default)]
pub(in crate::engine) struct Staged {
    /// Each topic's events, topics in the order they were first staged.
    topics: Vec<(SmolStr, Events)>,
    /// Events in `topics`, and their payload bytes.
    count: usize,
    bytes: usize,
}

impl Staged {
    /// Events staged.
    pub(in crate::engine) fn count(&self) -> usize {
        self.count
    }

    /// Their payload bytes.
    pub(in crate::engine) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether an event on `topic` may be staged: its topic has staged events, or fewer than
    /// [`MAX_STAGED_TOPICS`] have. Past that, events go at once.
    fn has_room_for(&self, topic: &str) -> bool {
        self.topics.len() < MAX_STAGED_TOPICS || self.topics.iter().any(|(t, _)| t == topic)
    }
}

/// The most topics with staged events at once. Staged events are looked up by topic; a
/// service publishing on a topic per entity (`order.<id>`) would make many operations of one
/// event each, which staging does not make cheaper.
const MAX_STAGED_TOPICS: usize = 64;

impl<H: Clone> Engine<H> {
    /// Stages the event of `events` (published with `options`, `batched` or not) when it is
    /// to wait for the turn's end (see the module docs): takes it, and returns its call's
    /// result. `None` leaves `events` as they were, to be published now. Needs no clock.
    pub(crate) fn stage_if_due(
        &mut self,
        events: &mut Events,
        batched: bool,
        options: &PublishOptions,
    ) -> Option<Result<PublishReceipt, Error>> {
        let [event] = events.as_slice() else {
            return None;
        };
        if batched || !self.stages_background(event, options) {
            return None;
        }
        let event = events.pop()?;
        Some(self.stage_background(event))
    }

    /// Whether `event`, a lone event published with `options`, is staged rather than
    /// published now.
    fn stages_background(&self, event: &Message, options: &PublishOptions) -> bool {
        options.background
            && options.reliability == Reliability::Reliable
            && options.retry.is_none()
            && options.hold_for.is_none()
            && event.key().is_none()
            && self.out.background_publishes() > 0
            && self.may_gather()
            && self.out.staged.has_room_for(&event.env.name)
            && self.travels_with_others(event).is_ok()
    }

    /// Stages `event` (which [`Engine::stages_background`]) after the checks a lone
    /// background publish makes before anything is sent; returns its receipt, which lists no
    /// deliveries, as every background publish's.
    fn stage_background(&mut self, event: Message) -> Result<PublishReceipt, Error> {
        self.accepting(OpKind::Background)?;
        let bytes = event.payload().len();
        self.room_for_background(1, bytes)?;
        let topic = &event.env.name;
        topic::check_topic(topic).map_err(Error::Topic)?;
        self.authorize_publish(topic)?;
        let receipt = empty_receipt(event.id());
        let staged = &mut self.out.staged;
        match staged.topics.iter_mut().find(|(t, _)| t == topic) {
            Some((_, events)) => events.push(event),
            None => staged
                .topics
                .push((topic.clone(), smallvec::smallvec![event])),
        }
        staged.count += 1;
        staged.bytes += bytes;
        if staged.count == 1 {
            self.actions.push_back(Action::PublishStaged);
        }
        Ok(receipt)
    }

    /// Refuses `events` background events of `bytes` payload bytes when the node holds as
    /// many as it may (`Config::max_background_publishes`, `max_background_bytes`): the call
    /// fails with [`Error::Backlog`], and keeps nothing. Events larger than the byte limit
    /// are taken when no other is held.
    pub(super) fn room_for_background(&mut self, events: usize, bytes: usize) -> Result<(), Error> {
        let (held, held_bytes) = (self.out.background_publishes(), self.out.background_bytes());
        let limit = if held + events > self.config.max_background_publishes && held > 0 {
            BacklogLimit::Events(self.config.max_background_publishes)
        } else if held_bytes + bytes > self.config.max_background_bytes && held > 0 {
            BacklogLimit::Bytes(self.config.max_background_bytes)
        } else {
            return Ok(());
        };
        self.stats.background_refused += 1;
        Err(Error::Backlog { limit })
    }

    /// Publishes staged events: the first topic's, at most [`MAX_BATCH_EVENTS`] of them, as
    /// one operation in which each event goes on its own. Says whether more are staged (each
    /// call holds the engine for one operation's worth, as a hand-over of gathered calls
    /// does).
    pub(crate) fn publish_staged(&mut self, now: Instant) -> bool {
        let staged = &mut self.out.staged;
        let Some((_, events)) = staged.topics.first_mut() else {
            return false;
        };
        let mut these: Events = if events.len() > MAX_BATCH_EVENTS {
            events.drain(..MAX_BATCH_EVENTS).collect()
        } else {
            staged.topics.remove(0).1
        };
        staged.count -= these.len();
        staged.bytes -= these.iter().map(|e| e.payload().len()).sum::<usize>();
        let more = !staged.topics.is_empty();
        let options = PublishOptions::background();
        let count = these.len();
        if let Err(e) = self.publish_shaped(&mut these, Shape::Each, &options, now) {
            // Not expected: each event passed every check when it was staged, the same a
            // message travelling with others passes. Their calls returned, so those not taken
            // are dead letters rather than lost without a word.
            tracing::error!("{count} staged background events not published: {e}");
            for event in these {
                self.record_dead_letter(DeadLetter {
                    service: String::new(),
                    group: None,
                    message: event,
                    attempts: 0,
                    last_failure: format!("not published: {e}"),
                });
            }
        }
        more
    }

    /// Publishes every staged event (the node stops).
    pub(in crate::engine) fn publish_all_staged(&mut self, now: Instant) {
        while self.publish_staged(now) {}
    }
}
