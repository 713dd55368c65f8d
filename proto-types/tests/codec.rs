//! Codec properties: round trips, framing, truncation, hostile input and limits.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use shoal_proto::codec::{self, LENGTH_PREFIX, MAX_FRAME_LEN_CAP};
use shoal_proto::{
    Ack, DecodeError, EncodeError, Envelope, Frame, Goodbye, Hello, LimitViolation, Limits,
    MessageId, MessageKind, Nack, NodeId, ReturnAddress, Subscription, validate_frame,
};

// ---------------------------------------------------------------------------------------------
// Strategies

fn arb_u128() -> impl Strategy<Value = u128> {
    // Small values exercise bincode's one-byte varints, large ones the 17-byte form.
    prop_oneof![any::<u128>(), 0..300u128, Just(u128::MAX)]
}

fn arb_message_id() -> impl Strategy<Value = MessageId> {
    prop_oneof![
        arb_u128().prop_map(MessageId::from_u128),
        (any::<u64>(), any::<u128>()).prop_map(|(ms, r)| MessageId::from_parts(ms, r)),
    ]
}

fn arb_node_id() -> impl Strategy<Value = NodeId> {
    arb_u128().prop_map(NodeId::from_u128)
}

fn arb_kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![
        Just(MessageKind::Command),
        Just(MessageKind::Event),
        Just(MessageKind::Document),
        Just(MessageKind::Reply),
    ]
}

/// Short strings of any characters (up to 4 bytes each), so well within default limits.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9.*-]{0,12}", "\\PC{0,12}"]
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from),
    ]
}

fn arb_return_address() -> impl Strategy<Value = ReturnAddress> {
    (arb_text(), proptest::option::of(arb_node_id()), arb_text()).prop_map(
        |(service, node, channel)| ReturnAddress {
            service,
            node,
            channel,
        },
    )
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        (
            arb_message_id(),
            arb_kind(),
            arb_text(),
            any::<u16>(),
            arb_text(),
        ),
        proptest::collection::vec((arb_text(), arb_text()), 0..5),
        proptest::option::of(arb_message_id()),
        proptest::option::of(arb_return_address()),
        proptest::option::of(arb_text()),
        (any::<u32>(), any::<u64>(), arb_bytes()),
    )
        .prop_map(
            |(
                (id, kind, name, version, content_type),
                headers,
                correlation_id,
                reply_to,
                partition_key,
                (attempt, timestamp_ms, payload),
            )| Envelope {
                id,
                kind,
                name,
                version,
                content_type,
                headers,
                correlation_id,
                reply_to,
                partition_key,
                attempt,
                timestamp_ms,
                payload,
            },
        )
}

/// Socket addresses as the wire carries them: IPv6 flow info and scope id are not encoded
/// (see `ipv6_flowinfo_and_scope_id_are_not_carried`).
fn arb_socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

fn arb_subscription() -> impl Strategy<Value = Subscription> {
    (arb_text(), proptest::option::of(arb_text()))
        .prop_map(|(pattern, group)| Subscription { pattern, group })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u16>(),
            arb_node_id(),
            arb_text(),
            proptest::collection::vec(arb_socket_addr(), 0..4),
        )
            .prop_map(|(protocol_version, node_id, service, listen_addrs)| {
                Frame::Hello(Hello {
                    protocol_version,
                    node_id,
                    service,
                    listen_addrs,
                })
            }),
        arb_envelope().prop_map(|e| Frame::Deliver(Box::new(e))),
        proptest::collection::vec(arb_message_id(), 0..8).prop_map(|ids| Frame::Ack(Ack { ids })),
        (arb_message_id(), any::<bool>(), arb_text()).prop_map(|(id, retryable, reason)| {
            Frame::Nack(Nack {
                id,
                retryable,
                reason,
            })
        }),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        arb_text().prop_map(|reason| Frame::Goodbye(Goodbye { reason })),
        arb_subscription().prop_map(Frame::Subscribe),
        arb_subscription().prop_map(Frame::Unsubscribe),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    codec::encode(frame, &Limits::default(), &mut buf).unwrap();
    buf
}

/// Limits no test frame comes near.
fn generous() -> Limits {
    Limits {
        max_frame_len: MAX_FRAME_LEN_CAP,
        max_headers: usize::MAX,
        max_name_len: usize::MAX,
        max_header_value_len: usize::MAX,
    }
}

/// What [`drain`] saw.
#[derive(Debug, Default)]
struct Outcomes {
    frames: usize,
    malformed: usize,
    over_limit: usize,
    too_large: usize,
}

/// Decodes until the buffer runs dry or the stream is declared unusable, checking the
/// consumption rules on every step. Never panics unless a rule is broken.
fn drain(buf: &mut BytesMut, limits: &Limits) -> Outcomes {
    let mut seen = Outcomes::default();
    loop {
        let before = buf.clone();
        match codec::decode(buf, limits) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before.len(), "a decoded frame is consumed");
                seen.frames += 1;
                // Whatever decode accepts, encode accepts and reproduces.
                let mut again = BytesMut::new();
                codec::encode(&frame, limits, &mut again).unwrap();
                assert_eq!(codec::decode(&mut again, limits).unwrap(), Some(frame));
            }
            Err(e @ (DecodeError::Malformed(_) | DecodeError::LimitExceeded { .. })) => {
                assert!(buf.len() < before.len(), "a bad frame is consumed");
                match e {
                    DecodeError::Malformed(_) => seen.malformed += 1,
                    _ => seen.over_limit += 1,
                }
            }
            Ok(None) | Err(DecodeError::FrameTooLarge { .. }) => {
                assert_eq!(*buf, before, "nothing is consumed");
                if buf.len() >= LENGTH_PREFIX && codec::decode(buf, limits).is_err() {
                    seen.too_large += 1;
                }
                return seen;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
}

/// Deterministic xorshift64* so the brute-force tests are reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn sample_envelope() -> Envelope {
    Envelope {
        id: MessageId::from_parts(1_732_000_000_000, 0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        kind: MessageKind::Command,
        name: "create-invoice".into(),
        version: 1,
        content_type: String::new(),
        headers: Vec::new(),
        correlation_id: None,
        reply_to: None,
        partition_key: None,
        attempt: 1,
        timestamp_ms: 1_732_000_000_000,
        payload: Bytes::from(vec![0x5A; 64]),
    }
}

fn rich_envelope() -> Envelope {
    Envelope {
        content_type: "application/json".into(),
        headers: vec![("trace-id".into(), "4bf92f3577b34da6".into())],
        correlation_id: Some(MessageId::from_u128(42)),
        reply_to: Some(ReturnAddress {
            service: "billing".into(),
            node: Some(NodeId::from_u128(7)),
            channel: "invoice-created".into(),
        }),
        partition_key: Some("customer-17".into()),
        ..sample_envelope()
    }
}

/// Frames of every variant, for the deterministic tests.
fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            protocol_version: shoal_proto::PROTOCOL_VERSION,
            node_id: NodeId::from_u128(0xdead_beef),
            service: "billing".into(),
            listen_addrs: vec![
                "10.0.0.7:4100".parse().unwrap(),
                "[2001:db8::1]:4100".parse().unwrap(),
            ],
        }),
        Frame::Deliver(Box::new(sample_envelope())),
        Frame::Deliver(Box::new(rich_envelope())),
        Frame::Ack(Ack {
            ids: vec![MessageId::from_u128(1), sample_envelope().id],
        }),
        Frame::Nack(Nack {
            id: sample_envelope().id,
            retryable: true,
            reason: "handler panicked".into(),
        }),
        Frame::Ping(u64::MAX),
        Frame::Pong(0),
        Frame::Goodbye(Goodbye {
            reason: "shutdown".into(),
        }),
        Frame::Subscribe(Subscription {
            pattern: "orders.*".into(),
            group: Some("audit".into()),
        }),
        Frame::Unsubscribe(Subscription {
            pattern: "orders.*".into(),
            group: None,
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn every_frame_round_trips(frame in arb_frame()) {
        let mut buf = encoded(&frame);
        let len = u32::from_be_bytes(buf[..LENGTH_PREFIX].try_into().unwrap()) as usize;
        prop_assert_eq!(len + LENGTH_PREFIX, buf.len());
        prop_assert!(validate_frame(&frame, &Limits::default()).is_ok());
        prop_assert_eq!(codec::decode(&mut buf, &Limits::default()).unwrap(), Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn concatenated_frames_decode_in_order(
        frames in proptest::collection::vec(arb_frame(), 1..6),
        leftover in proptest::collection::vec(any::<u8>(), 0..LENGTH_PREFIX),
    ) {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        for frame in &frames {
            codec::encode(frame, &limits, &mut buf).unwrap();
        }
        buf.extend_from_slice(&leftover); // a partial next prefix
        for frame in frames {
            prop_assert_eq!(codec::decode(&mut buf, &limits).unwrap(), Some(frame));
        }
        prop_assert_eq!(codec::decode(&mut buf, &limits).unwrap(), None);
        prop_assert_eq!(&buf[..], &leftover[..]);
    }

    #[test]
    fn truncated_frames_wait_for_more(frame in arb_frame()) {
        let full = encoded(&frame);
        for cut in 0..full.len() {
            let mut partial = BytesMut::from(&full[..cut]);
            prop_assert_eq!(codec::decode(&mut partial, &Limits::default()).unwrap(), None);
            prop_assert_eq!(&partial[..], &full[..cut]);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        drain(&mut BytesMut::from(&bytes[..]), &Limits::default());
    }

    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        drain(&mut buf, &Limits::default());
    }

    #[test]
    fn bit_flipped_frames_never_panic(
        frame in arb_frame(),
        flips in proptest::collection::vec((any::<usize>(), 0..8u8), 1..4),
    ) {
        let mut buf = encoded(&frame);
        codec::encode(&Frame::Ping(1), &Limits::default(), &mut buf).unwrap();
        for (index, bit) in flips {
            let index = index % buf.len();
            buf[index] ^= 1 << bit;
        }
        drain(&mut buf, &Limits::default());
    }

    #[test]
    fn strict_limits_never_panic(frame in arb_frame(), max in 0..16usize) {
        let strict = Limits {
            max_frame_len: max * 8,
            max_headers: max / 4,
            max_name_len: max,
            max_header_value_len: max,
        };
        let mut buf = BytesMut::from(&b"kept"[..]);
        match codec::encode(&frame, &strict, &mut buf) {
            Ok(()) => {}
            Err(EncodeError::LimitExceeded { .. }) => prop_assert_eq!(&buf[..], b"kept"),
            Err(e) => panic!("unexpected {e:?}"),
        }
        drain(&mut encoded(&frame), &strict);
    }
}

/// 100k pseudo-random buffers of three shapes: noise, noise behind an honest length prefix,
/// and valid frames with bytes overwritten.
#[test]
fn brute_force_random_buffers_never_panic() {
    let started = Instant::now();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let valid: Vec<BytesMut> = sample_frames().iter().map(encoded).collect();
    // Tight enough that some sample frames (and some mutants) break a limit.
    let limits = Limits {
        max_name_len: 14,
        max_headers: 1,
        max_header_value_len: 16,
        ..Limits::default()
    };
    let mut total = Outcomes::default();
    for _ in 0..100_000 {
        let mut buf = BytesMut::new();
        match rng.below(3) {
            0 => {
                for _ in 0..rng.below(64) {
                    buf.put_u8(rng.next() as u8);
                }
            }
            1 => {
                let len = rng.below(96);
                buf.put_u32(len as u32);
                // Mostly small bytes, so varint markers and tags are often in range.
                for _ in 0..len {
                    let byte = rng.next() as u8;
                    buf.put_u8(if rng.below(2) == 0 { byte % 4 } else { byte });
                }
            }
            _ => {
                buf = valid[rng.below(valid.len())].clone();
                for _ in 0..=rng.below(3) {
                    let at = LENGTH_PREFIX + rng.below(buf.len() - LENGTH_PREFIX);
                    buf[at] = rng.next() as u8;
                }
            }
        }
        let seen = drain(&mut buf, &limits);
        total.frames += seen.frames;
        total.malformed += seen.malformed;
        total.over_limit += seen.over_limit;
        total.too_large += seen.too_large;
    }
    println!("{total:?} in {:?}", started.elapsed());
    // Every kind of outcome is reached, so the inputs exercise the decoder.
    assert!(total.frames > 1_000, "{total:?}");
    assert!(total.malformed > 10_000, "{total:?}");
    assert!(total.over_limit > 0, "{total:?}");
    assert!(total.too_large > 1_000, "{total:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

// ---------------------------------------------------------------------------------------------
// Framing rules

#[test]
fn sample_frames_round_trip_back_to_back() {
    let mut buf = BytesMut::new();
    assert_eq!(codec::decode(&mut buf, &Limits::default()).unwrap(), None);
    for frame in sample_frames() {
        codec::encode(&frame, &Limits::default(), &mut buf).unwrap();
    }
    for frame in sample_frames() {
        assert_eq!(
            codec::decode(&mut buf, &Limits::default()).unwrap(),
            Some(frame)
        );
    }
    assert!(buf.is_empty());
}

#[test]
fn encode_appends_after_existing_bytes() {
    let mut buf = BytesMut::from(&b"head"[..]);
    codec::encode(&Frame::Ping(9), &Limits::default(), &mut buf).unwrap();
    assert_eq!(&buf[..4], b"head");
    let mut rest = buf.split_off(4);
    assert_eq!(
        codec::decode(&mut rest, &Limits::default()).unwrap(),
        Some(Frame::Ping(9))
    );
}

#[test]
fn oversized_prefix_is_frame_too_large_and_not_consumed() {
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(limits.max_frame_len).unwrap() + 1);
    buf.extend_from_slice(b"whatever");
    let before = buf.clone();
    let err = codec::decode(&mut buf, &limits).unwrap_err();
    assert!(
        matches!(err, DecodeError::FrameTooLarge { len, max }
            if len == limits.max_frame_len + 1 && max == limits.max_frame_len),
        "{err:?}"
    );
    assert_eq!(buf, before);

    // Exactly max_frame_len is allowed: the decoder just waits for the body.
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(limits.max_frame_len).unwrap());
    assert_eq!(codec::decode(&mut buf, &limits).unwrap(), None);
    assert_eq!(buf.len(), LENGTH_PREFIX);
}

#[test]
fn max_frame_len_is_capped() {
    let limits = Limits {
        max_frame_len: usize::MAX,
        ..Limits::default()
    };
    let mut buf = BytesMut::new();
    buf.put_u32(u32::MAX);
    let err = codec::decode(&mut buf, &limits).unwrap_err();
    assert!(
        matches!(err, DecodeError::FrameTooLarge { len, max }
            if len == u32::MAX as usize && max == MAX_FRAME_LEN_CAP),
        "{err:?}"
    );
}

#[test]
fn zero_length_frame_is_malformed_and_consumed() {
    let mut buf = BytesMut::new();
    buf.put_u32(0);
    codec::encode(&Frame::Pong(3), &Limits::default(), &mut buf).unwrap();
    let err = codec::decode(&mut buf, &Limits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
    assert_eq!(
        codec::decode(&mut buf, &Limits::default()).unwrap(),
        Some(Frame::Pong(3))
    );
}

#[test]
fn trailing_bytes_are_malformed_and_consumed() {
    let body = &encoded(&Frame::Ping(5))[LENGTH_PREFIX..];
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32 + 2);
    buf.extend_from_slice(body);
    buf.extend_from_slice(&[0, 0]);
    codec::encode(&Frame::Ping(6), &Limits::default(), &mut buf).unwrap();
    let err = codec::decode(&mut buf, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Malformed(m) if m.contains("trailing")),
        "{err:?}"
    );
    assert_eq!(
        codec::decode(&mut buf, &Limits::default()).unwrap(),
        Some(Frame::Ping(6))
    );
}

#[test]
fn unknown_frame_variant_is_malformed() {
    let mut buf = BytesMut::new();
    buf.put_u32(1);
    buf.put_u8(200);
    let err = codec::decode(&mut buf, &Limits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
    assert!(buf.is_empty());
}

#[test]
fn hostile_length_claim_in_a_valid_prefix_fails_fast() {
    // A Goodbye (variant 6) whose reason claims 2^60 bytes (varint marker 253 + u64 LE).
    let started = Instant::now();
    let mut buf = BytesMut::new();
    let mut body = vec![6u8, 253];
    body.extend_from_slice(&(1u64 << 60).to_le_bytes());
    buf.put_u32(body.len() as u32);
    buf.extend_from_slice(&body);
    let err = codec::decode(&mut buf, &Limits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
    assert!(buf.is_empty());

    // The same claim in a frame as large as max_frame_len allows.
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    buf.put_u32(limits.max_frame_len as u32);
    buf.extend_from_slice(&body);
    buf.resize(LENGTH_PREFIX + limits.max_frame_len, 0);
    let err = codec::decode(&mut buf, &limits).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Pins a property of the wire format the contract types inherit from serde: a
/// `SocketAddrV6` travels as address and port only.
#[test]
fn ipv6_flowinfo_and_scope_id_are_not_carried() {
    let link_local = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 4100, 5, 3));
    let frame = Frame::Hello(Hello {
        protocol_version: 1,
        node_id: NodeId::from_u128(1),
        service: "billing".into(),
        listen_addrs: vec![link_local],
    });
    let Some(Frame::Hello(hello)) =
        codec::decode(&mut encoded(&frame), &Limits::default()).unwrap()
    else {
        panic!("not a hello");
    };
    let SocketAddr::V6(addr) = hello.listen_addrs[0] else {
        panic!("not v6")
    };
    assert_eq!(
        (addr.ip(), addr.port()),
        (&"fe80::1".parse::<Ipv6Addr>().unwrap(), 4100)
    );
    assert_eq!((addr.flowinfo(), addr.scope_id()), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// Limits

/// A frame that breaks exactly one limit of `Limits::default()`, which one, and by how much.
struct Case {
    what: &'static str,
    frame: Frame,
    limit: &'static str,
    actual: usize,
    max: usize,
}

fn deliver(f: impl FnOnce(&mut Envelope)) -> Frame {
    let mut envelope = rich_envelope();
    f(&mut envelope);
    Frame::Deliver(Box::new(envelope))
}

fn limit_cases() -> Vec<Case> {
    let d = Limits::default();
    let long = |n: usize| "x".repeat(n);
    let name = d.max_name_len;
    let case = |what, frame, limit, actual, max| Case {
        what,
        frame,
        limit,
        actual,
        max,
    };
    vec![
        case(
            "header count",
            deliver(|e| e.headers = vec![("k".into(), "v".into()); d.max_headers + 1]),
            "max_headers",
            d.max_headers + 1,
            d.max_headers,
        ),
        case(
            "name",
            deliver(|e| e.name = long(name + 1)),
            "max_name_len",
            name + 1,
            name,
        ),
        case(
            "content type",
            deliver(|e| e.content_type = long(name + 2)),
            "max_name_len",
            name + 2,
            name,
        ),
        case(
            "partition key",
            deliver(|e| e.partition_key = Some(long(name + 3))),
            "max_name_len",
            name + 3,
            name,
        ),
        case(
            "return service",
            deliver(|e| e.reply_to.as_mut().unwrap().service = long(name + 4)),
            "max_name_len",
            name + 4,
            name,
        ),
        case(
            "return channel",
            deliver(|e| e.reply_to.as_mut().unwrap().channel = long(name + 5)),
            "max_name_len",
            name + 5,
            name,
        ),
        case(
            "header key",
            deliver(|e| e.headers.push((long(name + 6), "v".into()))),
            "max_name_len",
            name + 6,
            name,
        ),
        case(
            "header value",
            deliver(|e| {
                e.headers
                    .push(("k".into(), long(d.max_header_value_len + 1)))
            }),
            "max_header_value_len",
            d.max_header_value_len + 1,
            d.max_header_value_len,
        ),
        case(
            "hello service",
            Frame::Hello(Hello {
                protocol_version: 1,
                node_id: NodeId::from_u128(1),
                service: long(name + 7),
                listen_addrs: Vec::new(),
            }),
            "max_name_len",
            name + 7,
            name,
        ),
        case(
            "subscribe pattern",
            Frame::Subscribe(Subscription {
                pattern: long(name + 8),
                group: None,
            }),
            "max_name_len",
            name + 8,
            name,
        ),
        case(
            "unsubscribe group",
            Frame::Unsubscribe(Subscription {
                pattern: "a.*".into(),
                group: Some(long(name + 9)),
            }),
            "max_name_len",
            name + 9,
            name,
        ),
    ]
}

#[test]
fn each_limit_is_refused_on_encode_by_name() {
    for c in limit_cases() {
        let v = validate_frame(&c.frame, &Limits::default()).unwrap_err();
        assert_eq!(
            v,
            LimitViolation {
                limit: c.limit,
                actual: c.actual,
                max: c.max
            },
            "{}",
            c.what
        );
        let mut buf = BytesMut::from(&b"kept"[..]);
        match codec::encode(&c.frame, &Limits::default(), &mut buf) {
            Err(EncodeError::LimitExceeded { limit, actual, max }) => {
                assert_eq!(
                    (limit, actual, max),
                    (c.limit, c.actual, c.max),
                    "{}",
                    c.what
                );
            }
            other => panic!("{}: {other:?}", c.what),
        }
        assert_eq!(&buf[..], b"kept", "{}: nothing written", c.what);
    }
}

#[test]
fn each_limit_is_refused_on_decode_by_name_and_the_frame_is_consumed() {
    for c in limit_cases() {
        let mut buf = BytesMut::new();
        codec::encode(&c.frame, &generous(), &mut buf).unwrap();
        codec::encode(&Frame::Ping(1), &generous(), &mut buf).unwrap();
        match codec::decode(&mut buf, &Limits::default()) {
            Err(DecodeError::LimitExceeded {
                limit,
                actual,
                max,
                id,
            }) => {
                assert_eq!(
                    (limit, actual, max),
                    (c.limit, c.actual, c.max),
                    "{}",
                    c.what
                );
                let expected_id = match &c.frame {
                    Frame::Deliver(e) => Some(e.id),
                    _ => None,
                };
                assert_eq!(id, expected_id, "{}", c.what);
            }
            other => panic!("{}: {other:?}", c.what),
        }
        assert_eq!(
            codec::decode(&mut buf, &Limits::default()).unwrap(),
            Some(Frame::Ping(1)),
            "{}: stream stays in sync",
            c.what
        );
    }
}

#[test]
fn limits_are_inclusive() {
    let d = Limits::default();
    let frame = deliver(|e| {
        e.name = "n".repeat(d.max_name_len);
        e.headers = vec![(
            "k".repeat(d.max_name_len),
            "v".repeat(d.max_header_value_len),
        )];
        e.headers.resize(d.max_headers, ("k".into(), "v".into()));
    });
    let mut buf = encoded(&frame);
    assert_eq!(codec::decode(&mut buf, &d).unwrap(), Some(frame));
}

#[test]
fn max_frame_len_is_refused_on_encode_and_decode() {
    let frame = deliver(|e| e.payload = Bytes::from(vec![7; 1000]));
    let body_len = encoded(&frame).len() - LENGTH_PREFIX;

    // Exactly at the limit: fine both ways.
    let exact = Limits {
        max_frame_len: body_len,
        ..Limits::default()
    };
    let mut buf = BytesMut::new();
    codec::encode(&frame, &exact, &mut buf).unwrap();
    assert_eq!(
        codec::decode(&mut buf, &exact).unwrap(),
        Some(frame.clone())
    );

    // One byte over: refused with the body's real size, and nothing is left in the buffer.
    let strict = Limits {
        max_frame_len: body_len - 1,
        ..Limits::default()
    };
    let mut buf = BytesMut::from(&b"kept"[..]);
    match codec::encode(&frame, &strict, &mut buf) {
        Err(EncodeError::LimitExceeded { limit, actual, max }) => {
            assert_eq!(
                (limit, actual, max),
                ("max_frame_len", body_len, body_len - 1)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(&buf[..], b"kept");

    let mut buf = encoded(&frame);
    let before = buf.clone();
    match codec::decode(&mut buf, &strict) {
        Err(DecodeError::FrameTooLarge { len, max }) => {
            assert_eq!((len, max), (body_len, body_len - 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(buf, before);
}

#[test]
fn limit_violation_displays_like_the_codec_errors() {
    let v = LimitViolation {
        limit: "max_headers",
        actual: 65,
        max: 64,
    };
    assert_eq!(v.to_string(), "max_headers exceeded: 65 > 64");
    assert_eq!(EncodeError::from(v).to_string(), v.to_string());
}

// ---------------------------------------------------------------------------------------------
// Size and speed

/// A typical small command: 64-byte payload, name `create-invoice`, no headers.
#[test]
fn typical_delivery_size() {
    let frame = Frame::Deliver(Box::new(sample_envelope()));
    let len = encoded(&frame).len();
    println!("Deliver(64-byte payload, no headers): {len} bytes on the wire");
    assert_eq!(len, 119, "the wire size of a typical delivery changed");
}

/// `cargo test -p shoal-proto --release -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release mode"]
fn time_one_million_round_trips() {
    let frame = Frame::Deliver(Box::new(sample_envelope()));
    let limits = Limits::default();
    let mut buf = BytesMut::with_capacity(4096);
    let n = 1_000_000u32;
    let started = Instant::now();
    for i in 0..n {
        codec::encode(std::hint::black_box(&frame), &limits, &mut buf).unwrap();
        let decoded = codec::decode(&mut buf, &limits).unwrap();
        assert!(decoded.is_some(), "round trip {i}");
        std::hint::black_box(decoded);
    }
    let elapsed = started.elapsed();
    println!(
        "{n} encode+decode round trips: {elapsed:?} ({:?} each)",
        elapsed / n
    );

    let started = Instant::now();
    for _ in 0..n {
        codec::encode(std::hint::black_box(&frame), &limits, &mut buf).unwrap();
        buf.clear();
    }
    let encode_only = started.elapsed();
    println!("{n} encodes: {encode_only:?} ({:?} each)", encode_only / n);
}
