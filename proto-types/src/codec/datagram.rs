//! The bodies of multicast datagrams ([`crate::multicast`]), framed from parts encoded once.
//!
//! A [`DatagramBody`] in bincode is `first_item`, the run count, and each run's head,
//! assignments, item count and items, one after the other. Like [`super::write_messages`], a
//! publisher copies the bytes of each event's [`EncodedItem`] (encoded once, when it was
//! published) into the body instead of encoding the event again, and can tell before writing
//! whether one more event still fits in a datagram ([`run_len`]).

use bytes::BytesMut;

use super::{EncodedHead, EncodedItem, append_bounded, decode_small, decode_whole, native};
use crate::multicast::{Assignment, DatagramBody, HeartbeatBody};
use crate::{DecodeError, EncodeError, LimitViolation, Limits, validate_head, validate_item};

/// Most bytes a varint takes (bincode's tag byte and a `u64`).
const MAX_VARINT: usize = 9;

/// One run of a datagram, in encoded parts.
#[derive(Clone, Copy, Debug)]
pub struct RunParts<'a> {
    /// The head the items share.
    pub head: &'a EncodedHead,
    /// Which instance of each subscriber group handles the items.
    pub assigned: &'a [Assignment],
    /// The items.
    pub items: &'a [EncodedItem],
}

/// The bytes a body with no runs takes, at most.
pub const BODY_OVERHEAD: usize = 2 * MAX_VARINT;

/// The bytes `run` adds to a datagram body, at most (varints counted at their longest).
pub fn run_len(run: &RunParts<'_>) -> usize {
    let assigned: usize = run
        .assigned
        .iter()
        .map(|a| MAX_VARINT + a.group.len() + 17)
        .sum();
    2 * MAX_VARINT
        + run.head.len()
        + assigned
        + run.items.iter().map(EncodedItem::len).sum::<usize>()
}

/// Appends the body of a datagram holding `runs`, its items numbered from `first_item`, and
/// returns its length: the same bytes as encoding the [`DatagramBody`].
///
/// # Errors
///
/// [`EncodeError::LimitExceeded`] naming `max_datagram_body` when the body is longer than
/// `max`; `dst` is then left as it was.
pub fn write_datagram_body(
    dst: &mut BytesMut,
    first_item: u64,
    runs: &[RunParts<'_>],
    max: usize,
) -> Result<usize, EncodeError> {
    let start = dst.len();
    let result = (|| {
        append_bounded(&first_item, dst, usize::MAX)?;
        append_bounded(&(runs.len() as u64), dst, usize::MAX)?;
        for run in runs {
            dst.extend_from_slice(run.head.wire());
            append_bounded(run.assigned, dst, usize::MAX)?;
            append_bounded(&(run.items.len() as u64), dst, usize::MAX)?;
            for item in run.items {
                dst.extend_from_slice(item.wire());
            }
        }
        Ok(dst.len() - start)
    })();
    match result {
        Ok(len) if len <= max => Ok(len),
        Ok(len) => {
            dst.truncate(start);
            Err(EncodeError::LimitExceeded {
                limit: "max_datagram_body",
                actual: len,
                max,
            })
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

/// Decodes an opened datagram's body and checks every head and item against `limits`.
///
/// # Errors
///
/// [`DecodeError::Malformed`] for bytes that are not one whole body,
/// [`DecodeError::LimitExceeded`] for a head or item that breaks a limit. Never panics.
pub fn decode_datagram_body(body: &[u8], limits: &Limits) -> Result<DatagramBody, DecodeError> {
    // Without serde (`native.rs`): the same bytes, read field by field.
    let decoded: DatagramBody = decode_whole(body, "datagram body", native::datagram_body)?;
    for run in &decoded.runs {
        validate_head(&run.head, limits).map_err(exceeded)?;
        for item in &run.items {
            validate_item(item, limits).map_err(exceeded)?;
        }
    }
    Ok(decoded)
}

/// Appends a heartbeat's body.
///
/// # Errors
///
/// Only if serialisation fails, which it does not for this type.
pub fn write_heartbeat(dst: &mut BytesMut, heartbeat: &HeartbeatBody) -> Result<(), EncodeError> {
    append_bounded(heartbeat, dst, usize::MAX).map(|_| ())
}

/// Decodes an opened heartbeat's body.
///
/// # Errors
///
/// [`DecodeError::Malformed`] for bytes that are not one whole heartbeat.
pub fn decode_heartbeat(body: &[u8]) -> Result<HeartbeatBody, DecodeError> {
    decode_small(body, "heartbeat")
}

fn exceeded(v: LimitViolation) -> DecodeError {
    DecodeError::LimitExceeded {
        limit: v.limit,
        actual: v.actual,
        max: v.max,
        seqs: None,
    }
}
