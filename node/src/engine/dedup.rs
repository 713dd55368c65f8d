//! The receiver's dedup window: remembers recently handled message ids so a redelivered
//! message is acknowledged again without running its handler twice.
//!
//! Two structures, because the two questions it answers have very different costs:
//!
//! - **Running** ids (a handler is working on them) are few, bounded by the handlers allowed
//!   to run at once: a small hash set that stays in the cache.
//! - **Done** ids are many (100,000 by default) and almost never asked about again: a log of
//!   chunks in the order they were handled. Appending is a write at the end of the newest
//!   chunk. Each chunk knows the range of creation times of its ids (message ids are UUIDv7:
//!   their top bits are the sender's clock) and keeps a small Bloom filter, so a lookup skips
//!   every chunk whose time range or filter rules the id out, and scans the rare one that
//!   may hold it. A lookup walks from the newest chunk back and stops at the first chunk
//!   that, with all older ones, holds no id as new as the one asked about: a fresh message's
//!   id is from *now*, so it asks the newest chunk or two, and their filters answer "not
//!   here" in a few cache lines each.
//!
//! Before this layout, every first delivery paid a lookup and an insert in a 100,000-entry
//! hash table that does not fit in the cache (17 % of a receiver's time for batches of small
//! events), and a second probe when the handler finished.
//!
//! The ids are hashed with keys of this node's ([`IdHashing`], in [`id_hashing`]).

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use shoal_proto::MessageId;

mod id_hashing;

pub(crate) use id_hashing::IdHashing;

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

/// Bloom filter bits per id of a chunk.
const BLOOM_BITS_PER_ID: usize = 32;

/// Bits set per id: with [`BLOOM_BITS_PER_ID`], about 0.07 % false positives in a full chunk.
/// A false positive costs a scan of the chunk's ids (thousands of comparisons), so the filter is
/// sized for few of them: with 16 bits and two probes (1.4 %), those scans were an eighth of a
/// receiver's instructions for batches of small events.
const BLOOM_PROBES: usize = 3;

/// Bounded by count and by age; the oldest chunk of ids goes first.
///
/// Memory: 16 bytes per done id plus 4 bytes of filter, about 2 MB for the default of
/// 100,000 ids, and a few dozen bytes per running handler.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    running: HashSet<MessageId, IdHashing>,
    chunks: VecDeque<Chunk>,
    /// Done ids remembered, over all chunks.
    len: usize,
    capacity: usize,
    max_age: Duration,
    chunk_len: usize,
    hashing: IdHashing,
    /// No chunk expires before this (the oldest chunk's last id plus the age): a check until
    /// then skips the walk. Ids are only ever added later, so it is never too late.
    quiet_until: Option<Instant>,
}

#[derive(Debug)]
struct Chunk {
    ids: Vec<MessageId>,
    bloom: Box<[u64]>,
    /// The range of the ids' creation times (ms), to skip chunks that cannot hold an id.
    min_ms: u64,
    max_ms: u64,
    /// The newest creation time (ms) in this chunk and every older one, or more (it is lowered
    /// only when the oldest chunk goes): a lookup walking back from the newest chunk stops at
    /// the first chunk whose reach is older than the id.
    reach_ms: u64,
    /// When the chunk takes no more ids, however few it holds (`None`: too far ahead to
    /// say); computed once, not per id.
    sealed_at: Option<Instant>,
    last: Instant,
}

impl Chunk {
    /// An empty chunk for `len` ids, newer than chunks that reach up to `reach_ms`, that
    /// takes ids for `open_for` from `now`.
    fn new(len: usize, reach_ms: u64, now: Instant, open_for: Duration) -> Self {
        let words = (len * BLOOM_BITS_PER_ID).div_ceil(64).next_power_of_two();
        Self {
            ids: Vec::with_capacity(len),
            bloom: vec![0; words].into_boxed_slice(),
            min_ms: u64::MAX,
            max_ms: 0,
            reach_ms,
            sealed_at: now.checked_add(open_for),
            last: now,
        }
    }

    /// The filter bits of an id (from its keyed hash, by double hashing: probe `i` is
    /// `a + i * b`), as (word, bit) pairs.
    fn bits(&self, hash: u64) -> [(usize, u64); BLOOM_PROBES] {
        let mask = self.bloom.len() * 64 - 1;
        let (a, b) = (hash as usize, (hash >> 32) as usize | 1);
        std::array::from_fn(|i| {
            let bit = a.wrapping_add(i.wrapping_mul(b)) & mask;
            (bit / 64, 1 << (bit % 64))
        })
    }

    fn insert(&mut self, id: MessageId, hash: u64, now: Instant) {
        for (word, bit) in self.bits(hash) {
            self.bloom[word] |= bit;
        }
        let ms = id.unix_ms();
        self.min_ms = self.min_ms.min(ms);
        self.max_ms = self.max_ms.max(ms);
        self.reach_ms = self.reach_ms.max(ms);
        self.ids.push(id);
        self.last = now;
    }

    fn may_hold(&self, id: MessageId, hash: u64) -> bool {
        let ms = id.unix_ms();
        ms >= self.min_ms
            && ms <= self.max_ms
            && self
                .bits(hash)
                .iter()
                .all(|(word, bit)| self.bloom[*word] & bit != 0)
    }
}

impl DedupWindow {
    /// A window of at most `capacity` done ids, each remembered at least `max_age` (and at most
    /// an eighth longer); `keys` seed the id hash (random per node, so a peer cannot pick ids
    /// that collide).
    pub(crate) fn new(capacity: usize, max_age: Duration, keys: [u64; 2]) -> Self {
        let hashing = IdHashing::new(keys);
        Self {
            running: HashSet::with_hasher(hashing),
            chunks: VecDeque::new(),
            len: 0,
            capacity,
            max_age,
            chunk_len: (capacity / 16).clamp(1, MAX_CHUNK),
            hashing,
            quiet_until: None,
        }
    }

    /// Records a delivery of `id` and says what to do with it: a new id counts as running
    /// from now until [`DedupWindow::complete`] or [`DedupWindow::forget`].
    pub(crate) fn check(&mut self, id: MessageId, now: Instant) -> Seen {
        if self.capacity == 0 {
            return Seen::New;
        }
        self.expire(now);
        // An id is running or done, never both (it is done once it stops running), so one
        // probe of the running set both asks and records.
        if self.is_done(id) {
            return Seen::Done;
        }
        if !self.running.insert(id) {
            return Seen::InProgress;
        }
        Seen::New
    }

    /// Whether `id` is among the done ids.
    fn is_done(&self, id: MessageId) -> bool {
        let ms = id.unix_ms();
        // A plain walk by index: the iterator chain (reversed, cut short, searched) cost
        // several times the one or two chunks it usually looks at.
        let mut hash = None;
        let mut i = self.chunks.len();
        while i > 0 {
            i -= 1;
            let c = &self.chunks[i];
            if c.reach_ms < ms {
                return false;
            }
            let hash = *hash.get_or_insert_with(|| self.hashing.hash_one(id));
            if c.may_hold(id, hash) && c.ids.contains(&id) {
                return true;
            }
        }
        false
    }

    /// The handler for `id` finished successfully: remember it as done.
    pub(crate) fn complete(&mut self, id: MessageId, now: Instant) {
        if !self.running.remove(&id) || self.max_age.is_zero() {
            return;
        }
        let open = self
            .chunks
            .back()
            .is_some_and(|c| c.ids.len() < self.chunk_len && c.sealed_at.is_none_or(|at| now < at));
        if !open {
            let reach = self.chunks.back().map_or(0, |c| c.reach_ms);
            // A chunk takes ids for an eighth of the age at most, so that the oldest one
            // expires (as a whole) at most an eighth late.
            let chunk = Chunk::new(self.chunk_len, reach, now, self.max_age / 8);
            self.chunks.push_back(chunk);
        }
        let hash = self.hashing.hash_one(id);
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.insert(id, hash, now);
            self.len += 1;
        }
        while self.len > self.capacity {
            self.pop_oldest();
        }
    }

    /// The handler failed in a way worth retrying: forget the id so a redelivery runs again.
    pub(crate) fn forget(&mut self, id: MessageId) {
        self.running.remove(&id);
    }

    /// Done ids remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Drops the chunks whose newest id is older than the maximum age.
    fn expire(&mut self, now: Instant) {
        if self.quiet_until.is_some_and(|until| now < until) {
            return;
        }
        while self
            .chunks
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.last) >= self.max_age)
        {
            self.pop_oldest();
        }
        self.quiet_until = self
            .chunks
            .front()
            .and_then(|c| c.last.checked_add(self.max_age));
    }

    fn pop_oldest(&mut self) {
        if let Some(chunk) = self.chunks.pop_front() {
            self.len -= chunk.ids.len();
            // Once per chunk of ids: a walk over the few chunks left, so an id from a clock far
            // ahead stops lengthening lookups once its chunk is gone.
            let mut reach = 0;
            for c in &mut self.chunks {
                reach = reach.max(c.max_ms);
                c.reach_ms = reach;
            }
        }
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
        let reach = w.chunks.iter().map(|c| c.reach_ms).max();
        assert!(reach <= Some(T0_MS), "{reach:?}");
        assert_eq!(w.check(ahead, now), Seen::New, "evicted with its chunk");
    }

    /// The filter is what keeps lookups cheap: a full chunk must rule out nearly every
    /// stranger of its time range without a scan.
    #[test]
    fn a_full_chunk_lets_few_strangers_through_its_filter() {
        let now = Instant::now();
        let hashing = IdHashing::new(KEYS);
        let mut chunk = Chunk::new(MAX_CHUNK, 0, now, Duration::from_secs(1));
        for n in 0..MAX_CHUNK as u128 {
            let i = MessageId::from_parts(T0_MS, (n * 7919) << 64 | n);
            chunk.insert(i, hashing.hash_one(i), now);
        }
        let passed = (0..100_000u128)
            .map(|n| MessageId::from_parts(T0_MS, (n + 1_000_000) << 64 | n))
            .filter(|&s| chunk.may_hold(s, hashing.hash_one(s)))
            .count();
        // About 70 expected (0.07 %); two probes of 16 bits per id let about 1,400 through.
        assert!(
            passed < 300,
            "{passed} of 100,000 strangers passed the filter"
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_ids() {
        let now = Instant::now();
        let mut w = DedupWindow::new(1000, Duration::from_secs(60), KEYS);
        for n in 0..100_000 {
            w.check(id(n), now);
            w.complete(id(n), now);
        }
        assert!(
            w.len() <= 1000 && w.len() > 1000 - w.chunk_len,
            "{}",
            w.len()
        );
        assert!(w.running.is_empty());
        assert!(w.chunks.len() <= 1000 / w.chunk_len + 1);
    }
}
