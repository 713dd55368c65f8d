//! A subscriber whose handlers are slower than its publisher: on the channel, as on unicast,
//! what waits for its handlers stays bounded (the receiver holds datagrams back, and the
//! publisher with it), and every event is still handled once and acknowledged.

use std::collections::HashMap;

use super::super::multicast::clean;
use super::{Handled, MS, Sim};
use crate::config::Config;
use crate::engine::Done;

/// Events published, ten every simulated millisecond.
const EVENTS: usize = 10_000;

/// A publisher of `EVENTS` events to one subscriber with four handler slots and handlers of
/// 5 ms (800 events a second: a tenth of the publishing rate). Returns the most messages
/// that waited for or ran in the subscriber's handlers at once, and the simulation.
fn slow_subscriber(multicast: bool) -> (usize, Sim, usize, usize, Vec<crate::engine::OpId>) {
    let mut sim = Sim::new(77);
    let slots = Config {
        max_concurrent_handlers: 4,
        ..Config::default()
    };
    let (publisher, billing) = if multicast {
        let publisher = sim.lan_node("orders", clean());
        (publisher, sim.lan_node_with("billing", clean(), slots))
    } else {
        (sim.node("orders"), sim.node_with("billing", slots))
    };
    sim.connect(publisher, billing);
    sim.subscribe(billing, "order.*", Some("billing"), |_| {
        Handled::ok_after(5 * MS)
    });
    sim.run_for(5 * MS);
    let mut peak = 0;
    let mut ops = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let event = sim.event("order.created", format!("{i}"));
        ops.push(sim.publish_event(publisher, event));
        if i % 10 == 9 {
            sim.run_for(MS);
            peak = peak.max(sim.nodes[billing].engine.inbound.running());
        }
    }
    (peak, sim, publisher, billing, ops)
}

#[test]
fn a_slow_subscriber_on_the_channel_queues_no_more_than_on_unicast_and_loses_nothing() {
    let (unicast, ..) = slow_subscriber(false);
    let (peak, mut sim, publisher, _billing, ops) = slow_subscriber(true);
    // Unicast: at most the publisher's window to one peer (1,024) waits. The channel adds
    // at most what its receiver let go at once (a window of datagrams).
    assert!(
        peak <= 2 * unicast,
        "{peak} messages waited for the handlers on the channel, {unicast} on unicast"
    );
    // Every event is handled once and acknowledged: 10,000 events at 800 a second. (A
    // channel's heartbeats never let the simulation go quiet: it runs for the time.)
    sim.run_for(30_000 * MS);
    for op in &ops {
        match sim.result(publisher, *op) {
            Some(Ok(Done::Published(_))) => {}
            other => panic!("not published: {other:?}"),
        }
    }
    let mut runs: HashMap<_, usize> = HashMap::new();
    for run in sim.runs.iter().filter(|r| r.ok) {
        *runs.entry(run.id).or_default() += 1;
    }
    assert_eq!(runs.len(), EVENTS, "events handled");
    assert!(runs.values().all(|n| *n == 1), "an event handled twice");
}
