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

use shoal_proto::codec::EncodedHead;
use shoal_proto::{NackCode, NodeId};
use smallvec::SmallVec;

use super::action::{ConnId, OpId};
use super::ordering::Slot;
use super::parts::Part;
use super::peers::Route;
use super::retry::{RetryState, later};
use super::send::DeliveryId;
use super::{Engine, Timer};
use crate::RetryPolicy;

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

impl Spec {
    /// A reliable, unordered point-to-point message's (a send, request or reply) with
    /// `policy`: neither held nor failing fast.
    pub(super) fn point_to_point(policy: RetryPolicy) -> Self {
        Self {
            policy,
            fail_fast: false,
            hold: None,
            reliable: true,
            ordered: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Waits for the key's turn.
    Turn,
    /// Waits for a live instance, up to its hold or deadline (its timer is set for then).
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
    /// Its attempt was on a connection to `node` that lost a duplicate race: waits, until
    /// `until` at most, for the connection that won, to send there again ([`Engine::resume`]).
    Resume { node: NodeId, until: Instant },
    /// The copy went (or goes in the next datagram) on the multicast channel to this member;
    /// done when the member reports it handled (`multicast_fanout.rs`).
    Channel(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Failure {
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
    pub(super) route: Route,
    pub(super) head: Arc<EncodedHead>,
    pub(super) spec: Spec,
    pub(super) retry: RetryState,
    /// Instances an attempt failed on.
    pub(super) tried: Vec<NodeId>,
    /// Which of the operation's messages were acknowledged.
    pub(super) acked: SmallVec<[bool; 8]>,
    pub(super) acked_count: usize,
    pub(super) state: State,
    pub(super) epoch: u32,
    pub(super) created: Instant,
    /// The turns it holds or waits for: its key's (one), or each of its keyed messages' when
    /// it carries several separate calls' messages (`parts.rs`).
    pub(super) slots: SmallVec<[Slot; 1]>,
    /// Which messages of its operation it carries, when not all (`parts.rs`); the others
    /// are marked acknowledged from the start.
    pub(super) part: Option<Box<Part>>,
    /// The instance of the last attempt.
    pub(super) node: Option<NodeId>,
    pub(super) last_failure: String,
}

impl Delivery {
    /// A delivery of `op`'s `messages` messages on `route`, waiting for its turn (if `slot`
    /// names one), that has not started.
    pub(super) fn new(
        (op, messages): (OpId, usize),
        route: Route,
        head: Arc<EncodedHead>,
        spec: Spec,
        slot: Option<Slot>,
        now: Instant,
    ) -> Self {
        Self {
            op,
            route,
            head,
            retry: RetryState::new(now),
            spec,
            tried: Vec::new(),
            acked: smallvec::smallvec![false; messages],
            acked_count: 0,
            state: State::Turn,
            epoch: 0,
            created: now,
            slots: slot.into_iter().collect(),
            part: None,
            node: None,
            last_failure: String::new(),
        }
    }

    /// Whether it carries message `index` of its operation.
    pub(super) fn carries(&self, index: usize) -> bool {
        self.part.as_ref().is_none_or(|part| part.carries(index))
    }
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
        let delivery = Delivery::new((op, messages), route, head, spec, slot, now);
        let d = self.insert_delivery(delivery);
        self.start_delivery(d, now);
    }

    /// Adds `delivery` to its operation, not started yet.
    pub(super) fn insert_delivery(&mut self, delivery: Delivery) -> DeliveryId {
        let op = delivery.op;
        let d = self.out.deliveries.insert(delivery);
        if let Some(o) = self.out.ops.get_mut(op) {
            o.deliveries.push(d);
        }
        d
    }

    /// Starts `d`: its attempt goes, or it waits for its key's turn.
    pub(super) fn start_delivery(&mut self, d: DeliveryId, now: Instant) {
        self.note_sent(d); // metrics/hooks.rs
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        // Only a delivery with one slot ever waits: one with several took every turn before
        // it starts (`parts.rs`), and `enter` says yes to the holder.
        if del.slots.iter().any(|slot| !self.out.turns.enter(slot, d)) {
            let deadline = waits_for_turn_until(del);
            self.set_timer(deadline, Timer::Delivery(d, 0));
            return;
        }
        self.attempt(d, now);
    }

    /// No live instance for `d` now: wait for one (up to its hold), or end it.
    pub(super) fn no_instance(&mut self, d: DeliveryId, now: Instant) {
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
        // Connect on first use (mesh branch, see `lazy`): ask for connections to the
        // instances discovery announced for this route. A reliable delivery waits for them
        // below; a best-effort copy is dropped, but the copies after it find the connection.
        let route = del.route.clone();
        let asked = self.connect_for(&route, now);
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        if !del.spec.reliable {
            return self.gone(d, now);
        }
        let until = waits_until(del);
        if now >= until {
            let reason = no_instance_reason(del, now);
            return self.dead_letter(d, reason, now);
        }
        // Woken by a change of the peers and still without an instance: it waits on under
        // the same epoch, with the timer it has (its wait ends when it did). A new timer per
        // waiting delivery per change would pile up in the heap until their deadlines, up to
        // a day for an outbox row. Only `wake_waiting`, which took the waiting list, attempts
        // a delivery still in this state: it is listed once again.
        let epoch = if del.state == State::Instance {
            del.epoch
        } else {
            // A copy held for a departed group keeps the group remembered while it is held:
            // its memory (`remember_groups_for`) may end sooner than a long hold.
            if let (Some(_), Route::Audience { topic, audience }) = (del.spec.hold, &del.route)
                && let Some(group) = audience.wire_group()
            {
                self.peers.departed_held(topic, group, until);
            }
            let epoch = self.bump(d, State::Instance);
            self.set_timer(until, Timer::Delivery(d, epoch));
            epoch
        };
        self.out.waiting.push((d, epoch));
        // The instances asked for are asked for again while it waits, by one timer each
        // (`reask.rs`); its own timer is for the end of its wait.
        self.wait_for_asks(&asked, d, epoch);
    }

    /// The peers changed: every delivery waiting for an instance looks again, and every one
    /// waiting for the connection that won a duplicate race ([`State::Resume`]).
    pub(super) fn wake_waiting(&mut self, now: Instant) {
        for (d, epoch) in std::mem::take(&mut self.out.waiting) {
            let Some(del) = self.out.deliveries.get(d).filter(|del| del.epoch == epoch) else {
                continue;
            };
            match del.state.clone() {
                State::Instance => self.attempt(d, now),
                State::Resume { node, until } => self.resume(d, node, until, now),
                _ => {}
            }
        }
    }

    /// `conn`'s window or queue has room: deliveries waiting for it go, while both have.
    pub(super) fn serve_room(&mut self, conn: ConnId, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(conn) else {
                return;
            };
            if c.window.pending() >= self.config.max_in_flight_per_peer
                || c.queue_full(self.config.max_queued_bytes)
            {
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
                let reason = match del.spec.hold {
                    Some(hold) => format!(
                        "the message before it with the same key was still in progress (or \
                         held) when this one's retry deadline and hold ({hold:?}) were over"
                    ),
                    None => "the message before it with the same key was still in progress \
                             at the retry deadline"
                        .into(),
                };
                self.dead_letter(d, reason, now);
            }
            // Its wait is over (held or deadline passed): ended there.
            State::Instance => self.no_instance(d, now),
            State::Room(conn) => {
                let reason = self.no_room_reason(conn);
                self.retry(d, reason, now);
            }
            State::Backoff => self.attempt(d, now),
            // The winning connection did not come in time: any instance, as usual.
            State::Resume { .. } => self.attempt(d, now),
            State::Flight { .. } => {}
            // No handled report in time: retried by unicast (multicast_fanout.rs).
            State::Channel(node) => {
                let copy = super::multicast_copies::CopyRef::Delivery(d, epoch);
                self.channel_ack_timeout(d, node, copy, now);
            }
        }
    }

    /// Why a message waiting in `conn`'s waiting room found no room by its deadline: the
    /// write queue at its cap (`max_queued_bytes`), or else the in-flight window full.
    fn no_room_reason(&self, conn: ConnId) -> String {
        let Some(c) = self.conns.get(conn) else {
            return "the connection closed".into();
        };
        let max = self.config.max_queued_bytes;
        if c.queue_full(max) {
            format!(
                "the write queue to {} stayed full ({} bytes waiting, max_queued_bytes {max})",
                c.node,
                c.queued_bytes()
            )
        } else {
            format!(
                "{} messages already in flight to {}",
                c.window.pending(),
                c.node
            )
        }
    }

    /// Moves `d` to `state` under a new epoch; returns the epoch.
    pub(super) fn bump(&mut self, d: DeliveryId, state: State) -> u32 {
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

/// How long `del` waits for its key's turn: as long as it may wait at all, its retry deadline
/// or its hold, whichever ends later. The message before it may be held for a departed group
/// as long as its own hold; one behind it waits as long (README, "Ordering per key").
fn waits_for_turn_until(del: &Delivery) -> Instant {
    let deadline = del.retry.deadline(&del.spec.policy);
    del.spec
        .hold
        .map_or(deadline, |hold| deadline.max(later(del.created, hold)))
}

/// How long `del` waits for a live instance: its hold, or else its retry deadline.
/// Why `d`, waiting for an instance, is given up on `now`: no instance, and the failure of
/// an earlier attempt, which says more, if there was one.
pub(super) fn no_instance_reason(del: &Delivery, now: Instant) -> String {
    let reason = match del.spec.hold {
        Some(_) => format!(
            "no live instance of {} (held {:?})",
            del.route.describe(),
            now.saturating_duration_since(del.created)
        ),
        None => format!("no instance of {} is connected", del.route.describe()),
    };
    if del.last_failure.is_empty() {
        reason
    } else {
        format!("{reason}; before that: {}", del.last_failure)
    }
}

fn waits_until(del: &Delivery) -> Instant {
    match del.spec.hold {
        Some(hold) => later(del.created, hold),
        None => del.retry.deadline(&del.spec.policy),
    }
}
