//! Multicast datagram bodies: framed from encoded parts they decode back to what was framed,
//! and no bytes (random, truncated, or a valid body cut short) make the decoder panic.

#![allow(clippy::unwrap_used)]

mod byte_edits;
#[allow(
    dead_code,
    reason = "the frame strategies are for the other codec tests"
)]
mod strategies;

use bytes::BytesMut;
use proptest::prelude::*;
use shoal_proto::codec::{self, EncodedHead, EncodedItem, RunParts};
use shoal_proto::multicast::{Assignment, DatagramBody, EventRun, HeartbeatBody};
use shoal_proto::{
    Envelope, Frame, Head, Item, Limits, SeqRange, Subscription, To, validate_head, validate_item,
};

use strategies::{arb_channel_frame, arb_envelope, arb_node_id};

/// Runs of one to three events, each run under the head of its first event.
fn arb_runs() -> impl Strategy<Value = Vec<(Vec<Envelope>, Vec<Assignment>)>> {
    let assignment = ("[a-z]{1,8}", arb_node_id()).prop_map(|(group, node)| Assignment {
        group: group.into(),
        node,
    });
    proptest::collection::vec(
        (
            proptest::collection::vec(arb_envelope(), 1..4),
            proptest::collection::vec(assignment, 0..3),
        ),
        1..4,
    )
}

fn framed(first_item: u64, runs: &[(Vec<Envelope>, Vec<Assignment>)]) -> (BytesMut, DatagramBody) {
    let limits = Limits::default();
    let mut parts = Vec::new();
    let mut expected = Vec::new();
    for (events, assigned) in runs {
        let head = Head::of(&events[0], To::Instance, true, false);
        let items: Vec<Item> = events.iter().map(|e| Item::under(e, &head)).collect();
        let encoded: Vec<EncodedItem> = items
            .iter()
            .map(|i| EncodedItem::new(i, &limits).unwrap())
            .collect();
        parts.push((
            EncodedHead::new(&head, &limits).unwrap(),
            assigned.clone(),
            encoded,
        ));
        expected.push(EventRun {
            head,
            assigned: assigned.clone(),
            items,
        });
    }
    let runs: Vec<RunParts<'_>> = parts
        .iter()
        .map(|(head, assigned, items)| RunParts {
            head,
            assigned,
            items,
        })
        .collect();
    let bound = codec::BODY_OVERHEAD + runs.iter().map(codec::run_len).sum::<usize>();
    let mut buf = BytesMut::new();
    let len = codec::write_datagram_body(&mut buf, first_item, &runs, usize::MAX).unwrap();
    assert_eq!(len, buf.len());
    assert!(len <= bound, "{len} > the announced bound {bound}");
    (
        buf,
        DatagramBody {
            first_item,
            runs: expected,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn bodies_framed_from_parts_decode_to_what_was_framed(first in any::<u64>(), runs in arb_runs()) {
        let (buf, expected) = framed(first, &runs);
        prop_assert_eq!(codec::decode_datagram_body(&buf, &Limits::default()).unwrap(), expected);
    }

    #[test]
    fn cut_or_damaged_bodies_never_panic(
        runs in arb_runs(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let (buf, _) = framed(7, &runs);
        let cut = cut.index(buf.len());
        prop_assert!(codec::decode_datagram_body(&buf[..cut], &Limits::default()).is_err());
        let mut damaged = buf.to_vec();
        let at = flip.index(damaged.len());
        damaged[at] ^= byte | 1;
        let _ = codec::decode_datagram_body(&damaged, &Limits::default());
        let _ = codec::decode_heartbeat(&damaged);
    }

    /// Datagram bodies are decoded without serde (`codec/native.rs`): whatever the bytes, the
    /// body (or the refusal) must be the one serde's derived decoding gives.
    #[test]
    fn native_and_serde_decode_bodies_alike(
        runs in arb_runs(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), byte_edits::edit_byte()), 0..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (buf, _) = framed(5, &runs);
        let mut body = buf.to_vec();
        for (at, byte) in edits {
            let at = at.index(body.len());
            body[at] = byte;
        }
        if truncate {
            body.truncate(cut.index(body.len()));
        }
        let (by_codec, by_serde) = decode_both(&body);
        prop_assert_eq!(by_codec, by_serde);
    }

    #[test]
    fn channel_control_frames_round_trip(frame in arb_channel_frame()) {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        codec::encode(&frame, &limits, &mut buf).unwrap();
        prop_assert_eq!(codec::decode(&mut buf, &limits).unwrap(), Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn cut_or_damaged_channel_frames_never_panic(
        frame in arb_channel_frame(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let limits = Limits::default();
        let mut whole = BytesMut::new();
        codec::encode(&frame, &limits, &mut whole).unwrap();
        // A frame cut short waits for more (its length prefix says so) and consumes nothing.
        let cut = cut.index(whole.len());
        let mut short = BytesMut::from(&whole[..cut]);
        prop_assert_eq!(codec::decode(&mut short, &limits).unwrap(), None);
        prop_assert_eq!(short.len(), cut);
        // A damaged body decodes to some frame or fails; either way the frame is consumed.
        let mut damaged = whole.clone();
        let at = codec::LENGTH_PREFIX + flip.index(damaged.len() - codec::LENGTH_PREFIX);
        damaged[at] ^= byte | 1;
        let _ = codec::decode(&mut damaged, &limits);
        prop_assert!(damaged.is_empty());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode_datagram_body(&bytes, &Limits::default());
        let _ = codec::decode_heartbeat(&bytes);
    }
}

/// A body of two runs (one with a group assignment, one without), each of its bytes replaced
/// in turn by tags, variant indices and varint markers (where a decoder's choices are) and by
/// its neighbours: the codec decodes (or refuses) each as serde would.
#[test]
fn every_one_byte_edit_of_a_body_decodes_as_serde_would() {
    let event = |id: u128, name: &str| {
        let mut e = Envelope::new(
            shoal_proto::MessageId::from_u128(id),
            shoal_proto::MessageKind::Event,
            name,
            1,
            vec![id as u8; 3].into(),
        );
        e.partition_key = Some("k".into());
        e
    };
    let assigned = vec![Assignment {
        group: "billing".into(),
        node: shoal_proto::NodeId::from_u128(7),
    }];
    let (buf, expected) = framed(
        9,
        &[
            (vec![event(1, "a.b"), event(2, "a.b")], assigned),
            (vec![event(3, "c")], Vec::new()),
        ],
    );
    assert_eq!(decode_both(&buf), (Some(expected.clone()), Some(expected)));
    let edits = byte_edits::each_one_byte_edit(&buf, |edited, at, byte| {
        let (by_codec, by_serde) = decode_both(edited);
        assert_eq!(by_codec, by_serde, "byte {at} set to {byte}");
    });
    assert!(edits > 1_000, "only {edits} edits");
}

/// `body` decoded by the codec and by serde's derived decoding (with the codec's checks): the
/// body, or `None` when refused.
fn decode_both(body: &[u8]) -> (Option<DatagramBody>, Option<DatagramBody>) {
    let limits = Limits::default();
    // A lying length makes serde allocate what it claims: bounded as in the codec.
    let budget = bincode::config::standard().with_limit::<{ 4 << 20 }>();
    let by_serde = bincode::serde::decode_from_slice::<DatagramBody, _>(body, budget)
        .ok()
        .filter(|(decoded, used)| {
            *used == body.len()
                && decoded.runs.iter().all(|run| {
                    validate_head(&run.head, &limits).is_ok()
                        && run.items.iter().all(|i| validate_item(i, &limits).is_ok())
                })
        })
        .map(|(decoded, _)| decoded);
    let by_codec = codec::decode_datagram_body(body, &limits).ok();
    (by_codec, by_serde)
}

#[test]
fn a_body_longer_than_the_budget_is_refused_and_leaves_the_buffer_as_it_was() {
    let limits = Limits::default();
    let event = Envelope::new(
        shoal_proto::MessageId::from_u128(1),
        shoal_proto::MessageKind::Event,
        "order.created",
        0,
        vec![7u8; 2000].into(),
    );
    let head = EncodedHead::new(&Head::of(&event, To::Instance, true, false), &limits).unwrap();
    let items = [EncodedItem::new(&Item::of(&event), &limits).unwrap()];
    let runs = [RunParts {
        head: &head,
        assigned: &[],
        items: &items,
    }];
    let mut buf = BytesMut::from(&b"kept"[..]);
    let err = codec::write_datagram_body(&mut buf, 0, &runs, 1400).unwrap_err();
    assert!(err.to_string().contains("max_datagram_body"), "{err}");
    assert_eq!(&buf[..], b"kept");
}

#[test]
fn heartbeats_round_trip() {
    let hb = HeartbeatBody {
        next_seq: u64::MAX,
        oldest_kept: 3,
    };
    let mut buf = BytesMut::new();
    codec::write_heartbeat(&mut buf, &hb).unwrap();
    assert_eq!(codec::decode_heartbeat(&buf).unwrap(), hb);
    assert!(codec::decode_heartbeat(&buf[..buf.len() - 1]).is_err());
}

/// The channel frames come after every older variant: an older frame's bytes are what they
/// were (Unsubscribe is still variant 9), and the new ones take 10 and on.
#[test]
fn channel_frames_are_numbered_after_the_older_variants() {
    let limits = Limits::default();
    let variant = |frame: &Frame| {
        let mut buf = BytesMut::new();
        codec::encode(frame, &limits, &mut buf).unwrap();
        buf[codec::LENGTH_PREFIX]
    };
    let sub = Subscription {
        pattern: "a".into(),
        group: None,
    };
    assert_eq!(variant(&Frame::Unsubscribe(sub)), 9);
    let hello = shoal_proto::multicast::ChannelHello {
        group: "239.1.2.3:7000".parse().unwrap(),
    };
    assert_eq!(variant(&Frame::ChannelHello(hello)), 10);
    let nak = shoal_proto::multicast::ChannelNak {
        channel: 1,
        missing: vec![SeqRange { start: 0, len: 1 }],
    };
    assert_eq!(variant(&Frame::ChannelNak(nak)), 13);
    assert_eq!(variant(&Frame::ChannelRepair(vec![1, 2].into())), 14);
}
