//! Length-prefixed bincode framing. The only module that knows about bincode.
//!
//! # Wire format
//!
//! A frame on the wire is a 4-byte big-endian `u32` body length ([`LENGTH_PREFIX`]) followed by
//! the body: the [`Frame`] encoded with bincode 2's standard configuration (little-endian,
//! variable-length integers) through serde. The length excludes the prefix itself and is never
//! zero. The frames nearly every message travels in are written and read field by field with
//! bincode's own traits instead, giving and taking the same bytes (`codec/run.rs`,
//! `codec/item.rs`, `codec/native.rs`).
//!
//! # Limits
//!
//! [`encode`] and [`decode`] both run [`validate_frame`] (the per-field [`Limits`]) and enforce
//! `max_frame_len` on the body, so a sender learns about a violation before anything is
//! written and a receiver can refuse a single oversized message without losing the stream.
//! Whatever `max_frame_len` says, no body larger than [`MAX_FRAME_LEN_CAP`] (64 MiB) is ever
//! written or accepted.
//!
//! # Payloads are not copied
//!
//! [`decode`] takes a frame of [`SHARE_FROM`] bytes or more off the buffer as a [`Bytes`] of
//! its own, and the payloads of the messages in it (a run, or a reply) are views of those
//! bytes: no copy, however large, and no allocation per message. A payload kept therefore
//! keeps alive the whole buffer its frame was read into, with the other frames of the same
//! read; copy it (`Bytes::copy_from_slice`) to keep a small payload for long. A smaller frame
//! (one small message, an ack) has its payloads copied: splitting the buffer would cost more
//! than the copy. [`decode_shared`] does the same from bytes already shared (a chunk a reader
//! received): a frame of [`SHARE_FROM`] bytes or more is a view of them, payloads included.
//!
//! # Hostile input
//!
//! [`decode`] never panics, whatever the bytes. A bincode body may claim a string or vector
//! far longer than the frame (say 2<sup>60</sup> bytes); bincode allocates such buffers before
//! reading them, so every decode through serde runs with a byte budget (bincode's
//! `with_limit`) that grows with the frame: 16 times the body length rounded up to 4 KiB,
//! 256 KiB or 4 MiB, and 128 MiB for bodies above 4 MiB. A lying length claim therefore fails with
//! [`DecodeError::Malformed`] after allocating at most that budget (64 KiB for a small frame).
//! The budget is generous enough for every valid frame up to 4 MiB: bincode charges at most
//! 16 bytes of budget per byte of input (a `u128` encoded in one byte). Independently of the
//! budget, serde preallocates at most 1 MiB for a claimed sequence length (`headers`,
//! `listen_addrs`, `ids`) before its elements have been read. Message runs, acks and replies,
//! the frames nearly every message travels in, are decoded without serde (`codec/native.rs`,
//! the same bytes) and without the budget: there a string's lying length allocates nothing,
//! and a vector reserves room for at most 1,024 elements, one per few bytes of the body.

use bincode::config::{Configuration, Limit};
use bincode::enc::write::Writer;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{DecodeError, EncodeError, Frame, Limits, validate_frame};
use native::Payloads;

mod datagram;
mod item;
mod native;
mod run;

pub use datagram::{
    BODY_OVERHEAD, RunParts, decode_datagram_body, decode_heartbeat, run_len, write_datagram_body,
    write_heartbeat,
};
pub use run::{EncodedHead, EncodedItem, messages_len, write_ack, write_messages};

/// Size of the length prefix in front of every frame body: a big-endian `u32`.
pub const LENGTH_PREFIX: usize = 4;

/// The largest frame body the codec writes or accepts, whatever
/// [`Limits::max_frame_len`] says: 64 MiB.
pub const MAX_FRAME_LEN_CAP: usize = 64 * MIB;

/// The smallest frame body whose payloads [`decode`] shares rather than copies (module docs):
/// below it the frame holds one small message, or none.
pub const SHARE_FROM: usize = 512;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The bincode decoding budget for bodies larger than 4 MiB (twice [`MAX_FRAME_LEN_CAP`]).
const LARGE_FRAME_BUDGET: usize = 2 * MAX_FRAME_LEN_CAP;

/// The largest body the codec allows under `limits`.
#[inline]
fn max_frame_len(limits: &Limits) -> usize {
    limits.max_frame_len.min(MAX_FRAME_LEN_CAP)
}

/// The bincode configuration of the wire format (without a decoding budget).
#[inline]
const fn config() -> Configuration {
    bincode::config::standard()
}

/// Appends `frame` to `dst` as a 4-byte big-endian length followed by its bincode encoding.
///
/// Checks the per-field [`Limits`] first ([`validate_frame`]), then encodes straight into
/// `dst`. A body longer than `max_frame_len` (or [`MAX_FRAME_LEN_CAP`]) fails with
/// [`EncodeError::LimitExceeded`] naming `"max_frame_len"` and giving the body's size.
///
/// # Errors
///
/// On any error `dst` is left as it was (its capacity may have grown); bytes already in it are
/// kept.
pub fn encode(frame: &Frame, limits: &Limits, dst: &mut BytesMut) -> Result<(), EncodeError> {
    validate_frame(frame, limits)?;
    let max = max_frame_len(limits);
    let start = dst.len();
    dst.reserve(LENGTH_PREFIX + body_len_estimate(frame).min(max));
    dst.put_u32(0); // patched below, once the body length is known

    let len = append_bounded(frame, dst, max)
        .and_then(|written| u32::try_from(written).map_err(|_| too_long(written, max)));
    match len {
        Ok(len) => {
            dst[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

/// Appends `value` in bincode to `dst` and returns its length, or fails when it is longer than
/// `max` (measured without copying past `max`). On an error, what was appended stays for the
/// caller to cut.
pub(crate) fn append_bounded<T: serde::Serialize + ?Sized>(
    value: &T,
    dst: &mut BytesMut,
    max: usize,
) -> Result<usize, EncodeError> {
    let mut writer = BodyWriter {
        dst,
        written: 0,
        max,
    };
    bincode::serde::encode_into_writer(value, &mut writer, config())
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if writer.written > max {
        return Err(too_long(writer.written, max));
    }
    Ok(writer.written)
}

fn too_long(actual: usize, max: usize) -> EncodeError {
    EncodeError::LimitExceeded {
        limit: "max_frame_len",
        actual,
        max,
    }
}

/// Takes one frame off the front of `src`; `Ok(None)` when more bytes are needed.
///
/// - Fewer than [`LENGTH_PREFIX`] bytes, or a frame whose body has not fully arrived:
///   `Ok(None)`, and nothing is consumed (`src` may reserve room for the rest of the frame).
/// - A length prefix above `max_frame_len` (or [`MAX_FRAME_LEN_CAP`]):
///   [`DecodeError::FrameTooLarge`], nothing consumed; the connection should be closed.
/// - Otherwise exactly one frame (prefix and body) is consumed, and the result is the frame,
///   [`DecodeError::Malformed`] (zero length, undecodable body, or bytes left over after the
///   frame), or [`DecodeError::LimitExceeded`] (a valid frame that breaks a per-field limit;
///   `seqs` are the sequence numbers of a [`Frame::Messages`]). After any of these the stream
///   is still in sync and the next call decodes the next frame.
///
/// Never panics, whatever `src` contains; see the module docs for memory bounds.
pub fn decode(src: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, DecodeError> {
    decode_from(src, limits)
}

/// [`decode`] from bytes already shared (a chunk read off a stream): the same rules, except
/// that nothing is reserved when a frame is incomplete. A frame of [`SHARE_FROM`] bytes or
/// more is a view of `src`'s bytes, as its payloads are: nothing is copied.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_shared(src: &mut Bytes, limits: &Limits) -> Result<Option<Frame>, DecodeError> {
    decode_from(src, limits)
}

/// The length of the body announced by the prefix at the front of `src`, once the prefix is
/// all there: `Ok(None)` before. [`DecodeError::FrameTooLarge`] when it is above
/// `max_frame_len` (or [`MAX_FRAME_LEN_CAP`]), so that a reader can refuse it before
/// reserving room for it.
///
/// # Errors
///
/// [`DecodeError::FrameTooLarge`], as above.
pub fn body_len(src: &[u8], limits: &Limits) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = src.first_chunk::<LENGTH_PREFIX>() else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
    let max = max_frame_len(limits);
    if len > max {
        return Err(DecodeError::FrameTooLarge { len, max });
    }
    Ok(Some(len))
}

/// A buffer [`decode_from`] takes frames off: owned ([`BytesMut`]) or shared ([`Bytes`]).
trait Source: std::ops::Deref<Target = [u8]> + Buf {
    /// Makes room for `additional` more bytes, if the buffer can grow.
    fn reserve_more(&mut self, additional: usize);
    /// Takes the first `total` bytes off, and gives those after the prefix.
    fn take_body(&mut self, total: usize) -> Bytes;
}

impl Source for BytesMut {
    #[inline]
    fn reserve_more(&mut self, additional: usize) {
        self.reserve(additional);
    }

    #[inline]
    fn take_body(&mut self, total: usize) -> Bytes {
        self.split_to(total).freeze().slice(LENGTH_PREFIX..)
    }
}

impl Source for Bytes {
    #[inline]
    fn reserve_more(&mut self, _additional: usize) {}

    #[inline]
    fn take_body(&mut self, total: usize) -> Bytes {
        let body = self.slice(LENGTH_PREFIX..total);
        self.advance(total);
        body
    }
}

#[inline]
fn decode_from<S: Source>(src: &mut S, limits: &Limits) -> Result<Option<Frame>, DecodeError> {
    let Some(len) = body_len(src, limits)? else {
        return Ok(None);
    };
    let total = LENGTH_PREFIX + len;
    if src.len() < total {
        src.reserve_more(total - src.len());
        return Ok(None);
    }

    let frame = if len >= SHARE_FROM {
        // The frame's bytes become its own (split off, not copied): payloads are views of them.
        let body = src.take_body(total);
        decode_body(&body, Payloads::Shared(&body))
    } else {
        let result = decode_body(&src[LENGTH_PREFIX..total], Payloads::Copied);
        src.advance(total);
        result
    }?;
    checked(frame, limits).map(Some)
}

/// A decoded frame, once its sequence numbers and per-field limits are checked.
fn checked(frame: Frame, limits: &Limits) -> Result<Frame, DecodeError> {
    // A receiver counts with a run's sequence numbers (acks, nacks, its window): numbers that
    // pass 2^64 are no run a node sends.
    if let Frame::Messages(run) = &frame
        && run.first_seq.checked_add(run.items.len() as u64).is_none()
    {
        return Err(DecodeError::Malformed(format!(
            "a run of {} messages numbered from {} passes 2^64",
            run.items.len(),
            run.first_seq
        )));
    }

    validate_frame(&frame, limits).map_err(|v| DecodeError::LimitExceeded {
        limit: v.limit,
        actual: v.actual,
        max: v.max,
        seqs: match &frame {
            Frame::Messages(run) => Some(run.seqs()),
            _ => None,
        },
    })?;
    Ok(frame)
}

/// The first byte of a stored envelope ([`encode_envelope`]).
const STORED_ENVELOPE: u8 = 2;

/// Encodes one envelope for storage (an outbox row, say): a format byte, then the envelope in
/// bincode. Checked against `limits` like a message on the wire.
///
/// ```
/// use shoal_proto::{codec, Envelope, Limits, MessageId, MessageKind};
/// let envelope = Envelope::new(MessageId::from_u128(7), MessageKind::Command, "charge", 0, "x".into());
/// let stored = codec::encode_envelope(&envelope, &Limits::default()).unwrap();
/// assert_eq!(codec::decode_envelope(&stored, &Limits::default()).unwrap(), envelope);
/// ```
///
/// # Errors
///
/// [`EncodeError::LimitExceeded`] when the envelope breaks a limit.
pub fn encode_envelope(envelope: &crate::Envelope, limits: &Limits) -> Result<Bytes, EncodeError> {
    crate::validate_envelope(envelope, limits)?;
    let max = max_frame_len(limits);
    let mut dst = BytesMut::with_capacity(1 + envelope_len_estimate(envelope).min(max));
    dst.put_u8(STORED_ENVELOPE);
    append_bounded(envelope, &mut dst, max)?;
    Ok(dst.freeze())
}

/// Decodes an envelope stored by [`encode_envelope`], or by Shoal before protocol 2 (which
/// stored a length-prefixed `Deliver` frame: variant 1, then the envelope).
///
/// # Errors
///
/// [`DecodeError::Malformed`] for anything else, [`DecodeError::LimitExceeded`] for an
/// envelope that breaks a limit.
pub fn decode_envelope(stored: &[u8], limits: &Limits) -> Result<crate::Envelope, DecodeError> {
    let body = match stored {
        [STORED_ENVELOPE, rest @ ..] => rest,
        [_, _, _, _, 1, rest @ ..] if stored.len() > LENGTH_PREFIX => rest,
        _ => return Err(DecodeError::Malformed("not a stored envelope".into())),
    };
    if body.len() > max_frame_len(limits) {
        return Err(DecodeError::FrameTooLarge {
            len: body.len(),
            max: max_frame_len(limits),
        });
    }
    let (envelope, used): (crate::Envelope, usize) = if body.len() <= 256 * KIB {
        bincode::serde::decode_from_slice(body, config().with_limit::<{ 4 * MIB }>())
    } else {
        bincode::serde::decode_from_slice(body, config().with_limit::<LARGE_FRAME_BUDGET>())
    }
    .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after a stored envelope",
            body.len() - used
        )));
    }
    crate::validate_envelope(&envelope, limits).map_err(|v| DecodeError::LimitExceeded {
        limit: v.limit,
        actual: v.actual,
        max: v.max,
        seqs: None,
    })?;
    Ok(envelope)
}

/// Decodes a whole frame body, with a bincode budget chosen from its length (module docs).
fn decode_body(body: &[u8], payloads: Payloads<'_>) -> Result<Frame, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Malformed("empty frame".into()));
    }
    // Messages, acks and replies, most of the frames, without serde (`native.rs`).
    let decoded = match native::decode(body, payloads) {
        Some(decoded) => decoded,
        None if body.len() <= 4 * KIB => decode_with_budget::<{ 64 * KIB }>(body),
        None if body.len() <= 256 * KIB => decode_with_budget::<{ 4 * MIB }>(body),
        None if body.len() <= 4 * MIB => decode_with_budget::<{ 64 * MIB }>(body),
        None => decode_with_budget::<LARGE_FRAME_BUDGET>(body),
    };
    let (frame, used) = decoded.map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after a {used}-byte frame",
            body.len() - used
        )));
    }
    Ok(frame)
}

/// Decodes a frame from the front of `body`, letting bincode claim at most `BUDGET` bytes.
fn decode_with_budget<const BUDGET: usize>(
    body: &[u8],
) -> Result<(Frame, usize), bincode::error::DecodeError> {
    let config: Configuration<_, _, Limit<BUDGET>> = config().with_limit::<BUDGET>();
    bincode::serde::decode_from_slice(body, config)
}

/// Decodes one `T` that fills all of `body` (a heartbeat datagram's body) through serde,
/// letting bincode claim at most 4 MiB however long the lengths the bytes claim.
fn decode_small<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, DecodeError> {
    decode_whole(body, what, |body| {
        bincode::serde::decode_from_slice(body, config().with_limit::<{ 4 * MIB }>())
    })
}

/// Decodes, with `decode`, one value that fills all of `body` (a multicast datagram's body,
/// refused beyond 256 KiB): `decode` gives the value and the bytes it took.
fn decode_whole<T>(
    body: &[u8],
    what: &str,
    decode: impl FnOnce(&[u8]) -> Result<(T, usize), bincode::error::DecodeError>,
) -> Result<T, DecodeError> {
    if body.len() > 256 * KIB {
        return Err(DecodeError::Malformed(format!(
            "a {what} of {} bytes is longer than any datagram",
            body.len()
        )));
    }
    let (value, used) = decode(body).map_err(|e| DecodeError::Malformed(format!("{what}: {e}")))?;
    if used != body.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after a {what}",
            body.len() - used
        )));
    }
    Ok(value)
}

/// A bincode writer that appends to a `BytesMut` until the body passes `max`, then only
/// counts, so an oversized frame is measured without being copied.
struct BodyWriter<'a> {
    dst: &'a mut BytesMut,
    written: usize,
    max: usize,
}

impl Writer for BodyWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.written = self.written.saturating_add(bytes.len());
        if self.written <= self.max {
            self.dst.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// A cheap upper estimate of a frame's body length, used to reserve space once.
fn body_len_estimate(frame: &Frame) -> usize {
    /// Worst-case bytes for a string's or vector's length prefix.
    const LEN: usize = 9;
    1 + match frame {
        Frame::Messages(run) => {
            2 * LEN
                + 64
                + run.head.name.len()
                + run.head.content_type.len()
                + run
                    .items
                    .iter()
                    .map(|i| {
                        64 + i.payload.len()
                            + i.partition_key.as_ref().map_or(0, |k| LEN + k.len())
                            + headers_len_estimate(&i.headers)
                    })
                    .sum::<usize>()
        }
        Frame::Reply(e) => envelope_len_estimate(e),
        Frame::Hello(h) => 3 + 17 + LEN + h.service.len() + LEN + 20 * h.listen_addrs.len(),
        Frame::Ack(a) => LEN + 2 * LEN * a.ranges.len(),
        Frame::Nack(n) => LEN + 3 + LEN + n.reason.len(),
        Frame::Ping(_) | Frame::Pong(_) => 9,
        Frame::Goodbye(g) => LEN + g.reason.len(),
        Frame::Subscribe(s) | Frame::Unsubscribe(s) => {
            LEN + s.pattern.len() + s.group.as_ref().map_or(1, |g| 1 + LEN + g.len())
        }
        Frame::ChannelHello(_) => 24,
        Frame::ChannelKey(_) => 4 * LEN + 32,
        Frame::ChannelStatus(s) => 5 * LEN + 2 * LEN * (s.handled.len() + s.failed.len()),
        Frame::ChannelNak(n) => 2 * LEN + 2 * LEN * n.missing.len(),
        Frame::ChannelRepair(bytes) => LEN + bytes.len(),
        Frame::ChannelDemote(_) => 2 * LEN,
    }
}

/// A cheap upper estimate of the encoded length of a list of headers.
fn headers_len_estimate(headers: &[(String, String)]) -> usize {
    /// Worst-case bytes for a string's or vector's length prefix.
    const LEN: usize = 9;
    LEN + headers
        .iter()
        .map(|(k, v)| 2 * LEN + k.len() + v.len())
        .sum::<usize>()
}

/// A cheap upper estimate of an envelope's encoded length.
fn envelope_len_estimate(e: &crate::Envelope) -> usize {
    /// Worst-case bytes for a string's or vector's length prefix.
    const LEN: usize = 9;
    // id, kind, version, correlation id, attempt, timestamp and the length prefixes.
    96 + e.name.len()
        + e.content_type.len()
        + e.payload.len()
        + e.partition_key.as_ref().map_or(1, |k| 1 + LEN + k.len())
        + e.reply_to
            .as_ref()
            .map_or(0, |r| 2 * LEN + 18 + r.service.len() + r.channel.len())
        + headers_len_estimate(&e.headers)
}

#[cfg(test)]
mod tests;
