//! An [`Item`] encoded straight from its message's [`Envelope`], without building the item.
//!
//! A sender encodes every message it sends as the item of a run ([`super::EncodedItem`]).
//! Building the [`Item`] first meant cloning the payload and headers out of the envelope (a
//! reference count up and down, an allocation for any headers) only to serialize and drop
//! them; serde then asked for each field by name. Here the envelope's fields are written in
//! the item's order (`frame/item_wire.rs`) with bincode's own encoders, which give the same
//! bytes as serde's (an array of bytes as its bytes, a string, byte string or vector as its
//! length and its elements, every other integer as a varint). A test (`tests/roundtrip.rs`)
//! compares both encodings on arbitrary envelopes. The rare fields that differ from the run's
//! head ([`Differs`]) still go through serde.
//!
//! The common item, with none of the optional fields (flags 0), is written byte by byte with
//! no encoder (`append_plain`, the mirror of the decoder's `plain_item` in `native.rs`): its
//! fixed fields and the payload's length on the stack, then that and the payload copied into
//! the arena. Bincode's encoder cost more than the rest of that together. Every other item's
//! fixed fields (id, attempt, time offset, flags, correlation id) are encoded on the stack by
//! bincode and copied into the arena at once; so is the payload's length when no key or
//! header comes before it.

use bincode::Encode;
use bincode::enc::write::{SliceWriter, Writer};
use bincode::enc::{Encoder, EncoderImpl};
use bytes::BytesMut;

use super::{BodyWriter, append_bounded, config, too_long};
use crate::frame::item_wire::{self, HAS_CORRELATION};
use crate::{Differs, EncodeError, Envelope, Head, Item, Limits, validate_item_parts};

/// Most bytes of the fixed fields and a payload length: a 16-byte id, a `u32` and an `i64`
/// varint, the flags, a 16-byte correlation id and a `u64` varint.
const FIXED_MAX: usize = 16 + 5 + 9 + 1 + 16 + 9;

/// Appends the encoding of `envelope` as an item: under `head` as [`Item::under`] makes it,
/// or on its own as [`Item::of`] when `head` is `None`. Checks the per-field limits first
/// ([`crate::validate_item`]); fails when the item is longer than `max` bytes, after writing
/// at most `max` of them.
pub(super) fn append_item(
    envelope: &Envelope,
    head: Option<&Head>,
    limits: &Limits,
    dst: &mut BytesMut,
    max: usize,
) -> Result<usize, EncodeError> {
    // The head carries the key of an ordered run; otherwise the item carries its own.
    let key = match head {
        Some(head) if head.partition_key.is_some() => None,
        _ => envelope.partition_key.as_deref(),
    };
    let differs = head.is_some_and(|head| !head.fits(envelope));
    if !differs && key.is_none() && envelope.correlation_id.is_none() && envelope.headers.is_empty()
    {
        // No field a limit bounds, nothing but numbers and the payload.
        return append_plain(envelope, dst, max);
    }
    let differs_fields =
        differs.then(|| (envelope.content_type.as_str(), envelope.reply_to.as_ref()));
    validate_item_parts(&envelope.headers, key, differs_fields, limits)?;

    let headers = &envelope.headers;
    let payload = &envelope.payload[..];
    let flags = item_wire::flags(
        envelope.correlation_id.is_some(),
        key.is_some(),
        !headers.is_empty(),
        differs,
    );
    let mut fixed = [0u8; FIXED_MAX];
    // One field at a time, and the ids' bytes straight to the writer (as bincode encodes a
    // byte array): the encoders of a tuple and of an array were left out of line.
    let mut writer = SliceWriter::new(&mut fixed);
    writer
        .write(&item_wire::id_bytes(envelope.id))
        .map_err(serialize)?;
    let mut encoder = EncoderImpl::new(writer, config());
    envelope.attempt.encode(&mut encoder).map_err(serialize)?;
    item_wire::time_offset(envelope.id, envelope.timestamp_ms)
        .encode(&mut encoder)
        .map_err(serialize)?;
    flags.encode(&mut encoder).map_err(serialize)?;
    if let Some(id) = envelope.correlation_id {
        encoder
            .writer()
            .write(&item_wire::id_bytes(id))
            .map_err(serialize)?;
    }
    if flags & !HAS_CORRELATION == 0 {
        // Nothing but the payload follows: its length goes with the fixed fields.
        payload.len().encode(&mut encoder).map_err(serialize)?;
        let fixed_len = encoder.into_writer().bytes_written();
        let written = fixed_len + payload.len();
        if written > max {
            return Err(too_long(written, max));
        }
        dst.extend_from_slice(&fixed[..fixed_len]);
        dst.extend_from_slice(payload);
        return Ok(written);
    }
    let fixed_len = encoder.into_writer().bytes_written();

    let mut writer = BodyWriter {
        dst,
        written: 0,
        max,
    };
    writer.write(&fixed[..fixed_len]).map_err(serialize)?;
    let mut encoder = EncoderImpl::new(writer, config());
    if let Some(key) = key {
        key.encode(&mut encoder).map_err(serialize)?;
    }
    if !headers.is_empty() {
        headers.encode(&mut encoder).map_err(serialize)?;
    }
    payload.encode(&mut encoder).map_err(serialize)?;
    let BodyWriter { dst, written, .. } = encoder.into_writer();
    let written = if differs {
        let differs = Differs {
            kind: envelope.kind,
            version: envelope.version,
            content_type: envelope.content_type.clone(),
            reply_to: envelope.reply_to.clone(),
        };
        // What is left of the budget bounds the rest.
        let left = max.saturating_sub(written);
        written.saturating_add(append_bounded(&differs, dst, left).map_err(|e| match e {
            EncodeError::LimitExceeded { actual, .. } => too_long(written + actual, max),
            other => other,
        })?)
    } else {
        written
    };
    if written > max {
        return Err(too_long(written, max));
    }
    Ok(written)
}

/// The most a one-byte varint holds.
const ONE_BYTE_MAX: u64 = 250;
/// The tag byte of a varint whose value follows as a `u16`.
const U16_TAG: u8 = 251;
/// The tag byte of a varint whose value follows as a `u32`.
const U32_TAG: u8 = 252;
/// The tag byte of a varint whose value follows as a `u64`.
const U64_TAG: u8 = 253;

/// Most bytes before a plain item's payload: its id, the attempt (a `u32` varint), the time
/// offset (an `i64` varint), the flags and the payload's length (a `u64` varint).
const PLAIN_HEAD_MAX: usize = 16 + 5 + 9 + 1 + 9;

/// Appends the common item, written byte by byte without bincode's encoder: no correlation
/// id, no key, no headers, nothing that differs from the head (flags 0). The mirror of the
/// decoder's `plain_item` (`codec/native.rs`), which reads the one-byte-varint case of these
/// bytes; this writes every width, as bincode would (the round-trip tests compare the bytes
/// with serde's at each varint boundary). Nothing is written if the item is longer than
/// `max`.
#[inline(always)]
fn append_plain(envelope: &Envelope, dst: &mut BytesMut, max: usize) -> Result<usize, EncodeError> {
    let payload = &envelope.payload[..];
    let mut head = [0u8; PLAIN_HEAD_MAX];
    head[..16].copy_from_slice(&item_wire::id_bytes(envelope.id));
    let offset = item_wire::time_offset(envelope.id, envelope.timestamp_ms);
    let mut len = put_varint(&mut head, 16, u64::from(envelope.attempt));
    // A zigzag varint, as bincode encodes an `i64`.
    len = put_varint(&mut head, len, ((offset << 1) ^ (offset >> 63)) as u64);
    len += 1; // the flags, 0
    len = put_varint(&mut head, len, payload.len() as u64);
    let written = len + payload.len();
    if written > max {
        return Err(too_long(written, max));
    }
    dst.extend_from_slice(&head[..len]);
    dst.extend_from_slice(payload);
    Ok(written)
}

/// Writes `value` at `buf[at..]` as bincode's varint (standard configuration: up to 250 in
/// one byte, else a tag byte and the value as a little-endian `u16`, `u32` or `u64`);
/// returns where it ends.
#[inline(always)]
fn put_varint(buf: &mut [u8; PLAIN_HEAD_MAX], at: usize, value: u64) -> usize {
    if value <= ONE_BYTE_MAX {
        buf[at] = value as u8;
        return at + 1;
    }
    let (tag, bytes) = if let Ok(value) = u16::try_from(value) {
        (U16_TAG, &value.to_le_bytes()[..])
    } else if let Ok(value) = u32::try_from(value) {
        (U32_TAG, &value.to_le_bytes()[..])
    } else {
        (U64_TAG, &value.to_le_bytes()[..])
    };
    buf[at] = tag;
    let end = at + 1 + bytes.len();
    buf[at + 1..end].copy_from_slice(bytes);
    end
}

fn serialize(e: bincode::error::EncodeError) -> EncodeError {
    EncodeError::Serialize(e.to_string())
}

// The fields written above are `Item`'s, in its wire order: a field added to `Item` fails to
// compile here until `append_item` writes it too (the round-trip tests then check the bytes).
const _: fn(Item) = |item| {
    let Item {
        id: _,
        attempt: _,
        timestamp_ms: _,
        correlation_id: _,
        partition_key: _,
        headers: _,
        payload: _,
        differs: _,
    } = item;
};
