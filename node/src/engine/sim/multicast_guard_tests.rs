//! The multicast channel against peers that misbehave or are not allowed: a rogue's key
//! for another's channel, a status claiming every number, junk on the group, and a
//! subscriber the publisher's policy refuses; and a member whose key was lost with a
//! replaced connection.

#![cfg(test)]

use std::time::Duration;

use super::multicast::clean;
use super::{Handled, Sim};
use crate::PublishReceipt;
use crate::engine::Done;

const MS: Duration = Duration::from_millis(1);

/// Publishes `count` events on `topic` from `publisher`, one every 100 µs, and returns their
/// receipts 50 ms after the last (each must have completed).
fn publish_each(sim: &mut Sim, publisher: usize, topic: &str, count: usize) -> Vec<PublishReceipt> {
    let mut ops = Vec::new();
    for i in 0..count {
        let event = sim.event(topic, format!("{i}"));
        ops.push(sim.publish_event(publisher, event));
        sim.run_for(MS / 10);
    }
    sim.run_for(50 * MS);
    let result = |op| match sim.result(publisher, op) {
        Some(Ok(Done::Published(r))) => r.clone(),
        other => panic!("{other:?}"),
    };
    ops.into_iter().map(result).collect()
}

#[test]
fn hostile_keys_statuses_and_datagrams_change_nothing_for_honest_nodes() {
    use shoal_proto::multicast::{ChannelKey, ChannelStatus};
    use shoal_proto::{Frame, SeqRange};

    let mut sim = Sim::new(5);
    let publisher = sim.lan_node("orders", clean());
    let sub = sim.lan_node("billing", clean());
    let rogue = sim.lan_node("rogue", clean());
    sim.connect(publisher, sub);
    let (rogue_at_pub, _) = sim.connect(publisher, rogue);
    let (_, rogue_at_sub) = sim.connect(sub, rogue);
    sim.subscribe(sub, "order.*", Some("billing"), |_| Handled::ok_after(MS));
    sim.run_for(5 * MS);
    let pub_id = sim.nodes[publisher].engine.id();
    let channel = {
        let ch = sim.nodes[sub]
            .engine
            .channels
            .as_ref()
            .expect("on the group");
        let mut of_pub = ch.inbound.iter().filter(|(_, i)| i.publisher == pub_id);
        *of_pub.next().expect("the publisher's key arrived").0
    };

    // The rogue hands a key for the publisher's channel: refused, the channel stays the
    // publisher's.
    let now = sim.now;
    let key = ChannelKey {
        channel,
        epoch: 9,
        secret: [7; 32],
        first_seq: 0,
    };
    sim.nodes[sub]
        .engine
        .handle_frame(rogue_at_sub, Frame::ChannelKey(key), now);
    sim.settle();
    let refused = sim.nodes[sub].events.iter().any(|e| {
        matches!(e, crate::NodeEvent::ProtocolError { reason, .. } if reason.contains("another publisher"))
    });
    assert!(refused, "{:?}", sim.nodes[sub].events);
    // Garbage on the group is counted and dropped.
    for len in [0, 3, 30, 300] {
        let junk = bytes::Bytes::from(vec![0x53; len]);
        sim.nodes[sub].engine.on_multicast_datagram(&junk, now);
    }
    assert_eq!(sim.nodes[sub].engine.channel_drops().1, 4);

    // An event in flight to `sub`; the rogue claims every number handled: it completes
    // nothing of `sub`'s, and the whole range costs nothing.
    let event = sim.event("order.created", "x");
    let op = sim.publish_event(publisher, event);
    let channel = sim.nodes[publisher]
        .engine
        .channels
        .as_ref()
        .and_then(|c| c.sender.as_ref())
        .map(|s| s.channel())
        .expect("open");
    let status = ChannelStatus {
        channel,
        next_needed: u64::MAX,
        window: u32::MAX,
        handled: vec![SeqRange {
            start: 0,
            len: u64::MAX,
        }],
        failed: vec![SeqRange {
            start: 0,
            len: u64::MAX,
        }],
    };
    let now = sim.now;
    sim.nodes[publisher]
        .engine
        .handle_frame(rogue_at_pub, Frame::ChannelStatus(status), now);
    sim.settle();
    assert!(
        sim.result(publisher, op).is_none(),
        "completed by the rogue's claim"
    );
    sim.run_for(20 * MS);
    let sub_id = sim.nodes[sub].engine.id();
    match sim.result(publisher, op) {
        Some(Ok(Done::Published(receipt))) => {
            assert_eq!(receipt.deliveries.len(), 1);
            assert_eq!(receipt.deliveries[0].node, sub_id);
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.datagrams > 0);
}

#[test]
fn a_subscriber_the_policy_refuses_leaves_the_channel_and_gets_its_events_by_unicast() {
    use crate::engine::multicast::DropReason;

    let policy = crate::policy::Policy::builder()
        .subscribe("spy", ["public.>"])
        .build()
        .expect("policy");
    let config = crate::config::Config {
        policy: std::sync::Arc::new(policy),
        ..crate::config::Config::default()
    };
    let mut sim = Sim::new(6);
    let publisher = sim.lan_node_with("orders", clean(), config);
    let billing = sim.lan_node("billing", clean());
    let spy = sim.lan_node("spy", clean());
    sim.connect(publisher, billing);
    sim.connect(publisher, spy);
    sim.subscribe(billing, "public.*", Some("billing"), |_| Handled::ok());
    sim.subscribe(spy, "public.*", None, |_| Handled::ok());
    sim.run_for(5 * MS);
    let spy_id = sim.nodes[spy].engine.id();
    let member = |sim: &Sim| {
        let ch = sim.nodes[publisher].engine.channels.as_ref();
        ch.and_then(|c| c.sender.as_ref())
            .is_some_and(|s| s.is_member(spy_id))
    };
    assert!(member(&sim), "the spy joined while allowed");
    sim.subscribe(spy, "secret.>", None, |_| Handled::ok());
    sim.run_for(5 * MS);
    assert!(!member(&sim), "a refused subscriber stays on the channel");

    for r in publish_each(&mut sim, publisher, "public.news", 100) {
        assert_eq!(r.deliveries.len(), 2, "{r:?}");
    }
    let runs_on = |node| sim.runs.iter().filter(|r| r.node == node && r.ok).count();
    assert_eq!((runs_on(billing), runs_on(spy)), (100, 100));
    let carried = sim.nodes[publisher].engine.channel_stats().events;
    assert!(carried >= 100, "{carried} events went on the channel");
    // What the channel sealed after the refusal does not open at the spy: held for a key
    // that never comes, the oldest dropped once the hold is full.
    let (dropped, _) = sim.nodes[spy].engine.channel_drops();
    let channels = sim.nodes[spy].engine.channels.as_deref();
    let unopened: usize = channels
        .into_iter()
        .flat_map(|c| c.inbound.values())
        .map(|i| i.rx.unkeyed())
        .sum();
    assert!(
        dropped.of(DropReason::UnknownEpoch) + unopened as u64 > 0,
        "{dropped:?}"
    );
}

#[test]
fn a_member_whose_key_was_lost_gets_it_again_with_its_next_hello() {
    use shoal_proto::Frame;
    use shoal_proto::multicast::ChannelHello;

    let mut sim = Sim::new(7);
    let publisher = sim.lan_node("orders", clean());
    let sub = sim.lan_node("billing", clean());
    let (sub_at_pub, _) = sim.connect(publisher, sub);
    sim.subscribe(sub, "order.*", Some("billing"), |_| Handled::ok());
    sim.run_for(5 * MS);
    // The key went with a connection that was replaced by a duplicate: the subscriber holds
    // none, and says its group again on the connection that stays.
    let channels = sim.nodes[sub]
        .engine
        .channels
        .as_mut()
        .expect("on the group");
    channels.inbound.clear();
    let group = channels.setup.group;
    let now = sim.now;
    sim.nodes[publisher].engine.handle_frame(
        sub_at_pub,
        Frame::ChannelHello(ChannelHello { group }),
        now,
    );
    sim.settle();
    sim.run_for(5 * MS);
    let pub_id = sim.nodes[publisher].engine.id();
    let keyed = sim.nodes[sub]
        .engine
        .channels
        .as_ref()
        .is_some_and(|c| c.inbound.values().any(|i| i.publisher == pub_id));
    assert!(keyed, "the key was not handed again");

    for r in publish_each(&mut sim, publisher, "order.created", 20) {
        assert_eq!(r.deliveries[0].attempts, 1, "{r:?}");
    }
    assert_eq!(
        sim.runs.iter().filter(|r| r.node == sub && r.ok).count(),
        20
    );
    let carried = sim.nodes[publisher].engine.channel_stats().events;
    assert_eq!(carried, 20, "the events went on the channel");
    assert_eq!(sim.nodes[publisher].engine.channel_stats().demotions, 0);
}
