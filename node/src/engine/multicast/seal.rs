//! One AEAD operation per datagram: AES-256-GCM from `ring`, the crypto provider rustls already
//! uses here, so no new cryptography enters the tree.
//!
//! Each epoch of a channel has its own random 32-byte secret, handed to subscribers over their
//! mutually authenticated QUIC connections ([`shoal_proto::multicast::ChannelKey`]). The AEAD
//! key and a 12-byte nonce base (IV) are derived from it with HKDF-SHA256, salted with the
//! channel id and epoch. The nonce of a datagram is the IV XOR `kind (u32) ‖ counter (u64)`,
//! as in SRTP (RFC 7714) and SFrame (RFC 9605): the counter is the datagram's sequence number
//! for events and the epoch's heartbeat counter for heartbeats, so under one key no nonce is
//! used twice as long as the publisher never seals two datagrams with one number. It does not:
//! numbers only go up, and a repair resends the stored ciphertext instead of sealing again.
//!
//! AES-GCM's confidentiality limit is about 2<sup>23</sup> full-size packets per key (RFC 9001
//! §6.6): [`EpochKey::seals`] counts them and the publisher rekeys well before
//! ([`super::ChannelConfig::usage_limit`]).

use bytes::BytesMut;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use shoal_proto::multicast::SECRET_LEN;

use super::header::{HEADER_LEN, Header, Kind};

/// The authentication tag's length.
pub(crate) const TAG_LEN: usize = 16;

/// A channel secret.
pub(crate) type Secret = [u8; SECRET_LEN];

/// The keys of one epoch.
pub(crate) struct EpochKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    /// Datagrams sealed (publisher) or opening attempts that failed (subscriber).
    pub(crate) seals: u64,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKey")
            .field("seals", &self.seals)
            .finish_non_exhaustive()
    }
}

/// HKDF output lengths that are not AEAD keys.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl EpochKey {
    /// The keys of `channel`'s `epoch` under `secret`.
    pub(crate) fn derive(secret: &Secret, channel: u64, epoch: u32) -> Self {
        let mut salt = [0u8; 12];
        salt[..8].copy_from_slice(&channel.to_be_bytes());
        salt[8..].copy_from_slice(&epoch.to_be_bytes());
        let prk = Salt::new(HKDF_SHA256, &salt).extract(secret);
        // Expanding to 32 and 12 bytes under SHA-256 cannot fail (the limit is 255 blocks).
        let key = prk
            .expand(&[b"shoal multicast key"], &AES_256_GCM)
            .map(UnboundKey::from)
            .unwrap_or_else(|_| unreachable!("HKDF-SHA256 expands 32 bytes"));
        let mut iv = [0u8; NONCE_LEN];
        let _ = prk
            .expand(&[b"shoal multicast iv"], Len(NONCE_LEN))
            .and_then(|okm| okm.fill(&mut iv));
        Self {
            key: LessSafeKey::new(key),
            iv,
            seals: 0,
        }
    }

    fn nonce(&self, kind: Kind, counter: u64) -> Nonce {
        let mut nonce = self.iv;
        for (n, b) in nonce[..4].iter_mut().zip((kind as u32).to_be_bytes()) {
            *n ^= b;
        }
        for (n, b) in nonce[4..].iter_mut().zip(counter.to_be_bytes()) {
            *n ^= b;
        }
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals `datagram` in place: its first [`HEADER_LEN`] bytes are `header` (written here)
    /// and the associated data, the rest is encrypted, and the tag is appended.
    pub(crate) fn seal(&mut self, header: Header, datagram: &mut BytesMut) {
        datagram[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        let (head, body) = datagram.split_at_mut(HEADER_LEN);
        let nonce = self.nonce(header.kind, header.seq);
        // Sealing fails only for a body longer than GCM allows (64 GiB).
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*head), body)
            .unwrap_or_else(|_| unreachable!("a datagram is far below GCM's limit"));
        datagram.extend_from_slice(tag.as_ref());
        self.seals += 1;
    }

    /// Opens `datagram` (header, sealed body, tag) in place; returns the body, or `None` when
    /// it was not sealed with this key under this header.
    pub(crate) fn open<'a>(&self, header: Header, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return None;
        }
        let (head, body) = datagram.split_at_mut(HEADER_LEN);
        let nonce = self.nonce(header.kind, header.seq);
        self.key
            .open_in_place(nonce, Aad::from(&*head), body)
            .ok()
            .map(|b| &*b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> Header {
        Header {
            kind: Kind::Events,
            channel: 9,
            epoch: 1,
            seq,
        }
    }

    fn sealed(key: &mut EpochKey, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut d = BytesMut::zeroed(HEADER_LEN);
        d.extend_from_slice(body);
        key.seal(header(seq), &mut d);
        d.to_vec()
    }

    #[test]
    fn a_datagram_opens_under_its_own_key_and_header_only() {
        let secret = [7u8; SECRET_LEN];
        let mut key = EpochKey::derive(&secret, 9, 1);
        let d = sealed(&mut key, 5, b"events");
        assert_eq!(key.seals, 1);
        assert_eq!(d.len(), HEADER_LEN + 6 + TAG_LEN);
        assert!(
            !d.windows(6).any(|w| w == b"events"),
            "no payload in the clear"
        );
        assert_eq!(key.open(header(5), &mut d.clone()), Some(&b"events"[..]));
        // Another number in the header, another epoch's key, a changed byte: no.
        let mut moved = d.clone();
        moved[16..24].copy_from_slice(&6u64.to_be_bytes());
        assert_eq!(key.open(header(6), &mut moved), None);
        let other = EpochKey::derive(&secret, 9, 2);
        assert_eq!(other.open(header(5), &mut d.clone()), None);
        let mut flipped = d.clone();
        flipped[HEADER_LEN] ^= 1;
        assert_eq!(key.open(header(5), &mut flipped), None);
        assert_eq!(
            key.open(header(5), &mut d[..HEADER_LEN + TAG_LEN - 1].to_vec()),
            None
        );
    }

    #[test]
    fn nonces_differ_by_number_and_kind() {
        let key = EpochKey::derive(&[1u8; SECRET_LEN], 1, 1);
        let n = |kind, c| *key.nonce(kind, c).as_ref();
        assert_ne!(n(Kind::Events, 1), n(Kind::Events, 2));
        assert_ne!(n(Kind::Events, 1), n(Kind::Heartbeat, 1));
        assert_eq!(n(Kind::Events, 1), n(Kind::Events, 1));
    }
}
