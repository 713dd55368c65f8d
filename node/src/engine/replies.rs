//! Replies to recent synchronous requests, kept so a retried request gets its reply again.
//!
//! A requester retries a request (same id) when the ack did not come in time, for instance
//! because the connection that carried the reply broke. The dedup window stops the handler
//! from running twice; this cache lets the node answer the retry with the reply the handler
//! already gave, instead of an ack alone, which would leave the requester waiting until its
//! timeout. When a reply has been evicted the node says so (see `inbound::on_deliver`).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shoal_proto::{EncodeError, Frame, Limits, MessageId, codec};

use super::dedup::{IdHashing, IdLog};

/// Bookkeeping charged per entry on top of the reply's bytes: the id and the `Bytes` handle in
/// the log, its share of the chunk's filter, and the frame's share of its arena block.
const ENTRY_OVERHEAD: usize = 96;

/// Most replies in one chunk of the log (the size of its filter).
const MAX_CHUNK: usize = 4096;

/// Reply frames are encoded one after the other into blocks of this size, so that a block's
/// replies share one allocation (freed when the last of them leaves the cache and the wire).
const ARENA_BLOCK: usize = 64 * 1024;

/// Room left in a block under which the next reply starts a new one.
const ARENA_ROOM: usize = 2 * 1024;

/// The encoded reply frames of recent synchronous requests, by request id, bounded by total
/// size and by age; the oldest go first, a sixteenth of the bound at a time ([`IdLog`]: a
/// reply costs an append, not a probe and an insert in a table larger than the CPU's cache).
#[derive(Debug)]
pub(crate) struct ReplyCache {
    replies: IdLog<Bytes>,
    max_size: usize,
    /// The block the next reply is encoded into.
    arena: BytesMut,
}

impl ReplyCache {
    /// A cache of at most `max_size` bytes (0 keeps nothing) whose entries live `max_age`.
    pub(crate) fn new(max_size: usize, max_age: Duration, keys: [u64; 2]) -> Self {
        // A sixteenth of the bound per chunk, and a filter for as many replies as fit in it.
        let chunk_cost = max_size / 16;
        let chunk = (
            (chunk_cost / ENTRY_OVERHEAD).clamp(1, MAX_CHUNK),
            chunk_cost,
        );
        Self {
            replies: IdLog::new(max_size, chunk, max_age, IdHashing::new(keys)),
            max_size,
            arena: BytesMut::new(),
        }
    }

    /// Encodes `reply`, the reply frame to `request`, keeps it ([`ReplyCache::insert`]), and
    /// returns it to be sent.
    pub(crate) fn encode_and_keep(
        &mut self,
        request: MessageId,
        reply: &Frame,
        limits: &Limits,
        now: Instant,
    ) -> Result<Bytes, EncodeError> {
        if self.arena.capacity() < ARENA_ROOM {
            self.arena.reserve(ARENA_BLOCK);
        }
        if let Err(e) = codec::encode(reply, limits, &mut self.arena) {
            self.arena.clear();
            return Err(e);
        }
        let frame = self.arena.split().freeze();
        self.insert(request, frame.clone(), now);
        Ok(frame)
    }

    /// Keeps `frame`, the encoded reply to `request`; a reply larger than the whole cache is
    /// not kept. A request is answered once; if it were answered again (handled again once
    /// its id left the dedup window), the newest reply is the one found.
    pub(crate) fn insert(&mut self, request: MessageId, frame: Bytes, now: Instant) {
        let cost = frame.len() + ENTRY_OVERHEAD;
        if cost > self.max_size {
            return;
        }
        self.replies.expire(now);
        self.replies.push(request, frame, cost, now);
    }

    /// The reply kept for `request`, if it is still here.
    pub(crate) fn get(&mut self, request: MessageId, now: Instant) -> Option<Bytes> {
        self.replies.expire(now);
        self.replies.find(request).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [u64; 2] = [7, 11];

    fn id(n: u128) -> MessageId {
        MessageId::from_parts(1_700_000_000_000, n)
    }

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![1u8; len])
    }

    #[test]
    fn keeps_replies_until_they_age_out() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(1 << 20, Duration::from_secs(10), KEYS);
        cache.insert(id(1), frame(10), t0);
        cache.insert(id(2), frame(20), t0 + Duration::from_secs(5));
        assert_eq!(
            cache.get(id(1), t0 + Duration::from_secs(9)),
            Some(frame(10))
        );
        assert_eq!(cache.get(id(1), t0 + Duration::from_secs(10)), None);
        assert_eq!(
            cache.get(id(2), t0 + Duration::from_secs(10)),
            Some(frame(20))
        );
        assert_eq!(cache.get(id(3), t0), None);
    }

    #[test]
    fn evicts_the_oldest_when_over_its_size() {
        let t0 = Instant::now();
        let per_entry = 100 + ENTRY_OVERHEAD;
        let mut cache = ReplyCache::new(3 * per_entry, Duration::from_secs(60), KEYS);
        for n in 0..5 {
            cache.insert(id(n), frame(100), t0);
        }
        assert_eq!(cache.replies.len(), 3);
        assert_eq!(cache.replies.cost(), 3 * per_entry);
        assert_eq!(cache.get(id(0), t0), None);
        assert_eq!(cache.get(id(1), t0), None);
        assert!(cache.get(id(4), t0).is_some());
    }

    #[test]
    fn refuses_a_reply_larger_than_the_cache_and_keeps_nothing_when_zero() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(1000, Duration::from_secs(60), KEYS);
        cache.insert(id(1), frame(10), t0);
        cache.insert(id(2), frame(5000), t0);
        assert_eq!(cache.get(id(2), t0), None);
        assert!(
            cache.get(id(1), t0).is_some(),
            "the big one evicted nothing"
        );
        let mut none = ReplyCache::new(0, Duration::from_secs(60), KEYS);
        none.insert(id(1), frame(1), t0);
        assert_eq!(none.get(id(1), t0), None);
    }

    #[test]
    fn many_small_replies_go_a_sixteenth_of_the_cache_at_a_time() {
        let t0 = Instant::now();
        let per_entry = 100 + ENTRY_OVERHEAD;
        // Chunks of 4 replies.
        let mut cache = ReplyCache::new(64 * per_entry, Duration::from_secs(60), KEYS);
        for n in 0..100 {
            cache.insert(id(n), frame(100), t0);
        }
        let kept = cache.replies.len();
        assert!((60..=64).contains(&kept), "{kept} kept");
        assert_eq!(cache.replies.cost(), kept * per_entry);
        assert_eq!(cache.get(id(99), t0), Some(frame(100)));
        assert_eq!(cache.get(id(100 - kept as u128), t0), Some(frame(100)));
        assert_eq!(cache.get(id(99 - kept as u128), t0), None);
    }

    #[test]
    fn a_reply_nearly_as_large_as_the_cache_is_kept_and_evicts_the_older_ones() {
        let t0 = Instant::now();
        // Chunks of 1,000 bytes' worth; 8 small replies leave the first one open.
        let mut cache = ReplyCache::new(16_000, Duration::from_secs(60), KEYS);
        for n in 0..8 {
            cache.insert(id(n), frame(10), t0);
        }
        cache.insert(id(100), frame(15_100), t0);
        assert_eq!(cache.get(id(100), t0), Some(frame(15_100)));
        assert_eq!(cache.get(id(0), t0), None);
        assert_eq!(cache.replies.len(), 1);
    }

    #[test]
    fn a_second_reply_to_the_same_request_is_the_one_found() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(1 << 20, Duration::from_secs(10), KEYS);
        cache.insert(id(1), frame(10), t0);
        cache.insert(id(1), frame(30), t0 + Duration::from_secs(5));
        assert_eq!(
            cache.get(id(1), t0 + Duration::from_secs(5)),
            Some(frame(30))
        );
        assert_eq!(
            cache.get(id(1), t0 + Duration::from_secs(10)),
            Some(frame(30))
        );
        assert_eq!(cache.get(id(1), t0 + Duration::from_secs(15)), None);
        assert_eq!(cache.replies.cost(), 0);
    }
}
