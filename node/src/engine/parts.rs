//! Keyed messages of separate calls travelling together: deliveries that carry part of an
//! operation, each message still in its key's turn and at its key's instance.
//!
//! Lone events published (or commands sent) while other calls wait travel as one operation
//! (`send/each.rs`), keyed ones too. A keyed message keeps the promises it has alone
//! (README, "Ordering per key"):
//!
//! - **One at a time per key.** A delivery holds the turn of every keyed message it carries.
//!   A message whose key is taken (by a message sent earlier, or by one before it in the
//!   same operation) goes in a delivery of its own that waits for the turn, as it would
//!   alone; the others share one delivery per destination. Turns pass when a delivery ends,
//!   or, for the messages answered already, when it is to be retried
//!   ([`Engine::pass_answered_turns`]): a key's next message waits for the first attempt of
//!   the messages it travelled with, not for their retries.
//! - **At its key's instance.** Before each attempt, the messages whose key belongs to
//!   another instance than the first message's move to a delivery of their own per instance
//!   ([`Engine::split_by_owner`]), taking their turns with them. With one live instance
//!   nothing moves; after a failure each message goes on to its own key's next instance.
//!
//! A delivery that carries part of its operation has a [`Part`]: the messages it carries.
//! The others are marked acknowledged in it from the start, so its attempts, answers and
//! dead letters concern its own messages only.

use std::sync::Arc;
use std::time::Instant;

use shoal_proto::NodeId;
use shoal_proto::codec::EncodedHead;
use smallvec::SmallVec;

use super::Engine;
use super::action::OpId;
use super::delivery::{Delivery, Spec, State};
use super::ordering::{Destination, Slot};
use super::peers::Route;
use super::route;
use super::send::{DeliveryId, Op};
use crate::receipts::EventDelivery;

/// The messages of its operation a delivery carries, when not all.
#[derive(Debug, Default)]
pub(super) struct Part {
    /// Their indices in the operation, ascending.
    members: SmallVec<[u32; 8]>,
}

impl Part {
    /// Whether it carries message `index`.
    pub(super) fn carries(&self, index: usize) -> bool {
        u32::try_from(index).is_ok_and(|i| self.members.binary_search(&i).is_ok())
    }

    /// The indices of the messages it carries.
    pub(super) fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().map(|i| *i as usize)
    }
}

impl Delivery {
    /// A delivery of none of `op`'s `messages` messages yet (see [`Delivery::join`]).
    fn part_of(
        (op, messages): (OpId, usize),
        route: Route,
        head: Arc<EncodedHead>,
        spec: Spec,
        now: Instant,
    ) -> Self {
        let mut del = Self::new((op, messages), route, head, spec, None, now);
        del.acked.iter_mut().for_each(|acked| *acked = true);
        del.acked_count = messages;
        del.part = Some(Box::default());
        del
    }

    /// It carries message `index` too (taken in ascending order).
    fn join(&mut self, index: usize) {
        if let Some(acked) = self.acked.get_mut(index)
            && *acked
        {
            *acked = false;
            self.acked_count -= 1;
        }
        if let Some(part) = &mut self.part {
            part.members.push(index as u32);
        }
    }

    /// It no longer carries message `index` (another delivery does).
    fn leave(&mut self, index: usize) {
        if let Some(acked) = self.acked.get_mut(index)
            && !*acked
        {
            *acked = true;
            self.acked_count += 1;
        }
        if let Some(part) = &mut self.part {
            part.members.retain(|i| *i as usize != index);
        }
    }

    /// The key its next attempt goes by: its first unacknowledged keyed message's when it
    /// carries part of `op`, else its first message's (a lone message's, or a batch's).
    pub(super) fn key<'a>(&self, op: &'a Op) -> Option<&'a str> {
        let first = match &self.part {
            None => op.messages.first(),
            Some(part) => part
                .members()
                .filter(|i| !self.acked.get(*i).copied().unwrap_or(true))
                .filter_map(|i| op.messages.get(i))
                .find(|m| m.partition_key.is_some()),
        };
        first.and_then(|m| m.partition_key.as_deref())
    }
}

impl<H: Clone> Engine<H> {
    /// Starts the delivery (or deliveries) on `route` of `op`, an operation of separate
    /// calls' messages: one for all of them when none has a key; otherwise one for the
    /// unkeyed ones and those whose key's turn is free, and one each for the others, which
    /// wait for their turn (see the module docs).
    pub(super) fn add_each_delivery(
        &mut self,
        op: OpId,
        route: Route,
        head: Arc<EncodedHead>,
        spec: Spec,
        now: Instant,
    ) {
        let Some(o) = self.out.ops.get(op) else {
            return;
        };
        let count = o.messages.len();
        if o.messages.iter().all(|m| m.partition_key.is_none()) {
            return self.add_delivery(op, route, head, spec, None, now);
        }
        let dest = Destination::of(&route);
        let together =
            Delivery::part_of((op, count), route.clone(), head.clone(), spec.clone(), now);
        let d = self.out.deliveries.insert(together);
        let mut alone: SmallVec<[DeliveryId; 2]> = SmallVec::new();
        for index in 0..count {
            let key = self
                .out
                .ops
                .get(op)
                .and_then(|o| o.messages[index].partition_key.clone());
            let slot = key.map(|key| (dest.clone(), key));
            match slot {
                Some(slot) if !self.out.turns.take_if_free(&slot, d) => {
                    // Its key is taken: it waits for its turn in a delivery of its own.
                    let mut del = Delivery::part_of(
                        (op, count),
                        route.clone(),
                        head.clone(),
                        spec.clone(),
                        now,
                    );
                    del.slots.push(slot);
                    del.join(index);
                    alone.push(self.out.deliveries.insert(del));
                }
                slot => {
                    if let Some(del) = self.out.deliveries.get_mut(d) {
                        del.slots.extend(slot);
                        del.join(index);
                    }
                }
            }
        }
        let carries_some = self
            .out
            .deliveries
            .get(d)
            .and_then(|del| del.part.as_ref())
            .is_some_and(|part| !part.members.is_empty());
        if !carries_some {
            self.out.deliveries.remove(d);
        }
        let started: SmallVec<[DeliveryId; 2]> =
            carries_some.then_some(d).into_iter().chain(alone).collect();
        // The operation counted one delivery on this route: it waits for each one started,
        // all counted before any starts (one may end at once).
        if let Some(o) = self.out.ops.get_mut(op) {
            o.open = (o.open + started.len()).saturating_sub(1);
            o.deliveries.extend(started.iter().copied());
        }
        for d in started {
            self.start_delivery(d, now);
        }
    }

    /// `d` is to be retried: the turns of its keyed messages already answered (acknowledged,
    /// or refused for good) pass on, so that their keys' next messages do not wait for the
    /// retries of the others.
    pub(super) fn pass_answered_turns(&mut self, d: DeliveryId, now: Instant) {
        let Some(del) = self.out.deliveries.get_mut(d) else {
            return;
        };
        let (Some(part), Some(op)) = (&del.part, self.out.ops.get(del.op)) else {
            return;
        };
        let mut passed: SmallVec<[Slot; 4]> = SmallVec::new();
        for index in part.members() {
            if !del.acked.get(index).copied().unwrap_or(false) {
                continue;
            }
            let key = op
                .messages
                .get(index)
                .and_then(|m| m.partition_key.as_ref());
            if let Some(at) = key.and_then(|key| del.slots.iter().position(|(_, k)| k == key)) {
                passed.push(del.slots.swap_remove(at));
            }
        }
        let next: SmallVec<[DeliveryId; 4]> = passed
            .iter()
            .filter_map(|slot| self.out.turns.leave(slot, d))
            .collect();
        for next in next {
            self.take_turn(next, now);
        }
    }

    /// Before an attempt of `d`: if it carries keyed messages of separate calls whose keys
    /// belong to other instances than its first one's, they move to a delivery of their own
    /// per instance, with their turns. Returns those deliveries, for their attempts.
    pub(super) fn split_by_owner(
        &mut self,
        d: DeliveryId,
        now: Instant,
    ) -> SmallVec<[DeliveryId; 2]> {
        let mut moved = SmallVec::new();
        // Only a delivery holding several keys' turns may have to split.
        let Some(del) = self.out.deliveries.get(d).filter(|del| del.slots.len() > 1) else {
            return moved;
        };
        let (Some(part), Some(op)) = (&del.part, self.out.ops.get(del.op)) else {
            return moved;
        };
        let nodes = self.peers.key_owners(&self.conns, &del.route, now);
        if nodes.is_empty() {
            return moved;
        }
        // Each unacknowledged keyed message's owner; the first one's stay.
        let mut owners: SmallVec<[(NodeId, usize); 8]> = SmallVec::new();
        let mut first = None;
        for index in part.members() {
            if del.acked.get(index).copied().unwrap_or(true) {
                continue;
            }
            let Some(key) = op
                .messages
                .get(index)
                .and_then(|m| m.partition_key.as_deref())
            else {
                continue;
            };
            let Some(owner) = route::choose_for_key(&nodes, &del.tried, key) else {
                continue;
            };
            match first {
                None => first = Some(owner),
                Some(f) if f == owner => {}
                Some(_) => owners.push((owner, index)),
            }
        }
        while let Some(&(owner, _)) = owners.first() {
            let (mine, rest): (SmallVec<[_; 8]>, SmallVec<[_; 8]>) =
                owners.into_iter().partition(|(o, _)| *o == owner);
            owners = rest;
            let indices: SmallVec<[usize; 8]> = mine.iter().map(|(_, i)| *i).collect();
            moved.push(self.move_out(d, &indices));
        }
        if let Some(o) = self.out.ops.get_mut(self.out.deliveries[d].op) {
            o.open += moved.len();
            o.deliveries.extend(moved.iter().copied());
        }
        moved
    }

    /// Moves messages `indices` of `d` (keyed, unacknowledged) to a new delivery that goes on
    /// where `d` is (its attempts, the instances it failed on), with their turns.
    fn move_out(&mut self, d: DeliveryId, indices: &[usize]) -> DeliveryId {
        let del = &self.out.deliveries[d];
        let mut new = Delivery::part_of(
            (del.op, del.acked.len()),
            del.route.clone(),
            Arc::clone(&del.head),
            del.spec.clone(),
            del.created,
        );
        new.retry = del.retry.clone();
        new.tried = del.tried.clone();
        new.last_failure = del.last_failure.clone();
        new.state = State::Backoff;
        let op = &self.out.ops[del.op];
        let keys: SmallVec<[_; 8]> = indices
            .iter()
            .filter_map(|i| op.messages.get(*i).and_then(|m| m.partition_key.clone()))
            .collect();
        let del = &mut self.out.deliveries[d];
        for index in indices {
            del.leave(*index);
            new.join(*index);
        }
        for key in keys {
            if let Some(at) = del.slots.iter().position(|(_, k)| *k == key) {
                new.slots.push(del.slots.swap_remove(at));
            }
        }
        let n = self.out.deliveries.insert(new);
        for slot in &self.out.deliveries[n].slots {
            self.out.turns.hand(slot, d, n);
        }
        n
    }

    /// `d` was acknowledged as `copy` says: if it carries part of an operation of separate
    /// events, each event it carries lists the copy in its own receipt; otherwise `copy` is
    /// given back, for the receipts of all.
    pub(super) fn copied_part(
        &mut self,
        d: DeliveryId,
        copy: EventDelivery,
    ) -> Option<EventDelivery> {
        let Some(del) = self.out.deliveries.get(d) else {
            return Some(copy);
        };
        let (Some(part), Some(each)) = (
            &del.part,
            self.out
                .ops
                .get_mut(del.op)
                .and_then(|o| o.each.as_deref_mut()),
        ) else {
            return Some(copy);
        };
        each.copied(part.members(), copy);
        None
    }
}
