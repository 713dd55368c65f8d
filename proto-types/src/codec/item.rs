//! An [`Item`] encoded straight from its message's [`Envelope`], without building the item.
//!
//! A sender encodes every message it sends as the item of a run ([`super::EncodedItem`]).
//! Building the [`Item`] first meant cloning the payload and headers out of the envelope (a
//! reference count up and down, an allocation for any headers) only to serialize and drop
//! them; serde then asked for each field by name. Here the envelope's fields are written in
//! the item's order with bincode's own encoders, which give the same bytes as serde's
//! (bincode writes a struct as its fields in order, an `Option` as a tag byte and its value,
//! a string, byte string or vector as its length and its elements, every integer as a
//! varint). A test (`tests/roundtrip.rs`) compares both encodings on arbitrary envelopes.
//! The rare field that differs from the run's head ([`Differs`]) still goes through serde.

use bincode::Encode;
use bincode::enc::EncoderImpl;
use bytes::BytesMut;

use super::{BodyWriter, append_bounded, config, too_long};
use crate::{Differs, EncodeError, Envelope, Head, Item, Limits, validate_item_parts};

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
    let differs_fields =
        differs.then(|| (envelope.content_type.as_str(), envelope.reply_to.as_ref()));
    validate_item_parts(&envelope.headers, key, differs_fields, limits)?;

    let mut encoder = EncoderImpl::new(
        BodyWriter {
            dst,
            written: 0,
            max,
        },
        config(),
    );
    let fields = (
        envelope.id.as_u128(),
        envelope.attempt,
        envelope.timestamp_ms,
        envelope.correlation_id.map(|id| id.as_u128()),
        key,
        &envelope.headers,
        &envelope.payload[..],
    );
    fields
        .encode(&mut encoder)
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let BodyWriter { dst, written, .. } = encoder.into_writer();
    let written = if differs {
        let differs = Some(Box::new(Differs {
            kind: envelope.kind,
            version: envelope.version,
            content_type: envelope.content_type.clone(),
            reply_to: envelope.reply_to.clone(),
        }));
        // What is left of the budget bounds the rest.
        let left = max.saturating_sub(written);
        written.saturating_add(append_bounded(&differs, dst, left).map_err(|e| match e {
            EncodeError::LimitExceeded { actual, .. } => too_long(written + actual, max),
            other => other,
        })?)
    } else {
        if written < max {
            dst.extend_from_slice(&[0]); // `None`
        }
        written + 1
    };
    if written > max {
        return Err(too_long(written, max));
    }
    Ok(written)
}

// The fields written above are `Item`'s, in its order: a field added to `Item` fails to
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
