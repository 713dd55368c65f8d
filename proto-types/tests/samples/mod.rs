//! Fixed sample frames and envelopes, and the encode helper, shared by the codec tests.

#![allow(dead_code, reason = "each test file uses only some of these")]

use bytes::{Bytes, BytesMut};
use shoal_proto::codec;
use shoal_proto::{
    Ack, Envelope, Frame, Goodbye, Head, Hello, Item, Limits, MessageId, MessageKind, Messages,
    Nack, NackCode, NodeId, ReturnAddress, SeqRange, Subscription, To,
};

/// `frame` encoded with the default limits, length prefix included.
pub(crate) fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    codec::encode(frame, &Limits::default(), &mut buf).unwrap();
    buf
}

/// A typical small command: 64-byte payload, name `create-invoice`, no headers.
pub(crate) fn sample_envelope() -> Envelope {
    Envelope {
        id: MessageId::from_parts(1_732_000_000_000, 0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        kind: MessageKind::Command,
        name: "create-invoice".into(),
        version: 1,
        content_type: Default::default(),
        headers: Vec::new(),
        correlation_id: None,
        reply_to: None,
        partition_key: None,
        attempt: 1,
        timestamp_ms: 1_732_000_000_000,
        payload: Bytes::from(vec![0x5A; 64]),
    }
}

/// [`sample_envelope`] with every optional field set.
pub(crate) fn rich_envelope() -> Envelope {
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

/// `envelope` alone in a run to its handler, numbered `seq`.
pub(crate) fn run_of(envelope: &Envelope, seq: u64) -> Frame {
    Frame::Messages(Box::new(Messages {
        first_seq: seq,
        head: Head::of(envelope, To::Handler, true, false),
        items: vec![Item::of(envelope)],
    }))
}

/// Frames of every variant, for the deterministic tests.
pub(crate) fn sample_frames() -> Vec<Frame> {
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
        run_of(&sample_envelope(), 0),
        Frame::Messages(Box::new(Messages {
            first_seq: 1 << 40,
            head: Head::of(&rich_envelope(), To::Group("audit".into()), true, true),
            items: vec![Item::of(&rich_envelope()), Item::of(&sample_envelope())],
        })),
        Frame::Reply(Box::new(rich_envelope())),
        Frame::Ack(Ack {
            ranges: vec![
                SeqRange { start: 0, len: 17 },
                SeqRange {
                    start: 1 << 40,
                    len: 1,
                },
            ],
        }),
        Frame::Nack(Nack {
            seq: 9,
            retryable: true,
            code: NackCode::HandlerFailed,
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
