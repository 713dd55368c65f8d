//! An item's bytes on the wire (protocol 4, `frame/item_wire.rs`): a message without optional
//! fields is its id, attempt, time offset, flags and payload; every timestamp travels whole,
//! however far from its id's time; flags a receiver does not know are malformed.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use shoal_proto::codec::{self, EncodedHead, EncodedItem, LENGTH_PREFIX};
use shoal_proto::{
    DecodeError, Envelope, Frame, Head, Item, Limits, MessageId, MessageKind, Messages, To,
};

const T0: u64 = 1_700_000_000_000;

fn event(id: MessageId, timestamp_ms: u64, payload: &'static [u8]) -> Envelope {
    let mut event = Envelope::new(
        id,
        MessageKind::Event,
        "orders",
        timestamp_ms,
        Bytes::from_static(payload),
    );
    event.attempt = 1;
    event
}

/// A run of `envelope` alone, its items built as a sender builds them.
fn run_of(envelope: &Envelope) -> Frame {
    Frame::Messages(Box::new(Messages {
        first_seq: 0,
        head: Head::of(envelope, To::Handler, true, false),
        items: vec![Item::of(envelope)],
    }))
}

/// The frame's body (without its length prefix).
fn body(frame: &Frame) -> Vec<u8> {
    let mut wire = BytesMut::new();
    codec::encode(frame, &Limits::default(), &mut wire).unwrap();
    wire[LENGTH_PREFIX..].to_vec()
}

fn decode_body(body: &[u8]) -> Result<Option<Frame>, DecodeError> {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    wire.extend_from_slice(body);
    let decoded = codec::decode(&mut wire, &Limits::default());
    assert!(wire.is_empty(), "the frame is consumed");
    decoded
}

/// The bytes of `envelope`'s item as a sender encodes it, straight from the envelope; they
/// must be those of the item built and encoded through serde.
fn item_len(envelope: &Envelope) -> usize {
    let limits = Limits::default();
    let built = EncodedItem::new(&Item::of(envelope), &limits).unwrap();
    let mut arena = BytesMut::new();
    let direct = EncodedItem::from_envelope_in(envelope, None, &limits, &mut arena).unwrap();
    assert_eq!(built, direct);
    direct.len()
}

#[test]
fn an_item_without_optional_fields_is_id_attempt_offset_flags_and_payload() {
    let id = MessageId::from_parts(T0, 42);
    let envelope = event(id, T0, b"abc");
    let mut item = id.as_u128().to_le_bytes().to_vec();
    item.extend([1, 0, 0, 3]); // attempt 1, offset 0, no flags, three bytes of payload
    item.extend(b"abc");
    let body = body(&run_of(&envelope));
    assert!(body.ends_with(&item), "{body:?}");
    assert_eq!(item_len(&envelope), item.len());
}

#[test]
fn every_timestamp_travels_whatever_its_ids_time() {
    let near = MessageId::from_parts(T0, 7);
    let cases = [
        // (id, timestamp, the offset's bytes)
        (near, T0, 1),
        (near, T0 - 1, 1),
        (near, T0 + 63, 1),
        (near, T0 + 200, 3),
        (near, 0, 9),
        (near, u64::MAX, 9),
        (MessageId::from_u128(0), u64::MAX, 1), // wraps: offset -1
        (MessageId::from_u128(0), 1 << 63, 9),
        (MessageId::from_u128(u128::MAX), 0, 9),
        (
            MessageId::from_parts(0xFFFF_FFFF_FFFF, 0),
            0xFFFF_FFFF_FFFF,
            1,
        ),
    ];
    let plain = item_len(&event(near, T0, b"x"));
    for (id, timestamp_ms, offset_len) in cases {
        let envelope = event(id, timestamp_ms, b"x");
        assert_eq!(
            item_len(&envelope),
            plain - 1 + offset_len,
            "{id:?} {timestamp_ms}"
        );
        let frame = run_of(&envelope);
        let Some(Frame::Messages(run)) = decode_body(&body(&frame)).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(run.items[0].timestamp_ms, timestamp_ms, "{id:?}");
        assert_eq!(Frame::Messages(run), frame);
    }
}

#[test]
fn flags_a_receiver_does_not_know_are_malformed() {
    let envelope = event(MessageId::from_parts(T0, 1), T0, b"payload");
    let body = body(&run_of(&envelope));
    // The item ends the body: flags, the payload's length, the payload.
    let flags_at = body.len() - envelope.payload.len() - 2;
    assert_eq!(body[flags_at], 0);
    for bit in 4..8 {
        let mut edited = body.clone();
        edited[flags_at] = 1 << bit;
        let decoded = decode_body(&edited);
        assert!(
            matches!(decoded, Err(DecodeError::Malformed(ref why)) if why.contains("flags")),
            "flag {bit}: {decoded:?}"
        );
        let by_serde = bincode::serde::decode_from_slice::<Frame, _>(
            &edited,
            bincode::config::standard().with_limit::<{ 1 << 20 }>(),
        );
        assert!(by_serde.is_err(), "flag {bit}: {by_serde:?}");
    }
    // A known flag whose field is not there: the payload is read as that field, and the
    // frame ends too early or has bytes left over.
    for flag in [1, 2, 4, 8] {
        let mut edited = body.clone();
        edited[flags_at] = flag;
        assert!(
            matches!(decode_body(&edited), Err(DecodeError::Malformed(_))),
            "flag {flag}"
        );
    }
}

#[test]
fn a_headers_flag_without_headers_decodes_to_no_headers() {
    let envelope = event(MessageId::from_parts(T0, 1), T0, b"payload");
    let mut body = body(&run_of(&envelope));
    let flags_at = body.len() - envelope.payload.len() - 2;
    body[flags_at] = 4;
    body.insert(flags_at + 1, 0); // a header count of 0
    let Some(Frame::Messages(run)) = decode_body(&body).unwrap() else {
        panic!("not a run")
    };
    assert_eq!(run.items[0], Item::of(&envelope));
}

#[test]
fn optional_fields_each_travel_under_their_flag() {
    let mut envelope = event(MessageId::from_parts(T0, 1), T0, b"payload");
    let plain = item_len(&envelope);
    envelope.correlation_id = Some(MessageId::from_u128(u128::MAX));
    assert_eq!(item_len(&envelope), plain + 16);
    envelope.partition_key = Some("k".into());
    assert_eq!(item_len(&envelope), plain + 16 + 2);
    envelope.headers.push(("a".into(), "b".into()));
    assert_eq!(item_len(&envelope), plain + 16 + 2 + 5);
    let frame = run_of(&envelope);
    assert_eq!(decode_body(&body(&frame)).unwrap(), Some(frame));
}

#[test]
fn an_item_under_a_head_gives_back_its_whole_envelope() {
    let first = event(MessageId::from_parts(T0, 1), T0, b"one");
    let head = Head::of(&first, To::Handler, true, false);
    let batch_head = Head::of(&first, To::Handler, true, true);
    let mut differing = event(MessageId::from_parts(T0, 2), T0 + 5, b"two");
    differing.kind = MessageKind::Document;
    differing.version = 9;
    differing.content_type = "application/json".into();
    differing.reply_to = Some(shoal_proto::ReturnAddress {
        service: "billing".into(),
        node: None,
        channel: "answers".into(),
    });
    let mut keyed = event(MessageId::from_parts(T0, 3), T0, b"three");
    keyed.partition_key = Some("customer-1".into());
    keyed.correlation_id = Some(MessageId::from_u128(5));
    keyed.headers.push(("trace".into(), "abc".into()));
    for envelope in [&first, &differing, &keyed] {
        let item = Item::under(envelope, &head);
        assert_eq!(item.differs.is_some(), std::ptr::eq(envelope, &differing));
        let frame = Frame::Messages(Box::new(Messages {
            first_seq: 0,
            head: head.clone(),
            items: vec![item],
        }));
        let Some(Frame::Messages(run)) = decode_body(&body(&frame)).unwrap() else {
            panic!("not a run")
        };
        let Messages { head, items, .. } = *run;
        let back = items.into_iter().next().unwrap().into_envelope(&head);
        assert_eq!(&back, envelope);
    }
    // A batch's head carries the key its items leave out.
    let mut keyed_first = first.clone();
    keyed_first.partition_key = Some("customer-1".into());
    let batch_head = Head {
        partition_key: keyed_first.partition_key.clone(),
        ..batch_head
    };
    let item = Item::under(&keyed_first, &batch_head);
    assert_eq!(item.partition_key, None);
    assert_eq!(item.into_envelope(&batch_head), keyed_first);
}

/// A plain item (no optional field) is written without bincode's encoder
/// (`codec/item.rs`): at every varint width of its attempt, time offset and payload length,
/// its bytes are serde's, alone and under heads it fits (a batch's keyed head too), and
/// decode back. Each width is pinned by the item's length, the 251 tag by its bytes.
#[test]
fn plain_items_encode_as_serde_does_at_every_varint_width() {
    // (value, its varint's bytes)
    let attempts = [
        (0, 1),
        (1, 1),
        (250, 1),
        (251, 3),
        (65_535, 3),
        (65_536, 5),
        (u32::MAX, 5),
    ];
    let lens = [(0, 1), (250, 1), (251, 3), (65_535, 3), (65_536, 5)];
    // Offsets from the id's time, each a zigzag varint: 2|n|, or 2|n| - 1 below zero.
    let offsets: [(i64, usize); 16] = [
        (0, 1),
        (1, 1),
        (-1, 1),
        (125, 1),
        (-125, 1),
        (126, 3),
        (-126, 3),
        (32_767, 3),
        (-32_768, 3),
        (32_768, 5),
        (-32_769, 5),
        (i64::from(i32::MIN), 5),
        (i64::from(i32::MAX) + 1, 9),
        (i64::from(i32::MIN) - 1, 9),
        (i64::MAX, 9),
        (i64::MIN, 9),
    ];
    let limits = Limits::default();
    let body = Bytes::from(vec![0xA5; 65_536]);
    let id = MessageId::from_parts(T0, 9);
    let mut arena = BytesMut::new();
    for (attempt, attempt_len) in attempts {
        for (len, len_len) in lens {
            for (offset, offset_len) in offsets {
                let mut envelope = event(id, T0.wrapping_add_signed(offset), b"");
                envelope.attempt = attempt;
                envelope.payload = body.slice(..len);
                let case = format!("attempt {attempt}, {len} bytes, offset {offset}");
                let built = EncodedItem::new(&Item::of(&envelope), &limits).unwrap();
                let direct =
                    EncodedItem::from_envelope_in(&envelope, None, &limits, &mut arena).unwrap();
                assert_eq!(direct, built, "{case}");
                assert_eq!(
                    direct.len(),
                    16 + attempt_len + offset_len + 1 + len_len + len,
                    "{case}"
                );
                let head = Head::of(&envelope, To::Handler, true, false);
                let under =
                    EncodedItem::from_envelope_in(&envelope, Some(&head), &limits, &mut arena)
                        .unwrap();
                assert_eq!(under, built, "{case}");
                let mut keyed = envelope.clone();
                keyed.partition_key = Some("customer-1".into());
                let batch = Head::of(&keyed, To::Handler, true, true);
                let in_batch =
                    EncodedItem::from_envelope_in(&keyed, Some(&batch), &limits, &mut arena)
                        .unwrap();
                assert_eq!(in_batch, built, "{case}");
                assert_eq!(
                    in_batch,
                    EncodedItem::new(&Item::under(&keyed, &batch), &limits).unwrap()
                );
                let mut wire = BytesMut::new();
                let encoded_head = EncodedHead::new(&head, &limits).unwrap();
                codec::write_messages(&mut wire, 0, &encoded_head, [&direct], &limits).unwrap();
                let Some(Frame::Messages(run)) = codec::decode(&mut wire, &limits).unwrap() else {
                    panic!("not a run: {case}")
                };
                assert_eq!(run.items, [Item::of(&envelope)], "{case}");
            }
        }
    }
    // The tag of a two-byte varint, then its value: attempt 251, a 251-byte payload.
    let mut envelope = event(id, T0, b"");
    envelope.attempt = 251;
    envelope.payload = body.slice(..251);
    let direct = EncodedItem::from_envelope_in(&envelope, None, &limits, &mut arena).unwrap();
    let mut frame = BytesMut::new();
    let head = EncodedHead::new(&Head::of(&envelope, To::Handler, true, false), &limits).unwrap();
    codec::write_messages(&mut frame, 0, &head, [&direct], &limits).unwrap();
    let item = &frame[frame.len() - direct.len()..];
    assert_eq!(item[16..23], [251, 251, 0, 0, 0, 251, 251], "{item:?}");
}

/// Each optional field, alone, keeps an item off the plain path: its own key (with no head
/// or under one without a key), a correlation id, a header, a field that differs from the
/// head. Its bytes are serde's, and longer than the plain item's.
#[test]
fn any_optional_field_keeps_an_item_from_being_plain() {
    let limits = Limits::default();
    let plain = event(MessageId::from_parts(T0, 4), T0, b"payload");
    let head = Head::of(&plain, To::Handler, true, false);
    let with = |change: fn(&mut Envelope)| {
        let mut envelope = plain.clone();
        change(&mut envelope);
        envelope
    };
    let cases = [
        ("key", with(|e| e.partition_key = Some("k".into())), None),
        (
            "key",
            with(|e| e.partition_key = Some("k".into())),
            Some(&head),
        ),
        (
            "correlation",
            with(|e| e.correlation_id = Some(MessageId::from_u128(1))),
            None,
        ),
        (
            "header",
            with(|e| e.headers.push(("a".into(), "b".into()))),
            None,
        ),
        ("version", with(|e| e.version = 2), Some(&head)),
    ];
    let plain_len = item_len(&plain);
    let mut arena = BytesMut::new();
    for (field, envelope, head) in cases {
        let item = head.map_or_else(|| Item::of(&envelope), |head| Item::under(&envelope, head));
        let built = EncodedItem::new(&item, &limits).unwrap();
        let direct = EncodedItem::from_envelope_in(&envelope, head, &limits, &mut arena).unwrap();
        assert_eq!(direct, built, "{field}");
        assert!(direct.len() > plain_len, "{field}");
    }
}

/// A plain item longer than the frame limit is refused with its whole length, and nothing
/// of it is left in the arena; one that just fits is encoded.
#[test]
fn a_plain_item_over_the_frame_limit_is_refused_whole() {
    let envelope = event(MessageId::from_parts(T0, 3), T0, &[7; 300]);
    let len = item_len(&envelope);
    let mut arena = BytesMut::new();
    for (max_frame_len, fits) in [(len, true), (len - 1, false), (20, false)] {
        let limits = Limits {
            max_frame_len,
            ..Limits::default()
        };
        let head = Head::of(&envelope, To::Handler, true, false);
        for head in [None, Some(&head)] {
            let got = EncodedItem::from_envelope_in(&envelope, head, &limits, &mut arena);
            let built = EncodedItem::new(&Item::of(&envelope), &limits);
            match (got, built) {
                (Ok(got), Ok(built)) if fits => assert_eq!(got, built),
                (Err(got), Err(built)) if !fits => {
                    assert_eq!(got.to_string(), built.to_string());
                    let why = got.to_string();
                    assert!(
                        why.contains("max_frame_len") && why.contains(&len.to_string()),
                        "{why}"
                    );
                    assert!(arena.is_empty());
                }
                other => panic!("limit {max_frame_len}: {other:?}"),
            }
        }
    }
}

/// A head fits a message that shares each of its fields, and no message that differs in
/// one: an empty content type against a set one either way, names of one length.
#[test]
fn a_head_fits_only_messages_that_share_its_fields() {
    let plain = event(MessageId::from_parts(T0, 5), T0, b"payload");
    let typed = |content_type: &str| {
        let mut envelope = plain.clone();
        envelope.content_type = content_type.into();
        envelope
    };
    let renamed = |name: &str| {
        let mut envelope = plain.clone();
        envelope.name = name.into();
        envelope
    };
    let json = typed("application/json");
    let long = "a content type longer than an inline string";
    for (head_of, other, fits) in [
        (&plain, plain.clone(), true),
        (&json, typed("application/json"), true),
        (&plain, json.clone(), false),
        (&json, plain.clone(), false),
        (&json, typed("application/jsom"), false),
        (&plain, renamed("orderz"), false),
        (&plain, renamed("order"), false),
        (&typed(long), typed(long), true),
        (&typed(long), typed(&long.replace('a', "b")), false),
    ] {
        let head = Head::of(head_of, To::Handler, true, false);
        assert_eq!(head.fits(&other), fits, "{head:?} {other:?}");
    }
}
