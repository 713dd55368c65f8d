//! Connections where they are used, on the simulated network: announced instances are
//! connected to on first use, and idle connections close.

#![cfg(test)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::tests::counting;
use super::{Handled, Sim};
use crate::config::Config;
use crate::engine::Done;
use crate::{Error, NodeEvent};

const SECOND: Duration = Duration::from_secs(1);

fn connections(sim: &Sim, node: usize) -> usize {
    sim.nodes[node].engine.peers().len()
}

#[test]
fn discovering_is_not_connecting_and_a_send_connects_on_first_use() {
    let mut sim = Sim::new(31);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", counting(&count));
    sim.announce(orders, billing, true);
    assert!(sim.run_for(SECOND));
    assert_eq!(connections(&sim, orders), 0, "announced, not connected");
    assert!(sim.dials.is_empty());
    assert!(
        sim.nodes[orders]
            .events
            .iter()
            .any(|e| matches!(e, NodeEvent::Discovered { service, .. } if service == "billing"))
    );

    let msg = sim.command("charge", "order-1");
    let op = sim.send(orders, "billing", msg);
    sim.run_for(SECOND);
    match sim.result(orders, op) {
        Some(Ok(Done::Sent(receipt))) => assert_eq!(receipt.attempts, 1),
        other => panic!("not sent: {other:?}"),
    }
    assert_eq!(count.get(), 1);
    let billing_id = sim.nodes[billing].engine.id();
    assert_eq!(sim.dials, [(orders, billing_id)], "one dial, on first use");
    assert_eq!(connections(&sim, orders), 1);
}

#[test]
fn an_idle_connection_closes_and_the_next_send_opens_another() {
    let mut sim = Sim::new(32);
    let config = Config {
        close_idle_after: Some(2 * SECOND),
        ..Config::default()
    };
    let orders = sim.node_with("orders", config);
    let billing = sim.node("billing");
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", counting(&count));
    sim.announce(orders, billing, true);
    let msg = sim.command("charge", "1");
    sim.send(orders, "billing", msg);
    sim.run_for(SECOND);
    assert_eq!(connections(&sim, orders), 1);
    // Idle for 2 s (and at most a quarter more): closed by the side that dialled, with a
    // goodbye; both sides see it go.
    sim.run_for(2 * SECOND);
    assert_eq!(connections(&sim, orders), 0, "closed after being idle");
    assert_eq!(connections(&sim, billing), 0);
    let down = sim.nodes[orders].events.iter().find_map(|e| match e {
        NodeEvent::PeerDown { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(down.as_deref(), Some("closed after being idle"));
    assert!(
        sim.run_for(60 * SECOND),
        "nothing left to do: no timer while no connection is open"
    );

    let msg = sim.command("charge", "2");
    let op = sim.send(orders, "billing", msg);
    sim.run_for(SECOND);
    assert!(matches!(sim.result(orders, op), Some(Ok(Done::Sent(_)))));
    assert_eq!(count.get(), 2);
    assert_eq!(sim.dials.len(), 2, "connected again on use");
}

#[test]
fn a_connection_in_use_is_not_closed() {
    let mut sim = Sim::new(33);
    let config = Config {
        close_idle_after: Some(SECOND),
        ..Config::default()
    };
    let orders = sim.node_with("orders", config);
    let billing = sim.node("billing");
    // A handler that takes longer than the idle time: the connection is busy, not idle.
    sim.handle(billing, "charge", |_| Handled::ok_after(3 * SECOND));
    sim.announce(orders, billing, true);
    let msg = sim.command("charge", "1");
    let op = sim.send(orders, "billing", msg);
    sim.run_for(3500 * Duration::from_millis(1));
    assert!(matches!(sim.result(orders, op), Some(Ok(Done::Sent(_)))));
    assert_eq!(sim.dials.len(), 1, "one connection all along");
}

#[test]
fn an_idle_connection_wakes_nothing() {
    let mut sim = Sim::new(34);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    // A static peer's connection: kept however idle.
    sim.connect(orders, billing);
    let msg = sim.command("charge", "1");
    sim.send(orders, "billing", msg);
    assert!(sim.run_for(SECOND));
    for node in [orders, billing] {
        assert_eq!(
            sim.nodes[node].engine.poll_timeout(),
            None,
            "no timer on an idle connection"
        );
    }
    let before = sim.net.frames();
    assert!(sim.run_for(600 * SECOND));
    assert_eq!(sim.net.frames(), before, "ten idle minutes, not one frame");
}

#[test]
fn a_publisher_learns_subscribers_from_their_announcements_and_connects_to_deliver() {
    let mut sim = Sim::new(35);
    let orders = sim.node("orders");
    let (b1, b2, audit) = (sim.node("billing"), sim.node("billing"), sim.node("audit"));
    let (billed, audited) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    for b in [b1, b2] {
        sim.subscribe(b, "order.*", Some("billing"), counting(&billed));
    }
    sim.subscribe(audit, "order.>", Some("audit"), counting(&audited));
    let unrelated = sim.node("shipping");
    for other in [b1, b2, audit, unrelated] {
        sim.announce(orders, other, true);
    }
    assert_eq!(sim.nodes[orders].engine.peers().len(), 0);
    let event = sim.event("order.created", "1");
    let op = sim.publish_event(orders, event);
    sim.run_for(SECOND);
    match sim.result(orders, op) {
        Some(Ok(Done::Published(receipt))) => assert_eq!(receipt.deliveries.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!((billed.get(), audited.get()), (1, 1), "one copy per group");
    let shipping = sim.nodes[unrelated].engine.id();
    assert!(
        sim.dials.iter().all(|(_, to)| *to != shipping),
        "no connection to a node that subscribes to nothing: {:?}",
        sim.dials
    );
    assert_eq!(sim.dials.len(), 3, "both billing instances and audit");
}

#[test]
fn an_instance_that_does_not_advertise_its_subscriptions_counts_only_once_connected() {
    let mut sim = Sim::new(36);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.subscribe(billing, "order.*", Some("billing"), |_| Handled::ok());
    sim.announce(orders, billing, false);
    let audiences = sim.nodes[orders]
        .engine
        .subscribers("order.created", sim.now);
    assert!(audiences.is_empty(), "unknown until connected");
    sim.connect(orders, billing);
    sim.run_for(SECOND);
    let audiences = sim.nodes[orders]
        .engine
        .subscribers("order.created", sim.now);
    assert_eq!(audiences.len(), 1);
}

#[test]
fn a_send_whose_dial_failed_dials_again_and_goes_once_the_instance_is_back() {
    let mut sim = Sim::new(41);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", counting(&count));
    sim.announce(orders, billing, true);
    assert!(sim.run_for(SECOND));
    // Unreachable for a moment (a network blip, a handshake-rate limit refusing dials): the
    // dial the send asks for fails, and so does the one a second later.
    sim.nodes[billing].alive = false;
    let msg = sim.command("charge", "order-1");
    let op = sim.send(orders, "billing", msg);
    sim.run_for(2500 * Duration::from_millis(1));
    assert_eq!(
        sim.dials.len(),
        2,
        "asked at once, and again after a second"
    );
    assert!(sim.result(orders, op).is_none(), "still waiting");
    // Reachable again: the next ask (2 s after the last) connects, and the send goes, long
    // before its 30 s deadline.
    sim.nodes[billing].alive = true;
    sim.run_for(SECOND);
    match sim.result(orders, op) {
        Some(Ok(Done::Sent(receipt))) => assert_eq!(receipt.attempts, 1),
        other => panic!("not sent: {other:?}"),
    }
    assert_eq!(count.get(), 1);
    assert_eq!(sim.dials.len(), 3);
    assert_eq!(connections(&sim, orders), 1);
}

#[test]
fn an_instance_down_for_good_is_dialled_for_less_and_less_often_until_the_deadline() {
    let mut sim = Sim::new(42);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    sim.announce(orders, billing, true);
    assert!(sim.run_for(SECOND));
    sim.nodes[billing].alive = false;
    let msg = sim.command("charge", "order-1");
    let op = sim.send(orders, "billing", msg);
    // Asked at 0 s, then 1, 2, 4, 8 and 8 s apart (at 1, 3, 7, 15 and 23 s); the next would
    // be at 31 s, past the 30 s deadline.
    let (mut asked_at, mut seen) = (Vec::new(), 0);
    for second in 0..=35 {
        if second > 0 {
            sim.run_for(SECOND);
        }
        if sim.dials.len() > seen {
            asked_at.push(second);
            seen = sim.dials.len();
        }
    }
    assert_eq!(asked_at, [0, 1, 3, 7, 15, 23]);
    match sim.result(orders, op) {
        Some(Err(Error::DeadLettered(letter))) => assert!(
            letter
                .last_failure
                .contains("no instance of service `billing` is connected"),
            "{letter}"
        ),
        other => panic!("not dead-lettered: {other:?}"),
    }
    assert!(
        sim.run_for(60 * SECOND),
        "nothing waits any more: no more asks"
    );
    assert_eq!(sim.dials.len(), 6);
}

#[test]
fn deliveries_held_for_an_unreachable_instance_ask_for_it_once_a_wake_not_once_each() {
    const SENDS: usize = 10_000;
    let mut sim = Sim::new(43);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    sim.announce(orders, billing, true);
    assert!(sim.run_for(SECOND));
    sim.nodes[billing].alive = false;
    let ops: Vec<_> = (0..SENDS)
        .map(|i| {
            let msg = sim.command("charge", format!("order-{i}"));
            sim.send(orders, "billing", msg)
        })
        .collect();
    assert_eq!(
        sim.dials.len(),
        1,
        "the first send dialled, the others wait for it"
    );
    let asks = |sim: &Sim| sim.nodes[orders].engine.reasks.asks;
    let started = asks(&sim);

    // The instance is asked for again 1, 3, 7 and 15 s after the sends: once each time, for
    // all ten thousand of them.
    sim.run_for(20 * SECOND);
    assert_eq!(
        asks(&sim) - started,
        4,
        "one ask a wake, not one per delivery"
    );
    assert_eq!(sim.dials.len(), 5);

    // Dialled once more at 23 s; at their 30 s deadline all are dead-lettered (each looks a
    // last time as its wait ends), and nothing asks any more.
    sim.run_for(15 * SECOND);
    assert_eq!(sim.dials.len(), 6);
    for op in ops {
        assert!(
            matches!(sim.result(orders, op), Some(Err(Error::DeadLettered(_)))),
            "{:?}",
            sim.result(orders, op)
        );
    }
    let ended = asks(&sim);
    assert!(sim.run_for(60 * SECOND), "nothing left to do");
    assert_eq!(asks(&sim), ended);
    assert_eq!(sim.dials.len(), 6);
}

#[test]
fn an_instance_no_delivery_waits_for_any_more_is_not_asked_for_again() {
    let mut sim = Sim::new(44);
    let orders = sim.node("orders");
    let (b1, b2) = (sim.node("billing"), sim.node("billing"));
    for b in [b1, b2] {
        sim.handle(b, "charge", |_| Handled::ok());
        sim.announce(orders, b, true);
        sim.nodes[b].alive = false;
    }
    let b1_id = sim.nodes[b1].engine.id();
    let asked_b1 = |sim: &Sim| sim.dials.iter().filter(|(_, to)| *to == b1_id).count();
    let msg = sim.command("charge", "order-1");
    let op = sim.send(orders, "billing", msg);
    assert_eq!(sim.dials.len(), 2, "both instances asked for");

    // b2 is back: its next ask (1 s later) connects it, and the send goes there (b1, due at
    // the same instant, is asked for again only if its timer comes first).
    sim.nodes[b2].alive = true;
    sim.run_for(2 * SECOND);
    assert!(matches!(sim.result(orders, op), Some(Ok(Done::Sent(_)))));
    let before = asked_b1(&sim);
    assert!((1..=2).contains(&before), "{before}");
    // Nothing waits for b1 any more: its timer finds no waiter and asks for nothing.
    assert!(sim.run_for(60 * SECOND), "nothing left to do");
    assert_eq!(asked_b1(&sim), before, "b1 not asked for again");
}

#[test]
fn a_delivery_is_listed_once_as_a_waiter_however_often_it_looks_again() {
    let mut sim = Sim::new(45);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.announce(orders, billing, true);
    sim.nodes[billing].alive = false;
    for i in 0..100 {
        let msg = sim.command("charge", format!("order-{i}"));
        sim.send(orders, "billing", msg);
    }
    let billing_id = sim.nodes[billing].engine.id();
    let listed = |sim: &Sim| sim.nodes[orders].engine.reasks.listed(billing_id);
    assert_eq!(listed(&sim), 100);
    // Every change of the peers (here: another instance announced) has each waiting delivery
    // look again; it stays listed once.
    for _ in 0..20 {
        let other = sim.node("audit");
        sim.announce(orders, other, true);
        assert_eq!(listed(&sim), 100);
    }
}

/// `alpha` (closing connections idle for 1 s) dialled `beta` on demand; `beta` also talks to
/// another instance of `alpha` over a kept connection. Its idle sweep comes every 250 ms from
/// the connection's start, and the one at 1 s closes it with a goodbye. `beta` sends two
/// commands to `alpha` (one to each instance) `offset` before (negative) or after that sweep;
/// returns the instance each handler run was on, per command.
fn commands_crossing_an_idle_goodbye(seed: u64, offset_us: i64) -> Vec<(usize, String)> {
    let mut sim = Sim::new(seed);
    let config = Config {
        close_idle_after: Some(SECOND),
        ..Config::default()
    };
    let a = sim.node_with("alpha", config);
    let a2 = sim.node("alpha");
    let b = sim.node("beta");
    let runs = Rc::new(std::cell::RefCell::new(Vec::new()));
    for n in [a, a2] {
        let r = Rc::clone(&runs);
        sim.handle(n, "charge", move |m| {
            let payload = String::from_utf8_lossy(m.payload()).into_owned();
            r.borrow_mut().push((n, payload));
            Handled::ok()
        });
    }
    let (ca, _) = sim
        .link_up(a, b, super::Faults::default(), false)
        .expect("up");
    sim.connect(a2, b);
    let sweep = sim.now + SECOND;
    let micros = Duration::from_micros(offset_us.unsigned_abs());
    let send_at = if offset_us < 0 {
        sweep - micros
    } else {
        sweep + micros
    };
    sim.run_for(send_at - sim.now);
    let closing = !sim.nodes[a].engine.conns[ca].takes_messages();
    assert_eq!(
        closing,
        offset_us > 0,
        "the sweep closes the connection at 1 s, and it takes no message from then on"
    );
    let ops = ["m1", "m2"].map(|m| {
        let msg = sim.command("charge", m);
        sim.send(b, "alpha", msg)
    });
    sim.run_for(10 * SECOND);
    for op in ops {
        assert!(
            matches!(sim.result(b, op), Some(Ok(Done::Sent(_)))),
            "{:?}",
            sim.result(b, op)
        );
    }
    assert_eq!(connections(&sim, a), 0, "closed for being idle");
    runs.take()
}

/// A message on its way to a node when it closes the connection for being idle (its goodbye
/// crossing the message) is handled once: the sender takes the goodbye as "everything it was
/// going to answer came before" and sends the message to another instance, so the node that
/// said goodbye refuses it. Sent 20 µs before the sweep the message arrives before the
/// sender has the goodbye; sent 10 µs after it, after the sender closed the connection (what
/// was on the wire still arrives).
#[test]
fn a_message_crossing_an_idle_goodbye_is_handled_once() {
    for (seed, offset_us) in [(43, -20), (44, 10)] {
        let runs = commands_crossing_an_idle_goodbye(seed, offset_us);
        for m in ["m1", "m2"] {
            let on: Vec<usize> = runs.iter().filter(|r| r.1 == m).map(|r| r.0).collect();
            assert_eq!(
                on.len(),
                1,
                "{m} sent {offset_us} µs from the sweep ran on {on:?}"
            );
        }
    }
}

/// A peer that redials a node which just said goodbye on their connection (closing it for
/// being idle) gets its new connection at once, whichever of the two dialled first: the
/// connection that said goodbye takes no more messages, so it does not win the tie-break
/// against the new one (it did, and the redial was refused until the old one closed).
#[test]
fn a_redial_after_an_idle_goodbye_is_admitted_before_the_old_connection_closes() {
    // The tie-break keeps the connection dialled by the lower node id: find a seed where the
    // node closing for idleness (and so the old connection's dialer) has the lower id.
    let (mut sim, a, b) = (40..80)
        .find_map(|seed| {
            let mut sim = Sim::new(seed);
            let config = Config {
                close_idle_after: Some(SECOND),
                ..Config::default()
            };
            let a = sim.node_with("alpha", config);
            let b = sim.node("beta");
            (sim.nodes[a].engine.id() < sim.nodes[b].engine.id()).then_some((sim, a, b))
        })
        .expect("a seed where alpha has the lower id");
    let (ca, _) = sim
        .link_up(a, b, super::Faults::default(), false)
        .expect("up");
    // The sweep at 1 s says goodbye; beta reads it 50 µs later and closes its end, and alpha
    // loses the connection a microsecond after that.
    sim.run_for(SECOND + Duration::from_micros(50));
    assert!(
        !sim.nodes[a].engine.conns[ca].takes_messages(),
        "goodbye said"
    );
    assert!(sim.nodes[a].engine.conns.contains_key(ca), "not closed yet");
    assert!(
        sim.link_up(b, a, super::Faults::default(), false).is_some(),
        "beta's redial refused while alpha's goodbye connection was still open"
    );
    let count = Rc::new(Cell::new(0));
    sim.handle(a, "charge", counting(&count));
    let msg = sim.command("charge", "order-1");
    let op = sim.send(b, "alpha", msg);
    sim.run_for(SECOND);
    assert!(
        matches!(sim.result(b, op), Some(Ok(Done::Sent(_)))),
        "{:?}",
        sim.result(b, op)
    );
    assert_eq!(count.get(), 1);
}
