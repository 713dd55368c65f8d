//! Codec round trips: every frame decodes back to itself, alone, back to back and after a
//! truncation; the wire size of a typical delivery; and (ignored) the speed of a round trip.

#![allow(clippy::unwrap_used)]

mod byte_edits;
mod samples;
mod strategies;

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Instant;

use bytes::BytesMut;
use proptest::prelude::*;
use shoal_proto::codec::{self, EncodedHead, EncodedItem, LENGTH_PREFIX};
use shoal_proto::{
    Envelope, Frame, Head, Hello, Item, Limits, MessageKind, Messages, NodeId, To, validate_frame,
};

use samples::{encoded, rich_envelope, run_of, sample_envelope, sample_frames};
use strategies::{arb_envelope, arb_frame};

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
}

proptest! {
    // Cheap cases, and the interesting edits are rare: more of them.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Messages and acks are decoded without serde (`codec/native.rs`): whatever the bytes,
    /// the frame (or the refusal) must be the one serde's derived decoding gives.
    #[test]
    fn native_and_serde_decode_alike(
        frame in arb_frame(),
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), byte_edits::edit_byte()), 0..4),
        cut in any::<proptest::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let full = encoded(&frame);
        let mut body = full[LENGTH_PREFIX..].to_vec();
        for (at, byte) in edits {
            let at = at.index(body.len());
            body[at] = byte;
        }
        if truncate {
            body.truncate(cut.index(body.len()).max(1));
        }
        let (by_codec, by_serde) = decode_both(&body);
        prop_assert_eq!(by_codec, by_serde);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A sender encodes each item and head once and frames runs from the parts
    /// (`codec/run.rs`): the bytes must be those of encoding the whole frame.
    #[test]
    fn runs_framed_from_parts_equal_the_encoded_frame(frame in arb_frame()) {
        let Frame::Messages(run) = &frame else {
            return Ok(());
        };
        let limits = Limits::default();
        let head = EncodedHead::new(&run.head, &limits).unwrap();
        let alone: Vec<EncodedItem> = run
            .items
            .iter()
            .map(|item| EncodedItem::new(item, &limits).unwrap())
            .collect();
        let mut framed = BytesMut::new();
        codec::write_messages(&mut framed, run.first_seq, &head, &alone, &limits).unwrap();
        prop_assert_eq!(framed, encoded(&frame));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A sender encodes each message straight from its envelope (`codec/item.rs`), one after
    /// another in a shared arena: the bytes, or the error, must be those of building the item
    /// ([`Item::of`] alone, [`Item::under`] a batch's head) and encoding it through serde. The
    /// first message fits its own head (which carries its key when `ordered`); the second
    /// shares some of the first one's head fields when `shared` says so, so that it fits the
    /// head, differs from it in a field or two, or has a key of its own; the limits are
    /// sometimes small enough for a message to break one.
    #[test]
    fn items_encoded_from_envelopes_equal_items_built_and_encoded(
        first in arb_envelope(),
        mut other in arb_envelope(),
        shared in proptest::collection::vec(any::<bool>(), 6),
        ordered in any::<bool>(),
        max_frame_len in prop_oneof![Just(Limits::default().max_frame_len), 20usize..400],
        small in (0usize..5, 2usize..13, 2usize..13),
        tight in any::<bool>(),
    ) {
        let share = |n: usize| shared[n];
        if share(0) { other.kind = first.kind; }
        if share(1) { other.name = first.name.clone(); }
        if share(2) { other.version = first.version; }
        if share(3) { other.content_type = first.content_type.clone(); }
        if share(4) { other.reply_to = first.reply_to.clone(); }
        if share(5) { other.partition_key = first.partition_key.clone(); }
        // Tight limits on names, header counts and values, so that some messages break them.
        let (max_headers, max_name_len, max_header_value_len) = small;
        let limits = if tight {
            Limits { max_frame_len, max_headers, max_name_len, max_header_value_len, ..Limits::default() }
        } else {
            Limits { max_frame_len, ..Limits::default() }
        };
        let head = Head::of(&first, To::Handler, true, ordered);
        // The head fits a message that shares each of its fields, and its key as documented.
        let same_key = other.partition_key == head.partition_key
            || !ordered && head.partition_key.is_none();
        let shares = other.kind == first.kind
            && other.version == first.version
            && other.name == first.name
            && other.content_type == first.content_type
            && other.reply_to == first.reply_to;
        prop_assert_eq!(head.fits(&other), shares && same_key);
        let mut arena = BytesMut::new();
        let cases = [(&first, None), (&first, Some(&head)), (&other, None), (&other, Some(&head))];
        for (message, head) in cases {
            let item = match head {
                Some(head) => Item::under(message, head),
                None => Item::of(message),
            };
            let built = EncodedItem::new(&item, &limits).map_err(|e| e.to_string());
            let direct = EncodedItem::from_envelope_in(message, head, &limits, &mut arena)
                .map_err(|e| e.to_string());
            prop_assert_eq!(built, direct);
            prop_assert!(arena.is_empty());
        }
    }
}

/// Every sample frame, and a run whose item differs from its head, with each of its bytes
/// replaced in turn by tags, variant indices and varint markers (where a decoder's choices
/// are) and by its neighbours: the codec decodes (or refuses) each as serde would.
#[test]
fn every_one_byte_edit_decodes_as_serde_would() {
    let differing = {
        let mut document = rich_envelope();
        document.kind = MessageKind::Document;
        let head = Head::of(&sample_envelope(), To::Instance, false, false);
        Frame::Messages(Box::new(Messages {
            first_seq: 3,
            items: vec![Item::under(&document, &head)],
            head,
        }))
    };
    let mut edits = 0;
    for frame in sample_frames().into_iter().chain([differing]) {
        let body = &encoded(&frame)[LENGTH_PREFIX..];
        edits += byte_edits::each_one_byte_edit(body, |edited, at, byte| {
            let (by_codec, by_serde) = decode_both(edited);
            assert_eq!(by_codec, by_serde, "{frame:?} with byte {at} set to {byte}");
        });
    }
    assert!(edits > 5_000, "only {edits} edits");
}

/// `body` decoded by the codec and by serde's derived decoding (with the codec's checks):
/// the frame, or `None` when refused.
fn decode_both(body: &[u8]) -> (Option<Frame>, Option<Frame>) {
    let limits = Limits::default();
    // A lying length makes serde allocate what it claims: bounded as in the codec.
    let budget = bincode::config::standard().with_limit::<{ 4 << 20 }>();
    let by_serde = bincode::serde::decode_from_slice::<Frame, _>(body, budget)
        .ok()
        .filter(|(frame, used)| *used == body.len() && validate_frame(frame, &limits).is_ok())
        .map(|(frame, _)| frame);
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    wire.extend_from_slice(body);
    let by_codec = codec::decode(&mut wire, &limits).ok().flatten();
    assert!(wire.is_empty(), "the frame was not consumed whole");
    (by_codec, by_serde)
}

// ---------------------------------------------------------------------------------------------
// Framing

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
// Size and speed

/// A typical small command: 64-byte payload, name `create-invoice`, no headers; alone, and
/// as one of a run of 100 that share their head.
#[test]
fn typical_delivery_size() {
    let alone = encoded(&run_of(&sample_envelope(), 1 << 20)).len();
    println!("a run of one (64-byte payload, no headers): {alone} bytes on the wire");
    // 130 in protocol 3: the id took 17 bytes, the timestamp 9 and each optional field 1.
    assert_eq!(alone, 118, "the wire size of a typical delivery changed");
    let envelope = sample_envelope();
    let run = Frame::Messages(Box::new(Messages {
        first_seq: 1 << 20,
        head: Head::of(&envelope, To::Handler, true, false),
        items: vec![Item::of(&envelope); 100],
    }));
    let per_message = encoded(&run).len() / 100;
    println!("in a run of 100: {per_message} bytes per message");
    // 96 in protocol 3.
    assert_eq!(
        per_message, 84,
        "the wire size of a message in a run changed"
    );
}

/// Messages under different partition keys share a run (each item carries its key); the
/// events of an ordered batch share one key, carried once by the head.
#[test]
fn keys_travel_in_items_unless_a_batch_shares_one() {
    let keyed = |key: &str| {
        let mut envelope = sample_envelope();
        envelope.partition_key = Some(key.into());
        envelope
    };
    let (a, b) = (keyed("customer-1"), keyed("customer-2"));
    let head = Head::of(&a, To::Handler, true, false);
    assert_eq!(head.partition_key, None);
    assert!(head.fits(&b), "another key shares the run");
    let run = |head: &Head, envelopes: &[&Envelope]| Messages {
        first_seq: 0,
        head: head.clone(),
        items: envelopes.iter().map(|e| Item::under(e, head)).collect(),
    };
    let unordered = run(&head, &[&a, &b]);
    let batch_head = Head::of(&a, To::Handler, true, true);
    assert_eq!(batch_head.partition_key.as_deref(), Some("customer-1"));
    assert!(!batch_head.fits(&b), "an ordered run is under one key");
    let batch = run(&batch_head, &[&a, &a]);
    assert!(batch.items.iter().all(|i| i.partition_key.is_none()));
    for (sent, expected) in [(unordered, [&a, &b]), (batch, [&a, &a])] {
        let Some(Frame::Messages(got)) = codec::decode(
            &mut encoded(&Frame::Messages(Box::new(sent))),
            &Limits::default(),
        )
        .unwrap() else {
            panic!("not a run")
        };
        let Messages { head, items, .. } = *got;
        let keys: Vec<_> = items
            .into_iter()
            .map(|item| item.into_envelope(&head).partition_key)
            .collect();
        let want: Vec<_> = expected.iter().map(|e| e.partition_key.clone()).collect();
        assert_eq!(keys, want);
    }
}

/// `cargo test -p shoal-proto --release -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release mode"]
fn time_one_million_round_trips() {
    let frame = run_of(&sample_envelope(), 1 << 20);
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
