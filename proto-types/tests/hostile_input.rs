//! Hostile and broken input: random bytes, random bodies, flipped bits and strict limits never
//! make the decoder panic, and each malformed or oversized frame is refused with the right
//! error and consumed (or left alone) as the framing rules say.

#![allow(clippy::unwrap_used)]

mod samples;
mod strategies;

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use shoal_proto::codec::{self, LENGTH_PREFIX, MAX_FRAME_LEN_CAP};
use shoal_proto::{DecodeError, EncodeError, Frame, Limits};

use samples::{encoded, sample_frames};
use strategies::arb_frame;

// ---------------------------------------------------------------------------------------------
// Helpers

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

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

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
            max_reason_len: max,
            max_listen_addrs: max / 4,
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
    // A Goodbye (variant 7) whose reason claims 2^60 bytes (varint marker 253 + u64 LE).
    let started = Instant::now();
    let mut buf = BytesMut::new();
    let mut body = vec![7u8, 253];
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

#[test]
fn a_run_numbered_past_2_64_is_malformed_and_consumed() {
    let envelope = samples::rich_envelope();
    let run = |first_seq| {
        Frame::Messages(Box::new(shoal_proto::Messages {
            first_seq,
            head: shoal_proto::Head::of(&envelope, shoal_proto::To::Handler, true, false),
            items: vec![shoal_proto::Item::of(&envelope); 3],
        }))
    };
    // The last number a run may take.
    let mut buf = encoded(&run(u64::MAX - 3));
    assert!(
        codec::decode(&mut buf, &Limits::default())
            .unwrap()
            .is_some()
    );
    let mut buf = encoded(&run(u64::MAX - 2));
    codec::encode(&Frame::Ping(7), &Limits::default(), &mut buf).unwrap();
    let err = codec::decode(&mut buf, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Malformed(m) if m.contains("passes 2^64")),
        "{err:?}"
    );
    assert_eq!(
        codec::decode(&mut buf, &Limits::default()).unwrap(),
        Some(Frame::Ping(7))
    );
}
