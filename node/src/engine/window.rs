//! The messages a connection has sent and not yet had answered, by sequence number, with one
//! timer for the whole window rather than one per message.
//!
//! Sequence numbers are handed out in order, so the window is a queue: an answer finds its
//! entry by subtracting the number of the queue's front, and answered entries leave from the
//! front. Ack deadlines are kept in **segments** of consecutive numbers sent within a
//! millisecond of each other (per ack timeout, since messages may carry their own policy): the
//! window's next deadline is its oldest segment's, and a message times out at most a
//! millisecond late.
//!
//! One slow message must not make the queue hold everything sent after it until it is
//! answered: when the queue grows far past the number of unanswered messages, the unanswered
//! ones at its front move to a side table.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use shoal_proto::SeqRange;

/// Deadlines this close together share a segment.
const SEGMENT_SPAN: Duration = Duration::from_millis(1);

/// A queue this much longer than the unanswered count (and at least this long) is compacted.
const COMPACT_FACTOR: usize = 4;
const COMPACT_MIN: usize = 4096;

/// One unanswered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry<T> {
    pub(super) what: T,
    pub(super) deadline: Instant,
}

#[derive(Debug)]
struct Lane {
    timeout: Duration,
    /// `(first seq, last seq, deadline of the first + SEGMENT_SPAN)`, oldest first: the
    /// segment is due at that instant, and a message due before it joins the segment.
    segments: VecDeque<(u64, u64, Instant)>,
}

/// When the messages of one attempt are due: worked out once for all of them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Due {
    deadline: Instant,
    timeout: Duration,
}

impl Due {
    /// Due by `now + timeout` ("never" when that does not fit an instant).
    pub(super) fn new(now: Instant, timeout: Duration) -> Self {
        Self {
            deadline: now.checked_add(timeout).unwrap_or(now + FAR),
            timeout,
        }
    }
}

/// Unanswered messages of one connection.
#[derive(Debug)]
pub(super) struct Window<T> {
    /// The sequence number of `slots[0]`.
    base: u64,
    /// `None`: answered, or a number that was not a tracked message.
    slots: VecDeque<Option<Entry<T>>>,
    /// Unanswered entries that were at the front of a long queue.
    stragglers: HashMap<u64, Entry<T>>,
    pending: usize,
    lanes: Vec<Lane>,
}

impl<T: Copy> Window<T> {
    /// An empty window whose first number will be `first_seq` or later.
    pub(super) fn new(first_seq: u64) -> Self {
        Self {
            base: first_seq,
            slots: VecDeque::new(),
            stragglers: HashMap::new(),
            pending: 0,
            lanes: Vec::new(),
        }
    }

    /// Messages sent and not yet answered.
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Tracks message `seq` (larger than every number tracked before), due by `now + timeout`.
    #[cfg(test)]
    pub(super) fn push(&mut self, seq: u64, what: T, now: Instant, timeout: Duration) {
        self.push_run(seq, [what], Due::new(now, timeout));
    }

    /// Tracks the messages of `whats`, numbered one after the other from `first` (larger than
    /// every number tracked before), all due by `due`; their deadline's segment is found
    /// once.
    pub(super) fn push_run(&mut self, first: u64, whats: impl IntoIterator<Item = T>, due: Due) {
        let Due { deadline, timeout } = due;
        let next = self.base + self.slots.len() as u64;
        debug_assert!(first >= next, "sequence numbers go up");
        if self.slots.is_empty() {
            self.base = first;
        } else {
            for _ in next..first {
                self.slots.push_back(None);
            }
        }
        let before = self.slots.len();
        self.slots
            .extend(whats.into_iter().map(|what| Some(Entry { what, deadline })));
        let pushed = self.slots.len() - before;
        let Some(last) = (pushed as u64).checked_sub(1).map(|n| first + n) else {
            return;
        };
        self.pending += pushed;
        let lane = match self.lanes.iter_mut().position(|l| l.timeout == timeout) {
            Some(i) => &mut self.lanes[i],
            None => {
                self.lanes.push(Lane {
                    timeout,
                    segments: VecDeque::new(),
                });
                self.lanes.last_mut().expect("just pushed")
            }
        };
        match lane.segments.back_mut() {
            // Within a span of the segment's first deadline (or before it).
            Some((_, end, due)) if deadline < *due => *end = last,
            _ => {
                let due = deadline.checked_add(SEGMENT_SPAN).unwrap_or(deadline);
                lane.segments.push_back((first, last, due));
            }
        }
        if self.slots.len() > COMPACT_MIN.max(COMPACT_FACTOR * self.pending) {
            self.compact();
        }
    }

    /// Takes the entry of `seq` if it is unanswered (an answer came, or its attempt ended).
    pub(super) fn take(&mut self, seq: u64) -> Option<T> {
        let entry = if seq < self.base {
            // Most windows have no stragglers: no hashing for them.
            if self.stragglers.is_empty() {
                return None;
            }
            self.stragglers.remove(&seq)
        } else {
            let slot = self.slots.get_mut(usize::try_from(seq - self.base).ok()?)?;
            slot.take()
        }?;
        self.pending -= 1;
        self.trim_front();
        Some(entry.what)
    }

    /// Takes the unanswered entries of `seqs` into `out`, in order, as [`Window::take`] one by
    /// one would. Answers usually come in order, for the front of the queue: then those
    /// numbers leave it in one step.
    pub(super) fn take_run(&mut self, seqs: std::ops::Range<u64>, out: &mut impl Extend<T>) {
        if seqs.start != self.base || seqs.is_empty() {
            out.extend(seqs.filter_map(|seq| self.take(seq)));
            return;
        }
        let n = usize::try_from(seqs.end - seqs.start)
            .unwrap_or(usize::MAX)
            .min(self.slots.len());
        let mut taken = 0;
        out.extend(self.slots.drain(..n).flatten().map(|e| {
            taken += 1;
            e.what
        }));
        self.base += n as u64;
        self.pending -= taken;
        self.trim_front();
    }

    /// Drops the answered numbers at the front of the queue; forgets the deadlines when
    /// nothing is unanswered.
    fn trim_front(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.pending == 0 {
            for lane in &mut self.lanes {
                lane.segments.clear();
            }
        }
    }

    /// The numbers the queue spans, `base..next`: every unanswered number outside it is a
    /// straggler ([`Window::stragglers_in`]).
    pub(super) fn span(&self) -> std::ops::Range<u64> {
        self.base..self.base + self.slots.len() as u64
    }

    /// The unanswered stragglers (numbers below the queue) that `ranges` cover, in order.
    /// `ranges` must be sorted and disjoint. Empty (and free) while there are none.
    pub(super) fn stragglers_in(&self, ranges: &[SeqRange]) -> Vec<u64> {
        if self.stragglers.is_empty() {
            return Vec::new();
        }
        let mut covered: Vec<u64> = self
            .stragglers
            .keys()
            .copied()
            .filter(|&seq| {
                // The last range starting at or before `seq` is the only one that can hold it.
                let i = ranges.partition_point(|r| r.start <= seq);
                i > 0 && seq - ranges[i - 1].start < ranges[i - 1].len
            })
            .collect();
        covered.sort_unstable();
        covered
    }

    /// The entry of `seq`, if unanswered.
    pub(super) fn get(&self, seq: u64) -> Option<T> {
        self.entry(seq).map(|e| e.what)
    }

    fn entry(&self, seq: u64) -> Option<&Entry<T>> {
        if seq < self.base {
            if self.stragglers.is_empty() {
                return None;
            }
            self.stragglers.get(&seq)
        } else {
            self.slots
                .get(usize::try_from(seq - self.base).ok()?)?
                .as_ref()
        }
    }

    /// Takes every entry due at `now`, into `out` with its number.
    pub(super) fn take_expired(&mut self, now: Instant, out: &mut Vec<(u64, T)>) {
        for i in 0..self.lanes.len() {
            while let Some(&(first, last, due)) = self.lanes[i].segments.front() {
                // Deadlines within a segment are less than a span apart: all are due then.
                if due > now {
                    break;
                }
                self.lanes[i].segments.pop_front();
                // Numbers below the queue are answered unless they are stragglers: without
                // stragglers, only the numbers still in the queue are looked at.
                let from = if self.stragglers.is_empty() {
                    first.max(self.base)
                } else {
                    first
                };
                for seq in from..=last {
                    if let Some(what) = self.take(seq) {
                        out.push((seq, what));
                    }
                }
            }
        }
    }

    /// The earliest deadline of an unanswered message (possibly of one answered since: the
    /// caller then finds nothing due and asks again).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        self.lanes
            .iter()
            .filter_map(|l| l.segments.front().map(|s| s.2))
            .min()
    }

    /// Takes every unanswered entry (the connection is gone), in number order.
    pub(super) fn drain(&mut self) -> Vec<(u64, T)> {
        let mut out: Vec<(u64, T)> = self.stragglers.drain().map(|(s, e)| (s, e.what)).collect();
        out.sort_by_key(|(seq, _)| *seq);
        let base = self.base;
        out.extend(
            self.slots
                .drain(..)
                .enumerate()
                .filter_map(|(i, slot)| slot.map(|e| (base + i as u64, e.what))),
        );
        self.base += out.len() as u64;
        self.pending = 0;
        self.lanes.clear();
        out
    }

    /// Moves unanswered entries off the front of a long queue.
    fn compact(&mut self) {
        while self.slots.len() > COMPACT_MIN.max(2 * self.pending) {
            match self.slots.pop_front() {
                Some(Some(entry)) => {
                    self.stragglers.insert(self.base, entry);
                }
                Some(None) => {}
                None => break,
            }
            self.base += 1;
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

/// "Never", for timeouts too large to add to an instant.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn answers_find_their_entries_and_the_front_advances() {
        let t0 = Instant::now();
        let mut w = Window::new(0);
        for seq in 0..10u64 {
            w.push(seq, seq * 10, t0, TIMEOUT);
        }
        assert_eq!(w.pending(), 10);
        assert_eq!(w.take(3), Some(30));
        assert_eq!(w.take(3), None, "answered once");
        assert_eq!(w.take(0), Some(0));
        assert_eq!(w.take(42), None, "never sent");
        assert_eq!(w.get(1), Some(10));
        assert_eq!(w.pending(), 8);
        assert_eq!(w.drain().len(), 8);
        assert_eq!(w.pending(), 0);
    }

    /// `take_run` answers what taking each number would, and leaves the window in the same
    /// state: for runs at the front (its fast path), inside, past the end, over gaps and over
    /// numbers answered before.
    #[test]
    fn a_run_of_answers_takes_what_each_answer_would() {
        let t0 = Instant::now();
        let filled = || {
            let mut w = Window::new(0);
            for seq in (0..40u64).filter(|s| s % 7 != 3) {
                w.push(seq, seq, t0, TIMEOUT);
            }
            w.take(5);
            w
        };
        for (start, end) in [
            (0, 1),
            (0, 5),
            (0, 12),
            (2, 9),
            (6, 30),
            (0, 40),
            (30, 60),
            (0, 99),
        ] {
            let (mut by_run, mut one_by_one) = (filled(), filled());
            let mut run = Vec::new();
            by_run.take_run(start..end, &mut run);
            let each: Vec<u64> = (start..end).filter_map(|s| one_by_one.take(s)).collect();
            assert_eq!(run, each, "{start}..{end}");
            assert_eq!(by_run.pending(), one_by_one.pending(), "{start}..{end}");
            assert_eq!(by_run.span(), one_by_one.span(), "{start}..{end}");
            assert_eq!(
                by_run.drain(),
                one_by_one.drain(),
                "{start}..{end}: what is left"
            );
        }
    }

    /// A run pushed at once is tracked as its messages pushed one by one: same entries, same
    /// deadline, expired together.
    #[test]
    fn a_run_pushed_at_once_is_due_as_its_messages_one_by_one() {
        let t0 = Instant::now();
        let (mut by_run, mut one_by_one) = (Window::new(0), Window::new(0));
        by_run.push(0, 0u64, t0, TIMEOUT);
        one_by_one.push(0, 0u64, t0, TIMEOUT);
        let later = t0 + Duration::from_millis(10);
        // A segment of its own, then a run that joins it.
        by_run.push_run(3, 3..9u64, Due::new(later, TIMEOUT));
        by_run.push_run(9, 9..12u64, Due::new(later, TIMEOUT));
        for seq in 3..12u64 {
            one_by_one.push(seq, seq, later, TIMEOUT);
        }
        assert_eq!(by_run.pending(), 10);
        for w in [&mut by_run, &mut one_by_one] {
            assert_eq!(w.next_deadline(), Some(t0 + TIMEOUT + SEGMENT_SPAN));
            assert_eq!(w.take(0), Some(0));
        }
        let expired = |w: &mut Window<u64>| {
            let mut out = Vec::new();
            w.take_expired(later + TIMEOUT + SEGMENT_SPAN, &mut out);
            out
        };
        let run_expired = expired(&mut by_run);
        assert_eq!(run_expired.len(), 9, "{run_expired:?}");
        assert_eq!(run_expired, expired(&mut one_by_one));
        assert_eq!(by_run.pending(), 0);
    }

    #[test]
    fn gaps_in_the_numbers_are_not_entries() {
        let t0 = Instant::now();
        let mut w = Window::new(0);
        w.push(5, 'a', t0, TIMEOUT);
        w.push(9, 'b', t0, TIMEOUT);
        assert_eq!(w.pending(), 2);
        assert_eq!(w.take(7), None);
        assert_eq!(w.take(9), Some('b'));
        assert_eq!(w.take(5), Some('a'));
    }

    #[test]
    fn one_timer_per_segment_and_expiry_takes_what_is_due() {
        let t0 = Instant::now();
        let mut w = Window::new(0);
        w.push(0, 0, t0, TIMEOUT);
        w.push(1, 1, t0 + Duration::from_micros(100), TIMEOUT);
        w.push(2, 2, t0 + Duration::from_millis(10), TIMEOUT);
        w.push(3, 3, t0, Duration::from_secs(1));
        let span = SEGMENT_SPAN;
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(1) + span));
        let mut out = Vec::new();
        w.take_expired(t0 + Duration::from_secs(1), &mut out);
        assert!(out.is_empty(), "due at most a span late, never early");
        w.take_expired(t0 + Duration::from_secs(1) + span, &mut out);
        assert_eq!(out, vec![(3, 3)]);
        w.take(1);
        out.clear();
        w.take_expired(t0 + TIMEOUT + span, &mut out);
        assert_eq!(out, vec![(0, 0)], "1 was answered; 2 is not due yet");
        assert_eq!(
            w.next_deadline(),
            Some(t0 + Duration::from_millis(10) + TIMEOUT + span)
        );
        out.clear();
        w.take_expired(t0 + Duration::from_secs(60), &mut out);
        assert_eq!(out, vec![(2, 2)]);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_stuck_message_does_not_keep_the_queue_long() {
        let t0 = Instant::now();
        let mut w = Window::new(0);
        w.push(0, u64::MAX, t0, TIMEOUT);
        for seq in 1..100_000u64 {
            w.push(seq, seq, t0, TIMEOUT);
            assert_eq!(w.take(seq), Some(seq));
        }
        assert!(w.slots.len() <= COMPACT_MIN, "{} slots", w.slots.len());
        assert_eq!(w.pending(), 1);
        assert_eq!(w.get(0), Some(u64::MAX));
        let mut out = Vec::new();
        w.take_expired(t0 + TIMEOUT + SEGMENT_SPAN, &mut out);
        assert_eq!(out, vec![(0, u64::MAX)], "the straggler still times out");
    }

    #[test]
    fn huge_timeouts_mean_never() {
        let t0 = Instant::now();
        let mut w = Window::new(0);
        w.push(0, 0, t0, Duration::MAX);
        assert!(
            w.next_deadline()
                .is_some_and(|d| d > t0 + Duration::from_secs(3600))
        );
    }
}
