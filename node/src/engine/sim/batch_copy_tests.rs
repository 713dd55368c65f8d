//! Copies of an ordered batch's events at the receiver: an event handled before is
//! acknowledged again without running its handler, and one that another delivery is
//! handling stops the batch there (refused for a retry, the rest skipped), so the batch never
//! gets ahead of an event still in progress.

#![cfg(test)]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use shoal_proto::codec;
use shoal_proto::{Frame, Head, Item, MessageId, Messages, NackCode, NodeId, SeqRange, To};

use crate::Message;
use crate::config::Config;
use crate::engine::action::{Action, ConnId, TaskId};
use crate::engine::{Engine, PeerHello};

/// A `billing` engine with a handler for `charge` and one connection, from `orders`.
fn billing(now: Instant) -> (Engine<u8>, ConnId) {
    let mut engine = Engine::new(
        NodeId::from_u128(1),
        "billing".to_owned(),
        Config::default(),
        7,
    );
    let hello = PeerHello {
        node: NodeId::from_u128(2),
        service: "orders".to_owned(),
        addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        listen_addrs: Vec::new(),
        dialed: false,
        pinned: true,
    };
    let (conn, _) = engine.connection_up(hello, now);
    engine.set_handler("charge".to_owned(), 1);
    (engine, conn)
}

/// A run of `messages` numbered from `first_seq`, as one frame.
fn run(messages: &[&Message], first_seq: u64, ordered: bool) -> Frame {
    Frame::Messages(Box::new(Messages {
        first_seq,
        head: Head::of(&messages[0].env, To::Handler, true, ordered),
        items: messages.iter().map(|m| Item::of(&m.env)).collect(),
    }))
}

/// The handler runs the engine asks for now: their tasks and messages' ids.
fn runs(engine: &mut Engine<u8>) -> Vec<(TaskId, MessageId)> {
    std::iter::from_fn(|| engine.poll_action())
        .filter_map(|action| match action {
            Action::Run(run) => Some((run.task, run.message.id())),
            _ => None,
        })
        .collect()
}

/// What `engine` writes on `conn` now: the acknowledged numbers, and the refusals.
fn written(
    engine: &mut Engine<u8>,
    conn: ConnId,
    now: Instant,
) -> (Vec<u64>, Vec<(u64, NackCode)>) {
    let mut buf = BytesMut::new();
    while engine.poll_transmit(conn, &mut buf, 256 * 1024, now).more {}
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    while let Some(frame) = codec::decode(&mut buf, &Default::default()).unwrap() {
        match frame {
            Frame::Ack(ack) => acked.extend(ack.ranges.into_iter().flat_map(SeqRange::iter)),
            Frame::Nack(nack) => refused.push((nack.seq, nack.code)),
            _ => {}
        }
    }
    (acked, refused)
}

#[test]
fn a_batch_handled_before_is_acknowledged_again_without_running_its_handler() {
    let now = Instant::now();
    let (mut engine, conn) = billing(now);
    let events: Vec<Message> = (0..3)
        .map(|i| Message::command("charge", format!("order-{i}")))
        .collect();
    let batch: Vec<&Message> = events.iter().collect();
    engine.handle_frame(conn, run(&batch, 0, true), now);
    let mut handled = Vec::new();
    // One at a time, in order: the next runs once the one before finished.
    for _ in 0..events.len() {
        let started = runs(&mut engine);
        assert_eq!(started.len(), 1, "one event of the batch at a time");
        let (task, id) = started[0];
        handled.push(id);
        engine.handler_done(task, Ok(Default::default()), now);
    }
    let ids: Vec<MessageId> = events.iter().map(Message::id).collect();
    assert_eq!(handled, ids);
    assert_eq!(written(&mut engine, conn, now).0, vec![0, 1, 2]);

    // The batch again (its acks were lost): every event is acknowledged again, none runs.
    engine.handle_frame(conn, run(&batch, 3, true), now);
    assert!(runs(&mut engine).is_empty(), "no handler ran again");
    assert_eq!(written(&mut engine, conn, now), (vec![3, 4, 5], vec![]));
    assert_eq!(engine.stats().duplicates, 3);
}

#[test]
fn a_batch_stops_at_an_event_another_delivery_is_handling() {
    let now = Instant::now();
    let (mut engine, conn) = billing(now);
    let [a, b, c] = ["a", "b", "c"].map(|n| Message::command("charge", n));
    // `b` came alone first, and its handler runs on.
    engine.handle_frame(conn, run(&[&b], 0, false), now);
    let (b_task, b_id) = runs(&mut engine)[0];
    assert_eq!(b_id, b.id());

    engine.handle_frame(conn, run(&[&a, &b, &c], 1, true), now);
    let (a_task, a_id) = runs(&mut engine)[0];
    assert_eq!(a_id, a.id());
    engine.handler_done(a_task, Ok(Default::default()), now);
    assert!(
        runs(&mut engine).is_empty(),
        "the batch does not get ahead of `b`"
    );
    let (acked, refused) = written(&mut engine, conn, now);
    assert_eq!(acked, vec![1], "`a` is done");
    assert_eq!(
        refused,
        vec![(2, NackCode::HandlerFailed), (3, NackCode::Skipped)],
        "`b` is refused for a retry, `c` skipped"
    );

    // `b`'s own delivery finishes and is acknowledged.
    engine.handler_done(b_task, Ok(Default::default()), now);
    assert_eq!(written(&mut engine, conn, now), (vec![0], vec![]));
}
