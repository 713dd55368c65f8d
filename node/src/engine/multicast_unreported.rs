//! The copies on a publisher's channel that their members have not reported yet, by member
//! and event number: what a member's status completes ([`super::multicast_fanout`]).
//!
//! The channel numbers events as it packs them, so a member's copies come in the order of
//! their numbers and each member's are a queue: a report finds its events by a binary search
//! and takes their copies out, leaving empty places that leave from the front once everything
//! before them is reported. A report of numbers no copy waits for costs one search, whatever
//! range it claims. (A map keyed by member and number, as before, paid a search of the whole
//! map for every copy added and two for every copy reported: at 16 members, most of a
//! publisher's bookkeeping per event.)

use std::collections::{HashMap, VecDeque};

use shoal_proto::NodeId;

use super::multicast_copies::CopyRef;
use super::multicast_fanout::Pending;

/// How the members' queues are found: foldhash, seeded per process (node ids are
/// certified members, looked up for every copy).
type Hashing = foldhash::fast::RandomState;

/// The unreported copies of every member. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Unreported {
    /// Each member's events, in number order, with the copies waiting for its report
    /// (empty once reported, until the events before it are too).
    members: HashMap<NodeId, VecDeque<(u64, Pending)>, Hashing>,
}

impl Unreported {
    /// `node`'s report of event `number` completes `copy`.
    pub(super) fn add(&mut self, node: NodeId, number: u64, copy: CopyRef) {
        let queue = self.members.entry(node).or_default();
        match queue.back_mut() {
            Some((last, copies)) if *last == number => copies.push(copy),
            Some((last, _)) if *last > number => {
                // Not in order (never, as the channel numbers events): kept in order anyway.
                let at = queue.partition_point(|(n, _)| *n < number);
                match queue.get_mut(at) {
                    Some((n, copies)) if *n == number => copies.push(copy),
                    _ => queue.insert(at, (number, smallvec::smallvec![copy])),
                }
            }
            _ => queue.push_back((number, smallvec::smallvec![copy])),
        }
    }

    /// Takes `node`'s copies of the events numbered `start..end` into `out`.
    pub(super) fn take(&mut self, node: NodeId, start: u64, end: u64, out: &mut Vec<CopyRef>) {
        let Some(queue) = self.members.get_mut(&node) else {
            return;
        };
        let from = queue.partition_point(|(n, _)| *n < start);
        for (_, copies) in queue.range_mut(from..).take_while(|(n, _)| *n < end) {
            out.extend(copies.drain(..));
        }
        trim(queue);
    }

    /// Takes every copy waiting for `node`'s report (it left, or moved to unicast).
    pub(super) fn take_all(&mut self, node: NodeId) -> Vec<CopyRef> {
        self.members
            .remove(&node)
            .into_iter()
            .flatten()
            .flat_map(|(_, copies)| copies)
            .collect()
    }

    /// Forgets `copy`, waiting for `node`'s report (it timed out); a delivery's, whatever
    /// the epoch it was staged at.
    pub(super) fn forget(&mut self, node: NodeId, copy: CopyRef) {
        let Some(queue) = self.members.get_mut(&node) else {
            return;
        };
        let same = |pending: &CopyRef| match (pending, copy) {
            (CopyRef::Delivery(a, _), CopyRef::Delivery(b, _)) => *a == b,
            (pending, copy) => *pending == copy,
        };
        for (_, copies) in queue.iter_mut() {
            copies.retain(|pending| !same(pending));
        }
        trim(queue);
    }
}

/// Drops the reported places at the front of a member's queue.
fn trim(queue: &mut VecDeque<(u64, Pending)>) {
    while queue.front().is_some_and(|(_, copies)| copies.is_empty()) {
        queue.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use slotmap::SlotMap;

    use super::*;
    use crate::engine::OpId;
    use crate::engine::send::DeliveryId;

    fn ids(n: usize) -> Vec<CopyRef> {
        let mut map: SlotMap<DeliveryId, ()> = SlotMap::with_key();
        (0..n)
            .map(|_| CopyRef::Delivery(map.insert(()), 0))
            .collect()
    }

    fn taken(u: &mut Unreported, node: NodeId, start: u64, end: u64) -> Vec<CopyRef> {
        let mut out = Vec::new();
        u.take(node, start, end, &mut out);
        out
    }

    #[test]
    fn reports_take_their_members_copies_in_any_order_and_only_once() {
        let d = ids(6);
        let (a, b) = (NodeId::from_u128(1), NodeId::from_u128(2));
        let mut u = Unreported::default();
        u.add(a, 10, d[0]);
        u.add(b, 10, d[1]);
        u.add(a, 11, d[2]);
        u.add(a, 11, d[3]); // two audiences' copies of one event
        u.add(a, 14, d[4]);
        u.add(a, 12, d[5]); // out of order: kept in order
        assert_eq!(taken(&mut u, a, 11, 13), vec![d[2], d[3], d[5]]);
        assert_eq!(taken(&mut u, a, 11, 13), Vec::<CopyRef>::new());
        // A range far wider than what waits, and another member's numbers: only a's.
        assert_eq!(taken(&mut u, a, 0, u64::MAX), vec![d[0], d[4]]);
        assert_eq!(
            u.members[&a].len(),
            0,
            "reported places left from the front"
        );
        assert_eq!(taken(&mut u, b, 10, 11), vec![d[1]]);
    }

    #[test]
    fn a_member_that_leaves_takes_everything_and_a_forgotten_copy_is_gone() {
        let d = ids(3);
        let mut ops: SlotMap<OpId, ()> = SlotMap::with_key();
        let (op, other) = (ops.insert(()), ops.insert(()));
        let (a, b) = (NodeId::from_u128(1), NodeId::from_u128(2));
        let mut u = Unreported::default();
        u.add(a, 1, d[0]);
        u.add(a, 2, d[1]);
        u.add(a, 2, CopyRef::Copy(op, 0));
        u.add(a, 3, CopyRef::Copy(op, 1));
        u.add(b, 2, d[2]);
        let CopyRef::Delivery(first, _) = d[0] else {
            unreachable!()
        };
        // A delivery's copy is forgotten whatever epoch it was staged at; only `node`'s.
        u.forget(b, CopyRef::Delivery(first, 7));
        assert_eq!(u.members[&a].len(), 3, "another member's copy stays");
        u.forget(a, CopyRef::Delivery(first, 7));
        assert_eq!(u.members[&a].len(), 2, "the forgotten front left");
        u.forget(a, CopyRef::Copy(other, 1));
        u.forget(a, CopyRef::Copy(op, 1));
        assert_eq!(u.take_all(a), vec![d[1], CopyRef::Copy(op, 0)]);
        assert!(u.take_all(a).is_empty());
        assert_eq!(taken(&mut u, b, 2, 3), vec![d[2]]);
    }
}
