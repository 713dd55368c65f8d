//! Sequence numbers waiting to be acknowledged, kept as ranges.
//!
//! Handlers finish roughly in the order their messages came, so a new number almost always
//! extends the last range: adding is a comparison and an increment, and one [`Ack`] frame of a
//! few ranges acknowledges everything handled since the last write.
//!
//! [`Ack`]: shoal_proto::Ack

use shoal_proto::SeqRange;
use smallvec::SmallVec;

/// A set of sequence numbers, as sorted, disjoint, non-adjacent ranges `start..end`.
#[derive(Debug, Default)]
pub(super) struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Adds `seq`.
    pub(super) fn insert(&mut self, seq: u64) {
        let end = seq.saturating_add(1);
        if let Some(last) = self.ranges.last_mut() {
            if last.1 == seq {
                last.1 = end;
                return;
            }
            if last.1 < seq {
                self.ranges.push((seq, end));
                return;
            }
        } else {
            self.ranges.push((seq, end));
            return;
        }
        // Out of order: the first range that ends at or after `seq`.
        let i = self.ranges.partition_point(|r| r.1 < seq);
        let r = self.ranges[i];
        if r.0 <= seq && seq < r.1 {
            return;
        }
        if r.1 == seq {
            self.ranges[i].1 = end;
        } else if r.0 == end {
            self.ranges[i].0 = seq;
        } else {
            self.ranges.insert(i, (seq, end));
            return;
        }
        // Join with the next range if they now touch.
        if i + 1 < self.ranges.len() && self.ranges[i].1 == self.ranges[i + 1].0 {
            self.ranges[i].1 = self.ranges[i + 1].1;
            self.ranges.remove(i + 1);
        }
        // Or with the previous one.
        if i > 0 && self.ranges[i - 1].1 == self.ranges[i].0 {
            self.ranges[i - 1].1 = self.ranges[i].1;
            self.ranges.remove(i);
        }
    }

    /// Whether no number is in the set.
    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Takes every range, as the wire names them. Usually a few: kept inline, so writing an
    /// ack (nearly every write of a receiver has one) allocates nothing for them.
    pub(super) fn take(&mut self) -> SmallVec<[SeqRange; 8]> {
        self.ranges
            .drain(..)
            .map(|(start, end)| SeqRange {
                start,
                len: end - start,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(set: &mut RangeSet) -> Vec<(u64, u64)> {
        set.take().iter().map(|r| (r.start, r.len)).collect()
    }

    #[test]
    fn in_order_numbers_make_one_range() {
        let mut set = RangeSet::default();
        for seq in 10..1000 {
            set.insert(seq);
        }
        assert_eq!(ranges(&mut set), vec![(10, 990)]);
        assert!(set.is_empty());
    }

    #[test]
    fn out_of_order_numbers_merge() {
        let mut set = RangeSet::default();
        for seq in [5, 7, 9, 6, 1, 8, 2, 0, 3, 4, 4, 20, u64::MAX] {
            set.insert(seq);
        }
        assert_eq!(
            ranges(&mut set),
            vec![(0, 10), (20, 1), (u64::MAX, 0)],
            "the last number saturates: u64::MAX is never used"
        );
    }

    #[test]
    fn every_order_of_a_small_set_gives_the_same_ranges() {
        let seqs = [3u64, 4, 5, 8, 9, 12];
        // Every rotation and its reverse.
        for shift in 0..seqs.len() {
            for reverse in [false, true] {
                let mut order: Vec<u64> =
                    seqs.iter().cycle().skip(shift).take(6).copied().collect();
                if reverse {
                    order.reverse();
                }
                let mut set = RangeSet::default();
                order.iter().for_each(|s| set.insert(*s));
                assert_eq!(ranges(&mut set), vec![(3, 3), (8, 2), (12, 1)], "{order:?}");
            }
        }
    }
}
