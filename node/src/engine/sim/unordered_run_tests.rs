//! An unordered run's messages go to their handler together (`receive/unordered.rs`): each is
//! still acknowledged or refused on its own, a failure stops nothing, and handlers that wait
//! still run side by side, within the peer's handler slots.

#![cfg(test)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use super::{Handled, Sim};
use crate::MessageId;
use crate::config::Config;
use crate::handler::HandlerError;

const SECOND: Duration = Duration::from_secs(1);

/// `orders` and an `audit` subscriber group of one instance, built with `config`, whose
/// handler does what `handle` says for each event's payload; the payloads it was called
/// with, counted, are returned.
fn audit_with(
    seed: u64,
    config: Config,
    handle: impl Fn(&str) -> Handled + 'static,
) -> (Sim, usize, Rc<RefCell<HashMap<String, u32>>>) {
    let mut sim = Sim::new(seed);
    let orders = sim.node("orders");
    let audit = sim.node_with("audit", config);
    sim.connect(orders, audit);
    let calls = Rc::new(RefCell::new(HashMap::new()));
    let seen = Rc::clone(&calls);
    sim.subscribe(audit, "order.*", Some("audit"), move |message| {
        let payload = String::from_utf8_lossy(message.payload()).into_owned();
        *seen.borrow_mut().entry(payload.clone()).or_default() += 1;
        handle(&payload)
    });
    assert!(sim.run_for(SECOND));
    (sim, orders, calls)
}

/// Publishes events `0..n` in the background from `node`: all but the first are staged and
/// go as one unordered run. Returns their ids.
fn publish_run(sim: &mut Sim, node: usize, n: usize) -> Vec<MessageId> {
    (0..n)
        .map(|i| {
            let event = sim.event("order.created", i.to_string());
            sim.publish_background(node, event)
                .expect("a background publish returns at once")
        })
        .collect()
}

#[test]
fn a_failed_event_of_an_unordered_run_stops_none_of_the_others() {
    let (mut sim, orders, calls) = audit_with(71, Config::default(), |payload| {
        if payload == "7" {
            Handled::fail(HandlerError::permanent("not this one"))
        } else {
            Handled::ok()
        }
    });
    publish_run(&mut sim, orders, 20);
    assert!(sim.run_for(SECOND));
    let calls = calls.borrow();
    for i in 0..20 {
        assert_eq!(
            calls.get(&i.to_string()),
            Some(&1),
            "event {i} handled once"
        );
    }
    let stats = sim.nodes[orders].engine.stats();
    // In an ordered run the events after the failed one are refused and sent again.
    assert_eq!(stats.retries, 0, "nothing was refused but the failed one");
    assert_eq!(stats.dead_lettered, 1, "the failed one is dead-lettered");
}

/// The handler runs of `sim`, as (started, ended) since the start, in the order they began.
fn spans(sim: &Sim) -> Vec<(Duration, Duration)> {
    let start = sim.now - sim.elapsed();
    let mut spans: Vec<_> = sim
        .runs
        .iter()
        .map(|run| (run.started - start, run.ended - start))
        .collect();
    spans.sort();
    spans
}

/// The most handler runs of `spans` under way at once.
fn most_at_once(spans: &[(Duration, Duration)]) -> usize {
    spans
        .iter()
        .map(|(at, _)| spans.iter().filter(|(s, e)| s <= at && at < e).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn handlers_that_wait_in_an_unordered_run_run_side_by_side() {
    let slow = Duration::from_millis(10);
    let (mut sim, orders, calls) =
        audit_with(72, Config::default(), move |_| Handled::ok_after(slow));
    publish_run(&mut sim, orders, 16);
    assert!(sim.run_for(SECOND));
    assert!(calls.borrow().values().all(|n| *n == 1));
    assert_eq!(calls.borrow().len(), 16);
    let spans = spans(&sim);
    assert_eq!(spans.len(), 16);
    // The first event went alone; the other 15 came together, and each waited 10 ms: one
    // after the other they would take 150 ms, and two would be under way at once.
    assert!(most_at_once(&spans) >= 15, "{spans:?}");
    assert_eq!(sim.nodes[orders].engine.stats().retries, 0);
}

#[test]
fn handlers_that_wait_in_an_unordered_run_keep_to_the_peers_slots() {
    let config = Config {
        max_concurrent_handlers: 2,
        ..Config::default()
    };
    let slow = Duration::from_millis(10);
    let (mut sim, orders, calls) = audit_with(73, config, move |_| Handled::ok_after(slow));
    publish_run(&mut sim, orders, 9);
    assert!(sim.run_for(SECOND));
    assert_eq!(calls.borrow().len(), 9);
    assert!(calls.borrow().values().all(|n| *n == 1));
    let spans = spans(&sim);
    assert_eq!(most_at_once(&spans), 2, "{spans:?}");
    assert_eq!(sim.nodes[orders].engine.stats().retries, 0);
    assert_eq!(
        sim.nodes[orders].engine.out.ops.len(),
        0,
        "all acknowledged"
    );
}

#[test]
fn a_handler_that_waits_holds_up_none_of_the_events_after_it() {
    let slow = Duration::from_millis(10);
    let (mut sim, orders, calls) = audit_with(74, Config::default(), move |payload| {
        if payload == "3" {
            Handled::ok_after(slow)
        } else {
            Handled::ok()
        }
    });
    let start = sim.now;
    let ids = publish_run(&mut sim, orders, 12);
    assert!(sim.run_for(SECOND));
    assert_eq!(calls.borrow().len(), 12);
    let ended = |id: MessageId| {
        let run = sim.runs.iter().find(|r| r.id == id).expect("handled");
        run.ended - start
    };
    let waited = ended(ids[3]);
    assert!(waited >= slow, "{waited:?}");
    for (i, id) in ids.iter().enumerate().skip(4) {
        let at = ended(*id);
        assert!(
            at < waited,
            "event {i} ended at {at:?}, after event 3 at {waited:?}"
        );
    }
}

#[test]
fn a_copy_in_an_unordered_run_holds_up_none_of_the_messages_after_it() {
    use super::batch_copy_tests::{billing, handed_over, run, written};
    let now = std::time::Instant::now();
    let (mut engine, conn) = billing(now);
    let [a, c, d, e] = ["a", "c", "d", "e"].map(|p| crate::Message::command("charge", p));
    // `a` alone; its handler is still running when the next run brings a copy of it.
    engine.handle_frame(conn, run(&[&a], 0, false), now);
    let first = handed_over(&mut engine);
    assert_eq!(first.len(), 1);
    let (a_task, _) = first[0][0];
    engine.handle_frame(conn, run(&[&c, &a, &d, &e], 1, false), now);
    // `c` goes to the handler; the copy of `a` waits for `a`'s handler; `d` and `e` do not
    // wait behind `c`: each runs now, in a task of its own.
    let started = handed_over(&mut engine);
    let ids: Vec<Vec<MessageId>> = started
        .iter()
        .map(|r| r.iter().map(|(_, id)| *id).collect())
        .collect();
    assert_eq!(ids, vec![vec![c.id()], vec![d.id()], vec![e.id()]]);
    for (task, _) in started.iter().flatten() {
        engine.handler_done(*task, Ok(Default::default()), now);
    }
    assert_eq!(written(&mut engine, conn, now), (vec![1, 3, 4], vec![]));
    // `a` finishes: it and its copy are acknowledged.
    engine.handler_done(a_task, Ok(Default::default()), now);
    assert_eq!(written(&mut engine, conn, now), (vec![0, 2], vec![]));
    assert!(handed_over(&mut engine).is_empty(), "nothing ran twice");
}
