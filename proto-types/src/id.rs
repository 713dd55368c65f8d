//! Identifiers that cross the wire: message ids and node ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A unique, time-ordered, 128-bit message id laid out as a UUIDv7.
///
/// The top 48 bits are the Unix time in milliseconds when the id was made, so ids sort by
/// creation time and a receiver's dedup window can age them without a lookup table of
/// timestamps. The remaining bits (minus the UUID version and variant bits) are random.
///
/// This crate does no IO and owns no clock or random source: the caller passes both in
/// ([`MessageId::from_parts`]); `shoal::Message` does that for users.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(u128);

impl MessageId {
    /// Builds a UUIDv7 id from a Unix time in milliseconds and random bits.
    ///
    /// Only the low 48 bits of `unix_ms` are used; the version (7) and variant (`0b10`) bits
    /// overwrite the corresponding bits of `random`.
    pub const fn from_parts(unix_ms: u64, random: u128) -> Self {
        let time = ((unix_ms & 0xFFFF_FFFF_FFFF) as u128) << 80;
        let rand_a = (random & 0x0FFF) << 64; // 12 bits after the version nibble
        let rand_b = random >> 64 & 0x3FFF_FFFF_FFFF_FFFF; // 62 bits after the variant
        Self(time | (0x7 << 76) | rand_a | (0b10 << 62) | rand_b)
    }

    /// Wraps a raw 128-bit value (for example one read back from a database).
    pub const fn from_u128(raw: u128) -> Self {
        Self(raw)
    }

    /// The raw 128-bit value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The Unix time in milliseconds encoded in the id's top 48 bits.
    pub const fn unix_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }

    /// The key under which one group's copy of an event is acknowledged and deduplicated.
    ///
    /// A node may receive the same event for two groups it has subscriptions in (say `billing`
    /// and `audit`); each copy must be handled and acked on its own, so each gets its own key.
    /// `None` (ungrouped subscriptions) keeps the id itself. Otherwise the low 80 bits are
    /// mixed with a fixed hash of the group name (the time bits stay), the same on every node
    /// and every version.
    ///
    /// ```
    /// # use shoal_proto::MessageId;
    /// let id = MessageId::from_parts(1_700_000_000_000, 42);
    /// assert_eq!(id.delivery_key(None), id);
    /// assert_ne!(id.delivery_key(Some("billing")), id.delivery_key(Some("audit")));
    /// assert_eq!(id.delivery_key(Some("billing")).unix_ms(), id.unix_ms());
    /// ```
    pub fn delivery_key(self, group: Option<&str>) -> Self {
        GroupKey::of(group).key(self)
    }
}

/// A subscriber group's part of [`MessageId::delivery_key`], hashed once for the many ids of
/// one run instead of once for each.
///
/// ```
/// # use shoal_proto::{GroupKey, MessageId};
/// let billing = GroupKey::of(Some("billing"));
/// let id = MessageId::from_parts(1_700_000_000_000, 42);
/// assert_eq!(billing.key(id), id.delivery_key(Some("billing")));
/// assert_eq!(GroupKey::of(None).key(id), id);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupKey(u128);

impl GroupKey {
    /// The part for `group` (`None`, ungrouped: ids are their own keys).
    pub fn of(group: Option<&str>) -> Self {
        let Some(group) = group else {
            return Self(0);
        };
        let hash = (u128::from(fnv1a(group, 0xcbf2_9ce4_8422_2325)) << 64)
            | u128::from(fnv1a(group, 0x6c62_272e_07bb_0142));
        Self(hash & ((1 << 80) - 1))
    }

    /// The key `id` is acknowledged and deduplicated under in this group.
    pub const fn key(self, id: MessageId) -> MessageId {
        MessageId(id.0 ^ self.0)
    }
}

/// FNV-1a, 64 bits, from a chosen offset basis: a fixed, portable hash (unlike std's hasher,
/// whose output may change between Rust versions).
fn fnv1a(text: &str, basis: u64) -> u64 {
    text.bytes().fold(basis, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for MessageId {
    /// Formats as a hyphenated UUID: `0190b0c4-2f3a-7c3e-9a1b-5f2d8e6a4c10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xFFFF_FFFF_FFFF
        )
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// The identity of one running node (one instance of a service), random per start.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(u128);

impl NodeId {
    /// Wraps a raw 128-bit value; nodes pick theirs at random when they start.
    pub const fn from_u128(raw: u128) -> Self {
        Self(raw)
    }

    /// The raw 128-bit value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for NodeId {
    /// Formats as 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;

    /// Parses the 32-hex-digit form written by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_uuid_v7_and_keeps_its_time() {
        let id = MessageId::from_parts(0x0190_b0c4_2f3a, u128::MAX);
        assert_eq!(id.unix_ms(), 0x0190_b0c4_2f3a);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "7", "version nibble");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "variant bits"
        );
    }

    #[test]
    fn message_ids_sort_by_time() {
        let a = MessageId::from_parts(1_000, u128::MAX);
        let b = MessageId::from_parts(1_001, 0);
        assert!(a < b);
    }

    #[test]
    fn node_id_round_trips_through_text() {
        let id = NodeId::from_u128(0xdead_beef);
        assert_eq!(id.to_string().parse::<NodeId>().ok(), Some(id));
    }
}
