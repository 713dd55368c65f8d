//! The authorization policy's rules on the simulated network: who may send, publish and
//! subscribe what is decided where it arrives, with the peer's (certified) service, before
//! any handler runs.

#![cfg(test)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::tests::{counting, with};
use super::{Handled, Sim};
use crate::engine::Done;
use crate::engine::send::Publishing;
use crate::policy::{Policy, Section};
use crate::{Error, NodeEvent, PublishOptions};

const SECOND: Duration = Duration::from_secs(1);

/// The denials `node` raised as events, with the peer each was about.
fn refusals(sim: &Sim, node: usize) -> Vec<(Option<shoal_proto::NodeId>, Section, String)> {
    sim.nodes[node]
        .events
        .iter()
        .filter_map(|event| match event {
            NodeEvent::NotAuthorized { peer, denial } => {
                Some((*peer, denial.section, denial.to_string()))
            }
            _ => None,
        })
        .collect()
}

fn waiting(result: Result<Publishing, Error>) -> crate::engine::OpId {
    match result {
        Ok(Publishing::Waiting(op)) => op,
        other => panic!("not waiting: {other:?}"),
    }
}

#[test]
fn a_sender_the_policy_refuses_is_nacked_for_good_and_no_handler_runs() {
    let policy = Policy::builder()
        .accept("billing", "shop", ["invoice.*"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(101);
    let billing = sim.node_with("billing", with(&policy));
    let (orders, shop) = (sim.node("orders"), sim.node("shop"));
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "invoice.create", counting(&count));
    sim.connect(orders, billing);
    sim.connect(shop, billing);

    let msg = sim.command("invoice.create", "from orders");
    let refused = sim.send(orders, "billing", msg);
    let msg = sim.command("invoice.create", "from orders, asking");
    let asked = sim.request(orders, "billing", msg);
    let msg = sim.command("invoice.create", "from shop");
    let allowed = sim.send(shop, "billing", msg);
    assert!(sim.run_for(SECOND));

    for op in [refused, asked] {
        match sim.result(orders, op) {
            Some(Err(Error::DeadLettered(letter))) => {
                assert_eq!(letter.attempts, 1, "permanent: not retried");
                assert!(
                    letter.last_failure.contains(
                        "not authorized: `billing` does not accept `invoice.create` from `orders`"
                    ),
                    "{letter}"
                );
            }
            other => panic!("not dead-lettered: {other:?}"),
        }
    }
    assert!(matches!(sim.result(shop, allowed), Some(Ok(Done::Sent(_)))));
    assert_eq!(count.get(), 1, "the handler ran for shop's message only");
    let stats = sim.nodes[billing].engine.stats();
    assert_eq!(stats.unauthorized_messages, 2);
    assert_eq!(stats.handled, 1);
    assert_eq!(
        stats.duplicates + stats.unhandled,
        0,
        "refused before the dedup window and the handler lookup"
    );
    assert_eq!(sim.nodes[orders].engine.dead_letters().len(), 2);
    let orders_id = sim.nodes[orders].engine.id();
    let seen = refusals(&sim, billing);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|(peer, section, _)| *peer == Some(orders_id) && *section == Section::Accept)
    );
}

#[test]
fn a_refused_message_is_refused_again_when_it_comes_back() {
    // A refusal does not enter the dedup window: a copy of the same message (a sender that
    // retries anyway) is refused again rather than acknowledged as handled.
    let policy = Policy::builder()
        .lock_accept("billing")
        .build()
        .expect("policy");
    let mut sim = Sim::new(102);
    let billing = sim.node_with("billing", with(&policy));
    let orders = sim.node("orders");
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", counting(&count));
    sim.connect(orders, billing);
    let msg = sim.command("charge", "x");
    let first = sim.send(orders, "billing", msg.clone());
    let again = sim.send(orders, "billing", msg);
    assert!(sim.run_for(SECOND));
    for op in [first, again] {
        assert!(
            matches!(sim.result(orders, op), Some(Err(Error::DeadLettered(_)))),
            "{:?}",
            sim.result(orders, op)
        );
    }
    assert_eq!(count.get(), 0);
    assert_eq!(sim.nodes[billing].engine.stats().unauthorized_messages, 2);
}

#[test]
fn an_event_from_a_publisher_that_may_not_publish_it_is_refused_by_the_subscriber() {
    // The subscriber's policy limits what `orders` may publish; the publisher's own policy
    // (the default) does not, so the check that counts here is the subscriber's.
    let policy = Policy::builder()
        .publish("orders", ["order.>"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(103);
    let orders = sim.node("orders");
    let audit = sim.node_with("audit", with(&policy));
    sim.connect(orders, audit);
    let count = Rc::new(Cell::new(0));
    sim.subscribe(audit, ">", Some("audit"), counting(&count));
    sim.run_for(SECOND);

    let allowed = sim.event("order.created", "1");
    let allowed = waiting(sim.publish(orders, vec![allowed], &PublishOptions::default()));
    let forbidden = sim.event("payment.done", "2");
    let forbidden = waiting(sim.publish(orders, vec![forbidden], &PublishOptions::default()));
    let batch: Vec<_> = (0..3)
        .map(|i| sim.event("payment.done", i.to_string()))
        .collect();
    let batch = waiting(sim.publish(orders, batch, &PublishOptions::default()));
    assert!(sim.run_for(SECOND));

    assert!(matches!(
        sim.result(orders, allowed),
        Some(Ok(Done::Published(_)))
    ));
    for op in [forbidden, batch] {
        match sim.result(orders, op) {
            Some(Err(Error::DeadLettered(letter))) => assert!(
                letter
                    .last_failure
                    .contains("not authorized: `orders` may not publish `payment.done`"),
                "{letter}"
            ),
            other => panic!("not dead-lettered: {other:?}"),
        }
    }
    assert_eq!(count.get(), 1, "only the allowed event was handled");
    assert_eq!(sim.nodes[audit].engine.stats().unauthorized_events, 4);
    assert_eq!(
        sim.nodes[orders].engine.dead_letters().len(),
        4,
        "every event of the batch"
    );
    let seen = refusals(&sim, audit);
    assert_eq!(seen.len(), 2, "one event per refused run: {seen:?}");
    assert!(
        seen.iter()
            .all(|(_, section, _)| *section == Section::Publish)
    );
}

#[test]
fn a_forbidden_subscription_is_not_added_and_gets_no_events() {
    // The publisher's policy says what `spy` may subscribe to; spy's own policy (the default)
    // lets it ask for anything.
    let policy = Policy::builder()
        .subscribe("spy", ["public.>"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(104);
    let orders = sim.node_with("orders", with(&policy));
    let spy = sim.node("spy");
    sim.connect(orders, spy);
    let (secret, public) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    sim.subscribe(spy, "secret.>", Some("spy"), counting(&secret));
    sim.subscribe(spy, ">", None, counting(&secret));
    sim.subscribe(spy, "public.*", Some("spy"), counting(&public));
    sim.run_for(SECOND);

    assert!(
        sim.nodes[orders]
            .engine
            .subscribers("secret.plans", sim.now)
            .is_empty()
    );
    let event = sim.event("secret.plans", "x");
    match sim.publish(orders, vec![event], &PublishOptions::default()) {
        Ok(Publishing::Done(receipt)) => assert!(receipt.deliveries.is_empty()),
        other => panic!("{other:?}"),
    }
    let event = sim.event("public.news", "y");
    let op = waiting(sim.publish(orders, vec![event], &PublishOptions::default()));
    assert!(sim.run_for(SECOND));
    assert!(matches!(
        sim.result(orders, op),
        Some(Ok(Done::Published(_)))
    ));
    assert_eq!((secret.get(), public.get()), (0, 1));
    let stats = sim.nodes[orders].engine.stats();
    assert_eq!(stats.unauthorized_subscriptions, 2);
    assert_eq!(stats.events_unrouted, 1);
    let spy_id = sim.nodes[spy].engine.id();
    let seen = refusals(&sim, orders);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|(peer, section, _)| *peer == Some(spy_id) && *section == Section::Subscribe)
    );
    assert!(
        seen[0].2.contains("`spy` may not subscribe to `secret.>`"),
        "{seen:?}"
    );
}

#[test]
fn a_forbidden_publish_or_subscribe_of_this_node_fails_at_once() {
    let policy = Policy::builder()
        .publish("orders", ["order.>"])
        .subscribe("orders", ["payment.*"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(105);
    let orders = sim.node_with("orders", with(&policy));
    let audit = sim.node("audit");
    sim.connect(orders, audit);
    sim.subscribe(audit, ">", Some("audit"), |_| Handled::ok());
    sim.run_for(SECOND);
    let before = sim.net.frames().messages;

    let event = sim.event("payment.done", "x");
    match sim.publish(orders, vec![event], &PublishOptions::default()) {
        Err(Error::NotAuthorized(denial)) => {
            assert_eq!(denial.section, Section::Publish);
            assert_eq!(denial.subject, "payment.done");
        }
        other => panic!("{other:?}"),
    }
    sim.run_for(SECOND);
    assert_eq!(sim.net.frames().messages, before, "nothing was sent");
    let engine = &mut sim.nodes[orders].engine;
    assert!(engine.authorize_subscribe("payment.done").is_ok());
    let err = engine
        .authorize_subscribe("order.>")
        .expect_err("forbidden");
    assert!(
        err.to_string()
            .starts_with("not authorized: `orders` may not subscribe to `order.>`"),
        "{err}"
    );
    let stats = engine.stats();
    assert_eq!(
        (
            stats.unauthorized_publishes,
            stats.unauthorized_subscriptions,
            stats.published
        ),
        (1, 1, 0)
    );
    sim.settle();
    let seen = refusals(&sim, orders);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|(peer, _, _)| peer.is_none()));
}
