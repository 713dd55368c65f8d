//! Background messages sent one by one while others are on their way wait until their
//! producer pauses, and go together.
//!
//! A background publish ([`crate::Node::publish_background`], or `publish_with` with
//! [`crate::PublishOptions::background`]) or background send
//! ([`crate::Node::send_background`]) returns at once: nobody waits for its deliveries. A
//! service streaming events or commands that way paid for a whole operation per message (its
//! deliveries, attempt, timer, and the engine's work on each ack), where messages sent
//! together can share them, as the messages of many waiting callers do ([`super::each`],
//! `runtime/gather.rs`).
//!
//! So a lone, unkeyed background event or command sent while other background messages are
//! on their way is **staged**. It is checked at once, so that its call hears every error it
//! would have heard alone: a node that stops, the backlog's limit, a bad topic or service
//! name, the node's policy (a message that breaks a limit is not staged, and fails alone).
//! Then it waits, with the others of its topic or service, until the IO layer calls
//! [`Engine::send_staged`]. The engine asks for that call with [`Action::SendStaged`] when
//! the first is staged, and the runtime makes it once the producer pauses (a turn of the
//! runtime at a time while each adds some, bounded: `runtime/gather.rs`). There
//! each topic's events, and each service's commands, become one operation in which each
//! message is handled, retried and dead-lettered on its own.
//!
//! A message sent when no background message is on its way goes at once, as before: an idle
//! node adds no delay. Staged messages count towards the backlog's caps
//! (`Config::max_background_publishes`, which counts messages, not operations, and
//! `max_background_bytes`). Messages go to the engine an operation (at most
//! [`MAX_BATCH_EVENTS`]) per call, and at most [`MAX_STAGED`] topics and services have
//! staged messages. A node that stops sends what is staged first (graceful: delivered within
//! the grace period; killed: dead-lettered, as every background message not delivered).

use std::time::Instant;

use shoal_proto::{MessageId, SmolStr};

use super::super::action::Action;
use super::super::peers::Target;
use super::super::{Engine, topic};
use super::each::Each;
use super::publish::{Events, Shape, empty_receipt};
use super::{OpKind, Spec};
use crate::options::{MAX_BATCH_EVENTS, PublishOptions, Reliability};
use crate::receipts::PublishReceipt;
use crate::{DeadLetter, Error, Message};

/// What staged messages are: events, staged by topic, or commands, staged by service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Events,
    Commands,
}

/// Background messages waiting for [`Engine::send_staged`], by topic or service.
#[derive(Debug, Default)]
pub(in crate::engine) struct Staged {
    /// Each topic's events and each service's commands, in the order they were first
    /// staged.
    bounds: Vec<(Kind, SmolStr, Events)>,
    /// Messages in `bounds`, and their payload bytes.
    count: usize,
    bytes: usize,
}

impl Staged {
    /// Messages staged.
    pub(in crate::engine) fn count(&self) -> usize {
        self.count
    }

    /// Their payload bytes.
    pub(in crate::engine) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Where the staged messages of `kind` for `name` (a topic or a service) are, if any are.
    fn position(&self, kind: Kind, name: &str) -> Option<usize> {
        self.bounds
            .iter()
            .position(|(k, n, _)| *k == kind && n == name)
    }

    /// Whether a message of `kind` for `name` may be staged: `name` has staged messages, or
    /// fewer than [`MAX_STAGED`] topics and services have. Past that, messages go at once.
    fn has_room_for(&self, kind: Kind, name: &str) -> bool {
        self.bounds.len() < MAX_STAGED
            || self.bounds.iter().any(|(k, n, _)| *k == kind && n == name)
    }

    /// Adds `message`, of `kind`, for `name`, whose staged messages are `at` (its
    /// [`Staged::position`]).
    fn add(&mut self, at: Option<usize>, kind: Kind, name: &str, message: Message) {
        self.count += 1;
        self.bytes += message.payload().len();
        match at.and_then(|i| self.bounds.get_mut(i)) {
            Some((k, n, messages)) => {
                debug_assert!(*k == kind && n == name, "a stale position");
                // Room for a loop's burst at its second message: grown one by one, the vector
                // was reallocated (and copied) at every doubling.
                if messages.len() == 1 {
                    messages.reserve(FIRST_ROOM);
                }
                messages.push(message);
            }
            None => self
                .bounds
                .push((kind, SmolStr::new(name), smallvec::smallvec![message])),
        }
    }

    /// Takes the first topic's or service's messages, at most [`MAX_BATCH_EVENTS`].
    fn take_first(&mut self) -> Option<(Kind, SmolStr, Events)> {
        let (kind, name, messages) = self.bounds.first_mut()?;
        let taken = if messages.len() > MAX_BATCH_EVENTS {
            let these = messages.drain(..MAX_BATCH_EVENTS).collect();
            (*kind, name.clone(), these)
        } else {
            self.bounds.remove(0)
        };
        self.count -= taken.2.len();
        self.bytes -= taken.2.iter().map(|m| m.payload().len()).sum::<usize>();
        Some(taken)
    }

    fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }
}

/// Room for messages a topic or service's staging makes at its second message.
const FIRST_ROOM: usize = 64;

/// The most topics and services with staged messages at once. Staged messages are looked up
/// by topic or service; a service publishing on a topic per entity (`order.<id>`) would make
/// many operations of one event each, which staging does not make cheaper.
const MAX_STAGED: usize = 64;

impl<H: Clone> Engine<H> {
    /// Stages the event of `events` (published with `options`, `batched` or not) when it is
    /// to wait for the turn's end (see the module docs): takes it, and returns its call's
    /// result. `None` leaves `events` as they were, to be published now. Needs no clock.
    pub(super) fn stage_if_due(
        &mut self,
        events: &mut Events,
        batched: bool,
        options: &PublishOptions,
    ) -> Option<Result<PublishReceipt, Error>> {
        let [event] = events.as_slice() else {
            return None;
        };
        let plain = options.background
            && options.reliability == Reliability::Reliable
            && options.retry.is_none()
            && options.hold_for.is_none();
        if batched || !plain || !self.stages(Kind::Events, &event.env.name, event) {
            return None;
        }
        let event = events.pop()?;
        let id = event.id();
        Some(self.stage_event(event).map(|()| empty_receipt(id)))
    }

    /// Publishes `event` reliably, without anybody waiting, with the node's retry policy and
    /// hold time ([`crate::Node::publish_background`]): returns its id once the node holds
    /// it. Staged when others are on their way (see the module docs); `now` is asked for only
    /// if it goes at once. [`Engine::publish`] with [`PublishOptions::background`], without a
    /// receipt to make.
    pub(crate) fn publish_background(
        &mut self,
        event: Message,
        now: impl FnOnce() -> Instant,
    ) -> Result<MessageId, Error> {
        let id = event.id();
        if self.stages(Kind::Events, &event.env.name, &event) {
            return self.stage_event(event).map(|()| id);
        }
        let options = PublishOptions::background();
        self.publish_shaped(
            &mut smallvec::smallvec![event],
            Shape::Lone,
            &options,
            now(),
        )?;
        Ok(id)
    }

    /// Whether `message`, a lone background event or command (`kind`) for `name` (its topic,
    /// or the service it is sent to), is staged rather than sent now.
    fn stages(&self, kind: Kind, name: &str, message: &Message) -> bool {
        message.key().is_none()
            && self.out.background_publishes() > 0
            && self.may_gather()
            && self.out.staged.has_room_for(kind, name)
            && self.travels_with_others(message).is_ok()
    }

    /// Stages `event` (which [`Engine::stages`]) after the checks a lone background publish
    /// makes before anything is sent.
    fn stage_event(&mut self, event: Message) -> Result<(), Error> {
        self.accepting(OpKind::Background)?;
        self.room_for_background(1, event.payload().len())?;
        let topic = event.env.name.clone();
        let at = self.out.staged.position(Kind::Events, &topic);
        // A topic with staged events passed both checks already (the policy is fixed when the
        // node is built).
        if at.is_none() {
            topic::check_topic(&topic).map_err(Error::Topic)?;
            self.authorize_publish(&topic)?;
        }
        self.stage(at, Kind::Events, &topic, event);
        Ok(())
    }

    /// Sends `command` to one instance of `service` reliably, without anybody waiting
    /// ([`crate::Node::send_background`]): returns its id once the node holds it. Staged
    /// when others are on their way (see the module docs); `now` is asked for only if it goes
    /// at once.
    pub(crate) fn send_background(
        &mut self,
        service: &str,
        command: Message,
        now: impl FnOnce() -> Instant,
    ) -> Result<MessageId, Error> {
        self.accepting(OpKind::Background)?;
        self.check_service(service)?;
        self.room_for_background(1, command.payload().len())?;
        let id = command.id();
        if self.stages(Kind::Commands, service, &command) {
            let at = self.out.staged.position(Kind::Commands, service);
            self.stage(at, Kind::Commands, service, command);
        } else {
            let spec = Spec::point_to_point(self.config.retry.clone());
            let target = Target::service(self.names.get(service));
            self.point_to_point(OpKind::Background, target, command, spec, now())?;
        }
        Ok(id)
    }

    /// Stages `message`, of `kind`, for `name` (whose staged messages are `at`); the first
    /// asks the IO layer for [`Engine::send_staged`].
    fn stage(&mut self, at: Option<usize>, kind: Kind, name: &str, message: Message) {
        self.out.staged.add(at, kind, name, message);
        if self.out.staged.count() == 1 {
            self.actions.push_back(Action::SendStaged);
        }
    }

    /// Sends staged messages: the first topic's events or service's commands, at most
    /// [`MAX_BATCH_EVENTS`] of them, as one operation in which each message goes on its
    /// own. Says whether more are staged (each call holds the engine for one operation's
    /// worth, as a hand-over of gathered calls does).
    pub(crate) fn send_staged(&mut self, now: Instant) -> bool {
        let Some((kind, name, mut these)) = self.out.staged.take_first() else {
            return false;
        };
        let count = these.len();
        let (result, service) = match kind {
            Kind::Events => {
                let options = PublishOptions::background();
                let published = self.publish_shaped(&mut these, Shape::Each, &options, now);
                (published.map(drop), "")
            }
            Kind::Commands => {
                let each = Each::new(count);
                let sent = self.each_to_service(OpKind::Background, &name, &mut these, each, now);
                (sent.map(drop), name.as_str())
            }
        };
        if let Err(e) = result {
            // Not expected: each message passed every check when it was staged, the same a
            // message travelling with others passes. Their calls returned, so those not taken
            // are dead letters rather than lost without a word.
            tracing::error!("{count} staged background messages not sent: {e}");
            // They left the backlog without an operation: a producer may wait for that.
            self.out.backlog_shrank();
            for message in these {
                self.record_dead_letter(DeadLetter {
                    service: service.to_owned(),
                    group: None,
                    message,
                    attempts: 0,
                    last_failure: format!("not sent: {e}"),
                });
            }
        }
        !self.out.staged.is_empty()
    }

    /// Background messages staged now, and their payload bytes.
    pub(crate) fn staged_size(&self) -> (usize, usize) {
        (self.out.staged.count(), self.out.staged.bytes())
    }

    /// Sends every staged message (the node stops).
    pub(in crate::engine) fn send_all_staged(&mut self, now: Instant) {
        while self.send_staged(now) {}
    }
}
