//! The encoded heads of recent runs, so a service that sends the same kind of message again and
//! again encodes its head once, not once per message.
//!
//! A head is what a run of messages shares (kind, name, version, content type, return
//! address, who it is for; the partition key only for an ordered batch: other messages carry
//! theirs in their items, so one head serves every key). Sending looks the message's head up
//! here by a hash of those fields, without building one, and encodes it only when it is new. Messages that share an
//! encoded head also share it by pointer, which is how the writer knows at a glance that they
//! can travel in one run.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use shoal_proto::codec::EncodedHead;
use shoal_proto::{EncodeError, Envelope, Head, Limits, To};

use super::peers::NameHashing;

/// Most heads kept; past it the cache starts over.
const MAX_HEADS: usize = 4096;

/// Heads looked at first, without hashing: a service sends few kinds of message.
const RECENT: usize = 8;

/// Recently used heads, by a hash of their fields.
#[derive(Debug, Default)]
pub(super) struct HeadCache {
    /// The last heads used, newest first.
    recent: Vec<(Head, Arc<EncodedHead>)>,
    heads: HashMap<u64, Vec<(Head, Arc<EncodedHead>)>, NameHashing>,
    len: usize,
    hashing: NameHashing,
}

impl HeadCache {
    /// The encoded head of `envelope`'s run for `to`.
    pub(super) fn get(
        &mut self,
        envelope: &Envelope,
        to: &To,
        reliable: bool,
        ordered: bool,
        limits: &Limits,
    ) -> Result<Arc<EncodedHead>, EncodeError> {
        let same = |head: &Head| {
            head.to == *to
                && head.reliable == reliable
                && head.ordered == ordered
                && head.fits(envelope)
        };
        if let Some(at) = self.recent.iter().position(|(head, _)| same(head)) {
            let found = Arc::clone(&self.recent[at].1);
            self.recent[..=at].rotate_right(1);
            return Ok(found);
        }
        let encoded = self.lookup(envelope, to, reliable, ordered, limits)?;
        if self.recent.len() >= RECENT {
            self.recent.pop();
        }
        let head = Head::of(envelope, to.clone(), reliable, ordered);
        self.recent.insert(0, (head, Arc::clone(&encoded)));
        Ok(encoded)
    }

    /// The head from the hashed table, encoded if new.
    fn lookup(
        &mut self,
        envelope: &Envelope,
        to: &To,
        reliable: bool,
        ordered: bool,
        limits: &Limits,
    ) -> Result<Arc<EncodedHead>, EncodeError> {
        let mut hasher = self.hashing.build_hasher();
        (
            envelope.kind,
            &envelope.name,
            envelope.version,
            &envelope.content_type,
        )
            .hash(&mut hasher);
        (
            // Only an ordered run's head carries the key (`Head::partition_key`).
            envelope.partition_key.as_ref().filter(|_| ordered),
            &envelope.reply_to,
            to,
            reliable,
            ordered,
        )
            .hash(&mut hasher);
        let hash = hasher.finish();
        let same = |head: &Head| {
            head.fits(envelope)
                && head.to == *to
                && head.reliable == reliable
                && head.ordered == ordered
        };
        if let Some(found) = self
            .heads
            .get(&hash)
            .and_then(|heads| heads.iter().find(|(head, _)| same(head)))
        {
            return Ok(Arc::clone(&found.1));
        }
        let head = Head::of(envelope, to.clone(), reliable, ordered);
        let encoded = Arc::new(EncodedHead::new(&head, limits)?);
        if self.len >= MAX_HEADS {
            self.heads.clear();
            self.len = 0;
        }
        self.heads
            .entry(hash)
            .or_default()
            .push((head, Arc::clone(&encoded)));
        self.len += 1;
        Ok(encoded)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shoal_proto::{MessageId, MessageKind};

    fn envelope(name: &str) -> Envelope {
        Envelope::new(
            MessageId::from_u128(1),
            MessageKind::Command,
            name,
            0,
            "x".into(),
        )
    }

    #[test]
    fn one_head_per_kind_of_message_shared_by_pointer() {
        let mut cache = HeadCache::default();
        let limits = Limits::default();
        let a = cache
            .get(&envelope("charge"), &To::Handler, true, false, &limits)
            .unwrap();
        let b = cache
            .get(&envelope("charge"), &To::Handler, true, false, &limits)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = cache
            .get(&envelope("refund"), &To::Handler, true, false, &limits)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        let keyed = |cache: &mut HeadCache, key: &str, ordered: bool| {
            let mut envelope = envelope("charge");
            envelope.partition_key = Some(key.into());
            cache
                .get(&envelope, &To::Handler, true, ordered, &limits)
                .unwrap()
        };
        // A lone message carries its key in its item: one head serves every key.
        assert!(Arc::ptr_eq(&a, &keyed(&mut cache, "k1", false)));
        assert!(Arc::ptr_eq(&a, &keyed(&mut cache, "k2", false)));
        // A batch's head carries the key its events share: one head per key, and a batch
        // without a key does not lend its head to one with a key.
        let unkeyed_batch = cache
            .get(&envelope("charge"), &To::Handler, true, true, &limits)
            .unwrap();
        let batch_k1 = keyed(&mut cache, "k1", true);
        assert!(!Arc::ptr_eq(&unkeyed_batch, &batch_k1));
        assert!(Arc::ptr_eq(&batch_k1, &keyed(&mut cache, "k1", true)));
        assert!(!Arc::ptr_eq(&batch_k1, &keyed(&mut cache, "k2", true)));
        let group = To::Group("billing".into());
        let copy = cache
            .get(&envelope("charge"), &group, true, false, &limits)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &copy));
        assert_eq!(cache.len, 6);
    }
}
