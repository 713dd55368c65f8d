//! Copies on the channel without a delivery each (`multicast_copies.rs`): none is kept while
//! they wait, their receipts are those of deliveries, one not reported in time becomes a
//! delivery that goes again by unicast, a caller that gives up or a node that begins to stop
//! leaves none waiting, a killed node dead-letters its background copies, and the metrics
//! count them as they would deliveries.

use std::time::Duration;

use super::super::multicast::clean;
use super::{Handled, Lan, MS, Sim, check_handled_once, check_receipts, receipts_within_a_second};
use crate::engine::send::Publishing;
use crate::{PublishOptions, RetryPolicy};

/// The publisher's deliveries, and its copies on the channel without one.
fn kept(sim: &Sim, publisher: usize) -> (usize, usize) {
    let out = &sim.nodes[publisher].engine.out;
    (out.deliveries.len(), out.channel_copies)
}

/// A burst of 20 events to four audiences (two groups, two every-instance subscribers), all
/// on the channel, waits as 80 copies and no delivery; each ends with its member's report,
/// at its first attempt, in the receipt a delivery would have given.
#[test]
fn copies_on_the_channel_keep_no_delivery_each() {
    let mut lan = Lan::new(21, true, |_| clean());
    let ops = lan.burst(20);
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 80));
    let receipts = lan.receipts(&ops, Duration::from_secs(1));
    check_receipts(&lan, &receipts);
    check_handled_once(&lan, &ops, |_| true);
    let copies = receipts.iter().flat_map(|r| &r.deliveries);
    assert!(copies.clone().all(|c| c.attempts == 1), "{receipts:?}");
    assert_eq!(copies.count(), 80);
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 0));
}

/// A member still handling an event when the publisher's ack timeout passes: the copy becomes
/// a delivery and goes to the same member again by unicast, where its dedup window holds it
/// until the run ends. The event runs once, and the receipt counts two attempts.
#[test]
fn a_copy_not_reported_in_time_goes_again_by_unicast_to_its_member_and_runs_once() {
    let mut sim = Sim::new(22);
    let publisher = sim.lan_node("orders", clean());
    let billing = sim.lan_node("billing", clean());
    sim.connect(publisher, billing);
    sim.subscribe(billing, "order.*", Some("billing"), |_| {
        Handled::ok_after(30 * MS)
    });
    sim.run_for(5 * MS);
    let options = PublishOptions {
        retry: Some(RetryPolicy {
            ack_timeout: 20 * MS,
            ..RetryPolicy::default()
        }),
        ..PublishOptions::default()
    };
    let event = sim.event("order.created", "slow");
    let id = event.id();
    let op = match sim.publish(publisher, vec![event], &options) {
        Ok(Publishing::Waiting(op)) => op,
        other => panic!("publish: {other:?}"),
    };
    assert_eq!(kept(&sim, publisher), (0, 1), "on the channel");
    sim.run_for(25 * MS);
    assert_eq!(
        kept(&sim, publisher),
        (1, 0),
        "a delivery after the timeout"
    );
    let receipts = receipts_within_a_second(&mut sim, publisher, &[op]);
    let copy = &receipts[0].deliveries[..];
    assert_eq!(copy.len(), 1, "{receipts:?}");
    assert_eq!(copy[0].node, sim.nodes[billing].engine.id());
    assert_eq!(copy[0].attempts, 2);
    let runs = sim.runs.iter().filter(|r| r.id == id && r.ok).count();
    assert_eq!(runs, 1, "the redelivery waited for the run");
    assert_eq!(kept(&sim, publisher), (0, 0));
}

/// Callers that give up on their publishes leave no copy waiting; the reports that come
/// after find nothing to complete, and the events still run once each.
#[test]
fn a_cancelled_publish_leaves_no_copy_waiting() {
    let mut lan = Lan::new(23, true, |_| clean());
    let ops = lan.burst(5);
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 20));
    let now = lan.sim.now;
    for (op, ..) in &ops {
        lan.sim.nodes[lan.publisher].engine.cancel(*op, now);
    }
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 0));
    lan.sim.run_for(50 * MS);
    check_handled_once(&lan, &ops, |_| true);
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 0));
}

/// With metrics on, copies on the channel count as sent and acknowledged under their group
/// (an every-instance subscriber's under none), as their deliveries would.
#[test]
fn copies_on_the_channel_are_counted_in_the_metrics() {
    let mut lan = Lan::new(24, true, |_| clean());
    lan.sim.nodes[lan.publisher].engine.enable_metrics();
    let ops = lan.burst(10);
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 40));
    lan.receipts(&ops, Duration::from_secs(1));
    let snapshot = lan.sim.nodes[lan.publisher].engine.metrics_snapshot();
    let mut series: Vec<(&str, u64, u64, u64)> = snapshot
        .outbound
        .iter()
        .map(|(service, topic, out)| {
            assert_eq!(topic, "order.created");
            let timed = out.latency.counts.iter().sum::<u64>();
            (service.as_str(), out.sent, out.acked, timed)
        })
        .collect();
    series.sort();
    // Two every-instance subscribers: 20 copies under no group.
    let expected = [
        ("", 20, 20, 20),
        ("billing", 10, 10, 10),
        ("shipping", 10, 10, 10),
    ];
    assert_eq!(series, expected);
}

/// A background publish's copies still on the channel when the node is killed become dead
/// letters, one per audience, as its deliveries would; nothing is left waiting.
#[test]
fn a_killed_publisher_dead_letters_its_background_copies_on_the_channel() {
    let mut lan = Lan::new(25, true, |_| clean());
    let event = lan.sim.event("order.created", "in the background");
    let options = PublishOptions::background();
    match lan.sim.publish(lan.publisher, vec![event], &options) {
        Ok(Publishing::Done(_)) => {}
        other => panic!("publish: {other:?}"),
    }
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 4));
    let now = lan.sim.now;
    let engine = &mut lan.sim.nodes[lan.publisher].engine;
    engine.kill(now);
    let letters = engine.dead_letters();
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert!(letters.iter().all(|l| l.attempts == 1), "{letters:?}");
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 0));
}

/// A node that begins to stop ends the publishes its callers wait for (`ShuttingDown`): their
/// copies on the channel stop waiting, and the reports that come after complete nothing.
#[test]
fn a_stopping_publisher_drops_the_copies_of_the_publishes_it_ended() {
    let mut lan = Lan::new(26, true, |_| clean());
    let ops = lan.burst(5);
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 20));
    let now = lan.sim.now;
    lan.sim.nodes[lan.publisher].engine.begin_shutdown(now);
    // At once, before the callers take their results (which forgets the operations).
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 0));
    lan.sim.settle();
    for (op, ..) in &ops {
        let result = lan.sim.result(lan.publisher, *op);
        assert!(
            matches!(result, Some(Err(crate::Error::ShuttingDown))),
            "{result:?}"
        );
    }
    lan.sim.run_for(50 * MS);
    check_handled_once(&lan, &ops, |_| true);
    assert_eq!(kept(&lan.sim, lan.publisher), (0, 0));
    assert_eq!(lan.sim.nodes[lan.publisher].engine.stats().acked, 0);
}

/// A copy staged for the channel keeps the engine from being quiet until its actions are
/// taken (taking them sends the datagram): a driver that skipped them would hold it back.
#[test]
fn a_copy_staged_for_the_channel_keeps_the_engine_from_being_quiet() {
    let mut sim = Sim::new(23);
    let publisher = sim.lan_node("orders", clean());
    let billing = sim.lan_node("billing", clean());
    sim.connect(publisher, billing);
    sim.subscribe(billing, "order.*", Some("billing"), |_| Handled::ok());
    sim.run_for(5 * MS);
    let event = sim.event("order.created", "staged");
    let now = sim.now;
    let engine = &mut sim.nodes[publisher].engine;
    let published = engine.publish(
        vec![event].into(),
        false,
        &PublishOptions::default(),
        || now,
    );
    assert!(
        matches!(published, Ok(Publishing::Waiting(_))),
        "{published:?}"
    );
    engine.timer_moved();
    assert!(engine.actions.is_empty(), "{:?}", engine.actions.len());
    assert!(!engine.is_quiet(), "a staged copy");
    assert!(
        matches!(
            engine.poll_action(),
            Some(crate::engine::Action::Multicast(_))
        ),
        "the copy's datagram"
    );
}
