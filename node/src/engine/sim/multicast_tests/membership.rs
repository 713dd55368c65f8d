//! Membership of the channel as connections come and go: a connection replaced by a
//! duplicate (no rekey; the member stays), a replacement that never comes (the member leaves,
//! the key changes), a demoted subscriber that goes (the key changes too), and a graceful
//! stop (what was handled is reported before the goodbye); a node on another group, and one
//! whose announcement says so (warned about once).

use std::time::Duration;

use super::super::multicast::{LanFaults, clean};
use super::super::{Handled, Sim};
use super::{Lan, MS, check_handled_once, check_receipts, receipts_within_a_second};
use crate::NodeEvent;
use crate::config::Config;

/// Whether `node` takes `publisher`'s channel by multicast, and how often the channel rekeyed.
fn membership(lan: &Lan, node: usize) -> (bool, u64) {
    let id = lan.sim.nodes[node].engine.id();
    let publisher = &lan.sim.nodes[lan.publisher].engine;
    let member = publisher
        .channels
        .as_deref()
        .and_then(|ch| ch.sender.as_ref())
        .is_some_and(|s| s.is_member(id));
    (member, publisher.channel_stats().rekeys)
}

/// Two nodes that dialled each other at once keep one connection: the other one is closed
/// as a duplicate, and may go before the winner is up on this side. The subscriber is not
/// leaving: no rekey, and it takes the channel again once the winner is up.
#[test]
fn a_connection_replaced_by_a_duplicate_keeps_the_member_and_the_key() {
    let mut lan = Lan::new(5, true, |_| clean());
    let mut ops = lan.publish(100);
    // Lost with the connection: the reports of the burst's copies the replaced instance takes.
    ops.extend(lan.burst(8));
    let replaced = lan.billing[1];
    lan.sim.lose_as_duplicate(lan.publisher, replaced);
    ops.extend(lan.publish(20));
    lan.sim
        .link_up(replaced, lan.publisher, Default::default(), true)
        .expect("the winner is admitted");
    ops.extend(lan.publish(200));
    // Well within the copies' ack timeout (5 s): what the replaced instance had not reported
    // (its statuses went with the old connection) went to it again by unicast at its hello.
    let receipts = lan.receipts(&ops, Duration::from_secs(1));
    check_receipts(&lan, &receipts);
    check_handled_once(&lan, &ops, |_| true);
    assert_eq!(membership(&lan, replaced), (true, 0));
    let late = lan.copies_to(replaced, &receipts[128..]);
    assert!(late > 0, "the replaced instance took no copies after");
}

/// The same, but no connection comes instead: the member falls silent, leaves, and the key
/// changes.
#[test]
fn a_member_whose_replacement_never_comes_leaves_and_the_key_changes() {
    let mut lan = Lan::new(6, true, |_| clean());
    let mut ops = lan.publish(100);
    let replaced = lan.billing[2];
    lan.sim.lose_as_duplicate(lan.publisher, replaced);
    assert_eq!(membership(&lan, replaced), (true, 0));
    ops.extend(lan.publish(100));
    let receipts = lan.receipts(&ops, Duration::from_secs(5));
    check_receipts(&lan, &receipts);
    // Cut off from the publisher, it may still handle what it was given, unreported: those
    // copies are retried on another instance, as after any lost connection.
    check_handled_once(&lan, &ops, |n| n != replaced);
    lan.sim.run_for(Duration::from_secs(1));
    assert_eq!(membership(&lan, replaced), (false, 1));
    // It left; it was not moved to unicast, and nobody is told it was.
    let fallbacks = lan.sim.nodes[lan.publisher]
        .events
        .iter()
        .filter(|e| matches!(e, NodeEvent::MulticastFallback { .. }))
        .count();
    assert_eq!(fallbacks, 0);
}

/// A member moved to unicast keeps the key; when it then goes, the key changes all the same.
#[test]
fn a_demoted_subscriber_that_goes_takes_no_key_with_it() {
    let deaf = |i| LanFaults {
        loss: if i == 2 { 1.0 } else { 0.0 },
        ..clean()
    };
    let mut lan = Lan::new(7, true, deaf);
    let ops = lan.publish(200);
    let receipts = lan.receipts(&ops, Duration::from_secs(10));
    check_receipts(&lan, &receipts);
    let gone = lan.billing[2];
    assert_eq!(membership(&lan, gone), (false, 0), "demoted, same key");
    lan.sim.crash(gone, 10 * MS);
    lan.sim.run_for(100 * MS);
    assert_eq!(membership(&lan, gone), (false, 1));
}

/// A subscriber of a group stops gracefully mid-stream: what it handled is reported before
/// its goodbye, so no event runs again on the other instances; the channel changes its key.
/// (It failed when statuses waited up to 2 ms and the goodbye did not send the pending one;
/// with statuses at once the step that ends the handlers usually sends them first here.)
#[test]
fn a_subscriber_stopping_mid_stream_reports_what_it_handled_first() {
    let mut lan = Lan::new(8, true, |_| clean());
    let mut ops = lan.publish(100);
    let leaver = lan.billing[1];
    let now = lan.sim.now;
    lan.sim.nodes[leaver].engine.begin_shutdown(now);
    // Its goodbye goes as soon as its handlers are done, as the runtime does it.
    for _ in 0..10_000 {
        if lan.sim.nodes[leaver].engine.is_idle() {
            break;
        }
        lan.sim.run_for(Duration::from_micros(10));
    }
    assert!(lan.sim.nodes[leaver].engine.is_idle());
    let now = lan.sim.now;
    lan.sim.nodes[leaver].engine.say_goodbye(now);
    lan.sim.settle();
    ops.extend(lan.publish(100));
    let receipts = lan.receipts(&ops, Duration::from_secs(5));
    check_receipts(&lan, &receipts);
    check_handled_once(&lan, &ops, |_| true);
    assert_eq!(membership(&lan, leaver), (false, 1));
}

/// A node with multicast on another group than the publisher's: both are told (once each),
/// it never becomes a member, and its events come by unicast, every one handled.
#[test]
fn a_node_on_another_group_is_told_so_and_gets_its_events_by_unicast() {
    let mut sim = Sim::new(21);
    let publisher = sim.lan_node("orders", clean());
    let elsewhere = "239.255.9.9:7400";
    let billing = sim.lan_node_on("billing", clean(), Config::default(), elsewhere);
    sim.connect(publisher, billing);
    sim.subscribe(billing, "order.*", Some("billing"), |_| Handled::ok());
    sim.run_for(5 * MS);
    let ops: Vec<_> = (0..20)
        .map(|i| {
            let event = sim.event("order.created", format!("event {i}"));
            sim.publish_event(publisher, event)
        })
        .collect();
    for receipt in receipts_within_a_second(&mut sim, publisher, &ops) {
        assert_eq!(receipt.deliveries.len(), 1, "{receipt:?}");
    }
    assert_eq!(sim.runs.iter().filter(|r| r.node == billing).count(), 20);
    assert_eq!(sim.nodes[publisher].engine.channel_stats().events, 0);

    let differs = |node: usize| -> Vec<NodeEvent> {
        sim.nodes[node]
            .events
            .iter()
            .filter(|e| matches!(e, NodeEvent::MulticastGroupDiffers { .. }))
            .cloned()
            .collect()
    };
    let group = |node: usize| {
        let ch = sim.nodes[node].engine.channels.as_deref();
        ch.map(|c| c.setup.group).expect("a node on a group")
    };
    let told = |node: usize, service: &str, theirs, ours| NodeEvent::MulticastGroupDiffers {
        node: sim.nodes[node].engine.id(),
        service: service.into(),
        theirs,
        ours,
    };
    let (ours, theirs) = (group(publisher), group(billing));
    assert_eq!(theirs.to_string(), elsewhere);
    assert_eq!(
        differs(publisher),
        vec![told(billing, "billing", theirs, ours)]
    );
    assert_eq!(
        differs(billing),
        vec![told(publisher, "orders", ours, theirs)]
    );
}

/// Where the engine's logs go in the test below.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        crate::sync::lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Discovery announces three instances to a node with multicast on, each three times: one on
/// another group, one on the same group, one with multicast off. Each is listed with the group
/// it advertises; only the first is warned about, and once.
#[test]
fn an_instance_announced_on_another_group_is_warned_about_once() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let mut sim = Sim::new(22);
    let publisher = sim.lan_node("orders", clean());
    let elsewhere = "239.255.9.9:7400";
    let billing = sim.lan_node_on("billing", clean(), Config::default(), elsewhere);
    let shipping = sim.lan_node("shipping", clean());
    let audit = sim.node("audit");
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..3 {
            for other in [billing, shipping, audit] {
                sim.announce(publisher, other, true);
            }
        }
    });

    let ours = sim.nodes[publisher].engine.config.multicast_group();
    let listed = |node: usize| {
        let id = sim.nodes[node].engine.id();
        let instances = sim.nodes[publisher].engine.discovered_instances();
        let found = instances.iter().find(|d| d.node == id).expect("listed");
        found.known.multicast.map(|g| g.to_string())
    };
    assert_eq!(listed(billing).as_deref(), Some(elsewhere));
    assert_eq!(listed(shipping), ours.map(|g| g.to_string()));
    assert_eq!(listed(audit), None, "multicast off there");

    let logs = String::from_utf8(crate::sync::lock(&logs.0).clone()).expect("UTF-8 logs");
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("advertises group"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    let ours = ours.expect("the publisher is on a group").to_string();
    let billing_id = sim.nodes[billing].engine.id().to_string();
    for expected in [
        "WARN",
        &ours,
        elsewhere,
        "by unicast",
        "`billing`",
        &billing_id,
    ] {
        assert!(
            warnings[0].contains(expected),
            "{expected} in {}",
            warnings[0]
        );
    }
}
