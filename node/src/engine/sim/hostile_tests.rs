//! Frames that a peer holding a valid certificate could send to hurt a node: each must cost
//! the node no more than what the frame is about, and change nothing it has no right to.

#![cfg(test)]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shoal_proto::codec;
use shoal_proto::{Ack, Frame, Head, Item, Messages, NackCode, NodeId, SeqRange, To};

use crate::Message;
use crate::config::Config;
use crate::engine::action::{Action, ConnId};
use crate::engine::{Done, Engine, OpId, PeerHello};

/// An engine of service `orders` with one connection, to an instance of `billing`.
fn engine_with_peer(config: Config, now: Instant) -> (Engine<u8>, ConnId) {
    connected("orders", "billing", config, now)
}

/// An engine of `service` with one connection (it dialled) to an instance of `peer`.
fn connected(service: &str, peer: &str, config: Config, now: Instant) -> (Engine<u8>, ConnId) {
    let mut engine = Engine::new(NodeId::from_u128(1), service.to_owned(), config, 7);
    let hello = PeerHello {
        node: NodeId::from_u128(2),
        service: peer.to_owned(),
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        listen_addrs: Vec::new(),
        dialed: true,
        pinned: true,
    };
    let (conn, _) = engine.connection_up(hello, now);
    (engine, conn)
}

/// Sends `count` commands to `billing` and writes what may go, as a driver would.
fn send(engine: &mut Engine<u8>, conn: ConnId, count: usize, now: Instant) -> Vec<OpId> {
    let ops = (0..count)
        .map(|i| {
            let msg = Message::command("charge", format!("order-{i}"));
            engine
                .send("billing", msg, &Default::default(), now)
                .unwrap()
        })
        .collect();
    write(engine, conn, now);
    while let Some(action) = engine.poll_action() {
        assert!(
            !matches!(action, Action::Complete(_)),
            "nothing was answered yet"
        );
    }
    ops
}

fn write(engine: &mut Engine<u8>, conn: ConnId, now: Instant) {
    let mut buf = BytesMut::new();
    while engine.poll_transmit(conn, &mut buf, 256 * 1024, now).more {}
}

fn ack(ranges: &[(u64, u64)]) -> Frame {
    let ranges = ranges
        .iter()
        .map(|&(start, len)| SeqRange { start, len })
        .collect();
    Frame::Ack(Ack { ranges })
}

fn assert_acked_once(engine: &mut Engine<u8>, op: OpId) {
    match engine.take_result(op) {
        Some(Ok(Done::Sent(receipt))) => assert_eq!(receipt.attempts, 1),
        other => panic!("not acknowledged on the first attempt: {other:?}"),
    }
}

#[test]
fn an_ack_of_a_huge_range_costs_only_what_the_window_holds() {
    let now = Instant::now();
    let (mut engine, conn) = engine_with_peer(Config::default(), now);
    let ops = send(&mut engine, conn, 3, now);
    // On a thread of its own, with a bounded wait: counting through 2^63 numbers (as the
    // node once did, under its lock) never ends.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        engine.handle_frame(conn, ack(&[(0, u64::MAX / 2)]), now);
        let _ = tx.send(engine);
    });
    let mut engine = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("an Ack of 2^63 numbers kept the engine busy for 30 s");
    for op in ops {
        assert_acked_once(&mut engine, op);
    }
}

#[test]
fn an_ack_does_not_answer_what_was_sent_after_it() {
    let now = Instant::now();
    let config = Config {
        max_in_flight_per_peer: 2,
        ..Config::default()
    };
    let (mut engine, conn) = engine_with_peer(config, now);
    let ops = send(&mut engine, conn, 3, now);
    // The first two are in flight, the third waits for room; the ack of those two makes the
    // room, and the third leaves (as number 2) while the ack is being taken.
    engine.handle_frame(conn, ack(&[(0, 1000)]), now);
    assert_acked_once(&mut engine, ops[0]);
    assert_acked_once(&mut engine, ops[1]);
    assert!(
        engine.take_result(ops[2]).is_none(),
        "a message sent after the ack was taken as acknowledged by it"
    );
    write(&mut engine, conn, now);
    engine.handle_frame(conn, ack(&[(2, 1)]), now);
    assert_acked_once(&mut engine, ops[2]);
}

#[test]
fn unordered_overlapping_and_overflowing_ranges_answer_each_message_once() {
    let now = Instant::now();
    let (mut engine, conn) = engine_with_peer(Config::default(), now);
    let ops = send(&mut engine, conn, 4, now);
    // Number 3 is left out: covered only by a range whose end overflows (it covers nothing).
    let ranges = [(2, 1), (0, 2), (1, 2), (0, 1), (3, u64::MAX), (1, 0)];
    engine.handle_frame(conn, ack(&ranges), now);
    for &op in &ops[..3] {
        assert_acked_once(&mut engine, op);
    }
    assert!(
        engine.take_result(ops[3]).is_none(),
        "number 3 was acknowledged"
    );
    engine.handle_frame(conn, ack(&[(3, 1)]), now);
    assert_acked_once(&mut engine, ops[3]);
}

#[test]
fn an_ack_reaches_a_message_kept_aside_from_a_long_queue() {
    let now = Instant::now();
    let config = Config {
        max_in_flight_per_peer: 10_000,
        ..Config::default()
    };
    let (mut engine, conn) = engine_with_peer(config, now);
    let ops = send(&mut engine, conn, 5_000, now);
    // Everything but number 0 is answered; the next message sent makes the window move
    // number 0 aside (window.rs: a queue far longer than what it still waits for).
    engine.handle_frame(conn, ack(&[(1, 4_999)]), now);
    while engine.poll_action().is_some() {}
    let late = send(&mut engine, conn, 1, now);
    assert!(engine.take_result(ops[0]).is_none());
    engine.handle_frame(conn, ack(&[(0, 1), (5_000, 1)]), now);
    assert_acked_once(&mut engine, ops[0]);
    assert_acked_once(&mut engine, late[0]);
}

/// The frames `engine` writes on `conn` now.
fn written(engine: &mut Engine<u8>, conn: ConnId, now: Instant) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    while engine.poll_transmit(conn, &mut buf, 256 * 1024, now).more {}
    let mut frames = Vec::new();
    while let Some(frame) = codec::decode(&mut buf, &Default::default()).unwrap() {
        frames.push(frame);
    }
    frames
}

#[test]
fn copies_of_a_message_being_handled_wait_up_to_a_bound_and_the_rest_are_refused() {
    use crate::engine::receive::MAX_WAITING_COPIES;
    let now = Instant::now();
    let (mut engine, conn) = connected("billing", "orders", Config::default(), now);
    engine.set_handler("charge".to_owned(), 1);
    let msg = Message::command("charge", "order-7");
    let copy = |seq| {
        Frame::Messages(Box::new(Messages {
            first_seq: seq,
            head: Head::of(&msg.env, To::Handler, true, false),
            items: vec![Item::of(&msg.env)],
        }))
    };
    engine.handle_frame(conn, copy(0), now);
    let task = std::iter::from_fn(|| engine.poll_action())
        .find_map(|action| match action {
            Action::Run(run) => Some(run.task),
            _ => None,
        })
        .expect("the first copy runs its handler");
    // The handler runs on; a peer sends the same message again and again.
    let copies = 3 * MAX_WAITING_COPIES as u64;
    for seq in 1..=copies {
        engine.handle_frame(conn, copy(seq), now);
    }
    let refused: Vec<u64> = written(&mut engine, conn, now)
        .into_iter()
        .map(|frame| match frame {
            Frame::Nack(nack) if nack.retryable && nack.code == NackCode::LimitExceeded => nack.seq,
            other => panic!("only refusals are written while the handler runs: {other:?}"),
        })
        .collect();
    let waiting = MAX_WAITING_COPIES as u64;
    assert_eq!(refused, (waiting + 1..=copies).collect::<Vec<_>>());

    // The handler finishes: the first copy and every waiting one are acknowledged.
    engine.handler_done(task, Ok(Default::default()), now);
    let mut acked = Vec::new();
    for frame in written(&mut engine, conn, now) {
        match frame {
            Frame::Ack(ack) => acked.extend(ack.ranges.into_iter().flat_map(SeqRange::iter)),
            other => panic!("only acks are written: {other:?}"),
        }
    }
    assert_eq!(acked, (0..=waiting).collect::<Vec<_>>());
}
