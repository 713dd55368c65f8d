//! Replies to recent synchronous requests, kept so a retried request gets its reply again.
//!
//! A requester retries a request (same id) when the ack did not come in time, for instance
//! because the connection that carried the reply broke. The dedup window stops the handler
//! from running twice; this cache lets the node answer the retry with the reply the handler
//! already gave, instead of an ack alone, which would leave the requester waiting until its
//! timeout. When a reply has been evicted the node says so (see `inbound::on_deliver`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_proto::MessageId;

use super::dedup::IdHashing;

/// Bookkeeping charged per entry on top of the reply's bytes: the id in the map and in the
/// ageing queue, the `Bytes` handle, the time and the map's overhead.
const ENTRY_OVERHEAD: usize = 96;

/// The encoded reply frames of recent synchronous requests, by request id, bounded by total
/// size and by age; the oldest go first.
#[derive(Debug)]
pub(crate) struct ReplyCache {
    replies: HashMap<MessageId, Bytes, IdHashing>,
    order: VecDeque<(MessageId, Instant)>,
    /// Bytes held, counting [`ENTRY_OVERHEAD`] per entry.
    size: usize,
    max_size: usize,
    max_age: Duration,
}

impl ReplyCache {
    /// A cache of at most `max_size` bytes (0 keeps nothing) whose entries live `max_age`.
    pub(crate) fn new(max_size: usize, max_age: Duration, keys: [u64; 2]) -> Self {
        Self {
            replies: HashMap::with_hasher(IdHashing::new(keys)),
            order: VecDeque::new(),
            size: 0,
            max_size,
            max_age,
        }
    }

    /// Keeps `frame`, the encoded reply to `request`. A request is answered once, so a reply
    /// already kept stays as it is; a reply larger than the whole cache is not kept.
    pub(crate) fn insert(&mut self, request: MessageId, frame: Bytes, now: Instant) {
        self.expire(now);
        let cost = frame.len() + ENTRY_OVERHEAD;
        if cost > self.max_size || self.replies.contains_key(&request) {
            return;
        }
        self.replies.insert(request, frame);
        self.order.push_back((request, now));
        self.size += cost;
        while self.size > self.max_size {
            self.pop_oldest();
        }
    }

    /// The reply kept for `request`, if it is still here.
    pub(crate) fn get(&mut self, request: MessageId, now: Instant) -> Option<Bytes> {
        self.expire(now);
        self.replies.get(&request).cloned()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(_, at)) = self.order.front() {
            if now.saturating_duration_since(at) < self.max_age {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Drops the oldest reply (every kept reply has exactly one queue entry).
    fn pop_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front()
            && let Some(frame) = self.replies.remove(&id)
        {
            self.size -= frame.len() + ENTRY_OVERHEAD;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.replies.len()
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
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.size, 3 * per_entry);
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
    fn a_second_reply_to_the_same_request_keeps_the_first() {
        let t0 = Instant::now();
        let mut cache = ReplyCache::new(1 << 20, Duration::from_secs(10), KEYS);
        cache.insert(id(1), frame(10), t0);
        cache.insert(id(1), frame(30), t0 + Duration::from_secs(5));
        assert_eq!(cache.size, 10 + ENTRY_OVERHEAD);
        assert_eq!(
            cache.get(id(1), t0 + Duration::from_secs(5)),
            Some(frame(10))
        );
        assert_eq!(cache.get(id(1), t0 + Duration::from_secs(10)), None);
        assert_eq!(cache.size, 0);
    }
}
