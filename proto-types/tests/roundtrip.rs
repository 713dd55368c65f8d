//! Codec round trips: every frame decodes back to itself, alone, back to back and after a
//! truncation; the wire size of a typical delivery; and (ignored) the speed of a round trip.

#![allow(clippy::unwrap_used)]

mod samples;
mod strategies;

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Instant;

use bytes::BytesMut;
use proptest::prelude::*;
use shoal_proto::codec::{self, LENGTH_PREFIX};
use shoal_proto::{Frame, Head, Hello, Item, Limits, Messages, NodeId, To, validate_frame};

use samples::{encoded, run_of, sample_envelope, sample_frames};
use strategies::arb_frame;

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
    assert_eq!(alone, 129, "the wire size of a typical delivery changed");
    let envelope = sample_envelope();
    let run = Frame::Messages(Box::new(Messages {
        first_seq: 1 << 20,
        head: Head::of(&envelope, To::Handler, true, false),
        items: vec![Item::of(&envelope); 100],
    }));
    let per_message = encoded(&run).len() / 100;
    println!("in a run of 100: {per_message} bytes per message");
    assert_eq!(
        per_message, 95,
        "the wire size of a message in a run changed"
    );
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
