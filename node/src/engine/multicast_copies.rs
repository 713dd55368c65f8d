//! Event copies that go on the multicast channel without a delivery of their own.
//!
//! The first attempt of a copy whose audience's chosen instance is a member of this node's
//! channel needs none of what a delivery ([`super::delivery`]) keeps: no window entry, no
//! retry state, no timer of its own. It goes in the channel's next datagram and its member's
//! status completes it. So a publish keeps such copies in its operation, as
//! [`ChannelCopies`]: each copy's audience, member and head, and whether it still waits; the
//! member's queue of unreported copies points at it with [`CopyRef::Copy`], and one timer per
//! operation watches them all.
//!
//! Only a copy that needs more becomes a delivery ([`Engine::materialize`]): its member
//! reported the handling failed, did not report it in time, was moved to unicast or left. It
//! becomes the delivery it would have been, staged on the channel at the publish's instant
//! (one attempt made, on that member), and goes on as one: by unicast to the same member, or
//! to another instance.
//!
//! At 16 members this spares a publisher 16 deliveries per event, each about 2,000
//! instructions (creating it, choosing its instance again, staging it, its timer, completing
//! it); a copy here costs the choice of its instance, a place in its member's queue and its
//! line in the receipt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::codec::EncodedHead;
use shoal_proto::{NodeId, SmolStr};
use smallvec::SmallVec;

use super::delivery::{Delivery, Spec, State};
use super::fanout::Audience;
use super::peers::Route;
use super::retry::RetryState;
use super::send::{DeliveryId, Outbound};
use super::{Engine, OpId, Timer};
use crate::RetryPolicy;
use crate::receipts::EventDelivery;

/// A copy on the channel that waits for its member's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CopyRef {
    /// A delivery staged on the channel (it waited for room first), at this epoch.
    Delivery(DeliveryId, u32),
    /// Copy `index` of an operation's [`ChannelCopies`].
    Copy(OpId, u16),
}

/// A publish's copies that went on the channel at their first attempt. See the module docs.
#[derive(Debug)]
pub(super) struct ChannelCopies {
    topic: SmolStr,
    policy: RetryPolicy,
    /// When they were staged: what their deliveries would have been created at.
    created: Instant,
    copies: SmallVec<[ChannelCopy; 4]>,
    /// Copies still waiting for their member's report.
    waiting: usize,
}

#[derive(Debug)]
struct ChannelCopy {
    audience: Audience,
    node: NodeId,
    head: Arc<EncodedHead>,
    /// How long its delivery would hold for a live instance.
    hold: Option<Duration>,
    waiting: bool,
}

impl ChannelCopies {
    /// Copies still waiting for their member's report.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Copy `index`, when it still waits: it no longer does.
    fn take(&mut self, index: u16) -> Option<&ChannelCopy> {
        let copy = self.copies.get_mut(usize::from(index))?;
        if !copy.waiting {
            return None;
        }
        copy.waiting = false;
        self.waiting -= 1;
        Some(copy)
    }
}

impl Outbound {
    /// `op`'s copies on the channel, if it has any.
    fn copies_mut(&mut self, op: OpId) -> Option<&mut ChannelCopies> {
        self.ops.get_mut(op)?.channel.as_deref_mut()
    }
}

impl<H: Clone> Engine<H> {
    /// Stages `op`'s copy of its event on `topic` for `audience` on the channel, without a
    /// delivery, if the instance chosen among the audience's `instances` is a member and has
    /// room; says whether it did. The caller checked that the event may go on the channel
    /// ([`Engine::channel_may_take`]).
    pub(super) fn stage_copy(
        &mut self,
        op: OpId,
        topic: &SmolStr,
        (audience, instances): &(Audience, Vec<NodeId>),
        head: &Arc<EncodedHead>,
        spec: &Spec,
        now: Instant,
    ) -> bool {
        let turn = self.turn();
        let Some(conn) = self.peers.choose_among(&self.conns, instances, &[], turn) else {
            return false;
        };
        // A member whose window or queue is full waits for room as a delivery.
        let Some(node) = self
            .conns
            .get(conn)
            .filter(|c| {
                c.window.pending() < self.config.max_in_flight_per_peer
                    && !c.queue_full(self.config.max_queued_bytes)
            })
            .map(|c| c.node)
        else {
            return false;
        };
        let Some(ch) = self.channels.as_deref_mut() else {
            return false;
        };
        if !ch.sender.as_ref().is_some_and(|s| s.is_member(node)) {
            return false;
        }
        let Some(o) = self.out.ops.get_mut(op) else {
            return false;
        };
        let Ok(item) = o.item(0, 1, &self.config.limits, &mut self.out.arena) else {
            return false;
        };
        let copies = o.channel.get_or_insert_with(|| {
            Box::new(ChannelCopies {
                topic: topic.clone(),
                policy: spec.policy.clone(),
                created: now,
                copies: SmallVec::new(),
                waiting: 0,
            })
        });
        // Numbered by a `u16`, all of them ([`Engine::copy_indices`]).
        let Some(index) = u16::try_from(copies.copies.len())
            .ok()
            .filter(|&i| i < u16::MAX)
        else {
            return false;
        };
        copies.copies.push(ChannelCopy {
            audience: audience.clone(),
            node,
            head: Arc::clone(head),
            hold: spec.hold,
            waiting: true,
        });
        copies.waiting += 1;
        self.out.channel_copies += 1;
        ch.stage(
            op,
            head,
            item,
            audience,
            (node, CopyRef::Copy(op, index)),
            now,
        );
        if index == 0 {
            // One timer for all of them: a copy not reported by then goes by unicast.
            let deadline = RetryState::new(now).ack_deadline(&spec.policy, now);
            self.set_timer(deadline, Timer::ChannelCopies(op));
        }
        self.note_copy_sent(op, audience.wire_group().unwrap_or("")); // metrics/hooks.rs
        true
    }

    /// Copy `index` of `op`, reported handled by its member: it is done, as an acknowledged
    /// delivery is.
    pub(super) fn copy_handled(&mut self, op: OpId, index: u16, now: Instant) {
        let Some(copies) = self.out.copies_mut(op) else {
            return;
        };
        let created = copies.created;
        let Some(copy) = copies.take(index) else {
            return;
        };
        let (group, node) = (copy.audience.wire_group().map(str::to_owned), copy.node);
        self.out.channel_copies -= 1;
        self.stats.acked += 1;
        let took = now.saturating_duration_since(created);
        self.note_copy_acked(op, group.as_deref().unwrap_or(""), took); // metrics/hooks.rs
        if let Some(o) = self.out.ops.get_mut(op) {
            o.copies.push(EventDelivery {
                group,
                node,
                attempts: 1,
            });
        }
        self.delivery_ended(op);
    }

    /// Makes copy `index` of `op` the delivery it stands for, if it still waits: staged on
    /// the channel to its member, one attempt made. The delivery takes the copy's place in
    /// its operation's count.
    pub(super) fn materialize(&mut self, op: OpId, index: u16) -> Option<(DeliveryId, NodeId)> {
        let o = self.out.ops.get_mut(op)?;
        let copies = o.channel.as_deref_mut()?;
        let (topic, policy, created) =
            (copies.topic.clone(), copies.policy.clone(), copies.created);
        let copy = copies.take(index)?;
        let node = copy.node;
        let mut retry = RetryState::new(created);
        retry.begin_attempt();
        let delivery = Delivery {
            op,
            route: Route::Audience {
                topic,
                audience: copy.audience.clone(),
            },
            head: Arc::clone(&copy.head),
            spec: Spec {
                policy,
                fail_fast: false,
                hold: copy.hold,
                reliable: true,
                ordered: false,
            },
            retry,
            tried: Vec::new(),
            acked: smallvec::smallvec![false; o.messages.len()],
            acked_count: 0,
            state: State::Channel(node),
            epoch: 1,
            created,
            slots: SmallVec::new(),
            part: None,
            node: Some(node),
            last_failure: String::new(),
        };
        self.out.channel_copies -= 1;
        let d = self.out.deliveries.insert(delivery);
        o.deliveries.push(d);
        Some((d, node))
    }

    /// `op`'s copies on the channel not reported by the time its timer set: each becomes its
    /// delivery, which goes on as one not reported in time does.
    pub(super) fn copies_timer(&mut self, op: OpId, now: Instant) {
        for index in self.copy_indices(op) {
            if let Some((d, node)) = self.materialize(op, index) {
                self.channel_ack_timeout(d, node, CopyRef::Copy(op, index), now);
            }
        }
    }

    /// The numbers of `op`'s copies on the channel (none when it has none).
    fn copy_indices(&self, op: OpId) -> std::ops::Range<u16> {
        let count = self
            .out
            .ops
            .get(op)
            .and_then(|o| o.channel.as_deref())
            .map_or(0, |c| c.copies.len());
        // `stage_copy` numbers at most `u16::MAX` copies.
        0..u16::try_from(count).unwrap_or(u16::MAX)
    }

    /// Every copy still waiting becomes its delivery (the node stops: what happens to
    /// deliveries then happens to them).
    pub(super) fn materialize_all_copies(&mut self) {
        if self.out.channel_copies == 0 {
            return;
        }
        let ops: Vec<OpId> = self
            .out
            .ops
            .iter()
            .filter(|(_, o)| o.channel.is_some())
            .map(|(id, _)| id)
            .collect();
        for op in ops {
            for index in self.copy_indices(op) {
                // Its place in the member's queue goes stale: a report finds it no longer
                // waits as a copy.
                let _ = self.materialize(op, index);
            }
        }
    }

    /// Copies of `op` still waiting no longer do (its caller gave up, or the node stops).
    pub(super) fn drop_copies(&mut self, op: OpId) {
        let Some(copies) = self.out.copies_mut(op) else {
            return;
        };
        for copy in copies.copies.iter_mut().filter(|c| c.waiting) {
            copy.waiting = false;
        }
        self.out.channel_copies -= std::mem::take(&mut copies.waiting);
    }
}
