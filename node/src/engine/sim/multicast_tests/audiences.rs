//! One node with several audiences for an event on the channel: each of its subscriptions
//! runs the event once.

use std::cell::RefCell;
use std::rc::Rc;

use shoal_proto::MessageId;

use super::super::multicast::clean;
use super::super::{Handled, Sim};
use super::{MS, receipts_within_a_second};

/// A node subscribed twice to a topic (in a group, and as an instance) runs each channel
/// event once for each subscription, with the event's own payload and key: events that share
/// a run of a datagram share the work of matching them to the node's subscriptions, and a
/// datagram of several runs (keyed and unkeyed events) is matched run by run.
#[test]
fn a_node_with_two_subscriptions_runs_each_channel_event_once_for_each() {
    let mut sim = Sim::new(12);
    let publisher = sim.lan_node("orders", clean());
    let billing = sim.lan_node("billing", clean());
    sim.connect(publisher, billing);
    // Each run: the subscription's label, the event, its payload and key.
    type Runs = Rc<RefCell<Vec<(&'static str, MessageId, String)>>>;
    let seen: Runs = Rc::default();
    let describe =
        |payload: &[u8], key: Option<&str>| format!("{} {key:?}", String::from_utf8_lossy(payload));
    for (label, group) in [("group", Some("billing")), ("instance", None)] {
        let seen = Rc::clone(&seen);
        sim.subscribe(billing, "order.*", group, move |msg| {
            let what = describe(msg.payload(), msg.key());
            seen.borrow_mut().push((label, msg.id(), what));
            Handled::ok()
        });
    }
    sim.run_for(5 * MS);
    // Published at one instant: several to a datagram; every third keyed (a run of its own).
    let mut ops = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20 {
        let mut event = sim.event("order.created", format!("event {i}"));
        if i % 3 == 0 {
            event = event.with_key(format!("customer-{}", i % 2));
        }
        expected.push((event.id(), describe(event.payload(), event.key())));
        ops.push(sim.publish_event(publisher, event));
    }
    for receipt in receipts_within_a_second(&mut sim, publisher, &ops) {
        assert_eq!(receipt.deliveries.len(), 2, "{receipt:?}");
        assert!(receipt.deliveries.iter().all(|c| c.attempts == 1));
    }
    let stats = sim.nodes[publisher].engine.channel_stats();
    assert_eq!(stats.events, 20, "every event went on the channel once");
    assert!(
        stats.sealed < 20,
        "events shared datagrams: {} sent",
        stats.sealed
    );
    let seen = seen.borrow();
    for label in ["group", "instance"] {
        let mut runs: Vec<(MessageId, String)> = seen
            .iter()
            .filter(|(l, _, _)| *l == label)
            .map(|(_, id, what)| (*id, what.clone()))
            .collect();
        // Events of one key run in their order (the others need not wait for them).
        for key in ["customer-0", "customer-1"] {
            let of_key = |v: &[(MessageId, String)]| -> Vec<MessageId> {
                v.iter()
                    .filter(|(_, what)| what.contains(key))
                    .map(|(id, _)| *id)
                    .collect()
            };
            assert_eq!(of_key(&runs), of_key(&expected), "{label}: {key} in order");
        }
        runs.sort();
        let mut all = expected.clone();
        all.sort();
        assert_eq!(runs, all, "{label}: each event once");
    }
}
