//! The channel's timers: its round trip follows the connections' measured ones (the driver
//! samples quinn's RTT and calls `Engine::channel_rtts`): the publisher's timers follow its
//! slowest member, a subscriber's its publisher, within bounds; the coalescing wait grows
//! with it; heartbeats after a burst come soon, then ever less often.

use std::time::Duration;

use super::super::Handled;
use super::super::multicast::{LanFaults, clean};
use super::{MS, Sim};
use crate::engine::ConnId;
use crate::engine::multicast_link::Channels;

const US: Duration = Duration::from_micros(1);

/// A publisher and two subscribers of `order.*`; returns the sim, the nodes, and each
/// subscriber's connection at the publisher and at the subscriber.
fn lan(seed: u64) -> (Sim, [usize; 3], [(ConnId, ConnId); 2]) {
    let mut sim = Sim::new(seed);
    let publisher = sim.lan_node("orders", clean());
    let billing = sim.lan_node("billing", clean());
    let audit = sim.lan_node("audit", clean());
    let conns = [
        sim.connect(publisher, billing),
        sim.connect(publisher, audit),
    ];
    sim.subscribe(billing, "order.*", Some("billing"), |_| Handled::ok());
    sim.subscribe(audit, "order.*", Some("audit"), |_| Handled::ok());
    sim.run_for(5 * MS);
    (sim, [publisher, billing, audit], conns)
}

/// The multicast state of `node`.
fn channels(sim: &Sim, node: usize) -> &Channels {
    let engine = &sim.nodes[node].engine;
    engine.channels.as_deref().expect("on the group")
}

fn sender_rtt(sim: &Sim, node: usize) -> Duration {
    channels(sim, node)
        .sender
        .as_ref()
        .expect("a channel")
        .rtt()
}

fn receiver_rtt(sim: &Sim, node: usize) -> Duration {
    let inbound = channels(sim, node).inbound.values().next();
    inbound.expect("receives a channel").rx.rtt()
}

#[test]
fn the_channel_follows_the_measured_round_trips() {
    let (mut sim, [publisher, billing, audit], [(b_at_pub, b_at_sub), (a_at_pub, _)]) = lan(31);
    let default = Duration::from_micros(500);
    assert_eq!(sender_rtt(&sim, publisher), default, "unmeasured");
    assert_eq!(receiver_rtt(&sim, billing), default, "unmeasured");

    // The publisher follows its slowest member.
    let engine = &mut sim.nodes[publisher].engine;
    engine.channel_rtts(&[(b_at_pub, 3 * MS), (a_at_pub, 800 * US)]);
    assert_eq!(sender_rtt(&sim, publisher), 3 * MS);
    sim.nodes[publisher]
        .engine
        .channel_rtts(&[(b_at_pub, 400 * US)]);
    assert_eq!(
        sender_rtt(&sim, publisher),
        800 * US,
        "audit is the slowest now"
    );
    // Within bounds: QUIC's initial estimate (no sample yet) and a loopback's few µs.
    sim.nodes[publisher]
        .engine
        .channel_rtts(&[(b_at_pub, Duration::from_millis(333)), (a_at_pub, 10 * US)]);
    assert_eq!(sender_rtt(&sim, publisher), 100 * MS);

    // A subscriber follows its publisher; another subscriber is untouched.
    sim.nodes[billing]
        .engine
        .channel_rtts(&[(b_at_sub, 2 * MS)]);
    assert_eq!(receiver_rtt(&sim, billing), 2 * MS);
    assert_eq!(receiver_rtt(&sim, audit), default);
    sim.nodes[billing]
        .engine
        .channel_rtts(&[(b_at_sub, 10 * US)]);
    assert_eq!(receiver_rtt(&sim, billing), 250 * US);
}

/// With its only member 5 ms away, an event published behind a datagram that reached no one
/// (it was lost) waits up to 5 ms, not the default 500 µs.
#[test]
fn the_coalescing_wait_follows_the_measured_round_trip() {
    let lost = LanFaults {
        loss: 1.0,
        ..clean()
    };
    let mut sim = Sim::new(32);
    let (publisher, _, b_at_pub) = sim.lan_pair(lost);
    sim.nodes[publisher]
        .engine
        .channel_rtts(&[(b_at_pub, 5 * MS)]);
    let sealed = |sim: &Sim| sim.nodes[publisher].engine.channel_stats().sealed;
    let before = sealed(&sim);
    let publish = |sim: &mut Sim, after: Duration| {
        let event = sim.event("order.created", "x");
        sim.publish_event(publisher, event);
        sim.run_for(after);
    };
    publish(&mut sim, 20 * US);
    publish(&mut sim, 4 * MS);
    assert_eq!(sealed(&sim), before + 1, "still waiting after 4 ms");
    sim.run_for(1100 * US);
    assert_eq!(sealed(&sim), before + 2, "sent after 5 ms");
}

/// After a lone event, heartbeats at 2, 6, 14, 30 and 62 ms (the gap doubles from the tail
/// heartbeat's 2 ms up to the idle 100 ms): five in 70 ms, not one.
#[test]
fn heartbeats_after_a_burst_come_soon_then_less_often() {
    let mut sim = Sim::new(33);
    let (publisher, ..) = sim.lan_pair(clean());
    sim.run_for(200 * MS); // past the heartbeats of the start
    // Every datagram on the group (only the publisher sends any).
    let sent = |sim: &Sim| sim.datagrams;
    let before = sent(&sim);
    let event = sim.event("order.created", "x");
    sim.publish_event(publisher, event);
    let mut at = Vec::new();
    let start = sim.now;
    let mut seen = before;
    while sim.now < start + 70 * MS {
        sim.run_for(MS / 2);
        let now = sent(&sim);
        if now > seen {
            at.push((sim.now - start).as_millis());
            seen = now;
        }
    }
    // The event's datagram at once, then the heartbeats.
    assert_eq!(at, vec![0, 2, 6, 14, 30, 62], "datagrams sent at (ms)");
}
