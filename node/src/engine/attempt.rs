//! Attempts: choosing the instance, sending every message not acknowledged yet, taking the
//! answers, and deciding what follows a failed attempt (another instance at once, a backoff,
//! or the end).

use std::time::{Duration, Instant};

use rand::RngExt;
use shoal_proto::NodeId;
use smallvec::SmallVec;

use super::action::ConnId;
use super::conn::{Conn, Owner};
use super::delivery::{Failure, State};
use super::retry::Next;
use super::send::{DeliveryId, InFlight};
use super::window::Due;
use super::{Engine, Lifecycle, Timer};
use crate::Error;

/// How long messages in flight on a connection that lost a duplicate race wait for the
/// connection that won before they go to any instance ([`Engine::resume`]). The winner is
/// usually up already, or within a round trip.
const RESUME_WAIT: Duration = Duration::from_millis(500);

impl<H: Clone> Engine<H> {
    /// Finds an instance for the next attempt of `d` and sends, or waits. Keyed messages of
    /// separate calls whose keys belong to other instances move to deliveries of their own
    /// first, which go there (`parts.rs`).
    pub(super) fn attempt(&mut self, d: DeliveryId, now: Instant) {
        if self.lifecycle == Lifecycle::Killed {
            return;
        }
        let moved = self.split_by_owner(d, now);
        self.attempt_one(d, now);
        for part in moved {
            self.attempt_one(part, now);
        }
    }

    /// [`Engine::attempt`] for a delivery that goes to one instance.
    fn attempt_one(&mut self, d: DeliveryId, now: Instant) {
        let turn = self.turn();
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let key = self.out.ops.get(del.op).and_then(|o| del.key(o));
        let chosen = self
            .peers
            .choose(&self.conns, &del.route, &del.tried, key, turn, now);
        let Some(conn) = chosen else {
            return self.no_instance(d, now);
        };
        // A held delivery whose wait for an instance ends here gets its retries from now on,
        // however long it was held (README, "Holding events").
        if let Some(del) = self.out.deliveries.get_mut(d)
            && del.spec.hold.is_some()
            && del.state == State::Instance
        {
            del.retry.restart_clock(now);
        }
        self.attempt_on(d, conn, now);
    }

    /// The next attempt of `d` on `conn`: sent, or waiting for room in its window.
    fn attempt_on(&mut self, d: DeliveryId, conn: ConnId, now: Instant) {
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let full = self.conns.get(conn).is_none_or(|c| {
            c.window.pending() >= self.config.max_in_flight_per_peer
                || c.queue_full(self.config.max_queued_bytes)
        });
        if full && del.spec.reliable {
            if del.spec.fail_fast {
                let service = self.service_of(conn);
                return self.fail(d, Error::Busy { service }, now);
            }
            let wait = del.retry.ack_deadline(&del.spec.policy, now);
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
    pub(super) fn send_attempt(&mut self, d: DeliveryId, conn: ConnId, now: Instant) {
        // Multicast (multicast_fanout.rs): a channel member's first copy of an event goes in
        // the channel's next datagram instead.
        if self.channels.is_some() && self.channel_takes(d, conn, now) {
            return;
        }
        let Some(ordered) = self.out.deliveries.get(d).map(|del| del.spec.ordered) else {
            return;
        };
        let run = if ordered { self.out.next_run() } else { 0 };
        let (Some(del), Some(c)) = (self.out.deliveries.get_mut(d), self.conns.get_mut(conn))
        else {
            return;
        };
        let reliable = del.spec.reliable;
        if !reliable
            && (c.queued_items() >= self.config.write_queue_len
                || c.queue_full(self.config.max_queued_bytes))
        {
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
        let timeout = del
            .retry
            .ack_deadline(&del.spec.policy, now)
            .saturating_duration_since(now);
        // Every message of the attempt is due at once: worked out once.
        let due = Due::new(now, timeout);
        let owner = Owner { delivery: d, epoch };
        let mut signal = false;
        let mut count = 0u32;
        let mut first = None;
        // Tracked in the window together once numbered (one after the other).
        let mut tracked: SmallVec<[InFlight; 8]> = SmallVec::new();
        for (index, acked) in del.acked.iter().enumerate() {
            if *acked {
                continue;
            }
            let item = match op.item(index, attempt, &self.config.limits, &mut self.out.arena) {
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
                tracked.push(InFlight {
                    delivery: d,
                    index: index as u32,
                    epoch,
                });
            }
            // A best-effort item is written whatever becomes of its delivery (done at once).
            let owner = reliable.then_some(owner);
            signal |= c.queue_item(seq, &del.head, run, item, owner);
            count += 1;
        }
        if let Some(first) = first {
            c.window.push_run(first, tracked, due);
        }
        del.state = State::Flight {
            conn,
            first: first.unwrap_or(0),
            count,
            left: count,
            failure: None,
        };
        let deadline = c.next_deadline();
        self.watch_queue(conn, now); // backpressure.rs
        if signal {
            self.transmit(conn);
        }
        if attempt > 1 {
            self.note_retried(d); // metrics/hooks.rs
        }
        if !reliable {
            return self.succeed(d, now);
        }
        if let Some(deadline) = deadline {
            self.deadline_at(deadline);
        }
    }

    /// The attempt of `d` is over (every message answered, or a refusal): done, dead-lettered
    /// or retried.
    pub(super) fn attempt_over(&mut self, d: DeliveryId, now: Instant) {
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
    pub(super) fn attempt_failed(&mut self, d: DeliveryId, reason: String, now: Instant) {
        self.abandon_flight(d);
        self.retry(d, reason, now);
    }

    /// Takes the unanswered messages of `d`'s attempt out of their window, so late answers to
    /// them are ignored and the window has room again.
    pub(super) fn abandon_flight(&mut self, d: DeliveryId) {
        self.note_answered(d); // send/each.rs
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let State::Flight {
            conn,
            first,
            count,
            left,
            ..
        } = del.state
        else {
            return;
        };
        // Every message answered: each answer took its entry, none is left to take.
        if left == 0 {
            return;
        }
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

    /// Sends `d` again to `node` once a connection to it takes messages; until `until`, waits
    /// for one (the peers changing wakes it, see [`Engine::wake_waiting`]), then tries any
    /// instance as usual. Not a failure: no instance is marked as tried, no backoff.
    pub(super) fn resume(&mut self, d: DeliveryId, node: NodeId, until: Instant, now: Instant) {
        if self.lifecycle == Lifecycle::Killed {
            return;
        }
        let route = match self.out.deliveries.get(d) {
            Some(del) => del.route.clone(),
            None => return,
        };
        let live = self
            .peers
            .current(node)
            .filter(|c| self.conns.get(*c).is_some_and(Conn::takes_messages))
            .filter(|c| self.peers.serves(&self.conns, &route, *c, now));
        match live {
            Some(conn) => {
                self.bump(d, State::Backoff);
                self.attempt_on(d, conn, now);
            }
            None if now < until => {
                let epoch = self.bump(d, State::Resume { node, until });
                self.out.waiting.push((d, epoch));
                self.set_timer(until, Timer::Delivery(d, epoch));
            }
            None => self.attempt(d, now),
        }
    }

    /// Decides what follows a retryable failure. The turns of keyed messages of separate
    /// calls it answered already pass on first (`parts.rs`).
    pub(super) fn retry(&mut self, d: DeliveryId, reason: String, now: Instant) {
        self.pass_answered_turns(d, now);
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
        match del.retry.after_failure(&del.spec.policy, now, jitter) {
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
    ///
    /// `duplicate`: it lost a race with another connection between the same two nodes (they
    /// dialled each other at once), so its peer is not down. Its unanswered messages may well
    /// have been handled there, their acks lost with the connection: they go again to the same
    /// node on the connection that won, where its dedup window knows them, and not to another
    /// instance, which would handle them a second time ([`Engine::resume`]).
    pub(super) fn fail_conn(&mut self, conn: ConnId, reason: &str, duplicate: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let node = c.node;
        let entries = c.window.drain();
        let waiting: Vec<(DeliveryId, u32)> = c.waiting_room.drain(..).collect();
        for (_, entry) in entries {
            if self
                .out
                .deliveries
                .get(entry.delivery)
                .is_some_and(|del| del.epoch == entry.epoch)
            {
                if duplicate {
                    self.abandon_flight(entry.delivery);
                    self.resume(entry.delivery, node, now + RESUME_WAIT, now);
                } else {
                    self.attempt_failed(entry.delivery, reason.to_owned(), now);
                }
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
}
