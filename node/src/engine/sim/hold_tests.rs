//! Events held for a group whose last instance left, on the simulated network: keyed events
//! behind a held one, a group whose last instance is saying goodbye, and what holding many
//! events costs while the peers change.

#![cfg(test)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use super::tests::{counting, dead_letter};
use super::{Handled, Sim};
use crate::PublishOptions;
use crate::engine::send::Publishing;
use crate::engine::{Done, OpId};
use crate::handler::HandlerError;

const SECOND: Duration = Duration::from_secs(1);

/// `billing` subscribed to `orders.created` as group `billing` and crashed: the group is
/// remembered by `orders`.
fn departed_billing(seed: u64) -> (Sim, usize) {
    departed(seed, "billing", "orders.created")
}

/// An instance of `group` (its service too) subscribed to `pattern` as that group and
/// crashed: the group is remembered by `orders`.
fn departed(seed: u64, group: &str, pattern: &str) -> (Sim, usize) {
    let mut sim = Sim::new(seed);
    let (orders, gone) = (sim.node("orders"), sim.node(group));
    sim.subscribe(gone, pattern, Some(group), |_| Handled::ok());
    sim.connect(orders, gone);
    assert!(sim.run_for(SECOND));
    sim.crash(gone, Duration::from_millis(10));
    assert!(sim.run_for(SECOND));
    (sim, orders)
}

/// `count` events with one key (`e0`, `e1`, ...) published by `orders`, each held for `hold`
/// and waiting for its receipt.
fn keyed_events(sim: &mut Sim, orders: usize, count: usize, hold: Duration) -> Vec<OpId> {
    let options = PublishOptions::default().hold_for(hold);
    (0..count)
        .map(|i| {
            let event = sim
                .event("orders.created", format!("e{i}"))
                .with_key("customer-7");
            waiting(sim.publish(orders, vec![event], &options))
        })
        .collect()
}

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
        Some(Ok(Done::Published(receipt))) => {
            assert!(receipt.dropped.is_empty(), "dropped: {:?}", receipt.dropped);
            receipt.deliveries.len()
        }
        other => panic!("not published: {other:?}"),
    }
}

/// Keyed events for a departed group, held for 120 s (longer than the 30 s retry deadline):
/// the first is held, and those behind it wait for their turn as long, not only until their
/// retry deadline. The group comes back after 62 s: all three are handled, in order.
#[test]
fn keyed_events_behind_a_held_one_are_held_as_long_as_it() {
    let (mut sim, orders) = departed_billing(51);
    let ops = keyed_events(&mut sim, orders, 3, 120 * SECOND);
    sim.run_for(60 * SECOND);
    for op in &ops {
        assert!(
            sim.result(orders, *op).is_none(),
            "held after 60 s, past the retry deadline: {:?}",
            sim.result(orders, *op)
        );
    }
    let seen = billing_again(&mut sim, orders);
    sim.run_for(10 * SECOND);
    for op in ops {
        assert_eq!(published(&sim, orders, op), 1);
    }
    assert_eq!(*seen.borrow(), ["e0", "e1", "e2"], "in order, once each");
}

/// Keyed events behind a held one that never gets an instance: dead-lettered at the end of
/// the hold, saying why.
#[test]
fn keyed_events_behind_a_held_one_are_dead_lettered_at_the_end_of_the_hold() {
    let (mut sim, orders) = departed_billing(52);
    let ops = keyed_events(&mut sim, orders, 2, 45 * SECOND);
    sim.run_for(44 * SECOND);
    assert!(ops.iter().all(|op| sim.result(orders, *op).is_none()));
    sim.run_for(2 * SECOND);
    for op in ops {
        match sim.result(orders, op) {
            Some(Err(crate::Error::DeadLettered(letter))) => {
                assert!(letter.last_failure.contains("held"), "{letter}");
            }
            other => panic!("not dead-lettered: {other:?}"),
        }
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

/// A thousand background events held for a departed group while another peer subscribes and
/// unsubscribes a hundred times: each change wakes the waiting deliveries, and each keeps one
/// timer (the heap does not grow by a timer per delivery per change).
#[test]
fn held_deliveries_keep_one_timer_each_however_often_the_peers_change() {
    let (mut sim, orders) = departed_billing(54);
    let other = sim.node("other");
    sim.connect(orders, other);
    assert!(sim.run_for(SECOND));
    let options = PublishOptions::background().hold_for(Duration::from_secs(3600));
    for i in 0..1000 {
        let event = sim.event("orders.created", format!("e{i}"));
        sim.publish(orders, vec![event], &options)
            .expect("published");
    }
    sim.run_for(SECOND);
    let before = sim.nodes[orders].engine.timers.len();
    assert!(before >= 1000, "one timer per held delivery: {before}");
    for _ in 0..100 {
        let sub = sim.subscribe(other, "audit.x", Some("audit"), |_| Handled::ok());
        sim.nodes[other].engine.unsubscribe(sub);
        sim.settle();
        sim.run_for(Duration::from_millis(10));
    }
    let after = sim.nodes[orders].engine.timers.len();
    assert_eq!(
        sim.nodes[orders].engine.out.waiting.len(),
        1000,
        "still held"
    );
    assert!(
        after <= before + 10,
        "the timer heap grew from {before} to {after} over 200 changes of the peers"
    );
}

/// An event held for 2 minutes (past its 30 s retry deadline, within a 5 minute hold) whose
/// first attempt once an instance is back fails with a retryable nack: it is retried and
/// handled, not dead-lettered at once, because a held delivery's retry deadline counts from
/// the end of its wait for an instance.
#[test]
fn a_held_event_whose_first_attempt_fails_gets_its_retries() {
    let (mut sim, orders) = departed_billing(55);
    let options = PublishOptions::default().hold_for(300 * SECOND);
    let event = sim.event("orders.created", "late");
    let op = waiting(sim.publish(orders, vec![event], &options));
    sim.run_for(120 * SECOND);
    assert!(sim.result(orders, op).is_none(), "held");
    let billing = sim.node("billing");
    let calls = Rc::new(Cell::new(0));
    let c = Rc::clone(&calls);
    sim.subscribe(billing, "orders.created", Some("billing"), move |_| {
        c.set(c.get() + 1);
        if c.get() == 1 {
            Handled::fail(HandlerError::retryable("warming up"))
        } else {
            Handled::ok()
        }
    });
    sim.connect(orders, billing);
    sim.run_for(10 * SECOND);
    assert_eq!(calls.get(), 2, "{:?}", sim.result(orders, op));
    assert_eq!(published(&sim, orders, op), 1);
}

/// Keyed events held for 62 s (past their 30 s retry deadline) behind a held one: when each
/// gets its turn, its first attempt fails with a retryable nack, and it is retried (its wait
/// for its turn was a hold too), so both are handled, in order.
#[test]
fn a_keyed_event_held_behind_another_gets_its_retries_when_its_turn_comes() {
    let (mut sim, orders) = departed_billing(57);
    let ops = keyed_events(&mut sim, orders, 2, 120 * SECOND);
    sim.run_for(60 * SECOND);
    let billing = sim.node("billing");
    let calls = Rc::new(RefCell::new(Vec::new()));
    let c = Rc::clone(&calls);
    sim.subscribe(billing, "orders.created", Some("billing"), move |m| {
        let payload = String::from_utf8_lossy(m.payload()).into_owned();
        let first = !c.borrow().contains(&payload);
        c.borrow_mut().push(payload);
        if first {
            Handled::fail(HandlerError::retryable("warming up"))
        } else {
            Handled::ok()
        }
    });
    sim.connect(orders, billing);
    sim.run_for(20 * SECOND);
    for op in ops {
        assert_eq!(published(&sim, orders, op), 1);
    }
    assert_eq!(*calls.borrow(), ["e0", "e0", "e1", "e1"]);
}

/// A 2-hour hold outlasts the group's memory (`remember_groups_for`, 10 minutes by
/// default): the group stays remembered while the copy is held for it, so an instance back
/// after an hour gets the copy (it used to be listed as dropped).
#[test]
fn a_group_is_remembered_while_copies_are_held_for_it() {
    let (mut sim, orders) = departed_billing(56);
    let options = PublishOptions::default().hold_for(2 * 3600 * SECOND);
    let event = sim.event("orders.created", "held-for-hours");
    let op = waiting(sim.publish(orders, vec![event], &options));
    sim.run_for(3600 * SECOND);
    assert!(sim.result(orders, op).is_none(), "held after an hour");
    let seen = billing_again(&mut sim, orders);
    sim.run_for(10 * SECOND);
    assert_eq!(published(&sim, orders, op), 1);
    assert_eq!(*seen.borrow(), ["held-for-hours"]);
}

#[test]
fn a_group_copy_is_held_until_an_instance_subscribes_again() {
    let (mut sim, orders) = departed(9, "invoice", "order.*");
    // The group is remembered: the copy waits for it.
    let event = sim.event("order.created", "1");
    let op = waiting(sim.publish(orders, vec![event], &PublishOptions::default()));
    sim.run_for(5 * SECOND);
    assert!(sim.result(orders, op).is_none(), "held");
    let again = sim.node("invoice");
    let count = Rc::new(Cell::new(0));
    sim.subscribe(again, "order.*", Some("invoice"), counting(&count));
    sim.connect(orders, again);
    sim.run_for(SECOND);
    match sim.result(orders, op) {
        Some(Ok(Done::Published(receipt))) => {
            assert_eq!(receipt.deliveries.len(), 1);
            assert_eq!(receipt.deliveries[0].node, sim.nodes[again].engine.id());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count.get(), 1);
}

#[test]
fn a_held_copy_is_dead_lettered_after_the_hold() {
    let (mut sim, orders) = departed(10, "invoice", "order.*");
    let event = sim.event("order.created", "1");
    let options = PublishOptions::default().hold_for(2 * SECOND);
    let op = waiting(sim.publish(orders, vec![event], &options));
    assert!(sim.run_for(10 * SECOND));
    let letter = dead_letter(sim.result(orders, op));
    assert_eq!(letter.group.as_deref(), Some("group `invoice`"));
    assert!(letter.last_failure.contains("no live instance"), "{letter}");
    assert!(
        sim.elapsed() < Duration::from_secs(4),
        "{:?}",
        sim.elapsed()
    );
}

#[test]
fn copies_held_for_a_remembered_group_go_when_it_subscribes() {
    let mut sim = Sim::new(11);
    let orders = sim.node("orders");
    let audit = sim.node("audit");
    sim.connect(orders, audit);
    let audit_count = Rc::new(Cell::new(0));
    sim.subscribe(audit, "order.*", Some("audit"), counting(&audit_count));
    sim.run_for(SECOND);
    let sub = shoal_proto::Subscription {
        pattern: "order.*".into(),
        group: Some("billing".into()),
    };
    let until = sim.now + Duration::from_secs(3600);
    let now = sim.now;
    sim.nodes[orders]
        .engine
        .remember_groups(vec![sub], until, now);
    sim.settle();
    let mut ops = Vec::new();
    for i in 0..600 {
        let event = sim.event("order.created", format!("{i}"));
        let options = PublishOptions::default().hold_for(Duration::from_secs(3600));
        ops.push(waiting(sim.publish(orders, vec![event], &options)));
    }
    sim.run_for(SECOND);
    assert_eq!(audit_count.get(), 600);
    let billing = sim.node("billing");
    let count = Rc::new(Cell::new(0));
    sim.connect(orders, billing);
    sim.run_for(SECOND);
    sim.subscribe(billing, "order.*", Some("billing"), counting(&count));
    sim.run_for(SECOND);
    assert_eq!(count.get(), 600);
    for op in ops {
        match sim.result(orders, op) {
            Some(Ok(Done::Published(receipt))) => assert_eq!(receipt.deliveries.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
