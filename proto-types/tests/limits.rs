//! Limits: each limit of `Limits` is refused by name on encode and on decode (where the frame
//! is consumed and the stream stays in sync), limits are inclusive, and `max_frame_len` holds
//! both ways.

#![allow(clippy::unwrap_used)]

mod samples;

use bytes::{Bytes, BytesMut};
use shoal_proto::codec::{self, LENGTH_PREFIX, MAX_FRAME_LEN_CAP};
use shoal_proto::{
    DecodeError, EncodeError, Envelope, Frame, Goodbye, Head, Hello, Item, LimitViolation, Limits,
    MessageId, MessageKind, Messages, Nack, NackCode, NodeId, Subscription, To, validate_frame,
};

use samples::{encoded, rich_envelope};

/// Limits no test frame comes near.
fn generous() -> Limits {
    Limits {
        max_frame_len: MAX_FRAME_LEN_CAP,
        max_headers: usize::MAX,
        max_name_len: usize::MAX,
        max_header_value_len: usize::MAX,
        max_reason_len: usize::MAX,
        max_listen_addrs: usize::MAX,
    }
}

/// A frame that breaks exactly one limit of `Limits::default()`, which one, and by how much.
struct Case {
    what: &'static str,
    frame: Frame,
    limit: &'static str,
    actual: usize,
    max: usize,
}

/// A run of one message (the rich envelope, changed by `f`) for a group.
fn deliver(f: impl FnOnce(&mut Envelope)) -> Frame {
    let mut envelope = rich_envelope();
    f(&mut envelope);
    Frame::Messages(Box::new(Messages {
        first_seq: 7,
        head: Head::of(&envelope, To::Group("audit".into()), true, false),
        items: vec![Item::of(&envelope)],
    }))
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
            deliver(|e| e.name = long(name + 1).into()),
            "max_name_len",
            name + 1,
            name,
        ),
        case(
            "content type",
            deliver(|e| e.content_type = long(name + 2).into()),
            "max_name_len",
            name + 2,
            name,
        ),
        case(
            "partition key",
            deliver(|e| e.partition_key = Some(long(name + 3).into())),
            "max_name_len",
            name + 3,
            name,
        ),
        case(
            "return service",
            deliver(|e| e.reply_to.as_mut().unwrap().service = long(name + 4).into()),
            "max_name_len",
            name + 4,
            name,
        ),
        case(
            "return channel",
            deliver(|e| e.reply_to.as_mut().unwrap().channel = long(name + 5).into()),
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
            "group of a run",
            Frame::Messages(Box::new(Messages {
                first_seq: 0,
                head: Head::of(
                    &rich_envelope(),
                    To::Group(long(name + 10).into()),
                    true,
                    false,
                ),
                items: vec![Item::of(&rich_envelope())],
            })),
            "max_name_len",
            name + 10,
            name,
        ),
        case(
            "reply header count",
            Frame::Reply(Box::new(Envelope {
                headers: vec![("k".into(), "v".into()); d.max_headers + 1],
                ..rich_envelope()
            })),
            "max_headers",
            d.max_headers + 1,
            d.max_headers,
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
            "hello addresses",
            Frame::Hello(Hello {
                protocol_version: 1,
                node_id: NodeId::from_u128(1),
                service: "billing".into(),
                listen_addrs: vec!["127.0.0.1:7000".parse().unwrap(); d.max_listen_addrs + 1],
            }),
            "max_listen_addrs",
            d.max_listen_addrs + 1,
            d.max_listen_addrs,
        ),
        case(
            "nack reason",
            Frame::Nack(Nack {
                seq: 3,
                retryable: false,
                code: NackCode::HandlerFailed,
                reason: long(d.max_reason_len + 1),
            }),
            "max_reason_len",
            d.max_reason_len + 1,
            d.max_reason_len,
        ),
        case(
            "goodbye reason",
            Frame::Goodbye(Goodbye {
                reason: long(d.max_reason_len + 2),
            }),
            "max_reason_len",
            d.max_reason_len + 2,
            d.max_reason_len,
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
                group: Some(long(name + 9).into()),
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
                seqs,
            }) => {
                assert_eq!(
                    (limit, actual, max),
                    (c.limit, c.actual, c.max),
                    "{}",
                    c.what
                );
                let expected = match &c.frame {
                    Frame::Messages(run) => Some(run.seqs()),
                    _ => None,
                };
                assert_eq!(seqs, expected, "{}", c.what);
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
        e.name = "n".repeat(d.max_name_len).into();
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

/// Each item of a run is checked, whichever single optional field breaks a limit: headers
/// alone, a header value, a key alone, or a field that differs from the head, in an item
/// among items of nothing but an id, numbers and a payload (which are not checked).
#[test]
fn an_item_with_one_field_over_a_limit_is_refused_among_plain_ones() {
    let d = Limits::default();
    let long = |n: usize| "x".repeat(n);
    let plain = |n: u128| {
        Envelope::new(
            MessageId::from_u128(n),
            MessageKind::Event,
            "orders",
            0,
            Bytes::from_static(b"x"),
        )
    };
    /// How a case breaks its limit.
    type Breaks<'a> = Box<dyn Fn(&mut Envelope) + 'a>;
    let cases: Vec<(&str, Breaks<'_>)> = vec![
        (
            "max_headers",
            Box::new(|e| e.headers = vec![("k".into(), "v".into()); d.max_headers + 1]),
        ),
        (
            "max_header_value_len",
            Box::new(|e| e.headers = vec![("k".into(), long(d.max_header_value_len + 1))]),
        ),
        (
            "max_name_len",
            Box::new(|e| e.partition_key = Some(long(d.max_name_len + 1).into())),
        ),
        (
            "max_name_len",
            Box::new(|e| e.content_type = long(d.max_name_len + 1).into()),
        ),
    ];
    for (i, (limit, breaks)) in cases.iter().enumerate() {
        let mut bad = plain(2);
        breaks(&mut bad);
        let head = Head::of(&plain(1), To::Handler, true, false);
        let items = [plain(1), bad, plain(3)]
            .iter()
            .map(|e| Item::under(e, &head))
            .collect();
        let frame = Frame::Messages(Box::new(Messages {
            first_seq: 1,
            head,
            items,
        }));
        let mut buf = BytesMut::new();
        codec::encode(&frame, &generous(), &mut buf).unwrap();
        match codec::decode(&mut buf, &d) {
            Err(DecodeError::LimitExceeded { limit: got, .. }) => assert_eq!(got, *limit, "{i}"),
            other => panic!("case {i} ({limit}): {other:?}"),
        }
    }
}
