//! A log of recent message ids in the order they came, each with a value, for the questions a
//! receiver rarely asks: "was this one handled?" (the dedup window's done ids) and "what was
//! its reply?" ([`crate::engine::replies`]).
//!
//! Both keep far more entries than fit in the CPU's cache (100,000 ids, 16 MiB of replies),
//! are written once per message, and are almost never read. A hash table makes every write a
//! probe and an insert at a random place in memory, and every eviction another: a cache miss
//! or more per message, 17 % of a receiver's time for the dedup window, and a fifth for the
//! replies to small requests, before they moved here. The log appends at the end of its
//! newest chunk and drops its oldest chunk whole.
//!
//! Each chunk knows the range of its ids' creation times (message ids are UUIDv7: their top
//! bits are the sender's clock) and keeps a small Bloom filter, so a lookup skips every chunk
//! whose time range or filter rules the id out, and scans the rare one that may hold it. A
//! lookup walks from the newest chunk back and stops at the first chunk that, with all older
//! ones, holds no id as new as the one asked about: a fresh message's id is from *now*, so
//! it asks the newest chunk or two, and their filters answer "not here" in a few cache lines
//! each.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use shoal_proto::MessageId;

use super::IdHashing;

/// Bloom filter bits per id of a chunk.
const BLOOM_BITS_PER_ID: usize = 32;

/// Bits set per id: with [`BLOOM_BITS_PER_ID`], about 0.07 % false positives in a full chunk.
/// A false positive costs a scan of the chunk's ids (thousands of comparisons), so the filter is
/// sized for few of them: with 16 bits and two probes (1.4 %), those scans were an eighth of a
/// receiver's instructions for batches of small events.
const BLOOM_PROBES: usize = 3;

/// Recent ids with a value each, bounded by a total cost (each entry's, given when it is
/// added) and by age; the oldest chunk goes first.
#[derive(Debug)]
pub(crate) struct IdLog<V> {
    chunks: VecDeque<Chunk<V>>,
    /// The entries' cost, over all chunks.
    cost: usize,
    max_cost: usize,
    /// A chunk takes entries until they cost this much, or it holds `chunk_len` ids.
    chunk_cost: usize,
    chunk_len: usize,
    max_age: Duration,
    hashing: IdHashing,
    /// No chunk expires before this (the oldest chunk's last entry plus the age): a call
    /// until then skips the walk. Entries are only ever added later, so it is never too late.
    quiet_until: Option<Instant>,
}

#[derive(Debug)]
struct Chunk<V> {
    ids: Vec<MessageId>,
    /// The value of each of `ids` (nothing is stored for `()`).
    values: Vec<V>,
    cost: usize,
    bloom: Box<[u64]>,
    /// The range of the ids' creation times (ms), to skip chunks that cannot hold an id.
    min_ms: u64,
    max_ms: u64,
    /// The newest creation time (ms) in this chunk and every older one, or more (it is lowered
    /// only when the oldest chunk goes): a lookup walking back from the newest chunk stops at
    /// the first chunk whose reach is older than the id.
    reach_ms: u64,
    /// When the chunk takes no more entries, however few it holds (`None`: too far ahead to
    /// say); computed once, not per entry.
    sealed_at: Option<Instant>,
    last: Instant,
}

impl<V> Chunk<V> {
    /// An empty chunk (its filter sized) for `len` ids, newer than chunks that reach up to `reach_ms`, that
    /// takes entries for `open_for` from `now`.
    fn new(len: usize, reach_ms: u64, now: Instant, open_for: Duration) -> Self {
        let words = (len * BLOOM_BITS_PER_ID).div_ceil(64).next_power_of_two();
        // The vectors grow as entries come: a chunk closed by age may hold few.
        Self {
            ids: Vec::new(),
            values: Vec::new(),
            cost: 0,
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

    fn push(&mut self, (id, hash): (MessageId, u64), value: V, cost: usize, now: Instant) {
        for (word, bit) in self.bits(hash) {
            self.bloom[word] |= bit;
        }
        let ms = id.unix_ms();
        self.min_ms = self.min_ms.min(ms);
        self.max_ms = self.max_ms.max(ms);
        self.reach_ms = self.reach_ms.max(ms);
        self.ids.push(id);
        self.values.push(value);
        self.cost += cost;
        self.last = now;
    }

    /// Whether the chunk may hold `id`: its time range and its filter do not rule it out.
    fn may_hold(&self, id: MessageId, hash: u64) -> bool {
        let ms = id.unix_ms();
        ms >= self.min_ms
            && ms <= self.max_ms
            && self
                .bits(hash)
                .iter()
                .all(|(word, bit)| self.bloom[*word] & bit != 0)
    }

    /// The value of `id`, if this chunk holds it (the newest, if twice).
    fn find(&self, id: MessageId, hash: u64) -> Option<&V> {
        if !self.may_hold(id, hash) {
            return None;
        }
        let at = self.ids.iter().rposition(|i| *i == id)?;
        self.values.get(at)
    }
}

impl<V> IdLog<V> {
    /// A log of entries costing at most `max_cost` together, each kept at least `max_age`
    /// (and at most an eighth longer), in chunks of at most `chunk_len` ids costing about
    /// `chunk_cost`; ids are hashed with `hashing`.
    pub(crate) fn new(
        max_cost: usize,
        (chunk_len, chunk_cost): (usize, usize),
        max_age: Duration,
        hashing: IdHashing,
    ) -> Self {
        Self {
            chunks: VecDeque::new(),
            cost: 0,
            max_cost,
            chunk_cost: chunk_cost.max(1),
            chunk_len: chunk_len.max(1),
            max_age,
            hashing,
            quiet_until: None,
        }
    }

    /// Adds `id` with `value`, costing `cost`; the oldest chunks go while the log costs more
    /// than its bound.
    pub(crate) fn push(&mut self, id: MessageId, value: V, cost: usize, now: Instant) {
        // A chunk that would cost more than its share with this entry is closed: the entry
        // goes in a chunk of its own rather than make its chunk the whole bound.
        let open = self.chunks.back().is_some_and(|c| {
            c.ids.len() < self.chunk_len
                && c.cost + cost <= self.chunk_cost
                && c.sealed_at.is_none_or(|at| now < at)
        });
        if !open {
            let reach = self.chunks.back().map_or(0, |c| c.reach_ms);
            // A chunk takes entries for an eighth of the age at most, so that the oldest one
            // expires (as a whole) at most an eighth late.
            let chunk = Chunk::new(self.chunk_len, reach, now, self.max_age / 8);
            self.chunks.push_back(chunk);
        }
        let hash = self.hashing.hash_one(id);
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.push((id, hash), value, cost, now);
            self.cost += cost;
        }
        while self.cost > self.max_cost {
            self.pop_oldest();
        }
    }

    /// The value of `id`, if it is still here.
    pub(crate) fn find(&self, id: MessageId) -> Option<&V> {
        let ms = id.unix_ms();
        // A plain walk by index: the iterator chain (reversed, cut short, searched) cost
        // several times the one or two chunks it usually looks at.
        let mut hash = None;
        let mut i = self.chunks.len();
        while i > 0 {
            i -= 1;
            let c = &self.chunks[i];
            if c.reach_ms < ms {
                return None;
            }
            let hash = *hash.get_or_insert_with(|| self.hashing.hash_one(id));
            if let Some(value) = c.find(id, hash) {
                return Some(value);
            }
        }
        None
    }

    /// Drops the chunks whose newest entry is older than the maximum age.
    pub(crate) fn expire(&mut self, now: Instant) {
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

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.ids.len()).sum()
    }

    /// What the entries held cost together.
    #[cfg(test)]
    pub(crate) fn cost(&self) -> usize {
        self.cost
    }

    /// Chunks held.
    #[cfg(test)]
    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The newest creation time (ms) a lookup may still find.
    #[cfg(test)]
    pub(crate) fn reach_ms(&self) -> Option<u64> {
        self.chunks.iter().map(|c| c.reach_ms).max()
    }

    fn pop_oldest(&mut self) {
        if let Some(chunk) = self.chunks.pop_front() {
            self.cost -= chunk.cost;
            // Once per chunk: a walk over the few chunks left, so an id from a clock far
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

    /// The filter is what keeps lookups cheap: a full chunk must rule out nearly every
    /// stranger of its time range without a scan.
    #[test]
    fn a_full_chunk_lets_few_strangers_through_its_filter() {
        const LEN: usize = 4096;
        let now = Instant::now();
        let hashing = IdHashing::new(KEYS);
        let mut chunk = Chunk::new(LEN, 0, now, Duration::from_secs(1));
        for n in 0..LEN as u128 {
            let i = MessageId::from_parts(T0_MS, (n * 7919) << 64 | n);
            chunk.push((i, hashing.hash_one(i)), (), 1, now);
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
}
