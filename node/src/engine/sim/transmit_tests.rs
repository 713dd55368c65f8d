//! When the engine says a write is best done at once ([`Engine::write_at_once`]): on a
//! connection nothing was written to for a while, so a lone message (or an ack) leaves from the
//! task that queued it; not on one written to a moment ago, so the writer's turn gathers what
//! queues meanwhile. And when it says its messages travel in batches
//! ([`Engine::take_batched`], what busy polling under load starts on).
//!
//! [`Engine::write_at_once`]: crate::engine::Engine::write_at_once
//! [`Engine::take_batched`]: crate::engine::Engine::take_batched

#![cfg(test)]

use std::time::Duration;

use super::{Handled, Sim};
use crate::Message;
use crate::engine::{Action, ConnId};

/// `node` sends a command to `billing` straight into its engine; for each write the call asked
/// for, whether at once (nothing is acted on).
fn writes_asked(sim: &mut Sim, node: usize) -> Vec<bool> {
    let msg = sim.command("charge", "x");
    let now = sim.now;
    let engine = &mut sim.nodes[node].engine;
    engine
        .send("billing", msg, &Default::default(), now)
        .expect("send refused");
    let mut writes = Vec::new();
    while let Some(action) = engine.poll_action() {
        if let Action::Transmit(conn) = action {
            writes.push(engine.write_at_once(conn, now));
        }
    }
    writes
}

/// What the connection's writer does: takes every byte queued on `conn`, and the network
/// carries them.
fn writer_turn(sim: &mut Sim, node: usize, conn: ConnId) {
    sim.transmit(node, conn);
    sim.settle();
}

#[test]
fn a_message_on_a_quiet_connection_is_written_at_once_and_one_right_behind_it_waits() {
    let mut sim = Sim::new(3);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    let (conn, _) = sim.connect(orders, billing);
    assert!(sim.run_for(Duration::from_secs(1)));

    assert_eq!(writes_asked(&mut sim, orders), [true], "quiet: at once");
    writer_turn(&mut sim, orders, conn);
    assert_eq!(
        writes_asked(&mut sim, orders),
        [false],
        "written to a moment ago: the writer's turn"
    );
    writer_turn(&mut sim, orders, conn);
    // Both handled and acknowledged, and nothing written since: quiet again.
    assert!(sim.run_for(Duration::from_secs(1)));
    assert_eq!(writes_asked(&mut sim, orders), [true]);
}

#[test]
fn the_engine_is_quiet_only_when_its_driver_has_nothing_to_act_on() {
    let mut sim = Sim::new(31);
    let (shop, billing) = (sim.node("shop"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    let (conn, _) = sim.connect(shop, billing);
    sim.run_for(Duration::from_secs(1));
    let engine = &mut sim.nodes[shop].engine;
    assert!(engine.is_quiet(), "a settled engine");
    let now = sim.now;
    let msg = Message::command("charge", "order 7");
    engine
        .send("billing", msg, &Default::default(), now)
        .expect("sent");
    assert!(
        !engine.is_quiet(),
        "the send's connection waits to be written"
    );
    while engine.poll_action().is_some() {}
    // The ack's deadline is earlier than any the driver knew: its timer must move.
    assert!(!engine.is_quiet(), "the timer must move");
    assert!(engine.timer_moved());
    assert!(engine.is_quiet(), "every action taken, the timer moved");
    // Framing the write leaves nothing else to act on.
    let mut buf = bytes::BytesMut::new();
    engine.poll_transmit(conn, &mut buf, 64 * 1024, now);
    assert!(!buf.is_empty(), "the message was framed");
    assert!(
        engine.is_quiet(),
        "framing the write left something to act on"
    );
    // A second message: its deadline is no earlier than the first's, but its write waits.
    let msg = Message::command("charge", "order 8");
    engine
        .send("billing", msg, &Default::default(), now)
        .expect("sent");
    assert!(!engine.timer_moved());
    assert!(!engine.is_quiet(), "the second write waits");
    while engine.poll_action().is_some() {}
    assert!(engine.is_quiet());
    // A stopping node's driver watches it go idle: never quiet then.
    engine.begin_shutdown(now);
    while engine.poll_action().is_some() {}
    engine.timer_moved();
    assert!(!engine.is_quiet(), "a stopping engine");
}

/// `node` queues `count` commands to `billing` straight in its engine; their writes wait for
/// the writer's turn (the actions are taken, not acted on).
fn queue_commands(sim: &mut Sim, node: usize, count: usize) {
    for n in 0..count {
        let msg = sim.command("charge", format!("order {n}"));
        let now = sim.now;
        let engine = &mut sim.nodes[node].engine;
        engine
            .send("billing", msg, &Default::default(), now)
            .expect("send refused");
        while engine.poll_action().is_some() {}
    }
}

#[test]
fn messages_written_and_read_together_say_the_node_is_under_load_and_lone_ones_do_not() {
    let mut sim = Sim::new(37);
    let (shop, billing) = (sim.node("shop"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    let (conn, _) = sim.connect(shop, billing);
    assert!(sim.run_for(Duration::from_secs(1)));
    for node in [shop, billing] {
        sim.nodes[node].engine.take_batched();
    }

    // One message: written alone, read alone, acknowledged alone.
    queue_commands(&mut sim, shop, 1);
    writer_turn(&mut sim, shop, conn);
    assert!(sim.run_for(Duration::from_secs(1)));
    assert_eq!(sim.handled, 1);
    assert!(
        !sim.nodes[shop].engine.take_batched(),
        "one message written"
    );
    assert!(
        !sim.nodes[billing].engine.take_batched(),
        "one message read"
    );

    // Two queued before the writer's turn: one frame of two.
    queue_commands(&mut sim, shop, 2);
    writer_turn(&mut sim, shop, conn);
    assert!(
        sim.nodes[shop].engine.take_batched(),
        "two messages written"
    );
    assert!(!sim.nodes[shop].engine.take_batched(), "told once");
    assert!(sim.run_for(Duration::from_secs(1)));
    assert_eq!(sim.handled, 3);
    assert!(
        sim.nodes[billing].engine.take_batched(),
        "two messages read"
    );
}
