//! Two nodes that dialled each other at once keep one connection; the other is closed as a
//! duplicate. What was in flight on the closed one goes again to the same instance over the
//! connection that won, where the instance's dedup window knows it, not to another instance,
//! which would run its handler a second time.

#![cfg(test)]

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use super::tests::{counting, sent};
use super::{Faults, Handled, Sim};
use crate::engine::Done;
use crate::engine::OpId;

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// `orders` with two `billing` instances; `charge` takes 1 ms to handle. Sends `count`
/// commands and runs until every handler ran but no ack has come back yet.
fn handled_but_not_acknowledged(seed: u64, count: usize) -> (Sim, [usize; 3], Vec<OpId>) {
    let mut sim = Sim::new(seed);
    let orders = sim.node("orders");
    let (b1, b2) = (sim.node("billing"), sim.node("billing"));
    for b in [b1, b2] {
        sim.handle(b, "charge", |_| Handled::ok_after(MS));
    }
    sim.connect(orders, b1);
    sim.connect(orders, b2);
    let ops: Vec<OpId> = (0..count)
        .map(|i| {
            let msg = sim.command("charge", format!("order-{i}"));
            sim.send(orders, "billing", msg)
        })
        .collect();
    // Links take 50 µs each way: at 1.08 ms every handler has run (from 1.05 ms), and the acks
    // are on their way back.
    sim.run_for(Duration::from_micros(1080));
    assert_eq!(sim.runs.len(), count, "every handler ran once");
    assert!(ops.iter().all(|op| sim.result(orders, *op).is_none()));
    (sim, [orders, b1, b2], ops)
}

/// Every message was acknowledged, some by `b1` (the instance whose connection closed), and
/// every handler ran exactly once.
fn acknowledged_by_b1_too_and_run_once(sim: &Sim, orders: usize, b1: usize, ops: &[OpId]) {
    let b1_id = sim.nodes[b1].engine.id();
    let on_b1 = ops
        .iter()
        .filter(|op| acknowledged_by(sim, orders, **op) == b1_id)
        .count();
    assert!(on_b1 > 0, "some messages were on the closed connection");
    let mut runs: HashMap<shoal_proto::MessageId, usize> = HashMap::new();
    for run in &sim.runs {
        *runs.entry(run.id).or_default() += 1;
    }
    assert_eq!(runs.len(), ops.len());
    assert!(
        runs.values().all(|n| *n == 1),
        "a handler ran twice: {runs:?}"
    );
}

fn acknowledged_by(sim: &Sim, node: usize, op: OpId) -> shoal_proto::NodeId {
    match sim.result(node, op) {
        Some(Ok(Done::Sent(receipt))) => receipt.node,
        other => panic!("not acknowledged: {other:?}"),
    }
}

/// The peer closes the connection as a duplicate before the winner is up on this side: the
/// messages wait for it, go to the same instance, and are acknowledged there without running
/// again.
#[test]
fn messages_in_flight_on_a_lost_duplicate_wait_for_the_winner_and_run_once() {
    let (mut sim, [orders, b1, _], ops) = handled_but_not_acknowledged(21, 20);
    sim.lose_as_duplicate(orders, b1);
    sim.run_for(10 * MS);
    sim.link_up(b1, orders, Default::default(), true)
        .expect("the winner is admitted");
    sim.run_for(Duration::from_secs(1));
    acknowledged_by_b1_too_and_run_once(&sim, orders, b1, &ops);
}

/// This node admits the winner, which displaces the connection the messages were on: they go
/// at once over the winner, to the same instance.
#[test]
fn messages_in_flight_on_a_displaced_connection_go_over_the_winner_and_run_once() {
    let (mut sim, [orders, b1, _], ops) = handled_but_not_acknowledged(22, 20);
    // orders dials b1 again (a redial racing a slow close): on both sides the newer
    // connection of the same dialer wins, and the one the messages were on is closed.
    sim.link_up(orders, b1, Default::default(), true)
        .expect("the newer connection wins");
    sim.run_for(Duration::from_secs(1));
    acknowledged_by_b1_too_and_run_once(&sim, orders, b1, &ops);
}

/// No winner comes (the instance went away right then): after the wait, the messages go to
/// the other instance, as after any lost connection.
#[test]
fn without_a_winner_messages_go_to_another_instance_after_the_wait() {
    let (mut sim, [orders, b1, b2], ops) = handled_but_not_acknowledged(23, 20);
    sim.lose_as_duplicate(orders, b1);
    sim.run_for(Duration::from_secs(2));
    let b2_id = sim.nodes[b2].engine.id();
    for op in &ops {
        assert_eq!(acknowledged_by(&sim, orders, *op), b2_id);
    }
}

#[test]
fn simultaneous_dials_leave_one_connection_on_both_sides() {
    let mut sim = Sim::new(14);
    let (a, b) = (sim.node("alpha"), sim.node("beta"));
    let first = sim.connect_with(a, b, Faults::default());
    let second = sim.connect_with(b, a, Faults::default());
    // Whichever connection the smaller node id dialled wins on both sides.
    let (id_a, id_b) = (sim.nodes[a].engine.id(), sim.nodes[b].engine.id());
    assert!(first.is_some());
    sim.run_for(SECOND);
    let peers_a = sim.nodes[a].engine.peers();
    let peers_b = sim.nodes[b].engine.peers();
    assert_eq!((peers_a.len(), peers_b.len()), (1, 1));
    let winner_dialled_by_a = id_a < id_b;
    assert_eq!(
        second.is_none(),
        winner_dialled_by_a,
        "the later dial loses iff a dialled first"
    );
    // Neither side told its users the peer went down.
    for node in [a, b] {
        let downs = sim.nodes[node]
            .events
            .iter()
            .filter(|e| matches!(e, crate::NodeEvent::PeerDown { .. }))
            .count();
        assert_eq!(downs, 0, "{:?}", sim.nodes[node].events);
    }
    // And messages flow over the one that is left.
    let count = Rc::new(Cell::new(0));
    sim.handle(b, "ping", counting(&count));
    let msg = sim.command("ping", "");
    let op = sim.send(a, "beta", msg);
    sim.run_for(SECOND);
    sent(sim.result(a, op));
}
