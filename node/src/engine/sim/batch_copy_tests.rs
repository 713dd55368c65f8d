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
use crate::handler::HandlerError;

/// A `billing` engine with a handler for `charge` and one connection, from `orders`.
pub(super) fn billing(now: Instant) -> (Engine<u8>, ConnId) {
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
pub(super) fn run(messages: &[&Message], first_seq: u64, ordered: bool) -> Frame {
    Frame::Messages(Box::new(Messages {
        first_seq,
        head: Head::of(&messages[0].env, To::Handler, true, ordered),
        items: messages.iter().map(|m| Item::of(&m.env)).collect(),
    }))
}

/// The handler runs the engine asks for now: their tasks and messages' ids (each message
/// handed over with a run's first, [`crate::engine::Run::more`], too).
fn runs(engine: &mut Engine<u8>) -> Vec<(TaskId, MessageId)> {
    handed_over(engine).into_iter().flatten().collect()
}

/// The handler runs the engine asks for now, one list per [`Action::Run`]: its task and the
/// ids of its messages, in order.
pub(super) fn handed_over(engine: &mut Engine<u8>) -> Vec<Vec<(TaskId, MessageId)>> {
    std::iter::from_fn(|| engine.poll_action())
        .filter_map(|action| match action {
            Action::Run(mut run) => {
                let following = std::iter::from_fn(|| run.more.as_mut()?.message());
                let ids = std::iter::once(run.message.id()).chain(following.map(|m| m.id()));
                Some(ids.map(|id| (run.task, id)).collect())
            }
            _ => None,
        })
        .collect()
}

/// What `engine` writes on `conn` now: the acknowledged numbers, and the refusals.
pub(super) fn written(
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
    // Handed over together, in order (the driver runs each once the one before it
    // succeeded, and reports each).
    let started = handed_over(&mut engine);
    assert_eq!(started.len(), 1, "one run of handlers for the batch");
    let handled: Vec<MessageId> = started[0].iter().map(|(_, id)| *id).collect();
    let ids: Vec<MessageId> = events.iter().map(Message::id).collect();
    assert_eq!(handled, ids);
    for (task, _) in &started[0] {
        engine.handler_done(*task, Ok(Default::default()), now);
    }
    assert!(runs(&mut engine).is_empty(), "nothing else runs");
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

#[test]
fn a_failure_refuses_the_events_handed_over_after_it_and_forgets_them() {
    let now = Instant::now();
    let (mut engine, conn) = billing(now);
    let events: Vec<Message> = (0..4)
        .map(|i| Message::command("charge", format!("order-{i}")))
        .collect();
    let batch: Vec<&Message> = events.iter().collect();
    engine.handle_frame(conn, run(&batch, 0, true), now);
    let started = runs(&mut engine);
    assert_eq!(started.len(), 4, "the whole batch is handed over");
    let task = started[0].0;
    // The first succeeds, the second fails: the driver runs none after it.
    engine.handler_done(task, Ok(Default::default()), now);
    engine.handler_done(task, Err(HandlerError::retryable("database down")), now);
    assert_eq!(
        written(&mut engine, conn, now),
        (
            vec![0],
            vec![
                (1, NackCode::HandlerFailed),
                (2, NackCode::Skipped),
                (3, NackCode::Skipped)
            ]
        ),
        "the events after the failure are skipped"
    );
    assert_eq!(engine.stats().handled, 1);
    // The sender retries them in order: they run, as events never handled here.
    engine.handle_frame(conn, run(&batch[1..], 4, true), now);
    let again: Vec<MessageId> = runs(&mut engine).iter().map(|(_, id)| *id).collect();
    let ids: Vec<MessageId> = events[1..].iter().map(Message::id).collect();
    assert_eq!(again, ids, "the skipped events were forgotten");
}

#[test]
fn a_copy_waiting_for_a_handed_over_event_is_refused_with_it() {
    let now = Instant::now();
    let (mut engine, conn) = billing(now);
    let [a, b, c] = ["a", "b", "c"].map(|n| Message::command("charge", n));
    engine.handle_frame(conn, run(&[&a, &b, &c], 0, true), now);
    let started = runs(&mut engine);
    assert_eq!(started.len(), 3);
    // A copy of `c` alone (another delivery of it) waits for the batch's.
    engine.handle_frame(conn, run(&[&c], 3, false), now);
    assert!(runs(&mut engine).is_empty(), "the copy waits");
    engine.handler_done(started[0].0, Err(HandlerError::retryable("busy")), now);
    assert_eq!(
        written(&mut engine, conn, now),
        (
            vec![],
            vec![
                (0, NackCode::HandlerFailed),
                (1, NackCode::Skipped),
                (2, NackCode::Skipped),
                (3, NackCode::Skipped)
            ]
        ),
        "the waiting copy is answered, not left waiting"
    );
    assert_eq!(engine.stats().duplicates, 1);
}
