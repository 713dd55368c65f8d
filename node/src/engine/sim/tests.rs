//! The delivery protocol's rules, each on the simulated network: milliseconds of real time
//! per test, whatever the virtual time.

#![cfg(test)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::{Faults, Handled, Sim};
use crate::engine::Done;
use crate::handler::HandlerError;
use crate::{Error, PublishOptions};

const SECOND: Duration = Duration::from_secs(1);

/// A handler that counts its runs and succeeds.
pub(super) fn counting(count: &Rc<Cell<u32>>) -> impl Fn(&crate::Message) -> Handled + 'static {
    let count = Rc::clone(count);
    move |_| {
        count.set(count.get() + 1);
        Handled::ok()
    }
}

/// A node's config whose retries outlast heavy loss: keyed messages each wait for the one
/// before them, so one lost many times holds up the rest.
pub(super) fn patient() -> crate::config::Config {
    crate::config::Config {
        retry: crate::RetryPolicy {
            max_attempts: 1000,
            deadline: Duration::from_secs(3600),
            ..crate::RetryPolicy::default()
        },
        ..crate::config::Config::default()
    }
}

/// A node configuration with `policy`, and the defaults otherwise.
pub(super) fn with(policy: &crate::policy::Policy) -> crate::config::Config {
    crate::config::Config {
        policy: std::sync::Arc::new(policy.clone()),
        ..crate::config::Config::default()
    }
}

pub(super) fn sent(result: Option<&Result<Done, Error>>) -> crate::Receipt {
    match result {
        Some(Ok(Done::Sent(receipt))) => *receipt,
        other => panic!("not sent: {other:?}"),
    }
}

pub(super) fn dead_letter(result: Option<&Result<Done, Error>>) -> &crate::DeadLetter {
    match result {
        Some(Err(Error::DeadLettered(letter))) => letter,
        other => panic!("not dead-lettered: {other:?}"),
    }
}

#[test]
fn a_send_is_handled_once_and_acknowledged() {
    let mut sim = Sim::new(1);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", counting(&count));
    sim.connect(orders, billing);
    let msg = sim.command("charge", "order-1");
    let op = sim.send(orders, "billing", msg);
    assert!(sim.run_for(SECOND));
    let receipt = sent(sim.result(orders, op));
    assert_eq!(receipt.attempts, 1);
    assert_eq!(receipt.node, sim.nodes[billing].engine.id());
    assert_eq!(count.get(), 1);
}

#[test]
fn messages_sent_together_share_frames_and_acks() {
    let mut sim = Sim::new(2);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", counting(&count));
    sim.connect(orders, billing);
    let ops: Vec<_> = (0..500)
        .map(|i| {
            let msg = sim.command("charge", format!("order-{i}"));
            let now = sim.now;
            sim.nodes[orders]
                .engine
                .send("billing", msg, &Default::default(), now)
                .expect("sent")
        })
        .collect();
    sim.settle();
    assert!(sim.run_for(SECOND));
    for op in ops {
        sent(sim.result(orders, op));
    }
    assert_eq!(count.get(), 500);
    let frames = sim.net.frames();
    assert!(
        frames.messages <= 3 && frames.acks <= 3,
        "500 messages queued together travel in a few runs and are acked in a few frames: {frames:?}"
    );
}

#[test]
fn retryable_failures_are_retried_with_backoff() {
    let mut sim = Sim::new(3);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    let count = Rc::new(Cell::new(0));
    let runs = Rc::clone(&count);
    sim.handle(billing, "charge", move |_| {
        runs.set(runs.get() + 1);
        if runs.get() < 3 {
            Handled::fail(HandlerError::retryable("database busy"))
        } else {
            Handled::ok()
        }
    });
    sim.connect(orders, billing);
    let msg = sim.command("charge", "x");
    let op = sim.send(orders, "billing", msg);
    assert!(sim.run_for(10 * SECOND));
    assert_eq!(sent(sim.result(orders, op)).attempts, 3);
    assert_eq!(count.get(), 3);
    // Two backoffs of the default policy: at least 25 ms, then 50 ms.
    assert!(
        sim.elapsed() >= Duration::from_millis(75),
        "{:?}",
        sim.elapsed()
    );
    assert_eq!(sim.nodes[orders].engine.stats().retries, 2);
}

#[test]
fn a_permanent_failure_dead_letters_at_once() {
    let mut sim = Sim::new(4);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.handle(billing, "charge", |_| {
        Handled::fail(HandlerError::permanent("no such order"))
    });
    sim.connect(orders, billing);
    let msg = sim.command("charge", "x");
    let op = sim.send(orders, "billing", msg);
    assert!(sim.run_for(SECOND));
    let letter = dead_letter(sim.result(orders, op));
    assert_eq!(letter.attempts, 1);
    assert!(letter.last_failure.contains("no such order"), "{letter}");
    assert_eq!(sim.nodes[orders].engine.dead_letters().len(), 1);
}

#[test]
fn a_crashed_instance_s_messages_go_to_another() {
    let mut sim = Sim::new(5);
    let orders = sim.node("orders");
    let (b1, b2) = (sim.node("billing"), sim.node("billing"));
    sim.handle(b1, "charge", |_| Handled::ok_after(10 * SECOND));
    let count = Rc::new(Cell::new(0));
    sim.handle(b2, "charge", counting(&count));
    sim.connect(orders, b1);
    let msg = sim.command("charge", "x");
    let op = sim.send(orders, "billing", msg);
    sim.connect(orders, b2);
    sim.run_for(Duration::from_millis(100));
    assert!(sim.result(orders, op).is_none(), "b1 is still at it");
    sim.crash(b1, Duration::from_millis(1500));
    // The crash is noticed after 1.5 s; the retry goes to b2 at once, without a backoff.
    sim.run_for(Duration::from_millis(1600));
    let receipt = sent(sim.result(orders, op));
    assert_eq!(receipt.node, sim.nodes[b2].engine.id());
    assert_eq!(receipt.attempts, 2);
    assert_eq!(count.get(), 1);
}

#[test]
fn lost_and_duplicated_frames_never_run_a_handler_twice() {
    for (seed, faults) in [
        (
            6,
            Faults {
                loss: 0.2,
                ..Faults::default()
            },
        ),
        (
            7,
            Faults {
                duplicate: 1.0,
                ..Faults::default()
            },
        ),
        (
            8,
            Faults {
                loss: 0.1,
                duplicate: 0.3,
                jitter: Duration::from_millis(2),
                reorder: true,
                ..Faults::default()
            },
        ),
    ] {
        let mut sim = Sim::new(seed);
        let (orders, billing) = (sim.node("orders"), sim.node("billing"));
        let count = Rc::new(Cell::new(0));
        sim.handle(billing, "charge", counting(&count));
        sim.connect_with(orders, billing, faults.clone())
            .expect("connected");
        let mut ops = Vec::new();
        for i in 0..200 {
            let msg = sim.command("charge", format!("{i}"));
            ops.push(sim.send(orders, "billing", msg));
            sim.run_for(Duration::from_micros(200));
        }
        assert!(sim.run_for(60 * SECOND), "{faults:?}");
        for op in &ops {
            sent(sim.result(orders, *op));
        }
        assert_eq!(
            count.get(),
            200,
            "each handled exactly once under {faults:?}"
        );
    }
}

#[test]
fn a_request_gets_its_reply_and_a_retried_one_gets_the_kept_reply() {
    let mut sim = Sim::new(12);
    let (shop, pricing) = (sim.node("shop"), sim.node("pricing"));
    let count = Rc::new(Cell::new(0));
    let runs = Rc::clone(&count);
    sim.handle(pricing, "quote", move |_| {
        runs.set(runs.get() + 1);
        Handled::reply(format!("quote #{}", runs.get()))
    });
    // Requests and replies are lost a third of the time: the request is retried, the handler
    // runs once, and every retry gets the reply kept from that run. (An attempt gets through
    // both ways with a chance of about a half, so six of them all fail about once in 60.)
    let lossy = Faults {
        loss: 0.3,
        ..Faults::default()
    };
    sim.connect_with(shop, pricing, lossy).expect("connected");
    let msg = sim.command("quote", "book");
    let op = sim.request(shop, "pricing", msg);
    sim.run_for(60 * SECOND);
    match sim.result(shop, op) {
        Some(Ok(Done::Replied(reply))) => assert_eq!(reply.payload(), "quote #1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(count.get(), 1, "the handler ran once");
    assert!(
        sim.nodes[pricing].engine.stats().replies_resent >= 1,
        "no retry was answered with the kept reply"
    );
}

#[test]
fn a_failed_batch_resends_only_what_was_not_acknowledged_in_order() {
    let mut sim = Sim::new(13);
    let (orders, ledger) = (sim.node("orders"), sim.node("ledger"));
    let seen = Rc::new(std::cell::RefCell::new(Vec::new()));
    let failed = Rc::new(Cell::new(false));
    let (log, once) = (Rc::clone(&seen), Rc::clone(&failed));
    sim.connect(orders, ledger);
    sim.subscribe(ledger, "order.*", Some("ledger"), move |msg| {
        let n: u32 = String::from_utf8_lossy(msg.payload())
            .parse()
            .expect("a number");
        if n == 5 && !once.replace(true) {
            return Handled::fail(HandlerError::retryable("busy"));
        }
        log.borrow_mut().push((n, msg.attempt()));
        Handled::ok()
    });
    sim.run_for(SECOND);
    let events: Vec<_> = (0..10)
        .map(|i| sim.event("order.created", i.to_string()))
        .collect();
    let op = match sim.publish(orders, events, &PublishOptions::default()) {
        Ok(super::super::send::Publishing::Waiting(op)) => op,
        other => panic!("{other:?}"),
    };
    sim.run_for(5 * SECOND);
    match sim.result(orders, op) {
        Some(Ok(Done::Published(receipt))) => assert_eq!(receipt.deliveries[0].attempts, 2),
        other => panic!("{other:?}"),
    }
    let seen = seen.borrow().clone();
    let expected: Vec<(u32, u32)> = (0..10).map(|n| (n, if n < 5 { 1 } else { 2 })).collect();
    assert_eq!(
        seen, expected,
        "each once, in order; the retry carried 5..9 only"
    );
    assert_eq!(sim.nodes[ledger].engine.stats().duplicates, 0);
}

#[test]
fn a_stopping_node_refuses_new_messages_and_finishes_what_it_runs() {
    let mut sim = Sim::new(15);
    let orders = sim.node("orders");
    let (b1, b2) = (sim.node("billing"), sim.node("billing"));
    let (c1, c2) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let slow = Rc::clone(&c1);
    sim.handle(b1, "charge", move |_| {
        slow.set(slow.get() + 1);
        Handled::ok_after(Duration::from_millis(200))
    });
    sim.handle(b2, "charge", counting(&c2));
    sim.connect(orders, b1);
    let first = sim.command("charge", "1");
    let running = sim.send(orders, "billing", first);
    sim.run_for(Duration::from_millis(10));
    let now = sim.now;
    sim.nodes[b1].engine.begin_shutdown(now);
    sim.connect(orders, b2);
    // Sent while b1 stops: refused there, retried on b2 at once.
    let second = sim.command("charge", "2");
    let refused = sim.send(orders, "billing", second);
    sim.run_for(Duration::from_millis(100));
    assert!(
        !sim.nodes[b1].engine.is_idle(),
        "the first handler still runs"
    );
    sim.run_for(SECOND);
    assert!(sim.nodes[b1].engine.is_idle());
    let now = sim.now;
    sim.nodes[b1].engine.say_goodbye(now);
    sim.settle();
    sim.run_for(SECOND);
    assert_eq!(
        sent(sim.result(orders, running)).node,
        sim.nodes[b1].engine.id()
    );
    assert_eq!(
        sent(sim.result(orders, refused)).node,
        sim.nodes[b2].engine.id()
    );
    assert_eq!((c1.get(), c2.get()), (1, 1));
    let downs: Vec<_> = sim.nodes[orders]
        .events
        .iter()
        .filter_map(|e| match e {
            crate::NodeEvent::PeerDown { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(downs, ["peer said goodbye: shutdown"]);
}

#[test]
fn a_full_window_waits_for_room_or_fails_fast() {
    let mut sim = Sim::new(16);
    let config = crate::config::Config {
        max_in_flight_per_peer: 2,
        ..Default::default()
    };
    let orders = sim.node_with("orders", config);
    let billing = sim.node("billing");
    sim.handle(billing, "charge", |_| {
        Handled::ok_after(Duration::from_millis(100))
    });
    sim.connect(orders, billing);
    let ops: Vec<_> = (0..4)
        .map(|i| {
            let msg = sim.command("charge", i.to_string());
            sim.send(orders, "billing", msg)
        })
        .collect();
    let msg = sim.command("charge", "fast");
    let now = sim.now;
    let options = crate::SendOptions::fail_fast();
    let fast = sim.nodes[orders]
        .engine
        .send("billing", msg, &options, now)
        .expect("sent");
    sim.settle();
    assert!(matches!(
        sim.result(orders, fast),
        Some(Err(Error::Busy { .. }))
    ));
    sim.run_for(SECOND);
    for op in ops {
        assert_eq!(
            sent(sim.result(orders, op)).attempts,
            1,
            "waited, not retried"
        );
    }
}

#[test]
fn an_audience_that_unsubscribes_has_its_copy_dropped() {
    let mut sim = Sim::new(17);
    let (orders, audit) = (sim.node("orders"), sim.node("audit"));
    sim.connect(orders, audit);
    let sub = sim.subscribe(audit, "order.*", Some("audit"), |_| {
        Handled::ok_after(Duration::from_millis(50))
    });
    sim.run_for(SECOND);
    // The copy leaves, the subscription is withdrawn while it is on its way: the audit node
    // refuses it, and the publisher drops it rather than hold or dead-letter it.
    let event = sim.event("order.created", "1");
    let op = match sim.publish(orders, vec![event], &PublishOptions::default()) {
        Ok(super::super::send::Publishing::Waiting(op)) => op,
        other => panic!("{other:?}"),
    };
    sim.nodes[audit].engine.unsubscribe(sub);
    sim.settle();
    sim.run_for(SECOND);
    match sim.result(orders, op) {
        Some(Ok(Done::Published(receipt))) => {
            assert!(receipt.deliveries.is_empty());
            assert_eq!(receipt.dropped, ["group `audit`"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.nodes[orders].engine.dead_letters().len(), 0);
}

#[test]
fn best_effort_copies_are_written_once_and_dropped_without_an_instance() {
    let mut sim = Sim::new(18);
    let (host, metrics) = (sim.node("host"), sim.node("metrics"));
    let count = Rc::new(Cell::new(0));
    sim.connect(host, metrics);
    sim.subscribe(metrics, "cpu.*", None, counting(&count));
    sim.run_for(SECOND);
    let options = PublishOptions::best_effort();
    let event = sim.event("cpu.load", "0.5");
    match sim.publish(host, vec![event], &options) {
        Ok(super::super::send::Publishing::Done(receipt)) => {
            assert_eq!(receipt.deliveries.len(), 1)
        }
        other => panic!("{other:?}"),
    }
    sim.run_for(SECOND);
    assert_eq!(count.get(), 1);
    assert_eq!(
        sim.net.frames().acks,
        0,
        "best-effort copies are not acknowledged"
    );
    sim.crash(metrics, Duration::ZERO);
    sim.run_for(SECOND);
    let event = sim.event("cpu.load", "0.7");
    match sim.publish(host, vec![event], &options) {
        Ok(super::super::send::Publishing::Done(receipt)) => assert!(receipt.deliveries.is_empty()),
        other => panic!("{other:?}"),
    }
}

/// How many messages per second of real time the simulated network moves: sends and
/// publishes between two engines, acknowledged, with no faults. A measurement, not a check
/// (`cargo test --release -p shoal --lib sim_throughput -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement; run in release mode"]
fn sim_throughput() {
    let mut sim = Sim::new(99);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    sim.subscribe(billing, "order.*", Some("billing"), |_| Handled::ok());
    sim.connect(orders, billing);
    sim.run_for(SECOND);
    let started = std::time::Instant::now();
    let rounds = 400;
    for _ in 0..rounds {
        for _ in 0..256 {
            let msg = sim.command("charge", "x");
            let now = sim.now;
            let _ = sim.nodes[orders]
                .engine
                .send("billing", msg, &Default::default(), now);
            let event = sim.event("order.created", "y");
            let _ = sim.nodes[orders].engine.publish(
                smallvec::smallvec![event],
                false,
                &PublishOptions::default(),
                || now,
            );
        }
        sim.settle();
        sim.run_for(Duration::from_millis(10));
        sim.nodes[orders].results.clear();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} messages handled in {elapsed:?}: {:.0} per second",
        sim.handled,
        sim.handled as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(sim.handled, rounds * 512);
}
