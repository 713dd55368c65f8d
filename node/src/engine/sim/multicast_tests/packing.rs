//! How events are packed into datagrams: a burst shares datagrams while the group link is
//! busy (the channel is paced), events published while the last datagram is still on its way
//! wait for it to arrive (coalescing) for a round trip at most, and a lone event after a quiet
//! spell goes at once. And how soon they are reported back: in the step they were handled.

use std::time::Duration;

use super::super::multicast::{LanFaults, clean};
use super::{Lan, MS, Sim, check_handled_once, check_receipts};
use crate::engine::{Done, OpId};

const US: Duration = Duration::from_micros(1);

/// Events published while the group link is busy share datagrams (the channel is paced): a
/// burst of 100 small events goes in a handful of datagrams, and each is handled once.
#[test]
fn a_burst_published_while_the_link_sends_shares_datagrams() {
    let mut lan = Lan::new(9, true, |_| clean());
    let before = lan.sim.datagrams;
    let ops = lan.burst(100);
    let receipts = lan.receipts(&ops, Duration::from_secs(5));
    check_receipts(&lan, &receipts);
    check_handled_once(&lan, &ops, |_| true);
    let datagrams = lan.sim.datagrams - before;
    // The first event goes alone; the 99 queued behind it share datagrams, 8 to 11 each (each
    // group's events go to its four instances in turn, so each event is a run of its own,
    // about 157 bytes with its head and assignment).
    assert!(datagrams <= 14, "{datagrams} datagrams for 100 events");
}

/// A publisher and one subscriber of `order.*`, whose datagrams arrive with `faults`.
fn pair(seed: u64, faults: LanFaults) -> (Sim, usize) {
    let mut sim = Sim::new(seed);
    let (publisher, ..) = sim.lan_pair(faults);
    (sim, publisher)
}

/// Publishes one small event, then lets `after` pass.
fn publish_one(sim: &mut Sim, publisher: usize, after: Duration) -> OpId {
    publish_sized(sim, publisher, 1, after)
}

/// Publishes one event of `size` payload bytes, then lets `after` pass.
fn publish_sized(sim: &mut Sim, publisher: usize, size: usize, after: Duration) -> OpId {
    let event = sim.event("order.created", vec![b'x'; size]);
    let op = sim.publish_event(publisher, event);
    sim.run_for(after);
    op
}

/// (datagrams sealed, events packed) by the publisher's channel.
fn sent(sim: &Sim, publisher: usize) -> (u64, u64) {
    let stats = sim.nodes[publisher].engine.channel_stats();
    (stats.sealed, stats.events)
}

/// Events published one call at a time while the last datagram has reached no subscriber yet
/// (a datagram takes 100 µs, the status back 50 µs more) wait for it, and then go together;
/// an event published after a quiet spell goes at once.
#[test]
fn events_published_while_the_last_datagram_travels_share_the_next_one() {
    let (mut sim, publisher) = pair(21, clean());
    let (sealed, events) = sent(&sim, publisher);
    let mut ops = vec![publish_one(&mut sim, publisher, 20 * US)];
    assert_eq!(
        sent(&sim, publisher),
        (sealed + 1, events + 1),
        "the first went at once"
    );
    for _ in 0..5 {
        ops.push(publish_one(&mut sim, publisher, 10 * US));
    }
    assert_eq!(
        sent(&sim, publisher),
        (sealed + 1, events + 1),
        "the next five wait"
    );
    sim.run_for(MS);
    assert_eq!(
        sent(&sim, publisher),
        (sealed + 2, events + 6),
        "then go in one datagram"
    );
    for op in &ops {
        assert!(
            matches!(sim.result(publisher, *op), Some(Ok(Done::Published(_)))),
            "{:?}",
            sim.result(publisher, *op)
        );
    }
    // Quiet (the tail heartbeat went): the next event goes at once.
    sim.run_for(10 * MS);
    let (sealed, events) = sent(&sim, publisher);
    publish_one(&mut sim, publisher, 20 * US);
    assert_eq!(sent(&sim, publisher), (sealed + 1, events + 1));
}

/// Where the last datagram reaches nobody (it is lost), what waits behind it goes a round
/// trip (500 µs) after it started waiting, not later.
#[test]
fn a_datagram_waits_one_round_trip_at_most() {
    let lost = LanFaults {
        loss: 1.0,
        ..clean()
    };
    let (mut sim, publisher) = pair(22, lost);
    let (sealed, events) = sent(&sim, publisher);
    publish_one(&mut sim, publisher, 20 * US);
    publish_one(&mut sim, publisher, 400 * US);
    assert_eq!(
        sent(&sim, publisher),
        (sealed + 1, events + 1),
        "still waiting"
    );
    sim.run_for(150 * US);
    assert_eq!(
        sent(&sim, publisher),
        (sealed + 2, events + 2),
        "sent after 500 µs"
    );
}

/// A datagram with no room for another event like its last is not worth waiting for: large
/// events go at once, each in its own datagram, even while the last one travels.
#[test]
fn a_datagram_with_no_room_for_another_like_it_does_not_wait() {
    let (mut sim, publisher) = pair(23, clean());
    let (sealed, events) = sent(&sim, publisher);
    publish_sized(&mut sim, publisher, 800, 20 * US);
    publish_sized(&mut sim, publisher, 800, 20 * US);
    assert_eq!(sent(&sim, publisher), (sealed + 2, events + 2));
}

/// A subscriber reports the events its handlers finished in the engine step they finished in,
/// as unicast acks go, not on a turn of its timer: with the subscriber's timers stopped, an
/// event's receipt still comes one datagram (100 µs) and one status (50 µs) after it was
/// published, and the event went by multicast.
#[test]
fn a_handled_event_is_reported_without_a_timer() {
    let mut sim = Sim::new(13);
    let (publisher, billing, _) = sim.lan_pair(clean());
    sim.stop_timers(billing);
    let (_, events) = sent(&sim, publisher);
    let op = publish_one(&mut sim, publisher, MS / 2);
    match sim.result(publisher, op) {
        Some(Ok(Done::Published(receipt))) => assert_eq!(receipt.deliveries.len(), 1),
        other => panic!("no receipt within half a millisecond: {other:?}"),
    }
    assert_eq!(sent(&sim, publisher).1, events + 1, "not by multicast");
    assert_eq!(sim.nodes[billing].engine.stats().handled, 1);
}
