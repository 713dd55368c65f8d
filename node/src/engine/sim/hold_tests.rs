//! Events held for a group whose last instance left, on the simulated network.

#![cfg(test)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::{Handled, Sim};
use crate::PublishOptions;
use crate::engine::send::Publishing;
use crate::engine::{Done, OpId};

const SECOND: Duration = Duration::from_secs(1);

/// A new instance of `billing` that records the payloads it handles, connected to `orders`.
fn billing_again(sim: &mut Sim, orders: usize) -> Rc<RefCell<Vec<String>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let billing = sim.node("billing");
    let s = Rc::clone(&seen);
    sim.subscribe(billing, "orders.created", Some("billing"), move |m| {
        s.borrow_mut()
            .push(String::from_utf8_lossy(m.payload()).into_owned());
        Handled::ok()
    });
    sim.connect(orders, billing);
    seen
}

fn waiting(result: Result<Publishing, crate::Error>) -> OpId {
    match result {
        Ok(Publishing::Waiting(op)) => op,
        other => panic!("not waiting for its receipt: {other:?}"),
    }
}

fn published(sim: &Sim, node: usize, op: OpId) -> usize {
    match sim.result(node, op) {
        Some(Ok(Done::Published(receipt))) => receipt.deliveries.len(),
        other => panic!("not published: {other:?}"),
    }
}

/// The last instance of a group shuts down: an event published after its goodbye arrived,
/// before its connection is gone, is held for the group (not unrouted), and goes to the next
/// instance.
#[test]
fn an_event_published_between_the_last_instances_goodbye_and_its_close_is_held() {
    let mut sim = Sim::new(53);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.subscribe(billing, "orders.created", Some("billing"), |_| {
        Handled::ok()
    });
    sim.connect(orders, billing);
    assert!(sim.run_for(SECOND));
    let now = sim.now;
    sim.nodes[billing].engine.begin_shutdown(now);
    sim.nodes[billing].engine.say_goodbye(now);
    sim.settle();
    // Step by step, until `orders` has the goodbye (the close comes at a later instant).
    let mut steps = 0;
    while !sim.nodes[orders].engine.conns.values().any(|c| c.leaving) {
        let at = sim.next_time().expect("the goodbye is on its way");
        sim.now = sim.now.max(at);
        sim.step();
        steps += 1;
        assert!(steps < 1000, "no goodbye");
    }
    assert_eq!(sim.nodes[orders].engine.conns.len(), 1, "not closed yet");
    let event = sim.event("orders.created", "during-goodbye");
    let op = waiting(sim.publish(orders, vec![event], &PublishOptions::default()));
    assert_eq!(sim.nodes[orders].engine.stats().events_unrouted, 0);
    sim.run_for(5 * SECOND);
    assert!(sim.result(orders, op).is_none(), "held");
    let seen = billing_again(&mut sim, orders);
    sim.run_for(SECOND);
    assert_eq!(published(&sim, orders, op), 1);
    assert_eq!(*seen.borrow(), ["during-goodbye"]);
}
