//! Frames split across chunks anywhere decode as they were sent, a prefix above the limit is
//! refused before room is reserved for its frame, and a frame's buffer is reserved once.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use shoal_proto::codec::{self, LENGTH_PREFIX, SHARE_FROM};
use shoal_proto::{
    Ack, DecodeError, Envelope, Frame, Head, Item, Limits, MessageId, MessageKind, Messages,
    SeqRange, To,
};

use super::{Decoded, Frames};

/// A run of `events` events of `payload` bytes each, with headers when `headers` is set.
fn run(first_seq: u64, events: u64, payload: usize, headers: usize) -> Frame {
    let envelope = |n: u64| {
        let mut envelope = Envelope::new(
            MessageId::from_u128(u128::from(first_seq + n + 1)),
            MessageKind::Event,
            "orders.created",
            1_700_000_000_000,
            Bytes::from(vec![n as u8; payload]),
        );
        envelope.headers = (0..headers)
            .map(|h| (format!("h{h}"), "v".into()))
            .collect();
        envelope
    };
    let head = Head::of(&envelope(0), To::Handler, true, false);
    let items = (0..events)
        .map(|n| Item::under(&envelope(n), &head))
        .collect();
    Frame::Messages(Box::new(Messages {
        first_seq,
        head,
        items,
    }))
}

/// Large runs (shared from their bytes), small frames (copied) and an ack, back to back.
fn stream() -> (Vec<Frame>, Bytes) {
    let frames = vec![
        run(1, 40, 64, 0),
        Frame::Ping(7),
        Frame::Ack(Ack {
            ranges: vec![SeqRange { start: 1, len: 40 }],
        }),
        run(41, 1, 16, 1),
        run(42, 12, 100, 0),
        Frame::Pong(7),
    ];
    let mut wire = BytesMut::new();
    for frame in &frames {
        codec::encode(frame, &Limits::default(), &mut wire).unwrap();
    }
    (frames, wire.freeze())
}

/// Feeds `chunks` in order; the decoded frames (an error fails the test).
fn read(chunks: impl IntoIterator<Item = Bytes>, limits: &Limits) -> (Vec<Frame>, Frames) {
    let mut frames = Frames::default();
    let mut out: Vec<Decoded> = Vec::new();
    for chunk in chunks {
        assert_eq!(frames.take(chunk, limits, &mut out), None);
    }
    let decoded = out.into_iter().map(Result::unwrap).collect();
    (decoded, frames)
}

#[test]
fn frames_split_in_two_at_every_byte_decode_as_sent() {
    let (sent, wire) = stream();
    assert!(wire.len() > 2 * SHARE_FROM, "the stream holds large frames");
    for at in 0..=wire.len() {
        let (got, frames) = read([wire.slice(..at), wire.slice(at..)], &Limits::default());
        assert_eq!(got, sent, "split at byte {at}");
        assert!(
            frames.partial.is_empty(),
            "nothing left over after byte {at}"
        );
    }
}

#[test]
fn frames_split_in_three_and_byte_by_byte_decode_as_sent() {
    let (sent, wire) = stream();
    for at in 0..wire.len() {
        for gap in [1, 2, 3, 5] {
            let end = (at + gap).min(wire.len());
            let chunks = [wire.slice(..at), wire.slice(at..end), wire.slice(end..)];
            let (got, _) = read(chunks, &Limits::default());
            assert_eq!(got, sent, "split at bytes {at} and {end}");
        }
    }
    let bytes = (0..wire.len()).map(|i| wire.slice(i..=i));
    assert_eq!(
        read(bytes, &Limits::default()).0,
        sent,
        "one byte at a time"
    );
}

#[test]
fn a_length_prefix_alone_reserves_its_frame_once() {
    let mut wire = BytesMut::new();
    codec::encode(&run(1, 40, 64, 0), &Limits::default(), &mut wire).unwrap();
    let wire = wire.freeze();
    let total = wire.len();
    for prefix_split in [LENGTH_PREFIX, 1, 3] {
        let mut frames = Frames::default();
        let mut out = Vec::new();
        // The prefix, on its own (or cut), then the body in pieces.
        frames.take(wire.slice(..prefix_split), &Limits::default(), &mut out);
        frames.take(
            wire.slice(prefix_split..LENGTH_PREFIX),
            &Limits::default(),
            &mut out,
        );
        assert!(out.is_empty());
        assert!(
            frames.partial.capacity() >= total,
            "room for the frame once the prefix is in"
        );
        let buffer = frames.partial.as_ptr();
        for piece in wire[LENGTH_PREFIX..total - 1].chunks(700) {
            let start = piece.as_ptr() as usize - wire.as_ptr() as usize;
            frames.take(
                wire.slice(start..start + piece.len()),
                &Limits::default(),
                &mut out,
            );
            assert_eq!(
                frames.partial.as_ptr(),
                buffer,
                "the frame's buffer never moves"
            );
        }
        assert!(out.is_empty(), "the frame is not complete yet");
        frames.take(wire.slice(total - 1..), &Limits::default(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(*out[0].as_ref().unwrap(), run(1, 40, 64, 0));
    }
}

#[test]
fn an_oversized_prefix_is_refused_before_its_frame_is_reserved() {
    let limits = Limits::default();
    let claimed = (limits.max_frame_len + 1) as u32;
    let prefix = Bytes::copy_from_slice(&claimed.to_be_bytes());
    // Whole, or cut anywhere: refused as soon as the prefix is complete.
    for at in 0..=LENGTH_PREFIX {
        let mut frames = Frames::default();
        let mut out = Vec::new();
        let fatal = [prefix.slice(..at), prefix.slice(at..)]
            .into_iter()
            .find_map(|chunk| frames.take(chunk, &limits, &mut out));
        assert!(fatal.is_some(), "cut at {at}: the stream is broken");
        assert!(
            matches!(out.as_slice(), [Err(DecodeError::FrameTooLarge { len, .. })]
                if *len == claimed as usize),
            "cut at {at}: {out:?}"
        );
        assert!(
            frames.partial.capacity() < 1024,
            "cut at {at}: nothing reserved"
        );
    }
}

#[test]
fn a_frame_within_one_chunk_is_decoded_from_its_bytes() {
    let (_, wire) = stream();
    let (got, _) = read([wire.clone()], &Limits::default());
    let Frame::Messages(run) = &got[0] else {
        panic!("{:?}", got[0])
    };
    let range = wire.as_ptr_range();
    assert!(
        run.items
            .iter()
            .all(|i| range.contains(&i.payload.as_ptr())),
        "the payloads are views of the chunk"
    );
}

#[test]
fn a_run_over_a_limit_is_refused_alone_wherever_it_is_cut() {
    let limits = Limits {
        max_headers: 0,
        ..Limits::default()
    };
    let (sent, wire) = stream();
    for at in 0..=wire.len() {
        let mut frames = Frames::default();
        let mut out = Vec::new();
        for chunk in [wire.slice(..at), wire.slice(at..)] {
            assert_eq!(frames.take(chunk, &limits, &mut out), None, "split at {at}");
        }
        assert_eq!(out.len(), sent.len(), "split at {at}");
        for (got, sent) in out.iter().zip(&sent) {
            match got {
                Err(DecodeError::LimitExceeded {
                    seqs: Some(seqs), ..
                }) => {
                    assert_eq!(*sent, run(41, 1, 16, 1));
                    assert_eq!(*seqs, SeqRange { start: 41, len: 1 });
                }
                got => assert_eq!(got.as_ref().unwrap(), sent, "split at {at}"),
            }
        }
    }
}

#[test]
fn a_malformed_frame_breaks_the_stream_wherever_it_is_cut() {
    let mut wire = BytesMut::new();
    codec::encode(&Frame::Ping(1), &Limits::default(), &mut wire).unwrap();
    wire.extend_from_slice(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    codec::encode(&Frame::Ping(2), &Limits::default(), &mut wire).unwrap();
    let wire = wire.freeze();
    for at in 0..=wire.len() {
        let mut frames = Frames::default();
        let mut out = Vec::new();
        let fatal = [wire.slice(..at), wire.slice(at..)]
            .into_iter()
            .find_map(|chunk| frames.take(chunk, &Limits::default(), &mut out));
        assert!(fatal.is_some(), "split at {at}");
        assert!(
            matches!(
                out.as_slice(),
                [Ok(Frame::Ping(1)), Err(DecodeError::Malformed(_))]
            ),
            "split at {at}: {out:?}"
        );
    }
}
