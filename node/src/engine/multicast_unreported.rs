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

use super::multicast_fanout::Pending;
use super::send::DeliveryId;

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
    /// `node`'s report of event `number` completes delivery `d` (at `epoch`).
    pub(super) fn add(&mut self, node: NodeId, number: u64, d: DeliveryId, epoch: u32) {
        let queue = self.members.entry(node).or_default();
        match queue.back_mut() {
            Some((last, copies)) if *last == number => copies.push((d, epoch)),
            Some((last, _)) if *last > number => {
                // Not in order (never, as the channel numbers events): kept in order anyway.
                let at = queue.partition_point(|(n, _)| *n < number);
                match queue.get_mut(at) {
                    Some((n, copies)) if *n == number => copies.push((d, epoch)),
                    _ => queue.insert(at, (number, smallvec::smallvec![(d, epoch)])),
                }
            }
            _ => queue.push_back((number, smallvec::smallvec![(d, epoch)])),
        }
    }

    /// Takes `node`'s copies of the events numbered `start..end` into `out`.
    pub(super) fn take(
        &mut self,
        node: NodeId,
        start: u64,
        end: u64,
        out: &mut Vec<(DeliveryId, u32)>,
    ) {
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
    pub(super) fn take_all(&mut self, node: NodeId) -> Vec<(DeliveryId, u32)> {
        self.members
            .remove(&node)
            .into_iter()
            .flatten()
            .flat_map(|(_, copies)| copies)
            .collect()
    }

    /// Forgets delivery `d`'s copy, whoever it waits for (it timed out).
    pub(super) fn forget(&mut self, d: DeliveryId) {
        for queue in self.members.values_mut() {
            for (_, copies) in queue.iter_mut() {
                copies.retain(|(pending, _)| *pending != d);
            }
            trim(queue);
        }
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

    fn ids(n: usize) -> Vec<DeliveryId> {
        let mut map: SlotMap<DeliveryId, ()> = SlotMap::with_key();
        (0..n).map(|_| map.insert(())).collect()
    }

    fn taken(u: &mut Unreported, node: NodeId, start: u64, end: u64) -> Vec<DeliveryId> {
        let mut out = Vec::new();
        u.take(node, start, end, &mut out);
        out.into_iter().map(|(d, _)| d).collect()
    }

    #[test]
    fn reports_take_their_members_copies_in_any_order_and_only_once() {
        let d = ids(6);
        let (a, b) = (NodeId::from_u128(1), NodeId::from_u128(2));
        let mut u = Unreported::default();
        u.add(a, 10, d[0], 0);
        u.add(b, 10, d[1], 0);
        u.add(a, 11, d[2], 0);
        u.add(a, 11, d[3], 1); // two audiences' copies of one event
        u.add(a, 14, d[4], 0);
        u.add(a, 12, d[5], 0); // out of order: kept in order
        assert_eq!(taken(&mut u, a, 11, 13), vec![d[2], d[3], d[5]]);
        assert_eq!(taken(&mut u, a, 11, 13), Vec::<DeliveryId>::new());
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
        let (a, b) = (NodeId::from_u128(1), NodeId::from_u128(2));
        let mut u = Unreported::default();
        u.add(a, 1, d[0], 0);
        u.add(a, 2, d[1], 0);
        u.add(b, 2, d[2], 0);
        u.forget(d[0]);
        assert_eq!(u.members[&a].len(), 1, "the forgotten front left");
        let all: Vec<DeliveryId> = u.take_all(a).into_iter().map(|(d, _)| d).collect();
        assert_eq!(all, vec![d[1]]);
        assert!(u.take_all(a).is_empty());
        assert_eq!(taken(&mut u, b, 2, 3), vec![d[2]]);
    }
}
