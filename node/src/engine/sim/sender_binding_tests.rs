//! What a message is bound to its sender by, on the simulated network: its return address
//! must name the sender's certified service and node (or a reply would go, authenticated as
//! the replier, wherever the sender wrote), and its dedup key includes the sender's service
//! (or a peer could spend another sender's message id and have the genuine message dropped
//! as a duplicate).

#![cfg(test)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use shoal_proto::{MessageId, NodeId, ReturnAddress};

use super::tests::{counting, with};
use super::{Faults, Handled, Sim};
use crate::engine::Done;
use crate::policy::Policy;
use crate::{Error, Message, PublishOptions};

const SECOND: Duration = Duration::from_secs(1);

/// A return address to `channel` of `service` (asynchronous; synchronous when `channel` is
/// empty), at `node` if given.
fn address(service: &str, node: Option<NodeId>, channel: &str) -> Option<ReturnAddress> {
    Some(ReturnAddress {
        service: service.into(),
        node,
        channel: channel.into(),
    })
}

/// Asserts that `op` of `node` was refused for good because of its return address.
fn refused_for_its_return_address(sim: &Sim, node: usize, op: crate::engine::OpId) {
    match sim.result(node, op) {
        Some(Err(Error::DeadLettered(letter))) => {
            assert_eq!(letter.attempts, 1, "permanent: not retried");
            assert!(letter.last_failure.contains("return address"), "{letter}");
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_return_address_naming_another_service_is_refused() {
    // billing accepts invoice.create from pricing only. spy asks pricing for a quote with its
    // reply addressed to billing's invoice.create: pricing's reply would reach billing
    // authenticated as pricing, and billing's policy would let it through.
    let policy = Policy::builder()
        .accept("billing", "pricing", ["invoice.create"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(106);
    let billing = sim.node_with("billing", with(&policy));
    let (pricing, spy) = (sim.node("pricing"), sim.node("spy"));
    let invoices = Rc::new(Cell::new(0));
    sim.handle(billing, "invoice.create", counting(&invoices));
    let quotes = Rc::new(Cell::new(0));
    let q = Rc::clone(&quotes);
    sim.handle(pricing, "quote", move |_| {
        q.set(q.get() + 1);
        Handled::reply("quote: 0.00")
    });
    sim.connect(spy, billing);
    sim.connect(spy, pricing);
    sim.connect(pricing, billing);
    let direct = sim.command("invoice.create", "from spy");
    sim.send(spy, "billing", direct);
    sim.run_for(SECOND);
    assert_eq!(invoices.get(), 0, "refused directly");

    let mut ask = sim.command("quote", "anything");
    ask.env.reply_to = address("billing", None, "invoice.create");
    let op = sim.send(spy, "pricing", ask);
    sim.run_for(2 * SECOND);
    assert_eq!(
        invoices.get(),
        0,
        "billing ran invoice.create on spy's behalf"
    );
    assert_eq!(quotes.get(), 0, "refused before pricing's handler");
    refused_for_its_return_address(&sim, spy, op);
    assert_eq!(sim.nodes[pricing].engine.stats().forged_return_addresses, 1);
}

#[test]
fn an_event_whose_return_address_names_another_service_makes_no_replies() {
    // One forged event would make every subscriber group reply to billing, each reply
    // authenticated as its group's service.
    let policy = Policy::builder()
        .accept("billing", "pricing", ["invoice.create"])
        .accept("billing", "audit", ["invoice.create"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(107);
    let billing = sim.node_with("billing", with(&policy));
    let (pricing, audit, spy) = (sim.node("pricing"), sim.node("audit"), sim.node("spy"));
    let invoices = Rc::new(Cell::new(0));
    sim.handle(billing, "invoice.create", counting(&invoices));
    let news = Rc::new(Cell::new(0));
    sim.subscribe(pricing, "news.*", Some("pricing"), counting(&news));
    sim.subscribe(audit, "news.*", Some("audit"), counting(&news));
    for (a, b) in [
        (spy, billing),
        (spy, pricing),
        (spy, audit),
        (pricing, billing),
        (audit, billing),
    ] {
        sim.connect(a, b);
    }
    sim.run_for(SECOND);
    let mut forged = sim.event("news.today", "nothing");
    forged.env.reply_to = address("billing", None, "invoice.create");
    let _ = sim.publish(spy, vec![forged], &PublishOptions::default());
    sim.run_for(2 * SECOND);
    assert_eq!(invoices.get(), 0, "the subscribers replied to billing");
    assert_eq!(news.get(), 0, "refused before the subscribers' handlers");
    let forged_here = |n: usize| sim.nodes[n].engine.stats().forged_return_addresses;
    assert_eq!((forged_here(pricing), forged_here(audit)), (1, 1));
}

#[test]
fn a_return_address_naming_another_node_is_refused() {
    // A synchronous reply goes to the node the return address names: spy names another
    // instance of its own service, whose connection the reply frame would be written on.
    let mut sim = Sim::new(109);
    let pricing = sim.node("pricing");
    let (spy, other) = (sim.node("spy"), sim.node("spy"));
    let quotes = Rc::new(Cell::new(0));
    let q = Rc::clone(&quotes);
    sim.handle(pricing, "quote", move |_| {
        q.set(q.get() + 1);
        Handled::reply("quote: 0.00")
    });
    sim.connect(spy, pricing);
    sim.connect(other, pricing);
    let other_id = sim.nodes[other].engine.id();
    let mut ask = sim.command("quote", "anything");
    ask.env.reply_to = address("spy", Some(other_id), "");
    let op = sim.send(spy, "pricing", ask);
    sim.run_for(2 * SECOND);
    assert_eq!(
        quotes.get(),
        0,
        "pricing's handler ran and replied to another node"
    );
    refused_for_its_return_address(&sim, spy, op);
    assert_eq!(sim.nodes[pricing].engine.stats().forged_return_addresses, 1);
}

#[test]
fn the_senders_own_return_address_still_gets_its_replies() {
    // What honest nodes write (their own service and node) passes: an asynchronous reply to a
    // command, and one reply from each subscriber group to an event.
    let mut sim = Sim::new(110);
    let shop = sim.node("shop");
    let (pricing, audit) = (sim.node("pricing"), sim.node("audit"));
    sim.handle(pricing, "quote", |_| Handled::reply("quote: 1.00"));
    sim.subscribe(pricing, "quote.*", Some("pricing"), |_| Handled::reply("p"));
    sim.subscribe(audit, "quote.*", Some("audit"), |_| Handled::reply("a"));
    let replies = Rc::new(Cell::new(0));
    sim.handle(shop, "quote-replies", counting(&replies));
    sim.connect(shop, pricing);
    sim.connect(shop, audit);
    sim.run_for(SECOND);
    let shop_id = sim.nodes[shop].engine.id();
    let mut ask = sim.command("quote", "pen");
    ask.env.reply_to = address("shop", Some(shop_id), "quote-replies");
    let op = sim.send(shop, "pricing", ask);
    let mut event = sim.event("quote.requested", "pen");
    event.env.reply_to = address("shop", Some(shop_id), "quote-replies");
    let _ = sim.publish(shop, vec![event], &PublishOptions::default());
    sim.run_for(2 * SECOND);
    assert!(matches!(sim.result(shop, op), Some(Ok(Done::Sent(_)))));
    assert_eq!(
        replies.get(),
        3,
        "one reply to the command, one per group to the event"
    );
    let forged_here = |n: usize| sim.nodes[n].engine.stats().forged_return_addresses;
    assert_eq!((forged_here(pricing), forged_here(audit)), (0, 0));
}

#[test]
fn a_peer_cannot_spend_another_publishers_event_id() {
    // spy receives orders' event first (orders' link to billing is slower) and publishes an
    // event billing also subscribes to under the same id: billing must still handle orders'.
    let policy = Policy::builder()
        .publish("orders", ["order.>"])
        .publish("spy", ["spy.>"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(108);
    let orders = sim.node("orders");
    let billing = sim.node_with("billing", with(&policy));
    let spy = sim.node("spy");
    let seen: Rc<Cell<Option<MessageId>>> = Rc::new(Cell::new(None));
    let s2 = Rc::clone(&seen);
    sim.subscribe(spy, "order.*", Some("spy"), move |m| {
        s2.set(Some(m.id()));
        Handled::ok()
    });
    let handled: Rc<RefCell<Vec<String>>> = Rc::default();
    let h2 = Rc::clone(&handled);
    sim.subscribe(billing, "*.created", Some("billing"), move |m| {
        h2.borrow_mut().push(m.name().to_owned());
        Handled::ok()
    });
    sim.connect(orders, spy);
    sim.connect(spy, billing);
    let slow = Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    };
    sim.connect_with(orders, billing, slow).expect("link");
    sim.run_for(SECOND);
    let event = sim.event("order.created", "order 1");
    let _ = sim.publish(orders, vec![event], &PublishOptions::default());
    sim.run_for(Duration::from_millis(2));
    let mut forged = sim.event("spy.created", "nothing");
    forged.env.id = seen.get().expect("spy got its copy first");
    let _ = sim.publish(spy, vec![forged], &PublishOptions::default());
    sim.run_for(2 * SECOND);
    let mut names = handled.borrow().clone();
    names.sort();
    assert_eq!(
        names,
        ["order.created", "spy.created"],
        "both handled, once each"
    );
}

#[test]
fn a_peer_reusing_a_request_id_does_not_get_the_kept_reply() {
    // A request handled before is answered from the kept replies, by id: another service
    // reusing the id would be handed the first requester's reply.
    let mut sim = Sim::new(111);
    let pricing = sim.node("pricing");
    let (shop, spy) = (sim.node("shop"), sim.node("spy"));
    let runs = Rc::new(Cell::new(0));
    let r = Rc::clone(&runs);
    sim.handle(pricing, "quote", move |m: &Message| {
        r.set(r.get() + 1);
        Handled::reply(format!(
            "quote for {}",
            String::from_utf8_lossy(m.payload())
        ))
    });
    sim.connect(shop, pricing);
    sim.connect(spy, pricing);
    let asked = sim.command("quote", "shop's secret order");
    let id = asked.id();
    let first = sim.request(shop, "pricing", asked);
    sim.run_for(SECOND);
    let mut reused = sim.command("quote", "spy");
    reused.env.id = id;
    let second = sim.request(spy, "pricing", reused.clone());
    sim.run_for(SECOND);
    // spy asking again (a retry) is answered from the kept replies: with spy's own.
    let again = sim.request(spy, "pricing", reused);
    sim.run_for(SECOND);
    let payload = |node: usize, op| match sim.result(node, op) {
        Some(Ok(Done::Replied(reply))) => String::from_utf8_lossy(reply.payload()).into_owned(),
        other => panic!("no reply: {other:?}"),
    };
    assert_eq!(payload(shop, first), "quote for shop's secret order");
    assert_eq!(
        payload(spy, second),
        "quote for spy",
        "spy got shop's kept reply"
    );
    assert_eq!(
        payload(spy, again),
        "quote for spy",
        "spy got shop's kept reply"
    );
    assert_eq!(runs.get(), 2, "once for each sender");
}

#[test]
fn a_copy_from_another_instance_of_the_same_service_is_still_a_duplicate() {
    // A failover (or an outbox row relayed by another instance) sends the same id from
    // another node of the same service: it is a duplicate, as before.
    let mut sim = Sim::new(112);
    let billing = sim.node("billing");
    let (one, two) = (sim.node("orders"), sim.node("orders"));
    let count = Rc::new(Cell::new(0));
    sim.handle(billing, "invoice.create", counting(&count));
    sim.connect(one, billing);
    sim.connect(two, billing);
    let msg = sim.command("invoice.create", "order 1");
    let first = sim.send(one, "billing", msg.clone());
    sim.run_for(SECOND);
    let again = sim.send(two, "billing", msg);
    sim.run_for(SECOND);
    assert!(matches!(sim.result(one, first), Some(Ok(Done::Sent(_)))));
    assert!(matches!(sim.result(two, again), Some(Ok(Done::Sent(_)))));
    assert_eq!(count.get(), 1, "handled once");
    assert_eq!(sim.nodes[billing].engine.stats().duplicates, 1);
}

#[test]
fn an_event_on_a_multicast_channel_with_a_forged_return_address_makes_no_replies() {
    // The same rule on the publisher's channel: the event is reported failed there, and its
    // copy by unicast is refused for good.
    let policy = Policy::builder()
        .accept("billing", "pricing", ["invoice.create"])
        .build()
        .expect("policy");
    let mut sim = Sim::new(113);
    let clean = super::multicast::clean;
    let billing = sim.lan_node_with("billing", clean(), with(&policy));
    let (pricing, spy) = (
        sim.lan_node("pricing", clean()),
        sim.lan_node("spy", clean()),
    );
    let invoices = Rc::new(Cell::new(0));
    sim.handle(billing, "invoice.create", counting(&invoices));
    let news = Rc::new(Cell::new(0));
    sim.subscribe(pricing, "news.*", Some("pricing"), counting(&news));
    for (a, b) in [(spy, billing), (spy, pricing), (pricing, billing)] {
        sim.connect(a, b);
    }
    sim.run_for(SECOND);
    let honest = sim.event("news.today", "first");
    let _ = sim.publish(spy, vec![honest], &PublishOptions::default());
    sim.run_for(SECOND);
    assert_eq!(
        news.get(),
        1,
        "an event without a return address is handled"
    );
    let mut forged = sim.event("news.today", "nothing");
    forged.env.reply_to = address("billing", None, "invoice.create");
    let _ = sim.publish(spy, vec![forged], &PublishOptions::default());
    sim.run_for(2 * SECOND);
    assert_eq!(invoices.get(), 0, "pricing replied to billing");
    assert_eq!(news.get(), 1, "refused before the handler");
    assert_eq!(
        sim.nodes[pricing].engine.stats().forged_return_addresses,
        2,
        "on the channel, then by unicast"
    );
}
