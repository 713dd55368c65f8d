//! Background publishing on the simulated network: the caller does not wait, the engine
//! keeps an operation only while one of its copies is on its way, and only so many events at
//! once; events published while others are on their way are staged and go together
//! (`send/staged.rs`).

#![cfg(test)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::tests::counting;
use super::{Faults, Handled, Sim};
use crate::config::Config;
use crate::engine::send::Publishing;
use crate::{BacklogLimit, Error, MessageId, PublishOptions};

const SECOND: Duration = Duration::from_secs(1);

/// Publishes `n` background events on `topic` from `node`, by either call in turn (they
/// differ only in what they return); each returns at once. Returns their ids.
fn publish_in_background(sim: &mut Sim, node: usize, topic: &str, n: usize) -> Vec<MessageId> {
    (0..n)
        .map(|i| {
            let event = sim.event(topic, i.to_string());
            let id = event.id();
            if i % 2 == 0 {
                match sim.publish_background(node, event) {
                    Ok(got) => assert_eq!(got, id),
                    Err(e) => panic!("a background publish returns at once: {e}"),
                }
                return id;
            }
            match sim.publish(node, vec![event], &PublishOptions::background()) {
                Ok(Publishing::Done(receipt)) => {
                    assert!(receipt.deliveries.is_empty());
                    assert_eq!(receipt.id, id);
                }
                other => panic!("a background publish returns at once: {other:?}"),
            }
            id
        })
        .collect()
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

/// `orders` built with `config`, and an `audit` subscriber group of one instance that counts
/// what it handles (the count returned).
fn orders_with(seed: u64, config: Config) -> (Sim, usize, usize, Rc<Cell<u32>>) {
    let mut sim = Sim::new(seed);
    let orders = sim.node_with("orders", config);
    let audit = sim.node("audit");
    sim.connect(orders, audit);
    let count = Rc::new(Cell::new(0));
    sim.subscribe(audit, "order.*", Some("audit"), counting(&count));
    assert!(sim.run_for(SECOND));
    (sim, orders, audit, count)
}

#[test]
fn background_publishes_past_the_cap_are_refused_until_copies_are_delivered() {
    let config = Config {
        max_background_publishes: 10,
        ..Config::default()
    };
    let (mut sim, orders, audit, _) = orders_with(43, config);
    // The group's only instance is gone: its copies are held, and pile up.
    sim.crash(audit, Duration::from_millis(10));
    sim.run_for(SECOND);
    publish_in_background(&mut sim, orders, "order.created", 10);
    let event = sim.event("order.created", "one too many");
    match sim.publish(orders, vec![event], &PublishOptions::background()) {
        Err(Error::Backlog {
            limit: BacklogLimit::Events(10),
        }) => {}
        other => panic!("the eleventh is refused: {other:?}"),
    }
    let event = sim.event("order.created", "one too many");
    match sim.publish_background(orders, event) {
        Err(Error::Backlog {
            limit: BacklogLimit::Events(10),
        }) => {}
        other => panic!("the eleventh is refused by publish_background: {other:?}"),
    }
    assert_eq!(
        sim.nodes[orders].engine.out.background_publishes(),
        10,
        "the refused ones are not kept"
    );
    assert_eq!(sim.nodes[orders].engine.stats().background_refused, 2);
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

/// `orders` with one subscriber group of `instances` instances of `audit` (each link with
/// `faults`), each run recorded in `sim.runs`.
fn orders_and_audit(seed: u64, instances: usize, faults: Faults) -> (Sim, usize, Vec<usize>) {
    let mut sim = Sim::new(seed);
    let orders = sim.node("orders");
    let audits: Vec<usize> = (0..instances).map(|_| sim.node("audit")).collect();
    for &audit in &audits {
        sim.subscribe(audit, "order.*", Some("audit"), |_| Handled::ok());
        sim.connect_with(orders, audit, faults.clone())
            .expect("connected");
    }
    assert!(sim.run_for(SECOND));
    (sim, orders, audits)
}

/// The ids of the events handled by `audit`'s subscription, each as often as it ran.
fn handled(sim: &Sim) -> Vec<MessageId> {
    let mut ids: Vec<MessageId> = sim
        .runs
        .iter()
        .filter(|r| r.label == "audit" && r.ok)
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// How many runs of `audit`'s subscription repeated an event on the instance that ran it
/// before.
fn twice_on_one_instance(sim: &Sim) -> usize {
    let mut runs: Vec<(usize, MessageId)> = sim
        .runs
        .iter()
        .filter(|r| r.label == "audit")
        .map(|r| (r.node, r.id))
        .collect();
    let all = runs.len();
    runs.sort_unstable();
    runs.dedup();
    all - runs.len()
}

/// Publishes `n` background events on `order.created`; returns their ids, sorted.
fn publish_ids(sim: &mut Sim, orders: usize, n: usize) -> Vec<MessageId> {
    let mut ids = publish_in_background(sim, orders, "order.created", n);
    ids.sort_unstable();
    ids
}

#[test]
fn background_events_published_while_others_travel_go_as_one_operation() {
    let (mut sim, orders, _) = orders_and_audit(44, 1, Faults::default());
    let ids = publish_ids(&mut sim, orders, 100);
    let engine = &sim.nodes[orders].engine;
    // The first went at once; the 99 published while it travelled wait for the turn's end.
    assert_eq!(engine.out.ops.len(), 1);
    assert_eq!(engine.out.background_publishes(), 100);
    assert!(sim.run_for(SECOND));
    assert!(handled(&sim) == ids, "each handled once");
    let engine = &sim.nodes[orders].engine;
    assert_eq!(engine.stats().gathered, 99, "one operation for the 99");
    assert_eq!(engine.stats().published, 100);
    assert_eq!(engine.out.ops.len(), 0);
    assert_eq!(engine.out.background_publishes(), 0);
    // Nothing on its way: the next goes at once again.
    publish_ids(&mut sim, orders, 1);
    assert_eq!(sim.nodes[orders].engine.out.ops.len(), 1);
}

#[test]
fn a_staged_event_hears_the_errors_it_would_hear_alone_at_once() {
    let policy = crate::policy::Policy::builder()
        .publish("orders", ["order.*"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(45);
    let orders = sim.node_with("orders", super::tests::with(&policy));
    let audit = sim.node("audit");
    sim.subscribe(audit, "order.*", Some("audit"), |_| Handled::ok());
    sim.connect(orders, audit);
    assert!(sim.run_for(SECOND));
    publish_ids(&mut sim, orders, 2);
    for (topic, what) in [("invoice.paid", "forbidden"), ("order..bad", "a bad topic")] {
        let event = sim.event(topic, "x");
        match sim.publish(orders, vec![event], &PublishOptions::background()) {
            Err(Error::NotAuthorized(_)) if what == "forbidden" => {}
            Err(Error::Topic(_)) if what == "a bad topic" => {}
            other => panic!("{what}: {other:?}"),
        }
        let event = sim.event(topic, "x");
        match sim.publish_background(orders, event) {
            Err(Error::NotAuthorized(_)) if what == "forbidden" => {}
            Err(Error::Topic(_)) if what == "a bad topic" => {}
            other => panic!("{what}, publish_background: {other:?}"),
        }
    }
    assert_eq!(sim.nodes[orders].engine.out.background_publishes(), 2);
    let now = sim.now;
    sim.nodes[orders].engine.begin_shutdown(now);
    let event = sim.event("order.created", "after the stop");
    assert!(matches!(
        sim.publish(orders, vec![event], &PublishOptions::background()),
        Err(Error::ShuttingDown)
    ));
    let event = sim.event("order.created", "after the stop");
    assert!(matches!(
        sim.publish_background(orders, event),
        Err(Error::ShuttingDown)
    ));
}

#[test]
fn keyed_background_events_are_handled_in_the_order_they_were_published() {
    let faults = Faults {
        loss: 0.1,
        ..Faults::default()
    };
    let config = super::tests::patient();
    let mut sim = Sim::new(53);
    let orders = sim.node_with("orders", config);
    for _ in 0..2 {
        let audit = sim.node("audit");
        sim.subscribe(audit, "order.*", Some("audit"), |_| Handled::ok());
        sim.connect_with(orders, audit, faults.clone())
            .expect("connected");
    }
    assert!(sim.run_for(SECOND));
    let ids: Vec<MessageId> = (0..30)
        .map(|i| {
            let event = sim
                .event("order.created", i.to_string())
                .with_key("customer-7");
            let id = event.id();
            match sim.publish_background(orders, event) {
                Ok(got) => assert_eq!(got, id),
                Err(e) => panic!("event {i}: {e}"),
            }
            id
        })
        .collect();
    // Keyed: none was staged, each waits for its key's turn.
    assert_eq!(sim.nodes[orders].engine.out.staged.count(), 0);
    sim.run_for(600 * SECOND);
    // In the order they ran (`handled` sorts).
    let mut seen: Vec<MessageId> = sim
        .runs
        .iter()
        .filter(|r| r.label == "audit" && r.ok)
        .map(|r| r.id)
        .collect();
    seen.dedup();
    assert!(
        seen == ids,
        "in the order published: {} of {}",
        seen.len(),
        ids.len()
    );
    let engine = &sim.nodes[orders].engine;
    assert_eq!(engine.stats().dead_lettered, 0);
    assert_eq!(engine.out.background_publishes(), 0);
}

#[test]
fn staged_events_through_loss_and_duplication_are_all_handled_never_twice_on_one_instance() {
    for seed in 46..52 {
        let faults = Faults {
            loss: 0.2,
            duplicate: 0.2,
            ..Faults::default()
        };
        let (mut sim, orders, _) = orders_and_audit(seed, 2, faults);
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.extend(publish_ids(&mut sim, orders, 40));
            sim.run_for(Duration::from_millis(1));
        }
        ids.sort_unstable();
        assert!(sim.run_for(60 * SECOND), "seed {seed}: never settled");
        // A copy whose ack was lost may be retried on the other instance, not on the same.
        let mut seen = handled(&sim);
        seen.dedup();
        assert!(seen == ids, "seed {seed}: not every event was handled");
        assert_eq!(
            twice_on_one_instance(&sim),
            0,
            "seed {seed}: handled twice on one instance"
        );
        let engine = &sim.nodes[orders].engine;
        assert!(engine.stats().gathered > 100, "seed {seed}: staged");
        assert_eq!(engine.stats().dead_lettered, 0, "seed {seed}");
        assert_eq!(engine.out.ops.len(), 0, "seed {seed}");
    }
}

#[test]
fn staged_events_fail_over_alone_when_their_instance_crashes() {
    let (mut sim, orders, audits) = orders_and_audit(52, 2, Faults::default());
    let ids = publish_ids(&mut sim, orders, 60);
    sim.crash(audits[0], Duration::from_millis(10));
    assert!(sim.run_for(60 * SECOND));
    let mut seen = handled(&sim);
    seen.dedup();
    assert!(seen == ids, "not every event was handled");
    let moved = sim.runs.iter().filter(|r| r.node == audits[1]).count();
    assert!(
        moved >= 30,
        "the crashed instance's share went to the other: {moved}"
    );
    assert_eq!(twice_on_one_instance(&sim), 0);
    assert_eq!(sim.nodes[orders].engine.stats().dead_lettered, 0);
}

#[test]
fn a_node_that_stops_publishes_what_it_staged() {
    // Graceful: the staged events are delivered.
    let (mut sim, orders, _) = orders_and_audit(53, 1, Faults::default());
    let ids = publish_ids(&mut sim, orders, 30);
    let now = sim.now;
    sim.nodes[orders].engine.begin_shutdown(now);
    assert!(sim.run_for(SECOND));
    assert!(handled(&sim) == ids, "each handled once");
    // Killed: they are dead letters, as every background copy not delivered.
    let (mut sim, orders, _) = orders_and_audit(54, 1, Faults::default());
    publish_ids(&mut sim, orders, 30);
    let now = sim.now;
    sim.nodes[orders].engine.kill(now);
    let engine = &sim.nodes[orders].engine;
    assert_eq!(engine.stats().dead_lettered, 30);
    assert!(
        engine
            .dead_letters()
            .iter()
            .all(|l| l.last_failure.contains("the node stopped")),
        "{:?}",
        engine.dead_letters()
    );
    assert_eq!(engine.out.background_publishes(), 0);
}

#[test]
fn background_events_past_the_byte_cap_are_refused_but_a_large_one_alone_goes() {
    let config = Config {
        max_background_bytes: 1000,
        ..Config::default()
    };
    let (mut sim, orders, _, count) = orders_with(55, config);
    // Held: a first event of 600 bytes (on its way), then a staged one of 300.
    for size in [600, 300] {
        let event = sim.event("order.created", vec![1u8; size]);
        sim.publish(orders, vec![event], &PublishOptions::background())
            .expect("room");
    }
    let event = sim.event("order.created", vec![1u8; 200]);
    match sim.publish(orders, vec![event], &PublishOptions::background()) {
        Err(Error::Backlog {
            limit: BacklogLimit::Bytes(1000),
        }) => {}
        other => panic!("past 1000 bytes: {other:?}"),
    }
    assert_eq!(sim.nodes[orders].engine.stats().background_refused, 1);
    assert!(sim.run_for(SECOND));
    assert_eq!(count.get(), 2);
    // Nothing held: an event larger than the cap goes, alone.
    let event = sim.event("order.created", vec![1u8; 5000]);
    sim.publish(orders, vec![event], &PublishOptions::background())
        .expect("a large event goes when nothing else is held");
    assert!(sim.run_for(SECOND));
    assert_eq!(count.get(), 3);
    assert_eq!(sim.nodes[orders].engine.out.background_bytes(), 0);
}

#[test]
fn an_event_too_large_for_the_frames_is_not_staged_and_fails_at_once() {
    let mut config = Config::default();
    config.limits.max_frame_len = 4096;
    let (mut sim, orders, _, count) = orders_with(56, config);
    publish_in_background(&mut sim, orders, "order.created", 1);
    // Frames this small hold no message travelling with others: each goes alone, and one
    // that does not fit fails its own call, as it would with nothing on its way.
    let event = sim.event("order.created", vec![1u8; 8000]);
    assert!(
        sim.publish(orders, vec![event], &PublishOptions::background())
            .is_err(),
        "refused at the call"
    );
    publish_in_background(&mut sim, orders, "order.created", 3);
    assert_eq!(sim.nodes[orders].engine.out.staged.count(), 0);
    assert!(sim.run_for(SECOND));
    assert_eq!(count.get(), 4);
}

#[test]
fn events_on_many_topics_are_staged_for_a_few_topics_and_the_others_go_at_once() {
    let (mut sim, orders, _) = orders_and_audit(57, 1, Faults::default());
    let mut ids = Vec::new();
    for n in 0..100 {
        let event = sim.event(&format!("order.n{n}"), "x");
        ids.push(event.id());
        sim.publish(orders, vec![event], &PublishOptions::background())
            .expect("taken");
    }
    let engine = &sim.nodes[orders].engine;
    assert_eq!(
        engine.out.staged.count(),
        64,
        "one event on each of 64 topics"
    );
    assert_eq!(
        engine.out.ops.len(),
        36,
        "the first, and those past 64 topics"
    );
    ids.sort_unstable();
    assert!(sim.run_for(SECOND));
    assert!(handled(&sim) == ids, "each handled once");
}

#[test]
fn more_staged_events_than_an_operation_holds_go_as_several() {
    let n = crate::options::MAX_BATCH_EVENTS + 50;
    // More than the default cap (one peer's window) held at once.
    let config = Config {
        max_background_publishes: 2 * n,
        ..Config::default()
    };
    let (mut sim, orders, _, _) = orders_with(58, config);
    let ids = publish_ids(&mut sim, orders, n + 1);
    assert_eq!(sim.nodes[orders].engine.out.staged.count(), n);
    // One operation at a time: the engine is not held for all of them at once.
    let now = sim.now;
    assert!(sim.nodes[orders].engine.send_staged(now), "more left");
    assert_eq!(sim.nodes[orders].engine.out.staged.count(), 50);
    assert!(sim.run_for(10 * SECOND));
    assert!(handled(&sim) == ids, "each handled once");
    assert_eq!(sim.nodes[orders].engine.out.background_publishes(), 0);
}
