//! Configured durations of `Duration::MAX` ("forever") on the simulated network: every
//! instant the engine computes from one saturates instead of overflowing (it used to panic
//! inside the caller's publish, or while a lost connection was handled). And a message that
//! finds no room says which limit was full.

#![cfg(test)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::tests::counting;
use super::{Handled, Sim};
use crate::config::Config;
use crate::engine::send::Publishing;
use crate::engine::{Done, OpId};
use crate::{Error, PublishOptions, RetryPolicy};

const SECOND: Duration = Duration::from_secs(1);

/// `orders` and an `audit` instance subscribed to `order.*` in group `audit`, which then
/// crashes: the group is remembered with no live instance, so copies for it are held.
fn audit_gone(sim: &mut Sim, orders_config: Config) -> usize {
    let orders = sim.node_with("orders", orders_config);
    let audit = sim.node("audit");
    sim.connect(orders, audit);
    sim.subscribe(audit, "order.*", Some("audit"), |_| Handled::ok());
    assert!(sim.run_for(SECOND));
    sim.crash(audit, Duration::from_millis(10));
    sim.run_for(SECOND);
    orders
}

/// Publishes one event from `orders` with `options`; the operation waits for its receipt.
fn publish_waiting(sim: &mut Sim, orders: usize, options: &PublishOptions) -> OpId {
    let event = sim.event("order.created", "o-1");
    match sim.publish(orders, vec![event], options) {
        Ok(Publishing::Waiting(op)) => op,
        other => panic!("publish: {other:?}"),
    }
}

#[test]
fn copies_held_for_duration_max_wait_for_an_instance_and_then_go() {
    let mut sim = Sim::new(71);
    let config = Config {
        event_hold: Duration::MAX,
        ..Config::default()
    };
    let orders = audit_gone(&mut sim, config);
    // The node's hold, then the publish's own: both used to overflow `created + hold`.
    let by_node = publish_waiting(&mut sim, orders, &PublishOptions::default());
    let by_publish = publish_waiting(
        &mut sim,
        orders,
        &PublishOptions::default().hold_for(Duration::MAX),
    );
    // Past the default hold (30 s) and retry deadline (30 s), within the group's memory.
    sim.run_for(Duration::from_secs(120));
    assert!(sim.result(orders, by_node).is_none(), "still held");
    assert!(sim.result(orders, by_publish).is_none(), "still held");
    // An instance of the group comes back: the held copies go.
    let again = sim.node("audit");
    let count = Rc::new(Cell::new(0));
    sim.subscribe(again, "order.*", Some("audit"), counting(&count));
    sim.connect(orders, again);
    sim.run_for(SECOND);
    assert_eq!(count.get(), 2);
    for op in [by_node, by_publish] {
        assert!(
            matches!(sim.result(orders, op), Some(Ok(Done::Published(_)))),
            "{:?}",
            sim.result(orders, op)
        );
    }
}

#[test]
fn a_group_remembered_for_duration_max_stays_an_audience_after_its_instance_leaves() {
    let mut sim = Sim::new(72);
    let config = Config {
        remember_groups: Duration::MAX,
        ..Config::default()
    };
    // The crash used to panic while the lost connection was handled (`now + remember`).
    let orders = audit_gone(&mut sim, config);
    let op = publish_waiting(&mut sim, orders, &PublishOptions::default());
    sim.run_for(SECOND);
    assert_eq!(sim.nodes[orders].engine.stats().events_unrouted, 0);
    assert!(
        sim.result(orders, op).is_none(),
        "held for the remembered group"
    );
}

#[test]
fn a_full_write_queue_with_an_ack_timeout_of_duration_max_does_not_overflow() {
    let mut sim = Sim::new(73);
    let config = Config {
        // Any message fills the queue: the watch on a full queue starts for each.
        max_queued_bytes: 1,
        retry: RetryPolicy {
            ack_timeout: Duration::MAX,
            ..RetryPolicy::default()
        },
        ..Config::default()
    };
    let orders = sim.node_with("orders", config);
    let billing = sim.node("billing");
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", counting(&count));
    sim.connect(orders, billing);
    let msg = sim.command("charge", "order-1");
    let op = sim.send(orders, "billing", msg);
    // Not quiet: the watch on the full queue has its (century-long) timer.
    sim.run_for(SECOND);
    assert!(
        matches!(sim.result(orders, op), Some(Ok(Done::Sent(_)))),
        "{:?}",
        sim.result(orders, op)
    );
    assert_eq!(count.get(), 1);
}

#[test]
fn a_message_that_finds_the_write_queue_full_says_so_in_its_dead_letter() {
    let mut sim = Sim::new(74);
    let config = Config {
        // The queue is at its cap from the start (NodeBuilder refuses 0; the engine's rule
        // is the same for a queue a stalled peer filled).
        max_queued_bytes: 0,
        retry: RetryPolicy {
            max_attempts: 2,
            deadline: Duration::from_secs(3),
            ack_timeout: Duration::from_millis(500),
            ..RetryPolicy::default()
        },
        ..Config::default()
    };
    let orders = sim.node_with("orders", config);
    let billing = sim.node("billing");
    sim.handle(billing, "charge", |_| Handled::ok());
    sim.connect(orders, billing);
    let msg = sim.command("charge", "order-1");
    let op = sim.send(orders, "billing", msg);
    assert!(sim.run_for(Duration::from_secs(10)));
    let billing_id = sim.nodes[billing].engine.id();
    match sim.result(orders, op) {
        Some(Err(Error::DeadLettered(letter))) => {
            let why = &letter.last_failure;
            assert!(why.contains("write queue"), "{why}");
            assert!(why.contains("max_queued_bytes 0"), "{why}");
            assert!(why.contains(&billing_id.to_string()), "{why}");
            assert!(!why.contains("in flight"), "{why}");
        }
        other => panic!("not dead-lettered: {other:?}"),
    }
}
