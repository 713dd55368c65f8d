//! Background sends on the simulated network ([`crate::Node::send_background`]): the caller
//! gets the command's id at once, the command is delivered as a `send`'s (acked, retried
//! elsewhere, in its key's order), commands sent while others are on their way are staged
//! and go together (`send/staged.rs`), and one never delivered is a dead letter.

#![cfg(test)]

use std::time::Duration;

use super::{Faults, Handled, Sim};
use crate::config::Config;
use crate::{BacklogLimit, Error, MessageId, PublishOptions};

const SECOND: Duration = Duration::from_secs(1);

/// `orders` and `instances` instances of `billing`, whose `charge` handler succeeds (each
/// link with `faults`); each run is recorded in `sim.runs`.
fn orders_and_billing(
    seed: u64,
    config: Config,
    instances: usize,
    faults: Faults,
) -> (Sim, usize, Vec<usize>) {
    let mut sim = Sim::new(seed);
    let orders = sim.node_with("orders", config);
    let billing: Vec<usize> = (0..instances).map(|_| sim.node("billing")).collect();
    for &b in &billing {
        sim.handle(b, "charge", |_| Handled::ok());
        sim.connect_with(orders, b, faults.clone())
            .expect("connected");
    }
    assert!(sim.run_for(SECOND));
    (sim, orders, billing)
}

/// Sends `n` background commands `charge` to `billing` from `orders`, with `key`; returns
/// their ids in the order sent.
fn charges(sim: &mut Sim, orders: usize, n: usize, key: Option<&str>) -> Vec<MessageId> {
    (0..n)
        .map(|i| {
            let mut msg = sim.command("charge", i.to_string());
            if let Some(key) = key {
                msg = msg.with_key(key);
            }
            let id = msg.id();
            let sent = sim.send_background(orders, "billing", msg);
            assert_eq!(
                sent.expect("taken"),
                id,
                "the call returns the command's id"
            );
            id
        })
        .collect()
}

/// The ids of the commands `charge` handled, in the order their runs started, each as often
/// as it succeeded.
fn handled(sim: &Sim) -> Vec<MessageId> {
    sim.runs
        .iter()
        .filter(|r| r.label == "charge" && r.ok)
        .map(|r| r.id)
        .collect()
}

fn sorted(mut ids: Vec<MessageId>) -> Vec<MessageId> {
    ids.sort_unstable();
    ids
}

#[test]
fn background_commands_sent_while_others_travel_go_as_one_operation() {
    let (mut sim, orders, _) = orders_and_billing(61, Config::default(), 1, Faults::default());
    let ids = charges(&mut sim, orders, 100, None);
    let engine = &sim.nodes[orders].engine;
    // The first went at once; the 99 sent while it travelled wait for the turn's end.
    assert_eq!(engine.out.ops.len(), 1);
    assert_eq!(engine.out.background_publishes(), 100);
    assert!(sim.run_for(SECOND));
    assert!(sorted(handled(&sim)) == sorted(ids), "each handled once");
    let engine = &sim.nodes[orders].engine;
    assert_eq!(engine.stats().gathered, 99, "one operation for the 99");
    assert_eq!(engine.out.ops.len(), 0, "nothing kept once delivered");
    assert_eq!(engine.out.background_publishes(), 0);
    assert_eq!(engine.stats().dead_lettered, 0);
    // Nothing on its way: the next goes at once again.
    charges(&mut sim, orders, 1, None);
    assert_eq!(sim.nodes[orders].engine.out.ops.len(), 1);
}

#[test]
fn staged_commands_and_events_go_each_to_their_own() {
    let (mut sim, orders, billing) =
        orders_and_billing(62, Config::default(), 1, Faults::default());
    // A topic named as the service: the staged events and commands stay apart.
    sim.subscribe(billing[0], "billing", Some("audit"), |_| Handled::ok());
    assert!(sim.run_for(SECOND));
    let commands = charges(&mut sim, orders, 20, None);
    for i in 0..20 {
        let event = sim.event("billing", i.to_string());
        sim.publish(orders, vec![event], &PublishOptions::background())
            .expect("published");
    }
    assert!(sim.run_for(SECOND));
    assert!(
        sorted(handled(&sim)) == sorted(commands),
        "each command once"
    );
    let events = sim.runs.iter().filter(|r| r.label == "audit" && r.ok);
    assert_eq!(events.count(), 20, "each event once");
    assert_eq!(sim.nodes[orders].engine.stats().gathered, 39);
}

#[test]
fn a_background_command_hears_the_errors_it_would_hear_alone_at_once() {
    let (mut sim, orders, _) = orders_and_billing(63, Config::default(), 1, Faults::default());
    // Alone, then staged (others on their way): the same errors.
    for others in [0, 2] {
        charges(&mut sim, orders, others, None);
        let msg = sim.command("charge", "x");
        let result = sim.send_background(orders, "", msg);
        assert!(matches!(result, Err(Error::EmptyServiceName)), "{result:?}");
        let msg = sim.command("charge", "x");
        let long = "b".repeat(1000);
        let result = sim.send_background(orders, &long, msg);
        assert!(matches!(result, Err(Error::Encode(_))), "{result:?}");
        let held = sim.nodes[orders].engine.out.background_publishes();
        assert_eq!(held, others, "nothing kept of the refused");
    }
    let now = sim.now;
    sim.nodes[orders].engine.begin_shutdown(now);
    let msg = sim.command("charge", "after the stop");
    let result = sim.send_background(orders, "billing", msg);
    assert!(matches!(result, Err(Error::ShuttingDown)), "{result:?}");
}

#[test]
fn background_commands_past_the_cap_are_refused_until_some_are_delivered() {
    let config = Config {
        max_background_publishes: 10,
        ..Config::default()
    };
    let (mut sim, orders, billing) = orders_and_billing(64, config, 1, Faults::default());
    // The only instance is gone: the commands wait for one, and pile up.
    sim.crash(billing[0], Duration::from_millis(10));
    sim.run_for(SECOND);
    let ids = charges(&mut sim, orders, 10, None);
    let msg = sim.command("charge", "one too many");
    let result = sim.send_background(orders, "billing", msg);
    assert!(
        matches!(
            result,
            Err(Error::Backlog {
                limit: BacklogLimit::Events(10)
            })
        ),
        "{result:?}"
    );
    assert_eq!(sim.nodes[orders].engine.stats().background_refused, 1);
    // An instance comes back: the ten are delivered, and there is room again.
    let again = sim.node("billing");
    sim.handle(again, "charge", |_| Handled::ok());
    sim.connect(orders, again);
    // (Never settles: `orders` keeps dialling the crashed one.)
    sim.run_for(10 * SECOND);
    assert!(sorted(handled(&sim)) == sorted(ids), "the ten handled once");
    charges(&mut sim, orders, 1, None);
}

#[test]
fn staged_commands_through_loss_and_duplication_are_all_handled_never_twice_on_one_instance() {
    for seed in 65..71 {
        let faults = Faults {
            loss: 0.2,
            duplicate: 0.2,
            ..Faults::default()
        };
        let (mut sim, orders, _) = orders_and_billing(seed, Config::default(), 2, faults);
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.extend(charges(&mut sim, orders, 40, None));
            sim.run_for(Duration::from_millis(1));
        }
        assert!(sim.run_for(60 * SECOND), "seed {seed}: never settled");
        // A command whose ack was lost may run again on the other instance, not on the same.
        let mut runs: Vec<(usize, MessageId)> = sim
            .runs
            .iter()
            .filter(|r| r.label == "charge")
            .map(|r| (r.node, r.id))
            .collect();
        let all = runs.len();
        runs.sort_unstable();
        runs.dedup();
        assert_eq!(
            all,
            runs.len(),
            "seed {seed}: handled twice on one instance"
        );
        let mut seen = sorted(handled(&sim));
        seen.dedup();
        assert!(
            seen == sorted(ids),
            "seed {seed}: not every command was handled"
        );
        let engine = &sim.nodes[orders].engine;
        assert!(engine.stats().gathered > 100, "seed {seed}: staged");
        assert_eq!(engine.stats().dead_lettered, 0, "seed {seed}");
        assert_eq!(engine.out.ops.len(), 0, "seed {seed}");
    }
}

#[test]
fn keyed_background_commands_are_handled_in_the_order_they_were_sent() {
    let faults = Faults {
        loss: 0.1,
        ..Faults::default()
    };
    let config = super::tests::patient();
    let (mut sim, orders, _) = orders_and_billing(71, config, 2, faults);
    let ids = charges(&mut sim, orders, 30, Some("customer-7"));
    sim.run_for(600 * SECOND);
    let mut seen = handled(&sim);
    seen.dedup();
    assert!(seen == ids, "in the order sent");
}

#[test]
fn a_background_command_no_instance_takes_is_a_dead_letter() {
    let (mut sim, orders, billing) =
        orders_and_billing(72, Config::default(), 1, Faults::default());
    sim.crash(billing[0], Duration::from_millis(10));
    sim.run_for(SECOND);
    let ids = charges(&mut sim, orders, 3, None);
    // Past the retry policy's deadline (30 s by default).
    assert!(sim.run_for(120 * SECOND));
    let engine = &sim.nodes[orders].engine;
    let letters = engine.dead_letters();
    let lettered: Vec<MessageId> = letters.iter().map(|l| l.message.id()).collect();
    assert!(sorted(lettered) == sorted(ids), "{letters:?}");
    assert!(letters.iter().all(|l| l.service == "billing"));
    assert_eq!(engine.out.ops.len(), 0);
    assert_eq!(engine.out.background_publishes(), 0);
}

#[test]
fn a_node_that_stops_sends_the_commands_it_staged() {
    // Graceful: the staged commands are delivered.
    let (mut sim, orders, _) = orders_and_billing(73, Config::default(), 1, Faults::default());
    let ids = charges(&mut sim, orders, 30, None);
    let now = sim.now;
    sim.nodes[orders].engine.begin_shutdown(now);
    assert!(sim.run_for(SECOND));
    assert!(sorted(handled(&sim)) == sorted(ids), "each handled once");
    // Killed: they are dead letters, as every background message not delivered.
    let (mut sim, orders, _) = orders_and_billing(74, Config::default(), 1, Faults::default());
    charges(&mut sim, orders, 30, None);
    let now = sim.now;
    sim.nodes[orders].engine.kill(now);
    let engine = &sim.nodes[orders].engine;
    assert_eq!(engine.stats().dead_lettered, 30);
    let letters = engine.dead_letters();
    assert!(
        letters
            .iter()
            .all(|l| l.service == "billing" && l.last_failure.contains("the node stopped")),
        "{letters:?}"
    );
    assert_eq!(engine.out.background_publishes(), 0);
}

#[test]
fn a_refused_producer_is_told_once_when_half_the_backlog_drained_or_the_node_stops() {
    let config = Config {
        max_background_publishes: 10,
        ..Config::default()
    };
    let (mut sim, orders, billing) = orders_and_billing(75, config.clone(), 1, Faults::default());
    sim.crash(billing[0], Duration::from_millis(10));
    sim.run_for(SECOND);
    charges(&mut sim, orders, 10, None);
    assert!(
        !sim.nodes[orders].engine.background_room(),
        "full: room wanted"
    );
    sim.run_for(SECOND);
    assert_eq!(sim.nodes[orders].rooms, 0, "nothing delivered yet");
    // An instance comes back: all ten are delivered, and the producer is told once.
    let again = sim.node("billing");
    sim.handle(again, "charge", |_| Handled::ok());
    sim.connect(orders, again);
    sim.run_for(10 * SECOND);
    assert_eq!(sim.nodes[orders].rooms, 1);
    assert!(sim.nodes[orders].engine.background_room(), "room now");
    assert_eq!(
        sim.nodes[orders].rooms, 1,
        "asked when there is room: not told again"
    );

    // A node that stops tells whoever waits (their next call hears why).
    let (mut sim, orders, billing) = orders_and_billing(76, config, 1, Faults::default());
    sim.crash(billing[0], Duration::from_millis(10));
    sim.run_for(SECOND);
    charges(&mut sim, orders, 10, None);
    assert!(!sim.nodes[orders].engine.background_room());
    let now = sim.now;
    sim.nodes[orders].engine.begin_shutdown(now);
    sim.settle();
    assert_eq!(sim.nodes[orders].rooms, 1);
    assert!(sim.nodes[orders].engine.background_room());
}

#[test]
fn room_comes_when_half_the_backlog_drained_not_before_and_not_after() {
    let config = Config {
        max_background_publishes: 10,
        ..Config::default()
    };
    let (mut sim, orders, billing) = orders_and_billing(77, config, 1, Faults::default());
    sim.crash(billing[0], Duration::from_millis(10));
    sim.run_for(SECOND);
    // Keyed: each its own operation, handled one after the other, so the backlog drains one
    // by one.
    charges(&mut sim, orders, 10, Some("customer-7"));
    assert!(!sim.nodes[orders].engine.background_room());
    let again = sim.node("billing");
    sim.handle(again, "charge", |_| Handled::ok());
    sim.connect(orders, again);
    let mut seen = Vec::new();
    for _ in 0..200_000 {
        sim.run_for(Duration::from_micros(50));
        let held = sim.nodes[orders].engine.out.background_publishes();
        let rooms = sim.nodes[orders].rooms;
        assert_eq!(
            rooms,
            u32::from(held <= 5),
            "{held} held, told {rooms} times"
        );
        if seen.last() != Some(&held) {
            seen.push(held);
        }
        if held == 0 {
            break;
        }
    }
    assert_eq!(
        seen,
        (0..=10).rev().collect::<Vec<_>>(),
        "drained one by one"
    );
}

#[test]
fn room_for_a_refused_batch_is_room_for_all_of_it() {
    let config = Config {
        max_background_publishes: 10,
        ..Config::default()
    };
    let (mut sim, orders, billing) = orders_and_billing(78, config, 1, Faults::default());
    sim.subscribe(billing[0], "order.*", Some("audit"), |_| Handled::ok());
    assert!(sim.run_for(SECOND));
    sim.crash(billing[0], Duration::from_millis(10));
    sim.run_for(SECOND);
    charges(&mut sim, orders, 3, Some("customer-7"));
    // 3 held and a batch of 8: refused, and half the cap (5) is not room enough for it.
    let batch = (0..8)
        .map(|i| sim.event("order.created", i.to_string()))
        .collect();
    let refused = sim.publish(orders, batch, &PublishOptions::background());
    assert!(matches!(refused, Err(Error::Backlog { .. })), "{refused:?}");
    assert_eq!(sim.nodes[orders].engine.stats().background_refused, 1);
    assert!(
        !sim.nodes[orders].engine.background_room(),
        "3 held: no room for 8"
    );
    let again = sim.node("billing");
    sim.handle(again, "charge", |_| Handled::ok());
    sim.connect(orders, again);
    for _ in 0..200_000 {
        sim.run_for(Duration::from_micros(50));
        let held = sim.nodes[orders].engine.out.background_publishes();
        assert_eq!(sim.nodes[orders].rooms, u32::from(held <= 2), "{held} held");
        if held == 0 {
            break;
        }
    }
    let batch = (0..8)
        .map(|i| sim.event("order.created", i.to_string()))
        .collect();
    sim.publish(orders, batch, &PublishOptions::background())
        .expect("room for the batch");
}

#[test]
fn a_command_too_large_to_travel_with_others_goes_alone() {
    let (mut sim, orders, _) = orders_and_billing(79, Config::default(), 1, Faults::default());
    charges(&mut sim, orders, 2, None);
    assert_eq!(
        sim.nodes[orders].engine.out.ops.len(),
        1,
        "one on its way, one staged"
    );
    let large = sim.command("charge", vec![7u8; 20 * 1024]);
    let id = large.id();
    sim.send_background(orders, "billing", large)
        .expect("taken");
    assert_eq!(
        sim.nodes[orders].engine.out.ops.len(),
        2,
        "sent at once, not staged"
    );
    assert!(sim.run_for(SECOND));
    assert!(handled(&sim).contains(&id));
    assert_eq!(sim.nodes[orders].engine.out.background_publishes(), 0);
}

#[test]
fn commands_are_staged_by_service_for_at_most_64_services() {
    let (mut sim, orders, _) = orders_and_billing(80, Config::default(), 1, Faults::default());
    charges(&mut sim, orders, 1, None);
    for n in 0..64 {
        let msg = sim.command("charge", "x");
        sim.send_background(orders, &format!("service-{n}"), msg)
            .expect("taken");
    }
    let ops = |sim: &Sim| sim.nodes[orders].engine.out.ops.len();
    assert_eq!(ops(&sim), 1, "64 services staged");
    // A service with staged commands takes more; a 65th service's go at once.
    let msg = sim.command("charge", "x");
    sim.send_background(orders, "service-5", msg)
        .expect("taken");
    assert_eq!(ops(&sim), 1);
    let msg = sim.command("charge", "x");
    sim.send_background(orders, "service-64", msg)
        .expect("taken");
    assert_eq!(ops(&sim), 2);
}
