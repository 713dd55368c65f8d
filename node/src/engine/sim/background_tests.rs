//! Background publishing on the simulated network: the caller does not wait, the engine
//! keeps an operation only while one of its copies is on its way, and only so many at once.

#![cfg(test)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::tests::counting;
use super::{Handled, Sim};
use crate::config::Config;
use crate::engine::send::Publishing;
use crate::{Error, PublishOptions};

const SECOND: Duration = Duration::from_secs(1);

/// Publishes `n` background events on `topic` from `node`; each returns at once.
fn publish_in_background(sim: &mut Sim, node: usize, topic: &str, n: usize) {
    for i in 0..n {
        let event = sim.event(topic, i.to_string());
        match sim.publish(node, vec![event], &PublishOptions::background()) {
            Ok(Publishing::Done(receipt)) => assert!(receipt.deliveries.is_empty()),
            other => panic!("a background publish returns at once: {other:?}"),
        }
    }
}

#[test]
fn a_background_publish_nobody_subscribes_to_keeps_nothing() {
    let mut sim = Sim::new(41);
    let (orders, audit) = (sim.node("orders"), sim.node("audit"));
    sim.connect(orders, audit);
    assert!(sim.run_for(SECOND));
    publish_in_background(&mut sim, orders, "order.created", 100);
    assert!(sim.run_for(SECOND));
    // Before, each of these left its operation behind for good (nothing ever ended it).
    assert_eq!(sim.nodes[orders].engine.out.ops.len(), 0);
    assert_eq!(sim.nodes[orders].engine.stats().events_unrouted, 100);
}

#[test]
fn background_copies_are_delivered_and_then_forgotten() {
    let mut sim = Sim::new(42);
    let (orders, audit) = (sim.node("orders"), sim.node("audit"));
    sim.connect(orders, audit);
    let count = Rc::new(Cell::new(0));
    sim.subscribe(audit, "order.*", Some("audit"), counting(&count));
    assert!(sim.run_for(SECOND));
    publish_in_background(&mut sim, orders, "order.created", 100);
    assert!(sim.run_for(SECOND));
    assert_eq!(count.get(), 100);
    assert_eq!(sim.nodes[orders].engine.out.ops.len(), 0);
}

#[test]
fn background_publishes_past_the_cap_are_refused_until_copies_are_delivered() {
    let mut sim = Sim::new(43);
    let config = Config {
        max_background_publishes: 10,
        ..Config::default()
    };
    let orders = sim.node_with("orders", config);
    let audit = sim.node("audit");
    sim.connect(orders, audit);
    sim.subscribe(audit, "order.*", Some("audit"), |_| Handled::ok());
    assert!(sim.run_for(SECOND));
    // The group's only instance is gone: its copies are held, and pile up.
    sim.crash(audit, Duration::from_millis(10));
    sim.run_for(SECOND);
    publish_in_background(&mut sim, orders, "order.created", 10);
    let event = sim.event("order.created", "one too many");
    match sim.publish(orders, vec![event], &PublishOptions::background()) {
        Err(Error::Backlog { limit: 10 }) => {}
        other => panic!("the eleventh is refused: {other:?}"),
    }
    assert_eq!(
        sim.nodes[orders].engine.out.ops.len(),
        10,
        "the refused one is not kept"
    );
    assert_eq!(sim.nodes[orders].engine.stats().background_refused, 1);
    // An instance comes back: the held copies go, and there is room again.
    let again = sim.node("audit");
    let count = Rc::new(Cell::new(0));
    sim.subscribe(again, "order.*", Some("audit"), counting(&count));
    sim.connect(orders, again);
    sim.run_for(SECOND);
    assert_eq!(count.get(), 10);
    publish_in_background(&mut sim, orders, "order.created", 1);
    sim.run_for(SECOND);
    assert_eq!(count.get(), 11);
    assert_eq!(sim.nodes[orders].engine.out.ops.len(), 0);
}
