//! The receiver's dedup window: remembers recently handled message ids so a redelivered
//! message is acknowledged again without running its handler twice.
//!
//! Two structures, because the two questions it answers have very different costs:
//!
//! - **Running** ids (a handler is working on them) are few, bounded by the handlers allowed
//!   to run at once: a small hash set that stays in the cache.
//! - **Done** ids are many (100,000 by default) and almost never asked about again: a log of
//!   chunks in the order they were handled ([`IdLog`], in [`log`]), where appending is a
//!   write at the end of the newest chunk and a fresh id is ruled out by the newest chunk's
//!   filter.
//!
//! The ids are hashed with keys of this node's ([`IdHashing`], in [`id_hashing`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use shoal_proto::MessageId;

mod id_hashing;
mod log;

pub(crate) use id_hashing::IdHashing;
pub(crate) use log::IdLog;

/// How a delivered message relates to what the window remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time: run the handler.
    New,
    /// A handler for this id is running now: the ack will follow when it finishes.
    InProgress,
    /// Already handled: acknowledge again, do not run the handler.
    Done,
}

/// Most ids in one chunk of the done log.
const MAX_CHUNK: usize = 4096;

/// Bounded by count and by age; the oldest chunk of ids goes first.
///
/// Memory: 16 bytes per done id plus 4 bytes of filter, about 2 MB for the default of
/// 100,000 ids, and a few dozen bytes per running handler.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    running: HashSet<MessageId, IdHashing>,
    /// Done ids, each costing 1 against the capacity.
    done: IdLog<()>,
    capacity: usize,
    max_age: Duration,
}

impl DedupWindow {
    /// A window of at most `capacity` done ids, each remembered at least `max_age` (and at most
    /// an eighth longer); `keys` seed the id hash (random per node, so a peer cannot pick ids
    /// that collide).
    pub(crate) fn new(capacity: usize, max_age: Duration, keys: [u64; 2]) -> Self {
        let hashing = IdHashing::new(keys);
        let chunk_len = (capacity / 16).clamp(1, MAX_CHUNK);
        Self {
            running: HashSet::with_hasher(hashing),
            done: IdLog::new(capacity, (chunk_len, chunk_len), max_age, hashing),
            capacity,
            max_age,
        }
    }

    /// Records a delivery of `id` and says what to do with it: a new id counts as running
    /// from now until [`DedupWindow::complete`] or [`DedupWindow::forget`].
    pub(crate) fn check(&mut self, id: MessageId, now: Instant) -> Seen {
        if self.capacity == 0 {
            return Seen::New;
        }
        self.done.expire(now);
        // An id is running or done, never both (it is done once it stops running), so one
        // probe of the running set both asks and records.
        if self.done.find(id).is_some() {
            return Seen::Done;
        }
        if !self.running.insert(id) {
            return Seen::InProgress;
        }
        Seen::New
    }

    /// The handler for `id` finished successfully: remember it as done.
    pub(crate) fn complete(&mut self, id: MessageId, now: Instant) {
        if !self.running.remove(&id) || self.max_age.is_zero() {
            return;
        }
        self.done.push(id, (), 1, now);
    }

    /// The handler failed in a way worth retrying: forget the id so a redelivery runs again.
    pub(crate) fn forget(&mut self, id: MessageId) {
        self.running.remove(&id);
    }

    /// Done ids remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3211];
    const T0_MS: u64 = 1_700_000_000_000;

    /// Distinct ids (`from_parts` keeps 12 low bits of the random part and 62 high ones).
    fn id(n: u128) -> MessageId {
        MessageId::from_parts(T0_MS + (n / 1000) as u64, n << 64 | n)
    }

    #[test]
    fn duplicate_of_a_running_then_finished_message() {
        let now = Instant::now();
        let mut w = DedupWindow::new(10, Duration::from_secs(60), KEYS);
        assert_eq!(w.check(id(1), now), Seen::New);
        assert_eq!(w.check(id(1), now), Seen::InProgress);
        w.complete(id(1), now);
        assert_eq!(w.check(id(1), now), Seen::Done);
    }

    #[test]
    fn forgotten_ids_run_again() {
        let now = Instant::now();
        let mut w = DedupWindow::new(10, Duration::from_secs(60), KEYS);
        assert_eq!(w.check(id(1), now), Seen::New);
        w.forget(id(1));
        assert_eq!(w.check(id(1), now), Seen::New);
    }

    #[test]
    fn ids_age_out_after_max_age_and_at_most_an_eighth_later() {
        let start = Instant::now();
        let age = Duration::from_secs(80);
        let mut w = DedupWindow::new(1000, age, KEYS);
        w.check(id(1), start);
        w.complete(id(1), start);
        // The chunk stays open for an eighth of the age: later ids keep it alive that long.
        let later = start + Duration::from_secs(9);
        w.check(id(2), later);
        w.complete(id(2), later);
        assert_eq!(
            w.check(id(1), start + age - Duration::from_secs(1)),
            Seen::Done
        );
        assert_eq!(
            w.check(id(1), later + age - Duration::from_secs(1)),
            Seen::Done
        );
        // Past that eighth the chunk is sealed: a later id starts a chunk of its own and does
        // not keep the older ones alive.
        let sealed = start + age / 8 + Duration::from_secs(1);
        w.check(id(3), sealed);
        w.complete(id(3), sealed);
        assert_eq!(w.check(id(1), later + age), Seen::New, "aged out");
        assert!(later + age <= start + age + age / 8);
        assert_eq!(
            w.check(id(3), sealed + age - Duration::from_secs(1)),
            Seen::Done
        );
        assert_eq!(w.check(id(3), sealed + age), Seen::New, "aged out");
    }

    #[test]
    fn count_bound_evicts_oldest_first() {
        let now = Instant::now();
        // Capacity 32: chunks of 2 ids.
        let mut w = DedupWindow::new(32, Duration::from_secs(60), KEYS);
        for n in 1..=40 {
            assert_eq!(w.check(id(n), now), Seen::New);
            w.complete(id(n), now);
        }
        assert_eq!(w.len(), 32);
        assert_eq!(w.check(id(40), now), Seen::Done);
        assert_eq!(w.check(id(9), now), Seen::Done);
        assert_eq!(w.check(id(1), now), Seen::New, "oldest was evicted");
        assert_eq!(w.check(id(8), now), Seen::New, "oldest was evicted");
    }

    #[test]
    fn a_zero_max_age_keeps_running_ids_and_forgets_done_ones() {
        let now = Instant::now();
        let mut w = DedupWindow::new(10, Duration::ZERO, KEYS);
        assert_eq!(w.check(id(1), now), Seen::New);
        assert_eq!(w.check(id(1), now), Seen::InProgress);
        w.complete(id(1), now);
        assert_eq!(w.check(id(1), now), Seen::New, "done ids are forgotten");
    }

    #[test]
    fn a_zero_capacity_remembers_nothing() {
        let now = Instant::now();
        let mut w = DedupWindow::new(0, Duration::from_secs(60), KEYS);
        assert_eq!(w.check(id(1), now), Seen::New);
        assert_eq!(w.check(id(1), now), Seen::New);
    }

    #[test]
    fn every_done_id_is_found_among_many_and_strangers_are_not() {
        let now = Instant::now();
        let mut w = DedupWindow::new(100_000, Duration::from_secs(600), KEYS);
        // Ids from many milliseconds, some far in the past (an outbox relay after a restart).
        let ids: Vec<MessageId> = (0..100_000u128)
            .map(|n| {
                let ms = if n % 97 == 0 {
                    T0_MS - 3_600_000
                } else {
                    T0_MS + (n / 50) as u64
                };
                MessageId::from_parts(ms, (n * 7919) << 64 | n)
            })
            .collect();
        for &i in &ids {
            assert_eq!(w.check(i, now), Seen::New);
            w.complete(i, now);
        }
        assert_eq!(w.len(), 100_000);
        assert!(ids.iter().all(|&i| w.check(i, now) == Seen::Done));
        let strangers =
            (0..10_000u128).map(|n| MessageId::from_parts(T0_MS + 1000, (n + 1_000_000) << 64));
        for s in strangers {
            assert_eq!(w.check(s, now), Seen::New);
            w.forget(s);
        }
    }

    /// A sender whose clock runs ahead makes ids "from the future": one in an older chunk is
    /// still found when a fresh id of the same time is looked up in the newest chunk only.
    #[test]
    fn an_id_from_a_clock_ahead_is_found_in_an_older_chunk() {
        let now = Instant::now();
        // Chunks of 1 id each (capacity / 16, at least 1).
        let mut w = DedupWindow::new(16, Duration::from_secs(600), KEYS);
        let ahead = MessageId::from_parts(T0_MS + 60_000, 1 << 64 | 1);
        let later = [2u128, 3, 4].map(|n| MessageId::from_parts(T0_MS, n << 64 | n));
        for i in std::iter::once(ahead).chain(later) {
            assert_eq!(w.check(i, now), Seen::New);
            w.complete(i, now);
        }
        assert_eq!(w.check(ahead, now), Seen::Done);
        let fresh = MessageId::from_parts(T0_MS + 1, 9 << 64 | 9);
        assert_eq!(w.check(fresh, now), Seen::New);
        // The chunk that held the id from ahead goes (count bound); the bound comes down.
        for n in 10..30u128 {
            let i = MessageId::from_parts(T0_MS, n << 64 | n);
            assert_eq!(w.check(i, now), Seen::New);
            w.complete(i, now);
        }
        let reach = w.done.reach_ms();
        assert!(reach <= Some(T0_MS), "{reach:?}");
        assert_eq!(w.check(ahead, now), Seen::New, "evicted with its chunk");
    }

    #[test]
    fn memory_stays_bounded_under_many_ids() {
        let now = Instant::now();
        let mut w = DedupWindow::new(1000, Duration::from_secs(60), KEYS);
        for n in 0..100_000 {
            w.check(id(n), now);
            w.complete(id(n), now);
        }
        // Chunks of 1000 / 16 ids.
        let chunk_len = 62;
        assert!(w.len() <= 1000 && w.len() > 1000 - chunk_len, "{}", w.len());
        assert!(w.running.is_empty());
        assert!(w.done.chunk_count() <= 1000 / chunk_len + 1);
    }
}
