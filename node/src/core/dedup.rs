//! The receiver's dedup window: remembers recently seen message ids so a redelivered message
//! is acknowledged again without running its handler twice.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use shoal_proto::MessageId;

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

/// Bounded by count and by age; the oldest entries go first.
///
/// Memory: each entry is a 16-byte id plus a 1-byte state in a `HashMap` (with hashbrown's
/// control byte and load factor, about 40 bytes) and a 16-byte id plus a 16-byte `Instant` in
/// the ageing queue (32 bytes): roughly 72 bytes per remembered id, so the default of 100,000
/// ids costs about 7 MB.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    states: HashMap<MessageId, Seen, IdHashing>,
    /// Insertion order with insertion time, for expiry. Ids forgotten early (a retryable
    /// failure) stay here until they age out; `expire` skips them.
    order: VecDeque<(MessageId, Instant)>,
    capacity: usize,
    max_age: Duration,
}

impl DedupWindow {
    /// A window of at most `capacity` ids and `max_age`; `keys` seed the id hash (random per
    /// node, so a peer cannot pick ids that collide).
    pub(crate) fn new(capacity: usize, max_age: Duration, keys: [u64; 2]) -> Self {
        Self {
            states: HashMap::with_hasher(IdHashing::new(keys)),
            order: VecDeque::new(),
            capacity,
            max_age,
        }
    }

    /// Records a delivery of `id` and says what to do with it.
    ///
    /// When the window is full the oldest id is evicted even if its handler still runs; the
    /// count bound wins over exactness so memory stays bounded.
    pub(crate) fn check(&mut self, id: MessageId, now: Instant) -> Seen {
        self.expire(now);
        if self.capacity == 0 {
            return Seen::New;
        }
        // One probe of the table for both the lookup and the insert.
        match self.states.entry(id) {
            Entry::Occupied(seen) => *seen.get(),
            Entry::Vacant(slot) => {
                slot.insert(Seen::InProgress);
                self.order.push_back((id, now));
                while self.states.len() > self.capacity {
                    self.pop_oldest();
                }
                Seen::New
            }
        }
    }

    /// The handler for `id` finished successfully: remember it as done.
    pub(crate) fn complete(&mut self, id: MessageId) {
        if let Some(state) = self.states.get_mut(&id) {
            *state = Seen::Done;
        }
    }

    /// The handler failed in a way worth retrying: forget the id so a redelivery runs again.
    pub(crate) fn forget(&mut self, id: MessageId) {
        self.states.remove(&id);
    }

    /// Number of ids remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    fn expire(&mut self, now: Instant) {
        // An id whose handler still runs must not be forgotten by age, or a redelivery would
        // start the handler a second time: it is re-queued with a fresh time instead. One pass
        // at most, so re-queued entries are not looked at again (with a zero max age they
        // would expire at once, forever).
        for _ in 0..self.order.len() {
            let Some(&(id, at)) = self.order.front() else {
                break;
            };
            if now.saturating_duration_since(at) < self.max_age {
                break;
            }
            self.order.pop_front();
            if self.states.get(&id) == Some(&Seen::InProgress) {
                self.order.push_back((id, now));
            } else {
                self.states.remove(&id);
            }
        }
        // Ids forgotten early leave stale queue entries behind; keep the queue bounded too.
        while self.order.len() > self.capacity.max(1).saturating_mul(2) {
            self.pop_oldest();
        }
    }

    /// Drops the oldest entry. Every remembered id has at least one queue entry, so this makes
    /// progress whenever anything is remembered.
    fn pop_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front() {
            self.states.remove(&id);
        }
    }
}

/// Hashes message ids for the window: one 64x64-bit multiply of the id's halves, each mixed
/// with a secret key, folded to 64 bits (the core of foldhash). Ids are random already, so
/// this is all the mixing they need, and several times cheaper than the default SipHash,
/// which profiles showed as a large share of a receiver's time under load. The keys are
/// random per node: a peer that does not know them cannot choose ids that collide.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdHashing {
    keys: [u64; 2],
}

impl IdHashing {
    /// Hashing seeded with `keys` (random per node).
    pub(crate) fn new(keys: [u64; 2]) -> Self {
        Self { keys }
    }
}

impl BuildHasher for IdHashing {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            keys: self.keys,
            hash: 0,
        }
    }
}

pub(crate) struct IdHasher {
    keys: [u64; 2],
    hash: u64,
}

impl Hasher for IdHasher {
    fn write_u128(&mut self, id: u128) {
        self.hash ^= fold(id as u64 ^ self.keys[0], (id >> 64) as u64 ^ self.keys[1]);
    }

    /// Not used by `MessageId` (it hashes as one `u128`); correct for any input anyway.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.hash = fold(
                self.hash ^ u64::from_le_bytes(word) ^ self.keys[0],
                self.keys[1],
            );
        }
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    product as u64 ^ (product >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3211];

    #[test]
    fn ids_spread_over_hash_buckets() {
        // Sequential and time-ordered ids must not pile up in a few buckets.
        let hashing = IdHashing { keys: KEYS };
        let mut buckets = [0u32; 64];
        for n in 0..64_000u128 {
            let id = MessageId::from_parts(1_700_000_000_000 + (n / 100) as u64, n);
            buckets[(hashing.hash_one(id) % 64) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }

    fn id(n: u128) -> MessageId {
        MessageId::from_u128(n)
    }

    #[test]
    fn duplicate_of_a_running_then_finished_message() {
        let now = Instant::now();
        let mut w = DedupWindow::new(10, Duration::from_secs(60), KEYS);
        assert_eq!(w.check(id(1), now), Seen::New);
        assert_eq!(w.check(id(1), now), Seen::InProgress);
        w.complete(id(1));
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
    fn ids_age_out_after_max_age() {
        let start = Instant::now();
        let mut w = DedupWindow::new(10, Duration::from_secs(60), KEYS);
        w.check(id(1), start);
        w.complete(id(1));
        assert_eq!(w.check(id(1), start + Duration::from_secs(59)), Seen::Done);
        assert_eq!(w.check(id(1), start + Duration::from_secs(60)), Seen::New);
    }

    #[test]
    fn count_bound_evicts_oldest_first() {
        let now = Instant::now();
        let mut w = DedupWindow::new(3, Duration::from_secs(60), KEYS);
        for n in 1..=4 {
            w.check(id(n), now);
            w.complete(id(n));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.check(id(4), now), Seen::Done);
        assert_eq!(w.check(id(2), now), Seen::Done);
        assert_eq!(w.check(id(1), now), Seen::New, "oldest was evicted");
    }

    #[test]
    fn a_zero_max_age_keeps_running_ids_and_terminates() {
        let now = Instant::now();
        let mut w = DedupWindow::new(10, Duration::ZERO, KEYS);
        assert_eq!(w.check(id(1), now), Seen::New);
        assert_eq!(w.check(id(1), now), Seen::InProgress);
        w.complete(id(1));
        assert_eq!(
            w.check(id(1), now),
            Seen::New,
            "done ids are forgotten at once"
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_ids() {
        let now = Instant::now();
        let mut w = DedupWindow::new(1000, Duration::from_secs(60), KEYS);
        for n in 0..100_000 {
            w.check(id(n), now);
            w.complete(id(n));
        }
        assert_eq!(w.len(), 1000);
        assert!(w.order.len() <= 1000);
    }
}
