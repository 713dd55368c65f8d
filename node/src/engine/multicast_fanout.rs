//! Publishing on the multicast channel: one datagram carries an event to every member, in
//! place of one unicast copy per subscriber.
//!
//! Each audience's copy of a publish chooses its instance as a delivery
//! ([`super::delivery`]) does (the key's instance, a live one, room in its window). When the
//! chosen instance is a member of this node's channel and this is the copy's first attempt,
//! the copy is **staged** instead of written on the connection: the audiences' copies of one
//! event become one staged event, with the group's chosen instance in its assignment, and
//! the staged events leave together as datagrams the next time the driver polls the engine.
//! The copy waits until its member reports the event handled in a status; that completes it
//! exactly as an ack does, so the publish's receipt is the same.
//!
//! An unkeyed event's copies are staged as the publish starts, without a delivery each
//! ([`super::multicast_copies`]: one becomes a delivery only when it needs more than the
//! report); other copies are staged by their delivery's first attempt, which then waits in
//! [`State::Channel`].
//!
//! What does not go on the channel, and why:
//! - best-effort copies and ordered batches (a batch's events are handled in order and stop
//!   at the first failure, which the channel does not carry): unicast as before;
//! - retries: a copy reported failed (a handler error), or not reported in time (a member
//!   that left), is sent again by unicast like a copy that was not acknowledged, with the same
//!   message id, so the subscriber's dedup window absorbs a duplicate;
//! - under a policy that restricts subscriptions, events on a topic some member may not
//!   subscribe to (every member can read the channel);
//! - beyond [`MAX_CHANNEL_BACKLOG`] events waiting for the channel's window.
//!
//! A member moved to unicast ([`SenderEvent::Demoted`]) gets its unreported copies again by
//! unicast on its own connection (the same instance: its dedup window answers for what its
//! handlers already ran).

use std::sync::Arc;
use std::time::Instant;

use shoal_proto::codec::{EncodedHead, EncodedItem};
use shoal_proto::multicast::Assignment;
use shoal_proto::{Frame, NodeId};
use smallvec::SmallVec;

use super::delivery::State;
use super::fanout::Audience;
use super::multicast::{DemoteReason, RekeyReason, SenderEvent, Transmit};
use super::multicast_copies::CopyRef;
use super::multicast_link::Channels;
use super::peers::Route;
use super::send::DeliveryId;
use super::{Action, ConnId, Engine, Lifecycle, OpId, Timer};
use crate::{FallbackReason, NodeEvent};

/// Events that may wait for the channel's flow-control window at most; more go by unicast.
pub(super) const MAX_CHANNEL_BACKLOG: usize = 4096;

/// One event staged for the next datagrams: its audiences' copies that go on the channel.
#[derive(Debug)]
pub(super) struct Staged {
    op: OpId,
    head: Arc<EncodedHead>,
    item: EncodedItem,
    assigned: Vec<Assignment>,
    /// The copies: the member each went to, and the copy.
    copies: SmallVec<[(NodeId, CopyRef); 4]>,
}

/// The copies one member's report of one event completes.
pub(super) type Pending = SmallVec<[CopyRef; 2]>;

impl Channels {
    /// Stages `op`'s event for `audience`: its `copy` on member `node`, in the event's staged
    /// entry (the audiences of one publish stage one after the other), or a new one.
    pub(super) fn stage(
        &mut self,
        op: OpId,
        head: &Arc<EncodedHead>,
        item: EncodedItem,
        audience: &Audience,
        (node, copy): (NodeId, CopyRef),
        now: Instant,
    ) {
        let at = match self.staged.iter().rposition(|s| s.op == op) {
            Some(at) => at,
            None => {
                self.staged.push(Staged {
                    op,
                    head: Arc::clone(head),
                    item,
                    assigned: Vec::new(),
                    copies: SmallVec::new(),
                });
                self.staged.len() - 1
            }
        };
        let staged = &mut self.staged[at];
        if let Audience::Group(group) = audience {
            staged.assigned.push(Assignment {
                group: group.clone(),
                node,
            });
        }
        staged.copies.push((node, copy));
        self.staged_at = Some(now);
    }
}

impl<H: Clone> Engine<H> {
    /// Stages `d`'s copy for the channel if it belongs there (see the module docs); says
    /// whether it did. `conn` is the instance the delivery chose.
    pub(super) fn channel_takes(&mut self, d: DeliveryId, conn: ConnId, now: Instant) -> bool {
        let Some(node) = self.conns.get(conn).map(|c| c.node) else {
            return false;
        };
        let member = self
            .channels
            .as_deref()
            .and_then(|ch| ch.sender.as_ref())
            .is_some_and(|s| s.is_member(node));
        let Some(del) = self.out.deliveries.get(d).filter(|_| member) else {
            return false;
        };
        let Route::Audience { topic, audience } = &del.route else {
            return false;
        };
        let single = self
            .out
            .ops
            .get(del.op)
            .is_some_and(|o| o.messages.len() == 1);
        let first_reliable = del.spec.reliable && del.retry.attempts() == 0;
        let lone = first_reliable && !del.spec.ordered && single;
        let (topic, audience) = (topic.clone(), audience.clone());
        if !self.channel_may_take(&topic, lone) {
            return false;
        }
        let Some(del) = self.out.deliveries.get_mut(d) else {
            return false;
        };
        let Some(op) = self.out.ops.get_mut(del.op) else {
            return false;
        };
        let Ok(item) = op.item(0, 1, &self.config.limits, &mut self.out.arena) else {
            return false;
        };
        del.retry.begin_attempt();
        del.epoch += 1;
        del.node = Some(node);
        del.state = State::Channel(node);
        let (epoch, op, head) = (del.epoch, del.op, Arc::clone(&del.head));
        let deadline = del.retry.ack_deadline(&del.spec.policy, now);
        let Some(ch) = self.channels.as_deref_mut() else {
            return false;
        };
        let copy = CopyRef::Delivery(d, epoch);
        ch.stage(op, &head, item, &audience, (node, copy), now);
        self.set_timer(deadline, Timer::Delivery(d, epoch));
        true
    }

    /// Whether an event on `topic` may go on the channel: a channel is open, the event is
    /// `lone` (reliable, a first attempt, not a batch's), the channel's backlog has room, and
    /// every member may read the topic.
    pub(super) fn channel_may_take(&mut self, topic: &str, lone: bool) -> bool {
        let Some(ch) = self.channels.as_deref() else {
            return false;
        };
        let Some(sender) = ch.sender.as_ref() else {
            return false;
        };
        lone && sender.queued() + ch.staged.len() < MAX_CHANNEL_BACKLOG
            && (self.guard.open_peer_subscribe || self.members_may_read(topic))
    }

    /// Whether every member's service may subscribe to `topic` (cached per topic while the
    /// members stay the same).
    fn members_may_read(&mut self, topic: &str) -> bool {
        let Some(ch) = self.channels.as_deref_mut() else {
            return false;
        };
        if let Some(&known) = ch.topics.get(topic) {
            return known;
        }
        let sender = ch.sender.as_ref();
        let allowed = self.conns.values().all(|c| {
            !sender.is_some_and(|s| s.is_member(c.node))
                || self
                    .config
                    .policy
                    .may_subscribe(&c.service, topic)
                    .is_allowed()
        });
        ch.topics.insert(topic.to_owned(), allowed);
        allowed
    }

    /// Pushes the staged events into the channel and sends what it has to send.
    pub(super) fn flush_channel(&mut self) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let staged = std::mem::take(&mut ch.staged);
        let Some(now) = ch.staged_at else {
            return;
        };
        let mut unicast = Vec::new();
        if let Some(sender) = ch.sender.as_mut() {
            // Consecutive events for the same instances share one assignment allocation (the
            // packer joins events with equal heads and assignments into a run either way).
            let mut last: Option<Arc<[Assignment]>> = None;
            for s in staged {
                let assigned = match &last {
                    Some(a) if **a == *s.assigned => Arc::clone(a),
                    _ => Arc::from(s.assigned),
                };
                last = Some(Arc::clone(&assigned));
                match sender.push(&s.head, &assigned, s.item) {
                    Ok(number) => {
                        for (node, copy) in s.copies {
                            if sender.is_member(node) {
                                ch.unreported.add(node, number, copy);
                            } else {
                                unicast.push((node, copy));
                            }
                        }
                    }
                    // Too large for one datagram: by unicast.
                    Err(_) => unicast.extend(s.copies),
                }
            }
        } else {
            unicast.extend(staged.into_iter().flat_map(|s| s.copies));
        }
        for (node, copy) in unicast {
            if let Some(d) = self.delivery_of(copy, node) {
                self.channel_to_unicast(d, node, now);
            }
        }
        self.drain_sender(now);
    }

    /// Sends what the channel has to send, and acts on what it says.
    pub(super) fn drain_sender(&mut self, now: Instant) {
        if self.lifecycle == Lifecycle::Killed {
            return;
        }
        let Some(sender) = self.channels.as_deref_mut().and_then(|c| c.sender.as_mut()) else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = sender.poll_transmit(now) {
            out.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = sender.poll_event() {
            events.push(e);
        }
        let deadline = sender.poll_timeout();
        for t in out {
            match t {
                Transmit::Multicast(bytes) => self.actions.push_back(Action::Multicast(bytes)),
                Transmit::Repair { to, datagram } => {
                    self.send_to_member(to, &Frame::ChannelRepair(datagram));
                }
                Transmit::Key { to, key } => self.send_to_member(to, &Frame::ChannelKey(key)),
                Transmit::Demote { to, demote } => {
                    self.send_to_member(to, &Frame::ChannelDemote(demote));
                }
            }
        }
        let mut gone = Vec::new();
        for e in events {
            match e {
                SenderEvent::Handled { node, items } => self.channel_handled(node, &items, now),
                SenderEvent::Failed { node, items } => self.channel_failed(node, &items, now),
                SenderEvent::Demoted { node, reason, .. } => {
                    // Counted for NodeStats (runtime/multicast.rs).
                    if let Some(ch) = self.channels.as_deref_mut() {
                        ch.demotions += 1;
                    }
                    self.channel_unreported(node, None, now);
                    // A member whose connection was replaced by a duplicate stays a member
                    // (`Engine::connection_lost`); if no connection of its service came
                    // instead, it leaves (and is not said to be on unicast).
                    match self.group_conn(node) {
                        Some(conn) => self.emit(NodeEvent::MulticastFallback {
                            node,
                            service: self.service_of(conn),
                            reason: fallback_reason(reason),
                        }),
                        None => gone.push(node),
                    }
                }
                SenderEvent::Rekeyed { epoch, reason } => {
                    tracing::debug!(epoch, ?reason, "multicast: channel rekeyed");
                }
            }
        }
        if let Some(at) = deadline {
            self.deadline_at(at);
        }
        for node in gone {
            let reason = "its connection was replaced and no other one came";
            self.channel_leave(node, RekeyReason::Left, reason, now);
        }
    }

    /// `node`'s copies of the events numbered in `items` that wait for its report, taken out
    /// of the queue of its unreported copies.
    fn take_reported(&mut self, node: NodeId, items: &[shoal_proto::SeqRange]) -> Vec<CopyRef> {
        let Some(ch) = self.channels.as_deref_mut() else {
            return Vec::new();
        };
        let mut copies = Vec::new();
        for range in items {
            // Only what waits is looked at: a hostile range costs a search.
            let end = range.start.saturating_add(range.len);
            ch.unreported.take(node, range.start, end, &mut copies);
        }
        copies
    }

    /// The delivery `copy` on `node` stands for, if it still waits on the channel: the
    /// delivery staged there, or the one a copy without a delivery becomes now
    /// ([`Engine::materialize`]).
    fn delivery_of(&mut self, copy: CopyRef, node: NodeId) -> Option<DeliveryId> {
        match copy {
            CopyRef::Delivery(d, epoch) => self
                .out
                .deliveries
                .get(d)
                .is_some_and(|del| del.epoch == epoch && del.state == State::Channel(node))
                .then_some(d),
            CopyRef::Copy(op, index) => self.materialize(op, index).map(|(d, _)| d),
        }
    }

    /// `node` reports its handling of the events numbered in `items` failed: their copies go
    /// to it again by unicast, where the error gets its usual answer.
    fn channel_failed(&mut self, node: NodeId, items: &[shoal_proto::SeqRange], now: Instant) {
        for copy in self.take_reported(node, items) {
            if let Some(d) = self.delivery_of(copy, node) {
                self.channel_to_unicast(d, node, now);
            }
        }
    }

    /// `node` reports the events numbered in `items` handled: their copies are done.
    fn channel_handled(&mut self, node: NodeId, items: &[shoal_proto::SeqRange], now: Instant) {
        for copy in self.take_reported(node, items) {
            let d = match copy {
                CopyRef::Copy(op, index) => {
                    self.copy_handled(op, index, now);
                    continue;
                }
                CopyRef::Delivery(..) => match self.delivery_of(copy, node) {
                    Some(d) => d,
                    None => continue,
                },
            };
            let Some(del) = self.out.deliveries.get_mut(d) else {
                continue;
            };
            for acked in del.acked.iter_mut() {
                *acked = true;
            }
            del.acked_count = del.acked.len();
            self.succeed(d, now);
        }
    }

    /// `node`'s copies on the channel that it has not reported go by unicast: on its own
    /// connection when it was moved to unicast (`reason` is `None`), or as a failed attempt
    /// (another instance of a group at once) when it is gone.
    pub(super) fn channel_unreported(&mut self, node: NodeId, reason: Option<&str>, now: Instant) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        for copy in ch.unreported.take_all(node) {
            let Some(d) = self.delivery_of(copy, node) else {
                continue;
            };
            match reason {
                None => self.channel_to_unicast(d, node, now),
                Some(reason) => {
                    let reason = format!("{node} left the multicast channel: {reason}");
                    self.retry(d, reason, now);
                }
            }
        }
    }

    /// Sends `d`'s copy by unicast to `node`, the instance it chose (its connection's window
    /// permitting; any instance if the node has no connection now that may take the copy).
    fn channel_to_unicast(&mut self, d: DeliveryId, node: NodeId, now: Instant) {
        let conn = self.member_conn(d, node, now);
        self.bump(d, State::Backoff);
        match conn {
            Some(conn) => self.send_attempt(d, conn, now),
            None => self.attempt(d, now),
        }
    }

    /// The connection standing for `d`'s member `node`, if it may take `d` (as for a delivery
    /// resumed on the connection now standing for its node, [`Peers::serves`]): a node id is
    /// the peer's claim, so a connection of another service claiming the member's id after
    /// the member's connection went gets none of its copies.
    ///
    /// [`Peers::serves`]: super::peers::Peers::serves
    fn member_conn(&mut self, d: DeliveryId, node: NodeId, now: Instant) -> Option<ConnId> {
        let route = &self.out.deliveries.get(d)?.route;
        self.peers
            .current(node)
            .filter(|c| self.peers.serves(&self.conns, route, *c, now))
    }

    /// `node` leaves this node's channel: the key changes, and its copies go by unicast.
    pub(super) fn channel_leave(
        &mut self,
        node: NodeId,
        why: RekeyReason,
        reason: &str,
        now: Instant,
    ) {
        if let Some(ch) = self.channels.as_deref_mut()
            && let Some(sender) = ch.sender.as_mut()
        {
            sender.leave(node, why, now);
            ch.topics.clear();
        }
        self.channel_unreported(node, Some(reason), now);
        self.drain_sender(now);
    }

    /// `d`'s member did not report its event in time; `copy` is what waited for the report
    /// in its queue (`d` itself, or the copy `d` was made from). Still connected: the copy
    /// goes to it again by unicast, as on a demotion (it may have handled the event and its
    /// report was lost, say with a connection replaced by a duplicate: its dedup window
    /// answers, and no other instance of its group runs the event too). Gone, or its id
    /// claimed by a connection that may not take the copy ([`Engine::member_conn`]): retried
    /// like a copy that was not acknowledged.
    pub(super) fn channel_ack_timeout(
        &mut self,
        d: DeliveryId,
        node: NodeId,
        copy: CopyRef,
        now: Instant,
    ) {
        if let Some(ch) = self.channels.as_deref_mut() {
            ch.unreported.forget(node, copy);
        }
        if self.member_conn(d, node, now).is_some() {
            return self.channel_to_unicast(d, node, now);
        }
        let timeout = self
            .out
            .deliveries
            .get(d)
            .map(|del| del.spec.policy.ack_timeout);
        let reason = format!("{node} did not report the event handled within {timeout:?}");
        self.retry(d, reason, now);
    }
}

/// What a user is told of why a member was moved to unicast.
fn fallback_reason(reason: DemoteReason) -> FallbackReason {
    match reason {
        DemoteReason::Silent => FallbackReason::Silent,
        DemoteReason::Stalled => FallbackReason::NotReached,
        DemoteReason::Lagging => FallbackReason::Lagging,
    }
}
