//! Per-key ordering on the sending side: deliveries that share a partition key and a
//! destination go one at a time, in the order they were made.
//!
//! A delivery with a key takes its place when `send` or `publish` is *called*, so the order
//! is the order of the calls, whatever order the returned futures are polled in (the engine
//! drives deliveries itself; a future only waits for the result). It keeps its turn, retries
//! included, until it is acknowledged, dead-lettered or cancelled; then the next in line
//! goes. So the receiver never sees message *n + 1* of a key before *n* was handled, even when
//! *n* had to be retried on another instance; deliveries with other keys pass meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use shoal_proto::{NodeId, SmolStr};

use super::fanout::Audience;
use super::peers::{NameHashing, Route};
use super::send::DeliveryId;

/// A destination and a key: the unit of ordering.
pub(super) type Slot = (Destination, SmolStr);

/// Where a keyed message goes, as its turns are kept: messages are ordered per key *and*
/// destination. Made from the delivery's route without formatting or allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Destination {
    /// A service's handler (point-to-point).
    Service(Arc<str>),
    /// One subscriber group's copies of events.
    Group(SmolStr),
    /// One ungrouped subscriber's copies of events.
    Node(NodeId),
}

impl Destination {
    /// The destination of `route`.
    pub(super) fn of(route: &Route) -> Self {
        match route {
            Route::Service(target) => Self::Service(Arc::clone(&target.service)),
            Route::Audience {
                audience: Audience::Group(group),
                ..
            } => Self::Group(group.clone()),
            Route::Audience {
                audience: Audience::Instance(node),
                ..
            } => Self::Node(*node),
        }
    }
}

/// The turns of every (destination, key) with a delivery in progress or waiting.
#[derive(Debug, Default)]
pub(super) struct KeyTurns {
    slots: HashMap<Slot, Turns, NameHashing>,
}

#[derive(Debug)]
struct Turns {
    holder: DeliveryId,
    waiting: VecDeque<DeliveryId>,
}

impl KeyTurns {
    /// Takes the next place for `slot`; says whether it is `delivery`'s turn (at once, or
    /// already: a delivery that holds the turn keeps it).
    pub(super) fn enter(&mut self, slot: &Slot, delivery: DeliveryId) -> bool {
        match self.slots.get_mut(slot) {
            Some(turns) if turns.holder == delivery => true,
            Some(turns) => {
                turns.waiting.push_back(delivery);
                false
            }
            None => {
                self.hold(slot, delivery);
                true
            }
        }
    }

    /// Gives `delivery` the turn of `slot` if nobody holds it or waits for it; says whether it
    /// did. Unlike [`KeyTurns::enter`], it never queues `delivery`.
    pub(super) fn take_if_free(&mut self, slot: &Slot, delivery: DeliveryId) -> bool {
        if self.slots.contains_key(slot) {
            return false;
        }
        self.hold(slot, delivery);
        true
    }

    /// `delivery` holds the turn of `slot`, which nobody held.
    fn hold(&mut self, slot: &Slot, delivery: DeliveryId) {
        self.slots.insert(
            slot.clone(),
            Turns {
                holder: delivery,
                waiting: VecDeque::new(),
            },
        );
    }

    /// The turn of `slot` that `from` holds passes to `to`, which carries on with `from`'s
    /// message (a delivery split in two, `parts.rs`); those waiting keep their places.
    pub(super) fn hand(&mut self, slot: &Slot, from: DeliveryId, to: DeliveryId) {
        if let Some(turns) = self.slots.get_mut(slot)
            && turns.holder == from
        {
            turns.holder = to;
        }
    }

    /// `delivery` leaves `slot` (acknowledged, dead-lettered or cancelled, whether it held the
    /// turn or waited for it). Returns the delivery whose turn it is now, if the turn passed.
    pub(super) fn leave(&mut self, slot: &Slot, delivery: DeliveryId) -> Option<DeliveryId> {
        let turns = self.slots.get_mut(slot)?;
        if turns.holder != delivery {
            turns.waiting.retain(|d| *d != delivery);
            return None;
        }
        match turns.waiting.pop_front() {
            Some(next) => {
                turns.holder = next;
                Some(next)
            }
            None => {
                // No delivery left: forget the key, so memory follows the keys in use.
                self.slots.remove(slot);
                None
            }
        }
    }

    /// Keys with a delivery in progress or waiting.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use slotmap::SlotMap;

    use super::*;

    fn slot(dest: &str, key: &str) -> Slot {
        (Destination::Group(dest.into()), key.into())
    }

    /// `N` distinct delivery ids.
    fn ids<const N: usize>() -> [DeliveryId; N] {
        let mut ids: SlotMap<DeliveryId, ()> = SlotMap::with_key();
        [(); N].map(|()| ids.insert(()))
    }

    #[test]
    fn one_key_waits_other_keys_pass_and_slots_are_freed() {
        let [a, b, c, d] = ids();
        let mut turns = KeyTurns::default();
        assert!(turns.enter(&slot("billing", "k1"), a));
        assert!(!turns.enter(&slot("billing", "k1"), b), "waits for a");
        assert!(turns.enter(&slot("billing", "k2"), c), "another key");
        assert!(turns.enter(&slot("audit", "k1"), d), "another destination");
        assert_eq!(turns.leave(&slot("billing", "k1"), a), Some(b));
        assert_eq!(turns.leave(&slot("billing", "k1"), b), None);
        turns.leave(&slot("billing", "k2"), c);
        turns.leave(&slot("audit", "k1"), d);
        assert_eq!(turns.len(), 0, "no slot is kept for idle keys");
    }

    #[test]
    fn a_service_a_group_and_a_node_of_one_name_are_separate_destinations() {
        let mut ids: SlotMap<DeliveryId, ()> = SlotMap::with_key();
        let mut turns = KeyTurns::default();
        let node = NodeId::from_u128(7);
        for dest in [
            Destination::Service("billing".into()),
            Destination::Group("billing".into()),
            Destination::Node(node),
        ] {
            assert!(
                turns.enter(&(dest, "k".into()), ids.insert(())),
                "its own turn"
            );
        }
        assert!(!turns.enter(&(Destination::Node(node), "k".into()), ids.insert(())));
        assert_eq!(turns.len(), 3);
    }

    #[test]
    fn a_free_turn_is_taken_a_held_one_is_not_queued_for_and_a_turn_is_handed_on() {
        let [a, b, c, d] = ids();
        let mut turns = KeyTurns::default();
        let s = slot("svc", "k");
        assert!(turns.take_if_free(&s, a));
        assert!(!turns.take_if_free(&s, b), "held by a");
        assert!(!turns.enter(&s, c), "c waits behind a");
        turns.hand(&s, a, d);
        assert_eq!(turns.leave(&s, a), None, "a no longer holds it");
        assert_eq!(turns.leave(&s, d), Some(c), "d held it, then c");
        assert_eq!(turns.leave(&s, c), None);
        assert_eq!(turns.len(), 0, "b was never queued");
    }

    #[test]
    fn a_waiting_delivery_that_leaves_is_skipped() {
        let [a, b, c] = ids();
        let mut turns = KeyTurns::default();
        let s = slot("svc", "k");
        assert!(turns.enter(&s, a));
        assert!(!turns.enter(&s, b));
        assert!(!turns.enter(&s, c));
        assert_eq!(turns.leave(&s, b), None, "b never had the turn");
        assert_eq!(turns.leave(&s, a), Some(c));
        assert_eq!(turns.leave(&s, c), None);
        assert_eq!(turns.len(), 0);
    }
}
