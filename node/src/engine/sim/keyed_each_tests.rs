//! Keyed messages of separate calls travelling together (`parts.rs`): one delivery for
//! those whose keys are free, each key still one message at a time and at its own
//! instance, also after that instance fails.

#![cfg(test)]

use std::time::Duration;

use shoal_proto::NodeId;

use super::{Handled, Sim};
use crate::engine::route::choose_for_key;
use crate::engine::send::Publishing;
use crate::engine::{Done, OpId};
use crate::{Error, Message, PublishReceipt, Receipt};

const SECOND: Duration = Duration::from_secs(1);

/// Each command's result.
fn sent_each(sim: &Sim, node: usize, op: OpId) -> &[Result<Receipt, Error>] {
    match sim.nodes[node].results.get(&op) {
        Some(Ok(Done::SentEach(each))) => each,
        other => panic!("not separate commands' results: {other:?}"),
    }
}

/// Each event's result.
fn published_each(sim: &Sim, node: usize, op: OpId) -> &[Result<PublishReceipt, Error>] {
    match sim.nodes[node].results.get(&op) {
        Some(Ok(Done::PublishedEach(each))) => each,
        other => panic!("not separate events' results: {other:?}"),
    }
}

/// Commands `charge` numbered from 0, with `keys`.
fn commands(sim: &mut Sim, keys: &[Option<&str>]) -> Vec<Message> {
    keys.iter()
        .enumerate()
        .map(|(n, key)| {
            let msg = sim.command("charge", n.to_string());
            match key {
                Some(key) => msg.with_key(*key),
                None => msg,
            }
        })
        .collect()
}

/// The successful run of message `id`.
fn ok_run(sim: &Sim, id: crate::MessageId) -> &super::HandlerRun {
    sim.runs
        .iter()
        .find(|r| r.id == id && r.ok)
        .unwrap_or_else(|| panic!("{id} was never handled"))
}

/// When the successful run of message `id` started and ended.
fn run_of(sim: &Sim, id: crate::MessageId) -> (std::time::Instant, std::time::Instant) {
    let run = ok_run(sim, id);
    (run.started, run.ended)
}

/// The node that handled message `id`.
fn handled_at(sim: &Sim, id: crate::MessageId) -> NodeId {
    sim.nodes[ok_run(sim, id).node].engine.id()
}

/// `node` publishes an event on `order.created` under each of `keys` (its payload the key),
/// as separate calls' events; the operation waits for them.
fn publish_keyed(sim: &mut Sim, node: usize, keys: &[String]) -> OpId {
    let events: Vec<Message> = keys
        .iter()
        .map(|k| sim.event("order.created", k.clone()).with_key(k.as_str()))
        .collect();
    match sim.publish_each(node, events) {
        Ok(Publishing::Waiting(op)) => op,
        other => panic!("{other:?}"),
    }
}

/// Asserts that `node` holds no key's turn any more.
fn assert_turns_passed(sim: &Sim, node: usize) {
    assert_eq!(
        sim.nodes[node].engine.out.turns.len(),
        0,
        "every turn passed"
    );
}

#[test]
fn keyed_events_with_free_keys_share_one_delivery_and_each_gets_its_own_receipt() {
    let mut sim = Sim::new(401);
    let (orders, ledger) = (sim.node("orders"), sim.node("ledger"));
    sim.connect(orders, ledger);
    sim.subscribe(ledger, "order.*", Some("ledger"), |_| Handled::ok());
    sim.run_for(SECOND);
    let events: Vec<Message> = (0..10)
        .map(|n| {
            sim.event("order.created", n.to_string())
                .with_key(format!("customer-{n}"))
        })
        .collect();
    let ids: Vec<_> = events.iter().map(Message::id).collect();
    let op = match sim.publish_each(orders, events) {
        Ok(Publishing::Waiting(op)) => op,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        sim.nodes[orders].engine.out.deliveries.len(),
        1,
        "ten free keys, one instance: one delivery"
    );
    assert!(sim.run_for(SECOND));
    let ledger_id = sim.nodes[ledger].engine.id();
    for (result, id) in published_each(&sim, orders, op).iter().zip(&ids) {
        let receipt = result.as_ref().expect("delivered");
        assert_eq!(receipt.id, *id);
        let nodes: Vec<NodeId> = receipt.deliveries.iter().map(|c| c.node).collect();
        assert_eq!(nodes, [ledger_id], "one copy, at the group's instance");
    }
    assert_eq!(sim.runs.len(), 10, "each handled once");
    assert_turns_passed(&sim, orders);
}

#[test]
fn a_message_whose_key_is_taken_waits_for_the_one_before_it() {
    let mut sim = Sim::new(402);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.connect(orders, billing);
    sim.handle(billing, "charge", |_| {
        Handled::ok_after(Duration::from_millis(50))
    });
    sim.run_for(SECOND);
    let first = sim.command("charge", "first").with_key("x");
    let first_id = first.id();
    sim.send(orders, "billing", first);
    // x: taken by the lone one; y twice; an unkeyed one; z.
    let commands = commands(
        &mut sim,
        &[Some("x"), Some("y"), Some("y"), None, Some("z")],
    );
    let ids: Vec<_> = commands.iter().map(Message::id).collect();
    let op = sim.send_each(orders, "billing", commands).expect("sent");
    assert_eq!(
        sim.nodes[orders].engine.out.deliveries.len(),
        4,
        "the lone one; y, the unkeyed one and z together; x and the second y alone"
    );
    sim.run_for(5 * SECOND);
    assert!(
        sent_each(&sim, orders, op).iter().all(Result::is_ok),
        "every command acknowledged"
    );
    let (x0, x1) = (run_of(&sim, first_id), run_of(&sim, ids[0]));
    assert!(x1.0 >= x0.1, "x went after the lone x was handled");
    let (y0, y1) = (run_of(&sim, ids[1]), run_of(&sim, ids[2]));
    assert!(
        y1.0 >= y0.1,
        "the second y went after the first was handled"
    );
    let (z, plain) = (run_of(&sim, ids[4]), run_of(&sim, ids[3]));
    assert!(
        z.0 < x0.1 && plain.0 < x0.1,
        "free keys and the unkeyed one did not wait"
    );
    assert_turns_passed(&sim, orders);
}

/// Three instances of `billing` (the first slow to answer), connected to `orders`, and their
/// node ids.
fn orders_and_billing(sim: &mut Sim) -> (usize, [usize; 3], Vec<NodeId>) {
    let orders = sim.node("orders");
    let billing = [
        sim.node("billing"),
        sim.node("billing"),
        sim.node("billing"),
    ];
    sim.handle(billing[0], "charge", |_| Handled::ok_after(10 * SECOND));
    for &b in &billing[1..] {
        sim.handle(b, "charge", |_| Handled::ok());
    }
    for &b in &billing {
        sim.connect(orders, b);
    }
    sim.run_for(SECOND);
    let ids = billing.iter().map(|b| sim.nodes[*b].engine.id()).collect();
    (orders, billing, ids)
}

#[test]
fn keyed_commands_go_to_their_keys_instances_and_on_to_their_own_next_one() {
    let mut sim = Sim::new(403);
    let (orders, billing, nodes) = orders_and_billing(&mut sim);
    let keys: Vec<String> = (0..24).map(|n| format!("customer-{n}")).collect();
    let key_refs: Vec<Option<&str>> = keys.iter().map(|k| Some(k.as_str())).collect();
    let commands = commands(&mut sim, &key_refs);
    let op = sim.send_each(orders, "billing", commands).expect("sent");
    let owners: Vec<NodeId> = keys
        .iter()
        .map(|k| choose_for_key(&nodes, &[], k).expect("an owner"))
        .collect();
    let mut distinct = owners.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "the keys spread over the three");
    assert_eq!(
        sim.nodes[orders].engine.out.deliveries.len(),
        3,
        "one delivery per instance"
    );
    // The first instance dies before it answers: its keys move, each to its own next owner.
    sim.run_for(Duration::from_millis(100));
    sim.crash(billing[0], 60 * SECOND);
    sim.run_for(10 * SECOND);
    for ((result, key), owner) in sent_each(&sim, orders, op).iter().zip(&keys).zip(&owners) {
        let receipt = result.as_ref().expect("acknowledged");
        let expected = if *owner == nodes[0] {
            choose_for_key(&nodes[1..], &[], key).expect("a next owner")
        } else {
            *owner
        };
        assert_eq!(
            receipt.node, expected,
            "{key} handled by its key's instance"
        );
        assert_eq!(handled_at(&sim, receipt.id), expected, "{key}");
    }
    assert_turns_passed(&sim, orders);
}

#[test]
fn keyed_events_for_a_group_are_handled_and_listed_at_their_keys_instances() {
    let mut sim = Sim::new(404);
    let orders = sim.node("orders");
    let ledger = [sim.node("ledger"), sim.node("ledger"), sim.node("ledger")];
    for &l in &ledger {
        sim.connect(orders, l);
        sim.subscribe(l, "order.*", Some("ledger"), |_| Handled::ok());
    }
    sim.run_for(SECOND);
    let nodes: Vec<NodeId> = ledger.iter().map(|l| sim.nodes[*l].engine.id()).collect();
    let keys: Vec<String> = (0..12).map(|n| format!("customer-{n}")).collect();
    let op = publish_keyed(&mut sim, orders, &keys);
    assert!(sim.run_for(SECOND));
    for (result, key) in published_each(&sim, orders, op).iter().zip(&keys) {
        let receipt = result.as_ref().expect("delivered");
        let owner = choose_for_key(&nodes, &[], key).expect("an owner");
        let listed: Vec<NodeId> = receipt.deliveries.iter().map(|c| c.node).collect();
        assert_eq!(
            listed,
            [owner],
            "{key}: its own copy, at its key's instance"
        );
        assert_eq!(handled_at(&sim, receipt.id), owner, "{key}");
    }
}

#[test]
fn a_key_answered_passes_its_turn_before_the_others_are_retried() {
    let mut sim = Sim::new(406);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.connect(orders, billing);
    sim.handle(billing, "charge", |msg| {
        if msg.payload().as_ref() == b"1" && msg.attempt() == 1 {
            Handled::fail(crate::HandlerError::retryable("busy"))
        } else {
            Handled::ok_after(Duration::from_millis(5))
        }
    });
    sim.run_for(SECOND);
    // x is acknowledged at once; y is refused for now and retried after a backoff.
    let commands = commands(&mut sim, &[Some("x"), Some("y")]);
    let y = commands[1].id();
    sim.send_each(orders, "billing", commands).expect("sent");
    let next_x = sim.command("charge", "next").with_key("x");
    let next_x_id = next_x.id();
    sim.send(orders, "billing", next_x);
    sim.run_for(10 * SECOND);
    let next = run_of(&sim, next_x_id);
    let retried = ok_run(&sim, y);
    assert!(
        next.0 < retried.ended,
        "x's next message went before y's retry was answered"
    );
}

/// Two keyed events for a group of two instances go in a delivery each. The group leaves on
/// purpose while the second is on its way: only that event's receipt lists it as dropped.
#[test]
fn a_dropped_copy_is_listed_on_its_own_events_receipts_only() {
    let mut sim = Sim::new(407);
    let orders = sim.node("orders");
    let (near, far) = (sim.node("ledger"), sim.node("ledger"));
    sim.connect(orders, near);
    let slow = super::Faults {
        latency: Duration::from_millis(20),
        ..super::Faults::default()
    };
    sim.connect_with(orders, far, slow).expect("connected");
    let subs = [near, far].map(|l| sim.subscribe(l, "order.*", Some("ledger"), |_| Handled::ok()));
    sim.run_for(SECOND);
    let nodes = [sim.nodes[near].engine.id(), sim.nodes[far].engine.id()];
    // A key the near instance owns, then one the far instance owns.
    let owned_by = |node: NodeId| {
        (0..)
            .map(|n| format!("customer-{n}"))
            .find(|k| choose_for_key(&nodes, &[], k) == Some(node))
            .expect("a key")
    };
    let keys = [owned_by(nodes[0]), owned_by(nodes[1])];
    let op = publish_keyed(&mut sim, orders, &keys);
    sim.run_for(Duration::from_millis(5));
    for (node, sub) in [near, far].into_iter().zip(subs) {
        sim.nodes[node].engine.unsubscribe(sub);
    }
    sim.settle();
    sim.run_for(SECOND);
    let results = published_each(&sim, orders, op);
    let near_receipt = results[0].as_ref().expect("delivered");
    assert_eq!(near_receipt.deliveries.len(), 1, "{near_receipt:?}");
    assert!(near_receipt.dropped.is_empty(), "{near_receipt:?}");
    let far_receipt = results[1].as_ref().expect("a receipt");
    assert!(far_receipt.deliveries.is_empty(), "{far_receipt:?}");
    assert_eq!(far_receipt.dropped, ["group `ledger`"]);
}
