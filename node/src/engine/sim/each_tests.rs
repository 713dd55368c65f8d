//! Separate calls' messages that travel as one operation (`send/each.rs`): one delivery per
//! destination for all of them, and each message's fate its own.

#![cfg(test)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use super::{Faults, Handled, Sim};
use crate::engine::{Done, OpId};
use crate::handler::HandlerError;
use crate::{Error, Message, MessageId, PublishOptions, PublishReceipt};

const SECOND: Duration = Duration::from_secs(1);

/// What a handler saw: (payload number, attempt) of each run.
type Log = Rc<RefCell<Vec<(u32, u32)>>>;

/// Events `0..n` on `order.created`, each with its number as payload.
fn events(sim: &mut Sim, n: u32) -> Vec<Message> {
    (0..n)
        .map(|i| sim.event("order.created", i.to_string()))
        .collect()
}

/// `node` publishes `events` as separate calls' events; the operation waits for them.
fn publish_each(sim: &mut Sim, node: usize, events: Vec<Message>) -> OpId {
    match sim.publish_each(node, events) {
        Ok(super::super::send::Publishing::Waiting(op)) => op,
        other => panic!("publish_each: {other:?}"),
    }
}

/// Each event's result.
fn results(result: Option<&Result<Done, Error>>) -> &[Result<PublishReceipt, Error>] {
    match result {
        Some(Ok(Done::PublishedEach(each))) => each,
        other => panic!("not separate events' results: {other:?}"),
    }
}

/// A subscriber's handler that logs (payload number, attempt) and answers with `answer`.
fn logging(
    log: &Log,
    answer: impl Fn(u32, u32) -> Handled + 'static,
) -> impl Fn(&Message) -> Handled + 'static {
    let log = Rc::clone(log);
    move |msg| {
        let n: u32 = String::from_utf8_lossy(msg.payload())
            .parse()
            .expect("a number");
        log.borrow_mut().push((n, msg.attempt()));
        answer(n, msg.attempt())
    }
}

/// An `orders` node and a `ledger` subscriber (group `ledger`) answering with `answer`, with
/// its log; the subscription is known to `orders`.
fn orders_and_ledger(
    sim: &mut Sim,
    answer: impl Fn(u32, u32) -> Handled + 'static,
) -> (usize, usize, Log) {
    let (orders, ledger) = (sim.node("orders"), sim.node("ledger"));
    sim.connect(orders, ledger);
    let log = Rc::default();
    sim.subscribe(ledger, "order.*", Some("ledger"), logging(&log, answer));
    sim.run_for(SECOND);
    (orders, ledger, log)
}

/// Asserts that `log` holds messages `0..n` once each, in their first attempt.
fn assert_handled_once(log: &Log, n: u32) {
    let mut seen = log.borrow().clone();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..n).map(|m| (m, 1)).collect::<Vec<_>>(),
        "each once"
    );
}

#[test]
fn separate_events_share_a_delivery_per_audience_and_each_gets_its_own_receipt() {
    let mut sim = Sim::new(301);
    let (orders, ledger, audit) = (sim.node("orders"), sim.node("ledger"), sim.node("audit"));
    sim.connect(orders, ledger);
    sim.connect(orders, audit);
    let (ledger_log, audit_log) = (Rc::default(), Rc::default());
    sim.subscribe(
        ledger,
        "order.*",
        Some("ledger"),
        logging(&ledger_log, |_, _| Handled::ok()),
    );
    sim.subscribe(
        audit,
        "order.*",
        None,
        logging(&audit_log, |_, _| Handled::ok()),
    );
    sim.run_for(SECOND);
    let events = events(&mut sim, 10);
    let ids: Vec<MessageId> = events.iter().map(Message::id).collect();
    let op = publish_each(&mut sim, orders, events);
    assert_eq!(
        sim.nodes[orders].engine.out.deliveries.len(),
        2,
        "one delivery per audience for the ten events, not one per event and audience"
    );
    assert!(sim.run_for(SECOND));
    let results = results(sim.result(orders, op));
    assert_eq!(results.len(), 10);
    for (result, id) in results.iter().zip(&ids) {
        let receipt = result.as_ref().expect("delivered");
        assert_eq!(receipt.id, *id, "each caller's receipt names its own event");
        assert_eq!(receipt.deliveries.len(), 2, "both audiences: {receipt:?}");
    }
    for log in [&ledger_log, &audit_log] {
        assert_handled_once(log, 10);
    }
}

#[test]
fn a_refused_event_is_dead_lettered_alone_and_the_others_are_handled() {
    let mut sim = Sim::new(302);
    let (orders, _, log) = orders_and_ledger(&mut sim, |n, _| {
        if n == 3 {
            Handled::fail(HandlerError::permanent("no such order"))
        } else {
            // Still running when the refusal comes: the others' answers come after it.
            Handled::ok_after(Duration::from_millis(5))
        }
    });
    let events = events(&mut sim, 8);
    let refused = events[3].id();
    let op = publish_each(&mut sim, orders, events);
    assert!(sim.run_for(SECOND));
    let results = results(sim.result(orders, op));
    for (n, result) in results.iter().enumerate() {
        match (n, result) {
            (3, Err(Error::DeadLettered(letter))) => {
                assert_eq!(letter.message.id(), refused);
                assert!(letter.last_failure.contains("no such order"), "{letter}");
            }
            (3, other) => panic!("event 3: {other:?}"),
            (_, Ok(receipt)) => assert_eq!(receipt.deliveries.len(), 1),
            (n, Err(e)) => panic!("event {n} failed with the refused one: {e}"),
        }
    }
    assert_eq!(sim.nodes[orders].engine.dead_letters().len(), 1);
    assert_handled_once(&log, 8);
}

#[test]
fn a_retryable_refusal_retries_that_event_alone() {
    let mut sim = Sim::new(303);
    let (orders, ledger, log) = orders_and_ledger(&mut sim, |n, attempt| {
        if n == 2 && attempt == 1 {
            Handled::fail(HandlerError::retryable("database busy"))
        } else {
            Handled::ok_after(Duration::from_millis(5))
        }
    });
    let events = events(&mut sim, 6);
    let op = publish_each(&mut sim, orders, events);
    assert!(sim.run_for(5 * SECOND));
    assert!(results(sim.result(orders, op)).iter().all(Result::is_ok));
    let mut seen = log.borrow().clone();
    seen.sort_unstable();
    let expected: Vec<(u32, u32)> = (0..6)
        .flat_map(|n| {
            if n == 2 {
                vec![(2, 1), (2, 2)]
            } else {
                vec![(n, 1)]
            }
        })
        .collect();
    assert_eq!(
        seen, expected,
        "the others were answered before the retry, which carried the refused event only"
    );
    let ledger_stats = sim.nodes[ledger].engine.stats();
    assert_eq!(
        ledger_stats.duplicates, 0,
        "nothing sent again that was handled"
    );
}

#[test]
fn separate_events_through_loss_and_duplication_are_each_handled_once() {
    for seed in 310..316 {
        let mut sim = Sim::new(seed);
        let (orders, ledger) = (sim.node("orders"), sim.node("ledger"));
        let faults = Faults {
            loss: 0.2,
            duplicate: 0.2,
            ..Faults::default()
        };
        sim.connect_with(orders, ledger, faults);
        let log = Rc::default();
        sim.subscribe(
            ledger,
            "order.*",
            Some("ledger"),
            logging(&log, |_, _| Handled::ok()),
        );
        sim.run_for(SECOND);
        let events = events(&mut sim, 40);
        let op = publish_each(&mut sim, orders, events);
        assert!(sim.run_for(30 * SECOND), "seed {seed}: never settled");
        let results = results(sim.result(orders, op));
        assert!(
            results.iter().all(Result::is_ok),
            "seed {seed}: {results:?}"
        );
        let mut handled: Vec<u32> = log.borrow().iter().map(|(n, _)| *n).collect();
        handled.sort_unstable();
        assert_eq!(
            handled,
            (0..40).collect::<Vec<_>>(),
            "seed {seed}: each once"
        );
    }
}

#[test]
fn separate_events_nobody_subscribes_to_are_done_at_once() {
    let mut sim = Sim::new(304);
    let orders = sim.node("orders");
    let events = events(&mut sim, 3);
    let published = sim.publish_each(orders, events);
    match published {
        Ok(super::super::send::Publishing::Done(receipt)) => {
            assert!(receipt.deliveries.is_empty())
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.nodes[orders].engine.out.ops.is_empty());
}

#[test]
fn events_that_cannot_travel_together_are_refused_and_left_to_go_alone() {
    let mut sim = Sim::new(305);
    let orders = sim.node("orders");
    let now = sim.now;
    let plain = sim.event("order.created", "2");
    let mut crowded = sim.event("order.created", "3");
    for n in 0..=crate::config::Config::default().limits.max_headers {
        crowded = crowded.with_header(format!("h{n}"), "v");
    }
    let engine = &mut sim.nodes[orders].engine;
    for (events, options) in [
        (Vec::new(), PublishOptions::default()),
        (vec![plain.clone()], PublishOptions::best_effort()),
        (vec![plain.clone()], PublishOptions::background()),
        (vec![plain, crowded], PublishOptions::default()),
    ] {
        let count = events.len();
        let mut events = events.into();
        let published = engine.publish_each(&mut events, &options, now);
        assert!(
            matches!(published, Err(Error::InvalidBatch(_))),
            "{published:?}"
        );
        assert_eq!(events.len(), count, "nothing taken: each can go alone");
    }
    assert!(engine.out.ops.is_empty());
}

/// Each command's result.
fn sent_each(result: Option<&Result<Done, Error>>) -> &[Result<crate::Receipt, Error>] {
    match result {
        Some(Ok(Done::SentEach(each))) => each,
        other => panic!("not separate commands' results: {other:?}"),
    }
}

#[test]
fn separate_commands_share_a_delivery_and_each_is_handled_once_with_its_own_receipt() {
    let mut sim = Sim::new(320);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.connect(orders, billing);
    let log = Rc::default();
    sim.handle(
        billing,
        "charge",
        logging(&log, |n, _| {
            if n == 4 {
                Handled::fail(HandlerError::permanent("card declined"))
            } else {
                Handled::ok_after(Duration::from_millis(5))
            }
        }),
    );
    let commands: Vec<Message> = (0..8)
        .map(|i| sim.command("charge", i.to_string()))
        .collect();
    let ids: Vec<MessageId> = commands.iter().map(Message::id).collect();
    let op = sim.send_each(orders, "billing", commands).expect("sent");
    assert_eq!(sim.nodes[orders].engine.out.deliveries.len(), 1);
    assert!(sim.run_for(SECOND));
    let billing_id = sim.nodes[billing].engine.id();
    for (n, (result, id)) in sent_each(sim.result(orders, op))
        .iter()
        .zip(&ids)
        .enumerate()
    {
        match result {
            Ok(receipt) => {
                assert_ne!(n, 4, "the declined command was acknowledged");
                assert_eq!(
                    (receipt.id, receipt.node, receipt.attempts),
                    (*id, billing_id, 1)
                );
            }
            Err(Error::DeadLettered(letter)) if n == 4 => assert_eq!(letter.message.id(), *id),
            Err(e) => panic!("command {n}: {e}"),
        }
    }
    assert_handled_once(&log, 8);
}

/// The others fail over to another instance, together; each receipt names the instance that
/// handled its command.
#[test]
fn a_command_acknowledged_before_its_instance_failed_names_that_instance() {
    let mut sim = Sim::new(322);
    let orders = sim.node("orders");
    let (b1, b2) = (sim.node("billing"), sim.node("billing"));
    // b1 finishes command 0 at once and is still at the others when it crashes.
    sim.handle(b1, "charge", |msg| {
        if msg.payload().as_ref() == b"0" {
            Handled::ok()
        } else {
            Handled::ok_after(10 * SECOND)
        }
    });
    sim.handle(b2, "charge", |_| Handled::ok());
    sim.connect(orders, b1);
    let commands: Vec<Message> = (0..3)
        .map(|i| sim.command("charge", i.to_string()))
        .collect();
    let op = sim.send_each(orders, "billing", commands).expect("sent");
    sim.connect(orders, b2);
    sim.run_for(Duration::from_millis(100));
    sim.crash(b1, Duration::from_millis(1500));
    sim.run_for(Duration::from_millis(1600));
    let (b1_id, b2_id) = (sim.nodes[b1].engine.id(), sim.nodes[b2].engine.id());
    let handled: Vec<_> = sent_each(sim.result(orders, op))
        .iter()
        .map(|r| r.as_ref().map(|r| (r.node, r.attempts)).expect("delivered"))
        .collect();
    assert_eq!(handled, [(b1_id, 1), (b2_id, 2), (b2_id, 2)]);
}
