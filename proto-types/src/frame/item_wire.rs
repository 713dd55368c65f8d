//! An [`Item`]'s layout on the wire (protocol 4), through serde; the codec writes and reads
//! the same bytes with bincode's own traits (`codec/item.rs`, `codec/native.rs`).
//!
//! Nearly every message travels as an item, and most have no correlation id, no partition
//! key of their own, no headers and nothing that differs from their run's head. So an item is:
//!
//! 1. the message id, 16 bytes (little-endian): a UUIDv7 id has its top bits set (the time),
//!    so as a varint it would take 17;
//! 2. the attempt (a varint);
//! 3. the timestamp as its offset from the id's time ([`MessageId::unix_ms`]), a zigzag varint:
//!    one byte for a message stamped when its id was made (every message a node makes), where
//!    the timestamp itself takes nine. The offset wraps (it is taken and added modulo
//!    2<sup>64</sup>), so every timestamp travels, whatever the id;
//! 4. one byte of [flags](HAS_CORRELATION) saying which of the optional fields follow;
//! 5. the correlation id (16 bytes), the partition key and the headers, each only if its flag
//!    is set;
//! 6. the payload (its length and its bytes);
//! 7. the fields that differ from the head ([`Differs`]), only if its flag is set.
//!
//! A 64-byte event with none of the optional fields takes 84 bytes (96 in protocol 3).
//! A flag byte with a bit outside [`ALL_FLAGS`] is malformed. An item whose headers flag is
//! set but that carries no headers decodes, with no headers (no sender writes one).

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use super::{Differs, Item};
use crate::MessageId;

/// Flag: a correlation id follows.
pub(crate) const HAS_CORRELATION: u8 = 1;
/// Flag: a partition key follows.
pub(crate) const HAS_KEY: u8 = 2;
/// Flag: headers follow (their count, then each name and value).
pub(crate) const HAS_HEADERS: u8 = 4;
/// Flag: the fields that differ from the head follow the payload.
pub(crate) const HAS_DIFFERS: u8 = 8;
/// Every flag bit a valid item may set.
pub(crate) const ALL_FLAGS: u8 = HAS_CORRELATION | HAS_KEY | HAS_HEADERS | HAS_DIFFERS;

/// The most fields an item has (the tuple serde is told of).
const MAX_FIELDS: usize = 9;

/// The flag byte of an item with these optional fields.
pub(crate) const fn flags(correlation: bool, key: bool, headers: bool, differs: bool) -> u8 {
    ((correlation as u8) * HAS_CORRELATION)
        | ((key as u8) * HAS_KEY)
        | ((headers as u8) * HAS_HEADERS)
        | ((differs as u8) * HAS_DIFFERS)
}

/// A message id's 16 bytes on the wire.
pub(crate) const fn id_bytes(id: MessageId) -> [u8; 16] {
    id.as_u128().to_le_bytes()
}

/// The message id of 16 bytes from the wire.
pub(crate) const fn id_from_bytes(bytes: [u8; 16]) -> MessageId {
    MessageId::from_u128(u128::from_le_bytes(bytes))
}

/// A timestamp as its offset from the time in `id` (wrapping: every pair has one).
pub(crate) const fn time_offset(id: MessageId, timestamp_ms: u64) -> i64 {
    timestamp_ms.wrapping_sub(id.unix_ms()) as i64
}

/// The timestamp `offset` from the time in `id`: the inverse of [`time_offset`].
pub(crate) const fn timestamp(id: MessageId, offset: i64) -> u64 {
    id.unix_ms().wrapping_add(offset as u64)
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let flags = flags(
            self.correlation_id.is_some(),
            self.partition_key.is_some(),
            !self.headers.is_empty(),
            self.differs.is_some(),
        );
        let mut fields = serializer.serialize_tuple(MAX_FIELDS)?;
        fields.serialize_element(&id_bytes(self.id))?;
        fields.serialize_element(&self.attempt)?;
        fields.serialize_element(&time_offset(self.id, self.timestamp_ms))?;
        fields.serialize_element(&flags)?;
        if let Some(id) = self.correlation_id {
            fields.serialize_element(&id_bytes(id))?;
        }
        if let Some(key) = &self.partition_key {
            fields.serialize_element(key)?;
        }
        if !self.headers.is_empty() {
            fields.serialize_element(&self.headers)?;
        }
        fields.serialize_element(&self.payload)?;
        if let Some(differs) = &self.differs {
            fields.serialize_element(differs)?;
        }
        fields.end()
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_tuple(MAX_FIELDS, ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message's item")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        let mut read = 0;
        let id = id_from_bytes(next(&mut seq, &mut read)?);
        let attempt = next(&mut seq, &mut read)?;
        let timestamp_ms = timestamp(id, next(&mut seq, &mut read)?);
        let flags: u8 = next(&mut seq, &mut read)?;
        if flags & !ALL_FLAGS != 0 {
            return Err(de::Error::custom(format_args!(
                "unknown flags {flags:#04x} in an item"
            )));
        }
        let correlation_id = if flags & HAS_CORRELATION != 0 {
            Some(id_from_bytes(next(&mut seq, &mut read)?))
        } else {
            None
        };
        let partition_key = if flags & HAS_KEY != 0 {
            Some(next(&mut seq, &mut read)?)
        } else {
            None
        };
        let headers = if flags & HAS_HEADERS != 0 {
            next(&mut seq, &mut read)?
        } else {
            Vec::new()
        };
        let payload = next(&mut seq, &mut read)?;
        let differs = if flags & HAS_DIFFERS != 0 {
            Some(Box::new(next::<A, Differs>(&mut seq, &mut read)?))
        } else {
            None
        };
        Ok(Item {
            id,
            attempt,
            timestamp_ms,
            correlation_id,
            partition_key,
            headers,
            payload,
            differs,
        })
    }
}

/// The next field of an item; `read` counts the fields read.
fn next<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut A,
    read: &mut usize,
) -> Result<T, A::Error> {
    let value = seq
        .next_element()?
        .ok_or_else(|| de::Error::invalid_length(*read, &"a message's item"))?;
    *read += 1;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timestamp_has_an_offset_from_every_id() {
        let ids = [
            MessageId::from_u128(0),
            MessageId::from_parts(1_700_000_000_000, 7),
            MessageId::from_parts(0xFFFF_FFFF_FFFF, u128::MAX),
            MessageId::from_u128(u128::MAX),
        ];
        let times = [0, 1, 1_700_000_000_000, 1 << 48, i64::MAX as u64, u64::MAX];
        for id in ids {
            for timestamp_ms in times {
                let offset = time_offset(id, timestamp_ms);
                assert_eq!(timestamp(id, offset), timestamp_ms, "{id:?} {timestamp_ms}");
            }
            assert_eq!(time_offset(id, id.unix_ms()), 0);
        }
        assert_eq!(time_offset(MessageId::from_u128(0), u64::MAX), -1);
    }

    #[test]
    fn flags_are_distinct_bits() {
        assert_eq!(flags(true, false, false, false), HAS_CORRELATION);
        assert_eq!(flags(false, true, false, false), HAS_KEY);
        assert_eq!(flags(false, false, true, false), HAS_HEADERS);
        assert_eq!(flags(false, false, false, true), HAS_DIFFERS);
        assert_eq!(flags(true, true, true, true), ALL_FLAGS);
        assert_eq!(flags(false, false, false, false), 0);
    }
}
