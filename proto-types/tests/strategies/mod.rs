//! Proptest strategies for the codec tests: every frame variant, with ids, strings, byte
//! strings and socket addresses chosen to reach the varint and length edge cases.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::Bytes;
use proptest::prelude::*;
use shoal_proto::multicast::{ChannelDemote, ChannelHello, ChannelKey, ChannelNak, ChannelStatus};
use shoal_proto::{
    Ack, Envelope, Frame, Goodbye, Head, Hello, Item, MessageId, MessageKind, Messages, Nack,
    NackCode, NodeId, ReturnAddress, SeqRange, Subscription, To,
};

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

pub(crate) fn arb_node_id() -> impl Strategy<Value = NodeId> {
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
        // Either side of where a length's varint takes two bytes more.
        proptest::sample::select(vec![250, 251]).prop_map(|len| Bytes::from(vec![7; len])),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from),
    ]
}

fn arb_return_address() -> impl Strategy<Value = ReturnAddress> {
    (arb_text(), proptest::option::of(arb_node_id()), arb_text()).prop_map(
        |(service, node, channel)| ReturnAddress {
            service: service.into(),
            node,
            channel: channel.into(),
        },
    )
}

pub(crate) fn arb_envelope() -> impl Strategy<Value = Envelope> {
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
        (arb_attempt(), arb_stamp(), arb_bytes()),
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
                name: name.into(),
                version,
                content_type: content_type.into(),
                headers,
                correlation_id,
                reply_to,
                partition_key: partition_key.map(Into::into),
                attempt,
                timestamp_ms: timestamp_ms.of(id),
                payload,
            },
        )
}

/// An attempt: any, or one at a varint's boundary (a one-byte varint holds up to 250).
fn arb_attempt() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        proptest::sample::select(vec![0, 1, 250, 251, 65_535, 65_536, u32::MAX]),
    ]
}

/// A message's timestamp: any, or its id's time or near it, as a node stamps its messages
/// (an item carries its timestamp as the offset from its id's time).
#[derive(Clone, Copy, Debug)]
enum Stamp {
    Any(u64),
    FromId(i16),
}

impl Stamp {
    fn of(self, id: MessageId) -> u64 {
        match self {
            Self::Any(timestamp_ms) => timestamp_ms,
            Self::FromId(offset) => id.unix_ms().wrapping_add_signed(offset.into()),
        }
    }
}

fn arb_stamp() -> impl Strategy<Value = Stamp> {
    prop_oneof![
        any::<u64>().prop_map(Stamp::Any),
        Just(Stamp::FromId(0)),
        any::<i16>().prop_map(Stamp::FromId),
        // Where the offset's zigzag varint (2|n|, or 2|n| - 1 below zero) takes two bytes more.
        proptest::sample::select(vec![-126, -125, 125, 126, -32_768, 32_767])
            .prop_map(Stamp::FromId),
    ]
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
    (arb_text(), proptest::option::of(arb_text())).prop_map(|(pattern, group)| Subscription {
        pattern,
        group: group.map(Into::into),
    })
}

fn arb_to() -> impl Strategy<Value = To> {
    prop_oneof![
        Just(To::Handler),
        Just(To::Instance),
        arb_text().prop_map(|g| To::Group(g.into())),
    ]
}

fn arb_nack_code() -> impl Strategy<Value = NackCode> {
    prop_oneof![
        Just(NackCode::HandlerFailed),
        Just(NackCode::NoHandler),
        Just(NackCode::NoSubscription),
        Just(NackCode::ShuttingDown),
        Just(NackCode::LimitExceeded),
        Just(NackCode::Invalid),
        Just(NackCode::ReplyNotKept),
        Just(NackCode::Skipped),
        Just(NackCode::NotAuthorized),
    ]
}

/// Any frame, of any variant.
pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
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
        (
            any::<u64>(),
            arb_envelope(),
            arb_to(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(arb_envelope(), 0..3)
        )
            .prop_map(|(first_seq, first, to, reliable, ordered, rest)| {
                let head = Head::of(&first, to, reliable, ordered);
                // The others carry whatever of their kind, version, content type and return
                // address differs from the head's.
                let items = std::iter::once(&first)
                    .chain(&rest)
                    .map(|e| Item::under(e, &head))
                    .collect();
                Frame::Messages(Box::new(Messages {
                    first_seq,
                    head,
                    items,
                }))
            }),
        arb_envelope().prop_map(|e| Frame::Reply(Box::new(e))),
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8).prop_map(|ranges| {
            Frame::Ack(Ack {
                ranges: ranges
                    .into_iter()
                    .map(|(start, len)| SeqRange { start, len })
                    .collect(),
            })
        }),
        (any::<u64>(), any::<bool>(), arb_nack_code(), arb_text()).prop_map(
            |(seq, retryable, code, reason)| {
                Frame::Nack(Nack {
                    seq,
                    retryable,
                    code,
                    reason,
                })
            }
        ),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        arb_text().prop_map(|reason| Frame::Goodbye(Goodbye { reason })),
        arb_subscription().prop_map(Frame::Subscribe),
        arb_subscription().prop_map(Frame::Unsubscribe),
        arb_channel_frame(),
    ]
}

fn arb_seq_ranges() -> impl Strategy<Value = Vec<SeqRange>> {
    proptest::collection::vec(
        (any::<u64>(), any::<u64>()).prop_map(|(start, len)| SeqRange { start, len }),
        0..8,
    )
}

/// The control frames of multicast channels.
pub(crate) fn arb_channel_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        arb_socket_addr().prop_map(|group| Frame::ChannelHello(ChannelHello { group })),
        (any::<u64>(), any::<u32>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
            |(channel, epoch, secret, first_seq)| Frame::ChannelKey(ChannelKey {
                channel,
                epoch,
                secret,
                first_seq,
            })
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            arb_seq_ranges(),
            arb_seq_ranges()
        )
            .prop_map(|(channel, next_needed, window, handled, failed)| {
                Frame::ChannelStatus(ChannelStatus {
                    channel,
                    next_needed,
                    window,
                    handled,
                    failed,
                })
            }),
        (any::<u64>(), arb_seq_ranges())
            .prop_map(|(channel, missing)| Frame::ChannelNak(ChannelNak { channel, missing })),
        arb_bytes().prop_map(Frame::ChannelRepair),
        (any::<u64>(), any::<u64>()).prop_map(|(channel, from_item)| Frame::ChannelDemote(
            ChannelDemote { channel, from_item }
        )),
    ]
}
