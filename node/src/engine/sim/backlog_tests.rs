//! A peer's handler slots ([`crate::NodeBuilder::max_concurrent_handlers`]): a message that
//! finds them taken waits, parked in its task, and reading from the peer pauses until a
//! slot frees; then the waiting messages run, each once, in the order they came.

#![cfg(test)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::{Handled, Sim};
use crate::config::Config;
use crate::engine::Done;

const HANDLING: Duration = Duration::from_millis(10);

#[test]
fn messages_beyond_the_handler_slots_wait_and_each_runs_once_in_order() {
    let mut sim = Sim::new(41);
    let orders = sim.node("orders");
    let slots = Config {
        max_concurrent_handlers: 2,
        ..Config::default()
    };
    let billing = sim.node_with("billing", slots);
    let ran = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&ran);
    sim.handle(billing, "charge", move |msg| {
        seen.borrow_mut().push(msg.payload().clone());
        Handled::ok_after(HANDLING)
    });
    sim.connect(orders, billing);
    let ops: Vec<_> = (0..6)
        .map(|i| {
            let msg = sim.command("charge", format!("order-{i}"));
            sim.send(orders, "billing", msg)
        })
        .collect();
    let start = sim.elapsed();
    assert!(sim.run_for(Duration::from_secs(1)));
    for op in ops {
        match sim.result(orders, op) {
            Some(Ok(Done::Sent(receipt))) => assert_eq!(receipt.attempts, 1),
            other => panic!("not acknowledged once: {other:?}"),
        }
    }
    let expected: Vec<_> = (0..6).map(|i| format!("order-{i}")).collect();
    assert_eq!(*ran.borrow(), expected);
    // Two at a time: three rounds of handling.
    let took = sim.elapsed() - start;
    assert!(took >= 3 * HANDLING, "{took:?}");
}
