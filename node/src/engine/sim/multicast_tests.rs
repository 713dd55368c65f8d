//! Publishing over the multicast channel, on the simulated LAN: the same receipts as unicast,
//! nothing lost, each event handled once per group, failover and rekeys when a subscriber
//! dies, and the fallback to unicast where datagrams do not arrive.

#![cfg(test)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::rc::Rc;
use std::time::Duration;

use shoal_proto::MessageId;

use super::multicast::{LanFaults, clean, lossy};
use super::{Handled, Sim};
use crate::HandlerError;
use crate::PublishReceipt;
use crate::engine::multicast::Header;
use crate::engine::{Action, Done, OpId};
use crate::{FallbackReason, NodeEvent};

const MS: Duration = Duration::from_millis(1);

mod audiences;
mod copies;
mod join_key;
mod membership;
mod packing;
mod round_trip;
mod slow_handlers;

/// A publisher and its subscribers: four instances of `billing`, four of `shipping`, and two
/// that take every event.
struct Lan {
    sim: Sim,
    publisher: usize,
    billing: Vec<usize>,
    shipping: Vec<usize>,
    every: Vec<usize>,
}

impl Lan {
    /// The LAN, with `faults(i)` on the datagrams reaching subscriber `i` (billing 0-3,
    /// shipping 4-7, every-instance 8-9); `multicast: false` builds the same nodes without a
    /// group, so every copy goes by unicast.
    fn new(seed: u64, multicast: bool, faults: impl Fn(usize) -> LanFaults) -> Self {
        let mut sim = Sim::new(seed);
        let add = |sim: &mut Sim, service: &str, f: LanFaults| {
            if multicast {
                sim.lan_node(service, f)
            } else {
                sim.node(service)
            }
        };
        let publisher = add(&mut sim, "orders", clean());
        let mut subs = Vec::new();
        for i in 0..10 {
            let service = match i {
                0..4 => "billing",
                4..8 => "shipping",
                _ => "audit",
            };
            let node = add(&mut sim, service, faults(i));
            sim.connect(publisher, node);
            let group = (i < 8).then_some(service);
            sim.subscribe(node, "order.*", group, |_| Handled::ok_after(MS / 5));
            subs.push(node);
        }
        sim.run_for(5 * MS);
        Self {
            sim,
            publisher,
            billing: subs[0..4].to_vec(),
            shipping: subs[4..8].to_vec(),
            every: subs[8..].to_vec(),
        }
    }

    /// Publishes `count` events, one call each; every fourth carries one of three keys.
    fn publish(&mut self, count: usize) -> Vec<(OpId, MessageId, Option<String>)> {
        let mut ops = Vec::new();
        for i in 0..count {
            let mut event = self.sim.event("order.created", format!("{i}"));
            if i % 4 == 0 {
                event = event.with_key(format!("customer-{}", i % 3));
            }
            let (id, key) = (event.id(), event.key().map(str::to_owned));
            ops.push((self.sim.publish_event(self.publisher, event), id, key));
            self.sim.run_for(MS / 10);
        }
        ops
    }

    /// Publishes `count` events at the same instant (one call each, no time between).
    fn burst(&mut self, count: usize) -> Vec<(OpId, MessageId, Option<String>)> {
        let mut ops = Vec::new();
        for i in 0..count {
            let event = self.sim.event("order.created", format!("burst {i}"));
            let id = event.id();
            ops.push((self.sim.publish_event(self.publisher, event), id, None));
        }
        ops
    }

    /// Runs until every op has its result (or `limit` passed), and returns the receipts.
    fn receipts(
        &mut self,
        ops: &[(OpId, MessageId, Option<String>)],
        limit: Duration,
    ) -> Vec<PublishReceipt> {
        let until = self.sim.now + limit;
        while self.sim.now < until
            && ops
                .iter()
                .any(|(op, _, _)| self.sim.result(self.publisher, *op).is_none())
        {
            self.sim.run_for(MS);
        }
        ops.iter()
            .map(|(op, id, _)| match self.sim.result(self.publisher, *op) {
                Some(Ok(Done::Published(receipt))) => receipt.clone(),
                other => panic!("event {id}: {other:?}"),
            })
            .collect()
    }

    /// The copies in `receipts` that `node` took.
    fn copies_to(&self, node: usize, receipts: &[PublishReceipt]) -> usize {
        let id = self.sim.nodes[node].engine.id();
        receipts
            .iter()
            .flat_map(|r| &r.deliveries)
            .filter(|c| c.node == id)
            .count()
    }

    /// Handler runs that completed, by (handler label, event id): the nodes they ran on.
    fn runs(&self) -> BTreeMap<(String, MessageId), Vec<usize>> {
        let mut runs: BTreeMap<(String, MessageId), Vec<usize>> = BTreeMap::new();
        for run in self.sim.runs.iter().filter(|r| r.ok) {
            let label = match run.label.as_str() {
                "(instance)" => format!("node {}", run.node),
                group => group.to_owned(),
            };
            runs.entry((label, run.id)).or_default().push(run.node);
        }
        runs
    }
}

/// Runs `sim` until every one of `publisher`'s `ops` has its result, a second at most, and
/// returns their receipts.
fn receipts_within_a_second(sim: &mut Sim, publisher: usize, ops: &[OpId]) -> Vec<PublishReceipt> {
    let start = sim.now;
    while sim.now < start + Duration::from_secs(1)
        && ops.iter().any(|op| sim.result(publisher, *op).is_none())
    {
        sim.run_for(MS);
    }
    ops.iter()
        .map(|op| match sim.result(publisher, *op) {
            Some(Ok(Done::Published(receipt))) => receipt.clone(),
            other => panic!("not done within a second: {other:?}"),
        })
        .collect()
}

/// Every receipt names both groups and both every-instance subscribers, and drops nothing.
fn check_receipts(lan: &Lan, receipts: &[PublishReceipt]) {
    let ids = |nodes: &[usize]| -> BTreeSet<_> {
        nodes
            .iter()
            .map(|&n| lan.sim.nodes[n].engine.id())
            .collect()
    };
    let (billing, shipping, every) = (ids(&lan.billing), ids(&lan.shipping), ids(&lan.every));
    for receipt in receipts {
        assert!(receipt.dropped.is_empty(), "{receipt:?}");
        assert_eq!(receipt.deliveries.len(), 4, "{receipt:?}");
        for copy in &receipt.deliveries {
            let allowed = match copy.group.as_deref() {
                Some("billing") => &billing,
                Some("shipping") => &shipping,
                None => &every,
                Some(other) => panic!("a copy for {other}"),
            };
            assert!(allowed.contains(&copy.node), "{copy:?}");
            assert!(copy.attempts >= 1);
        }
    }
}

/// Each event ran exactly once per group and once on each every-instance subscriber, on the
/// nodes `live` says are alive; returns how many runs there were.
fn check_handled_once(
    lan: &Lan,
    ops: &[(OpId, MessageId, Option<String>)],
    live: impl Fn(usize) -> bool,
) {
    let runs = lan.runs();
    let mut labels: Vec<String> = vec!["billing".into(), "shipping".into()];
    labels.extend(lan.every.iter().map(|n| format!("node {n}")));
    for (_, id, _) in ops {
        for label in &labels {
            let nodes = runs.get(&(label.clone(), *id)).cloned().unwrap_or_default();
            // Once on a live instance, or on the dead one before it died (not both).
            let on_live = nodes.iter().filter(|&&n| live(n)).count();
            assert!(
                !nodes.is_empty(),
                "event {id} for {label} was never handled"
            );
            assert!(on_live <= 1, "event {id} for {label}: ran on {nodes:?}");
        }
    }
}

/// Keyed events were handled in the order they were published, in each group.
fn check_key_order(lan: &Lan, ops: &[(OpId, MessageId, Option<String>)]) {
    let published: Vec<MessageId> = ops
        .iter()
        .filter(|(_, _, k)| k.is_some())
        .map(|(_, id, _)| *id)
        .collect();
    for group in ["billing", "shipping"] {
        let mut by_key: BTreeMap<String, Vec<MessageId>> = BTreeMap::new();
        let mut runs: Vec<_> = lan
            .sim
            .runs
            .iter()
            .filter(|r| r.ok && r.label == group && r.key.is_some())
            .collect();
        runs.sort_by_key(|r| r.started);
        for r in runs {
            by_key
                .entry(r.key.clone().unwrap_or_default())
                .or_default()
                .push(r.id);
        }
        for handled in by_key.values() {
            let order: Vec<usize> = handled
                .iter()
                .map(|id| published.iter().position(|p| p == id).unwrap_or(usize::MAX))
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{group}: {order:?}");
        }
    }
}

#[test]
fn eight_subscribers_in_two_groups_with_loss_on_two_lose_nothing_and_handle_nothing_twice() {
    let mut lan = Lan::new(1, true, |i| {
        if i == 1 || i == 5 {
            lossy(0.05)
        } else {
            lossy(0.0)
        }
    });
    let ops = lan.publish(400);
    let receipts = lan.receipts(&ops, 5 * Duration::from_secs(1));
    check_receipts(&lan, &receipts);
    check_handled_once(&lan, &ops, |_| true);
    check_key_order(&lan, &ops);
    // The copies went on the channel: datagrams carried them, few unicast runs did, and the
    // lossy subscribers were repaired rather than moved to unicast.
    let unicast = lan.sim.net.frames().messages;
    let datagrams = lan.sim.datagrams;
    assert!(
        datagrams > 0 && datagrams < 400 * 2,
        "{datagrams} datagrams"
    );
    assert!(
        unicast < 40,
        "{unicast} unicast runs for 400 events x 4 audiences"
    );
    let first_tries = receipts
        .iter()
        .flat_map(|r| &r.deliveries)
        .filter(|c| c.attempts == 1)
        .count();
    assert!(
        first_tries > 4 * 400 * 95 / 100,
        "{first_tries} copies done at the first attempt"
    );
}

#[test]
fn receipts_are_those_of_unicast() {
    let shape = |multicast: bool| {
        let mut lan = Lan::new(2, multicast, |_| clean());
        let ops = lan.publish(50);
        let receipts = lan.receipts(&ops, Duration::from_secs(5));
        check_receipts(&lan, &receipts);
        let shape: Vec<Vec<(Option<String>, u32)>> = receipts
            .iter()
            .map(|r| {
                let mut copies: Vec<_> = r
                    .deliveries
                    .iter()
                    .map(|c| (c.group.clone(), c.attempts))
                    .collect();
                copies.sort();
                copies
            })
            .collect();
        (shape, lan.sim.datagrams)
    };
    let (unicast, none) = shape(false);
    let (multicast, some) = shape(true);
    assert_eq!(none, 0);
    assert!(some > 0);
    assert_eq!(multicast, unicast);
}

#[test]
fn a_subscriber_killed_mid_stream_fails_over_and_cannot_read_after_the_rekey() {
    let mut lan = Lan::new(3, true, |_| clean());
    let mut ops = lan.publish(100);
    let victim = lan.billing[1];
    // QUIC notices the crash after its idle timeout; meanwhile the channel goes on.
    lan.sim.crash(victim, 10 * MS);
    ops.extend(lan.publish(300));
    let receipts = lan.receipts(&ops, Duration::from_secs(10));
    check_receipts(&lan, &receipts);
    check_handled_once(&lan, &ops, |n| n != victim);
    let late = lan.copies_to(victim, &receipts[100..]);
    assert_eq!(
        late, 0,
        "copies published after the crash credited to the dead instance"
    );

    // What reached the dead node: what was sealed before the publisher knew (it can still
    // open that), and what was sealed after the rekey (it opens none of it).
    let captured: Vec<_> = lan
        .sim
        .captured
        .iter()
        .filter(|(n, _)| *n == victim)
        .map(|(_, b)| b.clone())
        .collect();
    let epoch = |b: &bytes::Bytes| Header::parse(b).expect("a channel datagram").epoch;
    let first = captured
        .first()
        .map(epoch)
        .expect("datagrams reached the dead node");
    let (before, after): (Vec<_>, Vec<_>) = captured.into_iter().partition(|b| epoch(b) == first);
    assert!(
        !before.is_empty() && after.len() > 64,
        "{} then {}",
        before.len(),
        after.len()
    );
    let runs_of = |sim: &mut Sim, datagrams: &[bytes::Bytes]| {
        let now = sim.now;
        let engine = &mut sim.nodes[victim].engine;
        let mut runs = 0;
        for d in datagrams {
            engine.on_multicast_datagram(d, now);
            while let Some(action) = engine.poll_action() {
                runs += usize::from(matches!(action, Action::Run(_)));
            }
        }
        runs
    };
    let old_runs = runs_of(&mut lan.sim, &before);
    let new_runs = runs_of(&mut lan.sim, &after);
    assert!(
        old_runs > 0,
        "the dead node's key opened nothing even before the rekey"
    );
    assert_eq!(
        new_runs, 0,
        "the dead node read events sealed after the rekey"
    );
    let (dropped, _) = lan.sim.nodes[victim].engine.channel_drops();
    assert!(dropped.of(crate::engine::multicast::DropReason::UnknownEpoch) > 0);
}

#[test]
fn a_subscriber_whose_datagrams_never_arrive_moves_to_unicast_and_loses_nothing() {
    let deaf = |i| {
        if i == 2 {
            LanFaults {
                loss: 1.0,
                ..clean()
            }
        } else {
            clean()
        }
    };
    let mut lan = Lan::new(4, true, deaf);
    let start = lan.sim.now;
    let ops = lan.publish(200);
    let receipts = lan.receipts(&ops, Duration::from_secs(10));
    check_receipts(&lan, &receipts);
    check_handled_once(&lan, &ops, |_| true);
    let deaf_id = lan.sim.nodes[lan.billing[2]].engine.id();
    // Every copy the deaf instance took was done within the stall timeout and a round trip.
    let last_done = lan
        .sim
        .runs
        .iter()
        .filter(|r| r.node == lan.billing[2])
        .map(|r| r.ended)
        .max()
        .expect("the deaf instance handled its share by unicast");
    let took = last_done - start;
    // Not at once either: it was a member, and was moved after the stall timeout (300 ms).
    assert!(
        took >= 250 * MS && took <= 420 * MS,
        "the deaf instance's events were done after {took:?}"
    );
    let copies = receipts
        .iter()
        .flat_map(|r| &r.deliveries)
        .filter(|c| c.node == deaf_id)
        .count();
    assert!(copies > 0);
    // The publisher's user is told, once, and why.
    let fallbacks: Vec<&NodeEvent> = lan.sim.nodes[lan.publisher]
        .events
        .iter()
        .filter(|e| matches!(e, NodeEvent::MulticastFallback { .. }))
        .collect();
    let told = NodeEvent::MulticastFallback {
        node: deaf_id,
        service: "billing".into(),
        reason: FallbackReason::NotReached,
    };
    assert_eq!(fallbacks, vec![&told]);
}

/// A handler that fails on a subscriber is reported failed in its status: the publisher sends
/// the copy again by unicast at once (not after its 5 s ack timeout), and that run succeeds.
#[test]
fn a_failed_handler_is_retried_by_unicast_at_once() {
    let mut sim = Sim::new(11);
    let publisher = sim.lan_node("orders", clean());
    let billing = sim.lan_node("billing", clean());
    sim.connect(publisher, billing);
    let tried: Rc<RefCell<HashSet<MessageId>>> = Rc::default();
    let first_try = Rc::clone(&tried);
    sim.subscribe(billing, "order.*", Some("billing"), move |msg| {
        if first_try.borrow_mut().insert(msg.id()) {
            Handled::fail(HandlerError::retryable("busy"))
        } else {
            Handled::ok()
        }
    });
    sim.run_for(5 * MS);
    let mut ops = Vec::new();
    for i in 0..20 {
        let event = sim.event("order.created", format!("{i}"));
        ops.push(sim.publish_event(publisher, event));
        sim.run_for(MS / 10);
    }
    for receipt in receipts_within_a_second(&mut sim, publisher, &ops) {
        assert_eq!(receipt.deliveries.len(), 1);
        assert_eq!(receipt.deliveries[0].attempts, 2, "{receipt:?}");
    }
    assert!(sim.datagrams > 0, "the first tries went on the channel");
    assert_eq!(tried.borrow().len(), 20);
}
