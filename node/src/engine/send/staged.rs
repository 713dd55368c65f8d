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
//! node adds no delay. Staged events count towards the backlog's limit
//! (`Config::max_background_publishes`, which counts events, not operations, and
//! `max_background_bytes`). A node that
//! stops publishes what is staged first (graceful: delivered within the grace period; killed:
//! dead-lettered, as every background copy not delivered).

use std::time::Instant;

use shoal_proto::SmolStr;

use super::super::action::Action;
use super::super::{Engine, topic};
use super::OpKind;
use super::each::MAX_PAYLOAD;
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
}

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
            && event.payload().len() <= MAX_PAYLOAD
            && shoal_proto::validate_envelope(event.envelope(), &self.config.limits).is_ok()
    }

    /// Stages `event` (which [`Engine::stages_background`]) after the checks a lone background publish
    /// makes before anything is sent; returns its receipt, which lists no deliveries, as
    /// every background publish's.
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

    /// Publishes the staged events: each topic's as one operation (of at most
    /// [`MAX_BATCH_EVENTS`]) in which each event goes on its own.
    pub(crate) fn publish_staged(&mut self, now: Instant) {
        let topics = std::mem::take(&mut self.out.staged.topics);
        self.out.staged.count = 0;
        self.out.staged.bytes = 0;
        let options = PublishOptions::background();
        for (_, mut events) in topics {
            while !events.is_empty() {
                let mut these: Events = if events.len() > MAX_BATCH_EVENTS {
                    events.drain(..MAX_BATCH_EVENTS).collect()
                } else {
                    std::mem::take(&mut events)
                };
                let Err(e) = self.publish_shaped(&mut these, Shape::Each, &options, now) else {
                    continue;
                };
                // Checked when staged; not expected. Their calls returned, so they are
                // dead letters rather than lost without a word.
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
        }
    }
}
