//! The publisher's side of repairs: the sealed datagrams kept until every active subscriber
//! has them, and the NAKs merged per datagram before one repair answers them all.
//!
//! As in NORM (RFC 5740), the publisher collects NAKs for a short while (two round trips, the
//! spread of the subscribers' random NAK delays) before
//! repairing, so the requests of several subscribers that lost the same datagram are answered
//! by one multicast resend, and then ignores new NAKs for that datagram for a little while
//! (two round trips): they were sent before the repair arrived.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use shoal_proto::NodeId;
use smallvec::SmallVec;

/// One sealed datagram, as sent.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    /// The datagram's bytes. A repair sends these again: nothing is sealed twice.
    pub(super) bytes: Bytes,
    /// The number of its first event.
    pub(super) first_item: u64,
}

/// Sealed datagrams by number, oldest first.
#[derive(Debug, Default)]
pub(super) struct RepairBuffer {
    /// The number of `entries[0]`.
    base: u64,
    entries: VecDeque<Stored>,
}

impl RepairBuffer {
    /// Keeps datagram `seq`, the next after the last one kept.
    pub(super) fn push(&mut self, seq: u64, stored: Stored) {
        if self.entries.is_empty() {
            self.base = seq;
        }
        debug_assert_eq!(seq, self.base + self.entries.len() as u64);
        self.entries.push_back(stored);
    }

    pub(super) fn get(&self, seq: u64) -> Option<&Stored> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.entries.get(index)
    }

    /// Forgets the datagrams numbered below `seq`.
    pub(super) fn release_below(&mut self, seq: u64) {
        while self.base < seq && self.entries.pop_front().is_some() {
            self.base += 1;
        }
    }

    /// The oldest datagram kept, or `next` when none is.
    pub(super) fn oldest(&self, next: u64) -> u64 {
        if self.entries.is_empty() {
            next
        } else {
            self.base
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// NAKs waiting to be answered.
#[derive(Debug, Default)]
pub(super) struct Naks {
    /// Each datagram asked for, with who asked.
    pending: BTreeMap<u64, SmallVec<[NodeId; 4]>>,
    /// Datagrams repaired recently: NAKs for them are ignored until then.
    holdoff: HashMap<u64, Instant>,
    /// When the pending NAKs are answered.
    pub(super) due: Option<Instant>,
}

impl Naks {
    /// `node` asks for `seq`; returns whether the request was taken (not held off).
    pub(super) fn add(&mut self, seq: u64, node: NodeId, now: Instant, answer_at: Instant) -> bool {
        if self.holdoff.get(&seq).is_some_and(|until| now < *until) {
            return false;
        }
        let askers = self.pending.entry(seq).or_default();
        if !askers.contains(&node) {
            askers.push(node);
        }
        if self.due.is_none() {
            self.due = Some(answer_at);
        }
        true
    }

    /// Takes at most `max` datagrams asked for (lowest numbers first), with who asked, and
    /// holds off NAKs for them until `holdoff`. What is left is due at once.
    pub(super) fn take(
        &mut self,
        max: usize,
        now: Instant,
        holdoff: Instant,
    ) -> Vec<(u64, SmallVec<[NodeId; 4]>)> {
        self.holdoff.retain(|_, until| now < *until);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(entry) = self.pending.pop_first() else {
                break;
            };
            self.holdoff.insert(entry.0, holdoff);
            out.push(entry);
        }
        self.due = (!self.pending.is_empty()).then_some(now);
        out
    }

    /// Forgets what `node` asked for (it left or went to unicast).
    pub(super) fn forget(&mut self, node: NodeId) {
        self.pending.retain(|_, askers| {
            askers.retain(|n| *n != node);
            !askers.is_empty()
        });
        if self.pending.is_empty() {
            self.due = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_buffer_finds_by_number_and_releases_from_the_front() {
        let mut buf = RepairBuffer::default();
        assert_eq!(buf.oldest(10), 10);
        for seq in 10..20 {
            buf.push(
                seq,
                Stored {
                    bytes: Bytes::from(vec![seq as u8]),
                    first_item: seq * 3,
                },
            );
        }
        assert_eq!(buf.get(12).map(|s| s.first_item), Some(36));
        assert!(buf.get(9).is_none() && buf.get(20).is_none());
        buf.release_below(15);
        assert_eq!((buf.oldest(20), buf.len()), (15, 5));
        buf.release_below(100);
        assert_eq!(buf.oldest(20), 20);
    }

    #[test]
    fn naks_merge_per_datagram_and_are_held_off_after_a_repair() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let (a, b) = (NodeId::from_u128(1), NodeId::from_u128(2));
        let mut naks = Naks::default();
        assert!(naks.add(5, a, t0, t0 + ms));
        assert!(naks.add(5, b, t0, t0 + 2 * ms));
        assert!(naks.add(5, a, t0, t0 + 3 * ms));
        assert!(naks.add(7, b, t0, t0 + 3 * ms));
        assert_eq!(
            naks.due,
            Some(t0 + ms),
            "the first NAK sets when they are answered"
        );
        let taken = naks.take(1, t0 + ms, t0 + 3 * ms);
        assert_eq!(taken, vec![(5, SmallVec::from_slice(&[a, b]))]);
        assert_eq!(naks.due, Some(t0 + ms), "the rest at once");
        assert!(!naks.add(5, a, t0 + 2 * ms, t0 + 3 * ms), "held off");
        assert!(naks.add(5, a, t0 + 3 * ms, t0 + 4 * ms), "not any more");
        naks.forget(b);
        assert_eq!(naks.take(10, t0 + 4 * ms, t0 + 5 * ms).len(), 1);
        assert_eq!(naks.due, None);
    }
}
