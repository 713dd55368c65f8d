//! One destination's delivery of an operation: its attempts, their answers, retries, holds
//! and dead letters.
//!
//! A delivery waits for its key's turn (if it has a key), then for a live instance (holding
//! for up to its hold time), then for room in that instance's window; then it sends every
//! message not acknowledged yet as one attempt, and waits for the answers. An attempt ends
//! when every message was answered, a refusal came, the window's timer passed, or the
//! connection went. What comes next:
//!
//! - all acknowledged: done;
//! - refused for good: dead-lettered;
//! - otherwise: another live instance that has not failed on it gets it at once; backoff
//!   (with jitter) applies only when retrying instances already tried; past the attempts or
//!   the deadline of its [`RetryPolicy`], dead-lettered.
//!
//! Every change of state bumps the delivery's **epoch**; timers and window entries carry the
//! epoch they were set in, so stale ones are recognised and ignored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_proto::codec::EncodedHead;
use shoal_proto::{NackCode, NodeId};

use super::action::{ConnId, OpId};
use super::conn::Owner;
use super::ordering::Slot;
use super::peers::Route;
use super::retry::{Next, RetryState};
use super::send::{DeliveryId, InFlight, OpKind};
use super::{Engine, Lifecycle, Timer};
use crate::dead_letter::DeadLetter;
use crate::receipts::{EventDelivery, Receipt};
use crate::{Error, Message, RetryPolicy};

/// How a delivery goes.
#[derive(Clone, Debug)]
pub(super) struct Spec {
    pub(super) policy: RetryPolicy,
    /// Fail with [`Error::Busy`] rather than wait for room in a full window.
    pub(super) fail_fast: bool,
    /// How long to wait for a live instance; `None`: until the retry deadline.
    pub(super) hold: Option<Duration>,
    /// Acknowledged and retried (`false`: best-effort, written once).
    pub(super) reliable: bool,
    /// The messages are handled in order as one run (a batch).
    pub(super) ordered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waits for the key's turn.
    Turn,
    /// Waits for a live instance.
    Instance,
    /// Waits for room in this connection's window.
    Room(ConnId),
    /// An attempt is on its way: `count` messages numbered from `first`, `left` unanswered.
    Flight {
        conn: ConnId,
        first: u64,
        count: u32,
        left: u32,
        failure: Option<Failure>,
    },
    /// Waits out a backoff before the next attempt.
    Backoff,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    Retryable(String),
    Permanent(String),
}

/// An answer to one message of an attempt.
#[derive(Debug)]
pub(super) enum Answer {
    Ack,
    Nack {
        retryable: bool,
        code: NackCode,
        reason: String,
    },
}

/// One destination's delivery. See the module docs.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) op: OpId,
    route: Route,
    head: Arc<EncodedHead>,
    spec: Spec,
    retry: RetryState,
    /// Instances an attempt failed on.
    tried: Vec<NodeId>,
    /// Which of the operation's messages were acknowledged.
    acked: Vec<bool>,
    acked_count: usize,
    state: State,
    pub(super) epoch: u32,
    created: Instant,
    slot: Option<Slot>,
    /// The instance of the last attempt.
    node: Option<NodeId>,
    last_failure: String,
}

impl<H: Clone> Engine<H> {
    /// Adds a delivery of `op` on `route` and starts it (or queues it behind its key).
    pub(super) fn add_delivery(
        &mut self,
        op: OpId,
        route: Route,
        head: Arc<EncodedHead>,
        spec: Spec,
        slot: Option<Slot>,
        now: Instant,
    ) {
        let messages = self.out.ops.get(op).map_or(0, |o| o.messages.len());
        let delivery = Delivery {
            op,
            route,
            head,
            retry: RetryState::new(spec.policy.clone(), now),
            spec,
            tried: Vec::new(),
            acked: vec![false; messages],
            acked_count: 0,
            state: State::Turn,
            epoch: 0,
            created: now,
            slot: slot.clone(),
            node: None,
            last_failure: String::new(),
        };
        let deadline = delivery.retry.deadline();
        let d = self.out.deliveries.insert(delivery);
        if let Some(slot) = slot
            && !self.out.turns.enter(&slot, d)
        {
            self.set_timer(deadline, Timer::Delivery(d, 0));
            return;
        }
        self.attempt(d, now);
    }

    /// Finds an instance for the next attempt of `d` and sends, or waits.
    fn attempt(&mut self, d: DeliveryId, now: Instant) {
        if self.lifecycle == Lifecycle::Killed {
            return;
        }
        let turn = self.turn();
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let key = self
            .out
            .ops
            .get(del.op)
            .and_then(|o| o.messages.first())
            .and_then(|m| m.partition_key.as_deref());
        let chosen = self
            .peers
            .choose(&self.conns, &del.route, &del.tried, key, turn, now);
        let Some(conn) = chosen else {
            return self.no_instance(d, now);
        };
        let full = self
            .conns
            .get(conn)
            .is_none_or(|c| c.window.pending() >= self.config.max_in_flight_per_peer);
        if full && del.spec.reliable {
            if del.spec.fail_fast {
                let service = self
                    .conns
                    .get(conn)
                    .map(|c| c.service.clone())
                    .unwrap_or_default();
                return self.fail(d, Error::Busy { service }, now);
            }
            let wait = del.retry.ack_deadline(now);
            let epoch = self.bump(d, State::Room(conn));
            if let Some(c) = self.conns.get_mut(conn) {
                c.waiting_room.push_back((d, epoch));
            }
            self.set_timer(wait, Timer::Delivery(d, epoch));
            return;
        }
        self.send_attempt(d, conn, now);
    }

    /// Sends every message of `d` not acknowledged yet to `conn`, as one attempt.
    fn send_attempt(&mut self, d: DeliveryId, conn: ConnId, now: Instant) {
        let Some(ordered) = self.out.deliveries.get(d).map(|del| del.spec.ordered) else {
            return;
        };
        let run = if ordered { self.out.next_run() } else { 0 };
        let (Some(del), Some(c)) = (self.out.deliveries.get_mut(d), self.conns.get_mut(conn))
        else {
            return;
        };
        let reliable = del.spec.reliable;
        if !reliable && c.queued_items() >= self.config.write_queue_len {
            // A best-effort copy finds its subscriber's queue full: dropped, never waited for.
            return self.gone(d, now);
        }
        let Some(op) = self.out.ops.get_mut(del.op) else {
            return;
        };
        let attempt = del.retry.begin_attempt();
        if attempt > 1 {
            self.stats.retries += 1;
        }
        del.epoch += 1;
        let epoch = del.epoch;
        del.node = Some(c.node);
        let timeout = del.retry.ack_deadline(now).saturating_duration_since(now);
        let owner = Owner { delivery: d, epoch };
        let mut signal = false;
        let mut count = 0u32;
        let mut first = None;
        for (index, acked) in del.acked.iter().enumerate() {
            if *acked {
                continue;
            }
            let item = match op.item(index, attempt, &self.config.limits) {
                Ok(item) => item,
                Err(e) => {
                    // Only the attempt number changed since the first encoding: not expected.
                    tracing::error!("could not encode attempt {attempt}: {e}");
                    continue;
                }
            };
            let seq = c.next_seq();
            first.get_or_insert(seq);
            if reliable {
                let what = InFlight {
                    delivery: d,
                    index: index as u32,
                    epoch,
                };
                c.window.push(seq, what, now, timeout);
            }
            // A best-effort item is written whatever becomes of its delivery (done at once).
            let owner = reliable.then_some(owner);
            signal |= c.queue_item(seq, &del.head, run, item, owner);
            count += 1;
        }
        del.state = State::Flight {
            conn,
            first: first.unwrap_or(0),
            count,
            left: count,
            failure: None,
        };
        let not_reading = c.queued_bytes() > self.config.max_queued_bytes;
        let deadline = c.next_deadline();
        if not_reading {
            // Nothing leaves: the peer does not read. Its messages are retried elsewhere once
            // the connection is gone.
            self.actions.push_back(super::Action::Close {
                conn,
                reason: super::CloseReason::NotReading,
                flush: false,
            });
        }
        if signal {
            self.transmit(conn);
        }
        if !reliable {
            return self.succeed(d, now);
        }
        if let Some(deadline) = deadline {
            self.deadline_at(deadline);
        }
    }

    /// An answer to message `seq` on `conn` came.
    pub(super) fn on_answer(&mut self, conn: ConnId, seq: u64, answer: Answer, now: Instant) {
        let Some(entry) = self.conns.get_mut(conn).and_then(|c| c.window.take(seq)) else {
            return; // late (its attempt ended), a duplicate, or never sent
        };
        self.serve_room(conn, now);
        let Some(del) = self.out.deliveries.get_mut(entry.delivery) else {
            return;
        };
        let State::Flight { left, failure, .. } = &mut del.state else {
            return;
        };
        if del.epoch != entry.epoch {
            return;
        }
        *left -= 1;
        let mut ended = *left == 0;
        match answer {
            Answer::Ack => {
                let slot = &mut del.acked[entry.index as usize];
                if !*slot {
                    *slot = true;
                    del.acked_count += 1;
                }
            }
            // The failure of an earlier message of the run already ends the attempt.
            Answer::Nack {
                code: NackCode::Skipped,
                reason,
                ..
            } => {
                failure.get_or_insert(Failure::Retryable(reason));
            }
            Answer::Nack {
                retryable, reason, ..
            } => {
                let node = self.conns.get(conn).map(|c| c.node);
                let reason = match node {
                    Some(node) => format!("{node} refused: {reason}"),
                    None => reason,
                };
                *failure = Some(if retryable {
                    Failure::Retryable(reason)
                } else {
                    Failure::Permanent(reason)
                });
                ended = true;
            }
        }
        if ended {
            self.attempt_over(entry.delivery, now);
        }
    }

    /// The attempt of `d` is over (every message answered, or a refusal): done, dead-lettered
    /// or retried.
    fn attempt_over(&mut self, d: DeliveryId, now: Instant) {
        self.abandon_flight(d);
        let Some(del) = self.out.deliveries.get_mut(d) else {
            return;
        };
        if del.acked_count == del.acked.len() {
            return self.succeed(d, now);
        }
        let failure = match std::mem::replace(&mut del.state, State::Backoff) {
            State::Flight {
                failure: Some(failure),
                ..
            } => failure,
            _ => Failure::Retryable("not every message of the attempt was acknowledged".into()),
        };
        match failure {
            Failure::Permanent(reason) => self.dead_letter(d, reason, now),
            Failure::Retryable(reason) => self.retry(d, reason, now),
        }
    }

    /// The attempt of `d` failed as a whole (no answer in time, the connection went).
    fn attempt_failed(&mut self, d: DeliveryId, reason: String, now: Instant) {
        self.abandon_flight(d);
        self.retry(d, reason, now);
    }

    /// Takes the unanswered messages of `d`'s attempt out of their window, so late answers to
    /// them are ignored and the window has room again.
    fn abandon_flight(&mut self, d: DeliveryId) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let State::Flight {
            conn, first, count, ..
        } = del.state
        else {
            return;
        };
        let epoch = del.epoch;
        if let Some(c) = self.conns.get_mut(conn) {
            for seq in first..first + u64::from(count) {
                if c.window
                    .get(seq)
                    .is_some_and(|e| e.delivery == d && e.epoch == epoch)
                {
                    c.window.take(seq);
                }
            }
        }
    }

    /// Decides what follows a retryable failure.
    fn retry(&mut self, d: DeliveryId, reason: String, now: Instant) {
        let jitter: f64 = self.rng.random();
        let Some(del) = self.out.deliveries.get_mut(d) else {
            return;
        };
        del.last_failure = reason;
        if let Some(node) = del.node
            && !del.tried.contains(&node)
        {
            del.tried.push(node);
        }
        match del.retry.after_failure(now, jitter) {
            // Another live instance has not failed on this message yet: go there at once.
            // Backoff is for retrying the same instances.
            Next::RetryAt(_)
                if self
                    .peers
                    .has_untried(&self.conns, &del.route, &del.tried, now) =>
            {
                self.bump(d, State::Backoff);
                self.attempt(d, now);
            }
            Next::RetryAt(at) => {
                let epoch = self.bump(d, State::Backoff);
                self.set_timer(at, Timer::Delivery(d, epoch));
            }
            Next::GiveUp => {
                let reason = del.last_failure.clone();
                self.dead_letter(d, reason, now);
            }
        }
    }

    /// No live instance for `d` now: wait for one (up to its hold), or end it.
    fn no_instance(&mut self, d: DeliveryId, now: Instant) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        // An audience that unsubscribed on purpose (or an every-instance subscriber that
        // left) is gone for good: its copy ends here, neither held nor retried.
        if let Route::Audience { topic, audience } = &del.route
            && !self.peers.has_audience(&self.conns, topic, audience, now)
        {
            return self.gone(d, now);
        }
        if !del.spec.reliable {
            return self.gone(d, now);
        }
        let until = match del.spec.hold {
            Some(hold) => del.created + hold,
            None => del.retry.deadline(),
        };
        if now >= until {
            let reason = match del.spec.hold {
                Some(_) => format!(
                    "no live instance of {} (held {:?})",
                    del.route.describe(),
                    now.saturating_duration_since(del.created)
                ),
                None => format!("no instance of {} is connected", del.route.describe()),
            };
            // The failure of an earlier attempt says more, if there was one.
            let reason = if del.last_failure.is_empty() {
                reason
            } else {
                format!("{reason}; before that: {}", del.last_failure)
            };
            return self.dead_letter(d, reason, now);
        }
        let epoch = self.bump(d, State::Instance);
        self.out.waiting.push((d, epoch));
        self.set_timer(until, Timer::Delivery(d, epoch));
    }

    /// The peers changed: every delivery waiting for an instance looks again.
    pub(super) fn wake_waiting(&mut self, now: Instant) {
        for (d, epoch) in std::mem::take(&mut self.out.waiting) {
            if self
                .out
                .deliveries
                .get(d)
                .is_some_and(|del| del.epoch == epoch && del.state == State::Instance)
            {
                self.attempt(d, now);
            }
        }
    }

    /// `conn`'s window has room: deliveries waiting for it go.
    pub(super) fn serve_room(&mut self, conn: ConnId, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(conn) else {
                return;
            };
            if c.window.pending() >= self.config.max_in_flight_per_peer {
                return;
            }
            let Some((d, epoch)) = c.waiting_room.pop_front() else {
                return;
            };
            let waiting = self
                .out
                .deliveries
                .get(d)
                .is_some_and(|del| del.epoch == epoch && del.state == State::Room(conn));
            if waiting {
                if c.takes_messages() {
                    self.send_attempt(d, conn, now);
                } else {
                    self.attempt(d, now);
                }
            }
        }
    }

    /// A delivery's timer fired.
    pub(super) fn delivery_timer(&mut self, d: DeliveryId, epoch: u32, now: Instant) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        if del.epoch != epoch {
            return;
        }
        match del.state.clone() {
            State::Turn => {
                let reason = "the message before it with the same key was still in progress \
                              at the retry deadline";
                self.dead_letter(d, reason.into(), now);
            }
            State::Instance => self.no_instance(d, now),
            State::Room(conn) => {
                let pending = self.conns.get(conn).map_or(0, |c| c.window.pending());
                let node = self.conns.get(conn).map(|c| c.node);
                let reason = match node {
                    Some(node) => format!("{pending} messages already in flight to {node}"),
                    None => "the connection closed".into(),
                };
                self.retry(d, reason, now);
            }
            State::Backoff => self.attempt(d, now),
            State::Flight { .. } => {}
        }
    }

    /// Acts on every window whose timer passed.
    pub(super) fn expire_windows(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.next_deadline().is_some_and(|at| at <= now))
            .map(|(id, _)| id)
            .collect();
        let mut expired = Vec::new();
        for conn in due {
            let Some(c) = self.conns.get_mut(conn) else {
                continue;
            };
            c.window.take_expired(now, &mut expired);
            let node = c.node;
            for (_, entry) in expired.drain(..) {
                let Some(del) = self.out.deliveries.get(entry.delivery) else {
                    continue;
                };
                if del.epoch != entry.epoch {
                    continue;
                }
                let timeout = del.spec.policy.ack_timeout;
                let reason = format!("no ack from {node} within {timeout:?}");
                self.attempt_failed(entry.delivery, reason, now);
            }
            self.serve_room(conn, now);
        }
    }

    /// `conn` is gone: its unanswered messages are retried (elsewhere if they can be), and the
    /// deliveries waiting for its room look for another instance.
    pub(super) fn fail_conn(&mut self, conn: ConnId, reason: &str, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let entries = c.window.drain();
        let waiting: Vec<(DeliveryId, u32)> = c.waiting_room.drain(..).collect();
        for (_, entry) in entries {
            if self
                .out
                .deliveries
                .get(entry.delivery)
                .is_some_and(|del| del.epoch == entry.epoch)
            {
                self.attempt_failed(entry.delivery, reason.to_owned(), now);
            }
        }
        for (d, epoch) in waiting {
            if self
                .out
                .deliveries
                .get(d)
                .is_some_and(|del| del.epoch == epoch)
            {
                self.bump(d, State::Backoff);
                self.attempt(d, now);
            }
        }
    }

    /// `d` was acknowledged in full.
    fn succeed(&mut self, d: DeliveryId, now: Instant) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let (node, attempts) = (del.node, del.retry.attempts().max(1));
        self.stats.acked += u64::from(del.spec.reliable);
        if let Some(op) = self.out.ops.get_mut(del.op) {
            let node = node.unwrap_or(NodeId::from_u128(0));
            match &del.route {
                Route::Service(_) => {
                    op.sent = Some(Receipt {
                        id: op.messages[0].id,
                        node,
                        attempts,
                    });
                }
                Route::Audience { audience, .. } => op.copies.push(EventDelivery {
                    group: audience.wire_group().map(str::to_owned),
                    node,
                    attempts,
                }),
            }
        }
        self.finish(d, now);
    }

    /// `d`'s audience is gone (it unsubscribed on purpose, or was forgotten), or a
    /// best-effort copy found no room or no instance: the copy is dropped, and counted.
    fn gone(&mut self, d: DeliveryId, now: Instant) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        self.stats.events_dropped += 1;
        if let (Some(op), Route::Audience { audience, .. }) =
            (self.out.ops.get_mut(del.op), &del.route)
        {
            tracing::debug!(id = %op.messages[0].id, "copy for {audience} dropped");
            op.dropped.push(audience.to_string());
        }
        self.finish(d, now);
    }

    /// Ends `d` with `error` (no dead letter: the caller hears why).
    fn fail(&mut self, d: DeliveryId, error: Error, now: Instant) {
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
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let (service, group) = match &del.route {
            Route::Service(target) => (target.service.clone(), None),
            Route::Audience { audience, .. } => (String::new(), Some(audience.to_string())),
        };
        let attempts = del.retry.attempts();
        let mut letters = Vec::new();
        if let Some(op) = self.out.ops.get(del.op) {
            for (index, envelope) in op.messages.iter().enumerate() {
                if !del.acked.get(index).copied().unwrap_or(false) {
                    letters.push(DeadLetter {
                        service: service.clone(),
                        group: group.clone(),
                        message: Message::from_envelope(envelope.clone()),
                        attempts,
                        last_failure: reason.clone(),
                    });
                }
            }
        }
        if let Some(first) = letters.first()
            && let Some(op) = self.out.ops.get_mut(del.op)
        {
            op.error
                .get_or_insert_with(|| Error::DeadLettered(Box::new(first.clone())));
        }
        for letter in letters {
            self.record_dead_letter(letter);
        }
        self.finish(d, now);
    }

    /// `d` ended: it leaves its key's turn (the next one goes) and its operation.
    fn finish(&mut self, d: DeliveryId, now: Instant) {
        self.abandon_flight(d);
        let Some(del) = self.out.deliveries.remove(d) else {
            return;
        };
        let next = del.slot.as_ref().and_then(|s| self.out.turns.leave(s, d));
        self.delivery_ended(del.op);
        if let Some(next) = next {
            self.bump(next, State::Backoff);
            self.attempt(next, now);
        }
    }

    /// Stops `d` without ending its operation (its caller gave up, or the node stops).
    pub(super) fn abandon(&mut self, d: DeliveryId, now: Instant) {
        self.abandon_flight(d);
        if let Some(del) = self.out.deliveries.remove(d)
            && let Some(slot) = &del.slot
            && let Some(next) = self.out.turns.leave(slot, d)
        {
            self.bump(next, State::Backoff);
            self.attempt(next, now);
        }
    }

    /// Ends every background delivery still going (the node stops): copies of background
    /// publishes become dead letters saying so; asynchronous replies are dropped.
    pub(super) fn stop_background_ops(&mut self, now: Instant) {
        let open: Vec<DeliveryId> = self.out.deliveries.keys().collect();
        for d in open {
            let Some(op) = self.out.deliveries.get(d).map(|del| del.op) else {
                continue;
            };
            match self.out.ops.get(op).map(|o| o.kind) {
                Some(OpKind::Background) => {
                    let reason = "the node stopped before this copy was delivered";
                    self.dead_letter(d, reason.into(), now);
                }
                Some(OpKind::Reply) => {
                    tracing::debug!("reply not delivered: the node stopped");
                    self.abandon(d, now);
                    self.out.ops.remove(op);
                }
                _ => self.abandon(d, now),
            }
        }
    }

    /// Moves `d` to `state` under a new epoch; returns the epoch.
    fn bump(&mut self, d: DeliveryId, state: State) -> u32 {
        match self.out.deliveries.get_mut(d) {
            Some(del) => {
                del.epoch += 1;
                del.state = state;
                del.epoch
            }
            None => 0,
        }
    }
}
