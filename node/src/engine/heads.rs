//! The encoded heads of recent runs, so a service that sends the same kind of message again and
//! again encodes its head once, not once per message.
//!
//! A head is what a run of messages shares (kind, name, version, content type, key, return
//! address, who it is for). Sending looks the message's head up here by a hash of those
//! fields, without building one, and encodes it only when it is new. Messages that share an
//! encoded head also share it by pointer, which is how the writer knows at a glance that they
//! can travel in one run.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use shoal_proto::codec::EncodedHead;
use shoal_proto::{EncodeError, Envelope, Head, Limits, To};

/// Most heads kept; past it the cache starts over.
const MAX_HEADS: usize = 4096;

/// Heads looked at first, without hashing: a service sends few kinds of message.
const RECENT: usize = 8;

/// Recently used heads, by a hash of their fields.
#[derive(Debug, Default)]
pub(super) struct HeadCache {
    /// The last heads used, newest first.
    recent: Vec<(Head, Arc<EncodedHead>)>,
    heads: HashMap<u64, Vec<(Head, Arc<EncodedHead>)>>,
    len: usize,
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
        let mut hasher = DefaultHasher::new();
        (
            envelope.kind,
            &envelope.name,
            envelope.version,
            &envelope.content_type,
        )
            .hash(&mut hasher);
        (
            &envelope.partition_key,
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
        let keyed = cache
            .get(
                &envelope("charge").with_key_for_test(),
                &To::Handler,
                true,
                false,
                &limits,
            )
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &keyed));
        let group = To::Group("billing".into());
        let copy = cache
            .get(&envelope("charge"), &group, true, false, &limits)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &copy));
        assert_eq!(cache.len, 4);
    }

    trait WithKey {
        fn with_key_for_test(self) -> Self;
    }

    impl WithKey for Envelope {
        fn with_key_for_test(mut self) -> Self {
            self.partition_key = Some("k".into());
            self
        }
    }
}
