//! The frames every message travels in, [`Frame::Messages`], [`Frame::Ack`] and
//! [`Frame::Reply`], and multicast datagram bodies ([`DatagramBody`]), decoded with bincode's
//! own traits instead of through serde.
//!
//! The bytes are the same (bincode writes a struct as its fields in order, an enum as its
//! variant index, an `Option` as a tag byte, a string or vector as its length and its
//! elements, all integers as varints; an [`Item`] is laid out by its own serde impls,
//! `frame/item_wire.rs`), so these functions read the fields in order where
//! serde's derived visitors asked for each one by name and kind: about half the
//! instructions for a one-message frame. Every other frame, rarer and off the hot path, still
//! goes through serde. Tests in `tests/roundtrip.rs` decode arbitrary and edited frames both
//! ways. (A sender's items are encoded with bincode's own traits too, straight from their
//! envelopes: `codec/item.rs`.)
//!
//! # Hostile input
//!
//! A string is borrowed from the body first and copied once its bytes are known to be there,
//! so a lying length allocates nothing. A vector reserves room for at most one element per
//! [`MIN_ITEM`] (or [`MIN_HEADER`]) bytes of body and at most [`MAX_RESERVE`] elements,
//! whatever length it claims, and grows only with elements actually decoded. No byte budget
//! applies here (serde's decoding has one, `codec.rs`): a frame is at most `max_frame_len`
//! and every element is read from it, so a valid run larger than that budget allows (only
//! possible with `max_frame_len` raised above 4 MiB) decodes here where serde would refuse
//! it.

use bincode::BorrowDecode;
use bincode::de::read::{BorrowReader, Reader};
use bincode::de::{BorrowDecoder, DecoderImpl};
use bincode::error::DecodeError;
use bytes::Bytes;
use smol_str::SmolStr;

use super::config;
use crate::frame::item_wire;
use crate::multicast::{Assignment, DatagramBody, EventRun};
use crate::{
    Ack, Differs, Envelope, Frame, Head, Item, MessageId, MessageKind, Messages, NodeId,
    ReturnAddress, SeqRange, To,
};

/// [`Frame::Messages`]'s variant index.
const MESSAGES: u32 = 1;
/// [`Frame::Ack`]'s variant index.
const ACK: u32 = 2;
/// [`Frame::Reply`]'s variant index.
const REPLY: u32 = 4;

/// The fewest bytes an [`Item`] takes (its id, a one-byte attempt, time offset and flags,
/// an empty payload).
const MIN_ITEM: usize = 20;
/// The fewest bytes a header takes (two empty strings).
const MIN_HEADER: usize = 2;
/// The fewest bytes a [`SeqRange`] takes.
const MIN_RANGE: usize = 2;
/// The fewest bytes an [`EventRun`] takes (a head of nine one-byte fields, and no assignment
/// or item).
const MIN_RUN: usize = 11;
/// The fewest bytes an [`Assignment`] takes (an empty group name and a node id).
const MIN_ASSIGNMENT: usize = 2;

/// Most elements a vector reserves room for before they are decoded (it grows with the
/// elements actually there): at most 128 KiB of items, whatever length a frame claims.
const MAX_RESERVE: usize = 1024;

/// Room to reserve for a vector that claims `count` elements of at least `min` bytes each in
/// a body of `body` bytes.
fn reserve(count: usize, body: usize, min: usize) -> usize {
    count.min(body / min).min(MAX_RESERVE)
}

/// Decodes `body` if it is a [`Frame::Messages`], a [`Frame::Ack`] or a [`Frame::Reply`]: the
/// frame and the bytes it took. `None` for every other frame (the caller decodes it through
/// serde).
pub(super) fn decode(
    body: &[u8],
    payloads: Payloads<'_>,
) -> Option<Result<(Frame, usize), DecodeError>> {
    let mut decoder = DecoderImpl::new(Body { rest: body }, config(), ());
    let frame = match u32::borrow_decode(&mut decoder) {
        Ok(MESSAGES) => {
            messages(&mut decoder, body.len(), payloads).map(|m| Frame::Messages(Box::new(m)))
        }
        Ok(ACK) => ack(&mut decoder, body.len()).map(Frame::Ack),
        Ok(REPLY) => {
            envelope(&mut decoder, body.len(), payloads).map(|e| Frame::Reply(Box::new(e)))
        }
        _ => return None,
    };
    Some(frame.map(|frame| (frame, body.len() - decoder.borrow_reader().rest.len())))
}

/// Decodes a multicast datagram's body (its events are the runs of [`Frame::Messages`] with
/// the instances assigned to them): the body and the bytes it took.
pub(super) fn datagram_body(body: &[u8]) -> Result<(DatagramBody, usize), DecodeError> {
    let mut d = DecoderImpl::new(Body { rest: body }, config(), ());
    let len_body = body.len();
    let first_item = u64::borrow_decode(&mut d)?;
    let count = len(&mut d)?;
    let mut runs = Vec::with_capacity(reserve(count, len_body, MIN_RUN));
    for _ in 0..count {
        let head = head(&mut d)?;
        let count = len(&mut d)?;
        let mut assigned = Vec::with_capacity(reserve(count, len_body, MIN_ASSIGNMENT));
        for _ in 0..count {
            assigned.push(Assignment {
                group: name(&mut d)?,
                node: NodeId::from_u128(u128::borrow_decode(&mut d)?),
            });
        }
        let count = len(&mut d)?;
        let mut items = Vec::with_capacity(reserve(count, len_body, MIN_ITEM));
        for _ in 0..count {
            let item = match plain_item(d.borrow_reader(), Payloads::Copied) {
                Some(item) => item,
                None => item(&mut d, len_body, Payloads::Copied)?,
            };
            items.push(item);
        }
        runs.push(EventRun {
            head,
            assigned,
            items,
        });
    }
    let used = len_body - d.borrow_reader().rest.len();
    Ok((DatagramBody { first_item, runs }, used))
}

/// The decoder of a body.
type Decoder<'a> = DecoderImpl<Body<'a>, bincode::config::Configuration, ()>;

fn messages<'de>(
    d: &mut Decoder<'de>,
    body: usize,
    payloads: Payloads<'_>,
) -> Result<Messages, DecodeError> {
    let first_seq = u64::borrow_decode(d)?;
    let head = head(d)?;
    let count = len(d)?;
    let mut items = Vec::with_capacity(reserve(count, body, MIN_ITEM));
    for _ in 0..count {
        let item = match plain_item(d.borrow_reader(), payloads) {
            Some(item) => item,
            None => item(d, body, payloads)?,
        };
        items.push(item);
    }
    Ok(Messages {
        first_seq,
        head,
        items,
    })
}

fn head<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<Head, DecodeError> {
    Ok(Head {
        kind: kind(d)?,
        name: name(d)?,
        version: u16::borrow_decode(d)?,
        content_type: name(d)?,
        partition_key: option(d, name)?,
        reply_to: option(d, return_address)?,
        to: match u32::borrow_decode(d)? {
            0 => To::Handler,
            1 => To::Group(name(d)?),
            2 => To::Instance,
            _ => return Err(DecodeError::Other("unknown variant of To")),
        },
        reliable: bool::borrow_decode(d)?,
        ordered: bool::borrow_decode(d)?,
    })
}

/// Bytes before the payload of a [`plain_item`]: the id, then one byte each for the attempt,
/// the time offset, the flags and the payload's length.
const PLAIN_HEAD: usize = 16 + 4;

/// The most a one-byte varint holds (bincode's encoding: a larger first byte announces a
/// wider integer after it).
const ONE_BYTE_MAX: u8 = 250;

/// The common item, read straight from the body: no optional field, and an attempt, time
/// offset and payload length of one byte each (`item` reads the same bytes the same way; the
/// round-trip tests compare both decodes with serde's). `None`, with nothing read, for any
/// other item, or one cut short: [`item`] decodes it, or gives the error. A sender writes
/// these items without an encoder too (`append_plain` in `codec/item.rs`).
#[inline(always)]
fn plain_item(body: &mut Body<'_>, payloads: Payloads<'_>) -> Option<Item> {
    let (fixed, after) = body.rest.split_first_chunk::<PLAIN_HEAD>()?;
    let [id @ .., attempt, offset, flags, len] = fixed;
    if *flags != 0 || *attempt > ONE_BYTE_MAX || *offset > ONE_BYTE_MAX || *len > ONE_BYTE_MAX {
        return None;
    }
    let (bytes, rest) = after.split_at_checked(usize::from(*len))?;
    let id = item_wire::id_from_bytes(*id);
    // A zigzag varint, as bincode decodes an `i64`.
    let offset = u64::from(*offset);
    let offset = if offset % 2 == 0 {
        (offset / 2) as i64
    } else {
        !(offset / 2) as i64
    };
    let payload = payloads.of(bytes);
    body.rest = rest;
    Some(Item {
        id,
        attempt: u32::from(*attempt),
        timestamp_ms: item_wire::timestamp(id, offset),
        correlation_id: None,
        partition_key: None,
        headers: Vec::new(),
        payload,
        differs: None,
    })
}

fn item<'de, D: BorrowDecoder<'de>>(
    d: &mut D,
    body: usize,
    payloads: Payloads<'_>,
) -> Result<Item, DecodeError> {
    let id = fixed_id(d)?;
    let attempt = u32::borrow_decode(d)?;
    let timestamp_ms = item_wire::timestamp(id, i64::borrow_decode(d)?);
    let flags = u8::borrow_decode(d)?;
    if flags & !item_wire::ALL_FLAGS != 0 {
        return Err(DecodeError::Other("unknown flags in an item"));
    }
    let correlation_id = if flags & item_wire::HAS_CORRELATION != 0 {
        Some(fixed_id(d)?)
    } else {
        None
    };
    let partition_key = if flags & item_wire::HAS_KEY != 0 {
        Some(name(d)?)
    } else {
        None
    };
    let headers = if flags & item_wire::HAS_HEADERS != 0 {
        headers(d, body)?
    } else {
        Vec::new()
    };
    let payload = payloads.take(d)?;
    let differs = if flags & item_wire::HAS_DIFFERS != 0 {
        Some(Box::new(Differs {
            kind: kind(d)?,
            version: u16::borrow_decode(d)?,
            content_type: name(d)?,
            reply_to: option(d, return_address)?,
        }))
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

fn envelope<'de, D: BorrowDecoder<'de>>(
    d: &mut D,
    body: usize,
    payloads: Payloads<'_>,
) -> Result<Envelope, DecodeError> {
    Ok(Envelope {
        id: message_id(d)?,
        kind: kind(d)?,
        name: name(d)?,
        version: u16::borrow_decode(d)?,
        content_type: name(d)?,
        headers: headers(d, body)?,
        correlation_id: option(d, message_id)?,
        reply_to: option(d, return_address)?,
        partition_key: option(d, name)?,
        attempt: u32::borrow_decode(d)?,
        timestamp_ms: u64::borrow_decode(d)?,
        payload: payloads.take(d)?,
    })
}

/// Where decoded payloads live.
#[derive(Clone, Copy, Debug)]
pub(super) enum Payloads<'a> {
    /// Each in a buffer of its own, copied from the body: for a small frame, cheaper than
    /// sharing its bytes.
    Copied,
    /// Views of the frame's own bytes, which the decoded body borrows from: no copy, and the
    /// frame's buffer lives as long as any payload does.
    Shared(&'a Bytes),
}

impl Payloads<'_> {
    /// Decodes the next payload.
    fn take<'de, D: BorrowDecoder<'de>>(self, d: &mut D) -> Result<Bytes, DecodeError> {
        <&[u8]>::borrow_decode(d).map(|bytes| self.of(bytes))
    }

    /// The payload of `bytes`, borrowed from the body.
    #[inline(always)]
    fn of(self, bytes: &[u8]) -> Bytes {
        match self {
            Self::Copied => Bytes::copy_from_slice(bytes),
            // Borrowed from the body, which is this `Bytes`'s contents: it lies within them
            // (`slice` checks that again; `slice_ref` would check it twice more).
            Self::Shared(_) if bytes.is_empty() => Bytes::new(),
            Self::Shared(frame) => {
                let start = (bytes.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
                frame.slice(start..start.wrapping_add(bytes.len()))
            }
        }
    }
}

fn headers<'de, D: BorrowDecoder<'de>>(
    d: &mut D,
    body: usize,
) -> Result<Vec<(String, String)>, DecodeError> {
    let count = len(d)?;
    let mut headers = Vec::with_capacity(reserve(count, body, MIN_HEADER));
    for _ in 0..count {
        headers.push((string(d)?, string(d)?));
    }
    Ok(headers)
}

fn ack<'de, D: BorrowDecoder<'de>>(d: &mut D, body: usize) -> Result<Ack, DecodeError> {
    let count = len(d)?;
    let mut ranges = Vec::with_capacity(reserve(count, body, MIN_RANGE));
    for _ in 0..count {
        ranges.push(SeqRange {
            start: u64::borrow_decode(d)?,
            len: u64::borrow_decode(d)?,
        });
    }
    Ok(Ack { ranges })
}

fn return_address<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<ReturnAddress, DecodeError> {
    Ok(ReturnAddress {
        service: name(d)?,
        node: option(d, |d| u128::borrow_decode(d).map(NodeId::from_u128))?,
        channel: name(d)?,
    })
}

fn kind<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<MessageKind, DecodeError> {
    match u32::borrow_decode(d)? {
        0 => Ok(MessageKind::Command),
        1 => Ok(MessageKind::Event),
        2 => Ok(MessageKind::Document),
        3 => Ok(MessageKind::Reply),
        _ => Err(DecodeError::Other("unknown variant of MessageKind")),
    }
}

fn message_id<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<MessageId, DecodeError> {
    u128::borrow_decode(d).map(MessageId::from_u128)
}

/// A message id in an item: 16 bytes, not a varint (`frame/item_wire.rs`).
fn fixed_id<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<MessageId, DecodeError> {
    <[u8; 16]>::borrow_decode(d).map(item_wire::id_from_bytes)
}

/// A string, copied out of the body once its bytes are there and valid UTF-8.
fn string<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<String, DecodeError> {
    <&str>::borrow_decode(d).map(str::to_owned)
}

/// A name (a message's type or topic, a group), a partition key or a content type: kept
/// inline when short, so most allocate nothing.
fn name<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<SmolStr, DecodeError> {
    <&str>::borrow_decode(d).map(SmolStr::new)
}

/// An `Option`: a tag byte (0 or 1), then the value if 1.
fn option<'de, D: BorrowDecoder<'de>, T>(
    d: &mut D,
    value: impl FnOnce(&mut D) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    match u8::borrow_decode(d)? {
        0 => Ok(None),
        1 => value(d).map(Some),
        _ => Err(DecodeError::Other("an option's tag is neither 0 nor 1")),
    }
}

/// A string's or vector's length.
fn len<'de, D: BorrowDecoder<'de>>(d: &mut D) -> Result<usize, DecodeError> {
    usize::try_from(u64::borrow_decode(d)?).map_err(|_| DecodeError::Other("length overflows"))
}

/// The body being read: what is left of it.
struct Body<'a> {
    rest: &'a [u8],
}

impl Reader for Body<'_> {
    #[inline]
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), DecodeError> {
        let taken = self.take_bytes(bytes.len())?;
        bytes.copy_from_slice(taken);
        Ok(())
    }

    #[inline]
    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        self.rest.get(..n)
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.rest = self.rest.get(n..).unwrap_or_default();
    }
}

impl<'a> BorrowReader<'a> for Body<'a> {
    #[inline]
    fn take_bytes(&mut self, length: usize) -> Result<&'a [u8], DecodeError> {
        if length > self.rest.len() {
            return Err(DecodeError::UnexpectedEnd {
                additional: length - self.rest.len(),
            });
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(taken)
    }
}
