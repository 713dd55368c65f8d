//! How the engine hashes message ids: a keyed multiply-and-fold, cheap because the ids are
//! random already.
//!
//! The dedup window's running set and done-log filters, and the maps keyed by request id
//! (requests waiting for their reply in [`super::super::send`], kept replies in
//! [`super::super::replies`]), hash ids on every message. The keys are random per node, so a
//! peer cannot choose ids that collide.

use std::hash::{BuildHasher, Hasher};

/// Hashes message ids: one 64x64-bit multiply of the id's halves, each mixed with a secret
/// key, folded to 64 bits (the core of foldhash). Ids are random already, so this is all the
/// mixing they need, and several times cheaper than the default SipHash. The keys are random
/// per node: a peer that does not know them cannot choose ids that collide.
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
    use shoal_proto::MessageId;

    use super::*;

    const KEYS: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3211];
    const T0_MS: u64 = 1_700_000_000_000;

    #[test]
    fn ids_spread_over_hash_buckets() {
        // Sequential and time-ordered ids must not pile up in a few buckets.
        let hashing = IdHashing { keys: KEYS };
        let mut buckets = [0u32; 64];
        for n in 0..64_000u128 {
            let id = MessageId::from_parts(T0_MS + (n / 100) as u64, n);
            buckets[(hashing.hash_one(id) % 64) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }
}
