//! Runs of messages framed from parts encoded once, and acks framed without serde.
//!
//! A [`Frame::Messages`] is its variant tag, `first_seq`, the [`Head`], the item count and the
//! items, one after the other (bincode writes a struct as its fields in order and a vector as
//! its length and its elements). So a sender can encode each [`Item`] once, when the message
//! is sent, and each head once per run, and frame any selection of them later by copying
//! bytes: one event's item is written to every subscriber group's connection without being
//! encoded again, and a run of messages that share a head pays for the head once.
//!
//! ```
//! use bytes::BytesMut;
//! use shoal_proto::codec::{self, EncodedHead, EncodedItem};
//! use shoal_proto::{Envelope, Frame, Head, Item, Limits, MessageId, MessageKind, To};
//!
//! let limits = Limits::default();
//! let id = MessageId::from_parts(1_700_000_000_000, 7);
//! let event = Envelope::new(id, MessageKind::Event, "order.created", 0, "{}".into());
//! let item = EncodedItem::new(&Item::of(&event), &limits).unwrap();
//! let head = EncodedHead::new(&Head::of(&event, To::Group("billing".into()), true, false), &limits).unwrap();
//!
//! let mut wire = BytesMut::new();
//! codec::write_messages(&mut wire, 41, &head, [&item], &limits).unwrap();
//! match codec::decode(&mut wire, &limits).unwrap() {
//!     Some(Frame::Messages(run)) => {
//!         assert_eq!(run.first_seq, 41);
//!         assert_eq!(run.items[0].id, id);
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::item::append_item;
use super::{LENGTH_PREFIX, append_bounded, config, max_frame_len};
use crate::{
    EncodeError, Envelope, Frame, Head, Item, Limits, SeqRange, validate_head, validate_item,
};

/// The index of [`Frame::Messages`] among `Frame`'s variants, as serde numbers them. A test
/// checks that framed runs equal encoding the `Frame`.
const MESSAGES_VARIANT: u32 = 1;

/// The index of [`Frame::Ack`], checked likewise.
const ACK_VARIANT: u32 = 2;

/// Most bytes a varint takes (bincode's tag byte and a `u64`).
const MAX_VARINT: usize = 9;

/// The allocation an arena of items ([`EncodedItem::from_envelope_in`]) grows by.
const ARENA_BLOCK: usize = 64 * 1024;

/// One message's [`Item`], encoded and checked against the limits once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedItem(Bytes);

/// A run's [`Head`], encoded and checked against the limits once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedHead(Bytes);

impl EncodedItem {
    /// Encodes `item`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::LimitExceeded`] when the item breaks a per-field limit
    /// ([`validate_item`]) or is longer than `max_frame_len` on its own.
    pub fn new(item: &Item, limits: &Limits) -> Result<Self, EncodeError> {
        validate_item(item, limits)?;
        let estimate =
            item_len_estimate(&item.payload, item.partition_key.as_deref(), &item.headers);
        encode_part(item, estimate, limits).map(Self)
    }

    /// Encodes `envelope` as the item of a run under `head` (as [`Item::under`] makes it), or
    /// of a run of its own when `head` is `None` (as [`Item::of`]), at the end of `arena`, and
    /// splits it off. The same bytes as [`EncodedItem::new`] of that item, without building
    /// it (`codec/item.rs`); many items share one allocation (a sender encodes every message
    /// it sends; allocating for each costs more than encoding it).
    ///
    /// # Errors
    ///
    /// As [`EncodedItem::new`]; `arena` is left as it was.
    pub fn from_envelope_in(
        envelope: &Envelope,
        head: Option<&Head>,
        limits: &Limits,
        arena: &mut BytesMut,
    ) -> Result<Self, EncodeError> {
        let estimate = item_len_estimate(
            &envelope.payload,
            envelope.partition_key.as_deref(),
            &envelope.headers,
        );
        arena.clear();
        if arena.capacity() < estimate {
            arena.reserve(estimate.max(ARENA_BLOCK));
        }
        if let Err(e) = append_item(envelope, head, limits, arena, max_frame_len(limits)) {
            arena.clear();
            return Err(e);
        }
        Ok(Self(arena.split().freeze()))
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for an encoded item).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The encoded bytes (multicast datagrams copy them into their bodies: `datagram.rs`).
    pub(super) fn wire(&self) -> &[u8] {
        &self.0
    }
}

impl EncodedHead {
    /// Encodes `head`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::LimitExceeded`] when the head breaks a per-field limit
    /// ([`validate_head`]).
    pub fn new(head: &Head, limits: &Limits) -> Result<Self, EncodeError> {
        validate_head(head, limits)?;
        encode_part(head, 64 + head.name.len(), limits).map(Self)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for an encoded head).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The encoded bytes (multicast datagrams copy them into their bodies: `datagram.rs`).
    pub(super) fn wire(&self) -> &[u8] {
        &self.0
    }
}

/// A cheap upper estimate of an item's encoded length (ids, numbers and length prefixes in
/// the 64).
fn item_len_estimate(payload: &[u8], key: Option<&str>, headers: &[(String, String)]) -> usize {
    64 + payload.len() + key.map_or(0, |k| 9 + k.len()) + super::headers_len_estimate(headers)
}

fn encode_part<T: Serialize>(
    value: &T,
    estimate: usize,
    limits: &Limits,
) -> Result<Bytes, EncodeError> {
    let max = max_frame_len(limits);
    let mut dst = BytesMut::with_capacity(estimate.min(max));
    append_bounded(value, &mut dst, max)?;
    Ok(dst.freeze())
}

/// The bytes a run of `items` under `head` takes on the wire, length prefix included (at most:
/// varints are counted at their longest).
pub fn messages_len<'a>(
    head: &EncodedHead,
    items: impl IntoIterator<Item = &'a EncodedItem>,
) -> usize {
    LENGTH_PREFIX
        + 1
        + 2 * MAX_VARINT
        + head.len()
        + items.into_iter().map(EncodedItem::len).sum::<usize>()
}

/// Appends a [`Frame::Messages`] of `items` under `head`, numbered from `first_seq`: the same
/// bytes as [`super::encode`] of that frame.
///
/// # Errors
///
/// [`EncodeError::LimitExceeded`] naming `max_frame_len` when the run is too long for one
/// frame; `dst` is then left as it was.
pub fn write_messages<'a>(
    dst: &mut BytesMut,
    first_seq: u64,
    head: &EncodedHead,
    items: impl IntoIterator<Item = &'a EncodedItem> + Clone,
    limits: &Limits,
) -> Result<(), EncodeError> {
    let count = items.clone().into_iter().count();
    let start = dst.len();
    dst.reserve(messages_len(head, items.clone()));
    dst.put_u32(0); // patched below
    put_varint(dst, u64::from(MESSAGES_VARIANT));
    put_varint(dst, first_seq);
    dst.extend_from_slice(&head.0);
    put_varint(dst, count as u64);
    for item in items {
        dst.extend_from_slice(&item.0);
    }
    finish_frame(dst, start, limits)
}

/// Appends a [`Frame::Ack`] of `ranges`: the same bytes as [`super::encode`] of that frame,
/// without building it (a receiver writes an ack for nearly every read).
///
/// # Errors
///
/// [`EncodeError::LimitExceeded`] naming `max_frame_len` when the ranges are too many for one
/// frame; `dst` is then left as it was.
pub fn write_ack(
    dst: &mut BytesMut,
    ranges: &[SeqRange],
    limits: &Limits,
) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.reserve(LENGTH_PREFIX + (2 + 2 * ranges.len()) * MAX_VARINT);
    dst.put_u32(0); // patched below
    put_varint(dst, u64::from(ACK_VARIANT));
    put_varint(dst, ranges.len() as u64);
    for range in ranges {
        put_varint(dst, range.start);
        put_varint(dst, range.len);
    }
    finish_frame(dst, start, limits)
}

/// Patches the length prefix of the frame written from `start`, or cuts the frame when it is
/// longer than `limits` allow.
fn finish_frame(dst: &mut BytesMut, start: usize, limits: &Limits) -> Result<(), EncodeError> {
    let written = dst.len() - start - LENGTH_PREFIX;
    let max = max_frame_len(limits);
    match u32::try_from(written) {
        Ok(len) if written <= max => {
            dst[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        _ => {
            dst.truncate(start);
            Err(EncodeError::LimitExceeded {
                limit: "max_frame_len",
                actual: written,
                max,
            })
        }
    }
}

/// Appends `value` as bincode's standard varint.
fn put_varint(dst: &mut BytesMut, value: u64) {
    let mut buf = [0u8; MAX_VARINT];
    // A u64 always fits in nine bytes, so this cannot fail.
    let n = bincode::serde::encode_into_slice(value, &mut buf, config()).unwrap_or(0);
    dst.extend_from_slice(&buf[..n]);
}

// `Frame` is matched here so that adding a variant before `Messages` or `Ack` fails to compile
// until `MESSAGES_VARIANT` and `ACK_VARIANT` are checked again (the tests then confirm them).
const _: fn(&Frame) = |f| match f {
    Frame::Hello(_)
    | Frame::Messages(_)
    | Frame::Ack(_)
    | Frame::Nack(_)
    | Frame::Reply(_)
    | Frame::Ping(_)
    | Frame::Pong(_)
    | Frame::Goodbye(_)
    | Frame::Subscribe(_)
    | Frame::Unsubscribe(_)
    | Frame::ChannelHello(_)
    | Frame::ChannelKey(_)
    | Frame::ChannelStatus(_)
    | Frame::ChannelNak(_)
    | Frame::ChannelRepair(_)
    | Frame::ChannelDemote(_) => {}
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Envelope, MessageId, MessageKind, Messages, ReturnAddress, To, codec};

    fn event(n: u128) -> Envelope {
        let mut e = Envelope::new(
            MessageId::from_parts(1_700_000_000_000, n),
            MessageKind::Event,
            "orders.created",
            1_700_000_000_000,
            Bytes::from_static(b"payload"),
        );
        e.partition_key = Some("customer-7".into());
        e.headers.push(("trace".into(), format!("abc-{n}")));
        e.reply_to = Some(ReturnAddress {
            service: "orders".into(),
            node: None,
            channel: "answers".into(),
        });
        e.attempt = 1;
        e
    }

    #[test]
    fn framed_runs_equal_encoding_the_frame() {
        let limits = Limits::default();
        let events: Vec<Envelope> = (0..300).map(event).collect();
        let items: Vec<EncodedItem> = events
            .iter()
            .map(|e| EncodedItem::new(&Item::of(e), &limits).unwrap())
            .collect();
        for to in [To::Handler, To::Instance, To::Group("billing".into())] {
            for (reliable, ordered) in [(true, false), (false, false), (true, true)] {
                let head = Head::of(&events[0], to.clone(), reliable, ordered);
                let encoded_head = EncodedHead::new(&head, &limits).unwrap();
                for (first_seq, count) in [(0, 1), (250, 250), (u64::MAX - 300, 300)] {
                    let frame = Frame::Messages(Box::new(Messages {
                        first_seq,
                        head: head.clone(),
                        items: events[..count].iter().map(Item::of).collect(),
                    }));
                    let mut expected = BytesMut::new();
                    codec::encode(&frame, &limits, &mut expected).unwrap();
                    let mut got = BytesMut::new();
                    write_messages(&mut got, first_seq, &encoded_head, &items[..count], &limits)
                        .unwrap();
                    assert_eq!(got, expected, "{to:?} {count}");
                    assert!(messages_len(&encoded_head, &items[..count]) >= got.len());
                    assert_eq!(codec::decode(&mut got, &limits).unwrap(), Some(frame));
                }
            }
        }
    }

    #[test]
    fn framed_acks_equal_encoding_the_frame() {
        let limits = Limits::default();
        let range = |start, len| SeqRange { start, len };
        let cases = [
            vec![],
            vec![range(0, 1)],
            vec![range(250, 1), range(251, 5), range(65_600, 70_000)],
            vec![range(u64::MAX - 1, 1), range(1 << 33, u64::MAX)],
            (0..4096).map(|n| range(n * 3, 2)).collect(),
        ];
        for ranges in cases {
            let frame = Frame::Ack(crate::Ack {
                ranges: ranges.clone(),
            });
            let mut expected = BytesMut::new();
            codec::encode(&frame, &limits, &mut expected).unwrap();
            let mut got = BytesMut::from(&b"before"[..]);
            write_ack(&mut got, &ranges, &limits).unwrap();
            assert_eq!(&got[6..], &expected[..], "{} ranges", ranges.len());
            let mut wire = got.split_off(6);
            assert_eq!(codec::decode(&mut wire, &limits).unwrap(), Some(frame));
        }
        // Too many for a small frame limit: refused, and nothing is left behind.
        let small = Limits {
            max_frame_len: 64 * 1024,
            ..Limits::default()
        };
        let many: Vec<SeqRange> = (0..100_000).map(|n| range(n * 3, 2)).collect();
        let mut got = BytesMut::from(&b"before"[..]);
        assert!(matches!(
            write_ack(&mut got, &many, &small),
            Err(EncodeError::LimitExceeded {
                limit: "max_frame_len",
                ..
            })
        ));
        assert_eq!(&got[..], b"before");
    }

    #[test]
    fn items_encoded_in_an_arena_equal_items_encoded_alone() {
        let limits = Limits::default();
        let mut arena = BytesMut::new();
        for n in 0..2000 {
            let event = event(n);
            let alone = EncodedItem::new(&Item::of(&event), &limits).unwrap();
            let shared = EncodedItem::from_envelope_in(&event, None, &limits, &mut arena).unwrap();
            assert_eq!(alone, shared);
        }
        let mut many = event(1);
        many.headers = vec![("k".into(), "v".into()); limits.max_headers + 1];
        let err = EncodedItem::from_envelope_in(&many, None, &limits, &mut arena).unwrap_err();
        assert!(err.to_string().contains("max_headers"), "{err}");
        assert!(arena.is_empty());
        // Longer than a frame: refused with its whole length, and nothing is left behind.
        let small = Limits {
            max_frame_len: 100,
            ..Limits::default()
        };
        let mut big = event(1);
        big.payload = vec![7; 150].into();
        let alone = EncodedItem::new(&Item::of(&big), &small).unwrap_err();
        let shared = EncodedItem::from_envelope_in(&big, None, &small, &mut arena).unwrap_err();
        assert_eq!(alone.to_string(), shared.to_string());
        assert!(shared.to_string().contains("max_frame_len"), "{shared}");
        assert!(arena.is_empty());
    }

    #[test]
    fn limits_apply_to_items_heads_and_whole_runs() {
        let limits = Limits::default();
        let mut long = event(1);
        long.name = "x".repeat(limits.max_name_len + 1).into();
        let head = Head::of(&long, To::Handler, true, false);
        let err = EncodedHead::new(&head, &limits).unwrap_err();
        assert!(err.to_string().contains("max_name_len"), "{err}");

        let group = To::Group("g".repeat(limits.max_name_len + 1).into());
        let err = EncodedHead::new(&Head::of(&event(1), group, true, false), &limits).unwrap_err();
        assert!(err.to_string().contains("max_name_len"), "{err}");

        let mut many = event(1);
        many.headers = vec![("k".into(), "v".into()); limits.max_headers + 1];
        let err = EncodedItem::new(&Item::of(&many), &limits).unwrap_err();
        assert!(err.to_string().contains("max_headers"), "{err}");

        let small = Limits {
            max_frame_len: 200,
            ..Limits::default()
        };
        let head =
            EncodedHead::new(&Head::of(&event(1), To::Handler, true, false), &small).unwrap();
        let item = EncodedItem::new(&Item::of(&event(1)), &small).unwrap();
        let mut dst = BytesMut::from(&b"kept"[..]);
        let err = write_messages(&mut dst, 0, &head, [&item; 6], &small).unwrap_err();
        assert!(err.to_string().contains("max_frame_len"), "{err}");
        assert_eq!(&dst[..], b"kept", "nothing is appended on error");
    }
}
