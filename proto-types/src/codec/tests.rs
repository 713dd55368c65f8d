//! The codec's own tests: limits, budgets and hostile input, on hand-laid bytes.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::{Ack, Envelope, MessageId, MessageKind};

fn frame_bytes(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(body.len()).unwrap());
    buf.extend_from_slice(body);
    buf
}

#[test]
fn payloads_of_a_large_frame_share_its_bytes_and_of_a_small_one_are_copied() {
    let limits = Limits::default();
    for (events, payload_len) in [(1, 16), (1, 4096), (40, 64), (2, 0)] {
        let run = crate::Messages {
            first_seq: 7,
            head: crate::Head::of(
                &Envelope::new(
                    MessageId::from_u128(1),
                    MessageKind::Event,
                    "t",
                    0,
                    "".into(),
                ),
                crate::To::Handler,
                true,
                false,
            ),
            items: (0..events)
                .map(|n| {
                    let body = Bytes::from(vec![n as u8; payload_len]);
                    let env =
                        Envelope::new(MessageId::from_u128(n), MessageKind::Event, "t", 0, body);
                    crate::Item::of(&env)
                })
                .collect(),
        };
        let frame = Frame::Messages(Box::new(run));
        let mut wire = BytesMut::new();
        encode(&frame, &limits, &mut wire).unwrap();
        let shared = wire.len() - LENGTH_PREFIX >= SHARE_FROM;
        let read = wire.as_ptr_range();
        let decoded = decode(&mut wire, &limits).unwrap().unwrap();
        let Frame::Messages(run) = &decoded else {
            panic!("{decoded:?}")
        };
        for item in run.items.iter().filter(|i| !i.payload.is_empty()) {
            let within = read.contains(&item.payload.as_ptr());
            assert_eq!(within, shared, "{events} x {payload_len} B");
        }
        assert_eq!(decoded, frame);
        assert!(wire.is_empty());
    }
}

/// bincode's varint for a `u64` that needs all eight bytes.
fn varint_u64(v: u64) -> Vec<u8> {
    let mut out = vec![253];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

#[test]
fn envelopes_stored_before_protocol_2_still_decode() {
    let envelope = Envelope::new(
        MessageId::from_parts(1_700_000_000_000, 9),
        MessageKind::Command,
        "charge",
        1_700_000_000_000,
        Bytes::from_static(b"order-7"),
    );
    // Protocol 1 stored a Deliver frame: length prefix, variant 1, the envelope.
    let body = bincode::serde::encode_to_vec(&envelope, config()).unwrap();
    let mut legacy = BytesMut::new();
    legacy.put_u32(u32::try_from(body.len() + 1).unwrap());
    legacy.put_u8(1);
    legacy.extend_from_slice(&body);
    let limits = Limits::default();
    assert_eq!(decode_envelope(&legacy, &limits).unwrap(), envelope);
    let stored = encode_envelope(&envelope, &limits).unwrap();
    assert_eq!(decode_envelope(&stored, &limits).unwrap(), envelope);
    for bad in [&b""[..], b"\x09abc", &stored[..stored.len() - 1]] {
        assert!(matches!(
            decode_envelope(bad, &limits),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[test]
fn the_body_is_standard_bincode() {
    let frame = Frame::Ping(7);
    let mut buf = BytesMut::new();
    encode(&frame, &Limits::default(), &mut buf).unwrap();
    let body = bincode::serde::encode_to_vec(&frame, config()).unwrap();
    assert_eq!(&buf[..LENGTH_PREFIX], &(body.len() as u32).to_be_bytes());
    assert_eq!(&buf[LENGTH_PREFIX..], &body[..]);
}

/// Budget-hungry valid frames (runs of items whose integers all encode in one byte) still
/// decode right at each budget tier's boundary.
#[test]
fn budget_tiers_admit_worst_case_valid_frames() {
    let zero_item = || crate::Item {
        id: MessageId::from_u128(0),
        attempt: 0,
        timestamp_ms: 0,
        correlation_id: None,
        partition_key: None,
        headers: Vec::new(),
        payload: Bytes::new(),
        differs: None,
    };
    let head = crate::Head {
        kind: MessageKind::Command,
        name: "".into(),
        version: 0,
        content_type: Default::default(),
        partition_key: None,
        reply_to: None,
        to: crate::To::Handler,
        reliable: false,
        ordered: false,
    };
    for body_len in [4 * KIB, 256 * KIB] {
        // Tag, first_seq, a nine-byte head, the item count (one byte below 251, else
        // three), twenty bytes per item; the last item's payload takes up the rest.
        let count_len = if (body_len - 12) / 20 < 251 { 1 } else { 3 };
        let fixed = 1 + 1 + 9 + count_len;
        let n = (body_len - fixed) / 20;
        let mut items = vec![zero_item(); n];
        items[n - 1].payload = Bytes::from(vec![0u8; (body_len - fixed) % 20]);
        let frame = Frame::Messages(Box::new(crate::Messages {
            first_seq: 0,
            head: head.clone(),
            items,
        }));
        let mut buf = BytesMut::new();
        encode(&frame, &Limits::default(), &mut buf).unwrap();
        assert_eq!(buf.len(), LENGTH_PREFIX + body_len);
        assert_eq!(decode(&mut buf, &Limits::default()).unwrap(), Some(frame));
    }
    // Acks are small however many messages they acknowledge.
    let ack = Frame::Ack(Ack {
        ranges: vec![crate::SeqRange {
            start: 0,
            len: 1 << 40,
        }],
    });
    let mut buf = BytesMut::new();
    encode(&ack, &Limits::default(), &mut buf).unwrap();
    assert!(buf.len() <= 16, "{} bytes", buf.len());
}

#[test]
fn hostile_length_claims_fail_fast_without_allocating_them() {
    // Frame::Messages is variant 1; then first_seq 0, then the head: kind 0 (Command),
    // then the name's length.
    let run_prefix = [1u8, 0, 0];
    // The rest of an empty head: name "", version 0, content type "", no key, no return
    // address, to the handler, not reliable, not ordered.
    let empty_head = [0u8, 0, 0, 0, 0, 0, 0, 0];
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for claim in [1u64 << 60, u64::MAX, 60 * MIB as u64, 1 << 32] {
        let mut name = run_prefix.to_vec();
        name.extend(varint_u64(claim));
        cases.push(("name", name));

        // Ack (variant 2) with a huge range count.
        let mut ack = vec![2u8];
        ack.extend(varint_u64(claim));
        cases.push(("ack ranges", ack));

        // A run claiming a huge number of items.
        let mut count = run_prefix.to_vec();
        count.extend(empty_head);
        count.extend(varint_u64(claim));
        cases.push(("items", count));

        // One item: id 0 (16 bytes), attempt 0, time offset 0, flags saying headers
        // follow, then a huge header count.
        let mut headers = run_prefix.to_vec();
        headers.extend(empty_head);
        headers.push(1);
        headers.extend([0; 16]);
        headers.extend([0, 0, 4]);
        headers.extend(varint_u64(claim));
        cases.push(("headers", headers));

        // One item up to the payload, whose length is huge: id 0 (16 bytes), attempt 1,
        // time offset 0, no flags (no correlation id, key, headers or differing fields),
        // then the payload length.
        let mut payload = run_prefix.to_vec();
        payload.extend(empty_head);
        payload.push(1);
        payload.extend([0; 16]);
        payload.extend([1, 0, 0]);
        let mut valid = payload.clone();
        payload.extend(varint_u64(claim));
        payload.extend([0xAB; 32]);
        cases.push(("payload", payload));

        // The same bytes with an honest payload length decode: the layout above is right.
        valid.extend([2, 0xAB, 0xCD]);
        let frame = decode(&mut frame_bytes(&valid), &Limits::default())
            .unwrap()
            .unwrap();
        let Frame::Messages(run) = frame else {
            panic!("not a run: {frame:?}")
        };
        assert_eq!(run.items[0].payload, Bytes::from_static(&[0xAB, 0xCD]));
        assert_eq!(run.items[0].attempt, 1);
        assert_eq!(run.head.kind, MessageKind::Command);
    }

    let started = Instant::now();
    for (what, body) in &cases {
        let mut buf = frame_bytes(body);
        buf.extend_from_slice(b"next");
        let err = decode(&mut buf, &Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{what}: {err:?}");
        assert_eq!(&buf[..], b"next", "{what}: the frame is consumed");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn estimate_covers_a_typical_delivery() {
    let envelope = Envelope {
        id: MessageId::from_u128(u128::MAX),
        kind: MessageKind::Reply,
        name: "create-invoice".into(),
        version: u16::MAX,
        content_type: "application/json".into(),
        headers: vec![("trace".into(), "abc".into()); 3],
        correlation_id: Some(MessageId::from_u128(u128::MAX)),
        reply_to: Some(crate::ReturnAddress {
            service: "billing".into(),
            node: Some(crate::NodeId::from_u128(u128::MAX)),
            channel: "invoice-created".into(),
        }),
        partition_key: Some("customer-1".into()),
        attempt: u32::MAX,
        timestamp_ms: u64::MAX,
        payload: Bytes::from(vec![0; 64]),
    };
    let run = Frame::Messages(Box::new(crate::Messages {
        first_seq: u64::MAX,
        head: crate::Head::of(&envelope, crate::To::Group("billing".into()), true, true),
        items: vec![crate::Item::of(&envelope); 3],
    }));
    let reply = Frame::Reply(Box::new(envelope));
    for frame in [run, reply] {
        let mut buf = BytesMut::new();
        encode(&frame, &Limits::default(), &mut buf).unwrap();
        assert!(buf.len() - LENGTH_PREFIX <= body_len_estimate(&frame));
    }
}
