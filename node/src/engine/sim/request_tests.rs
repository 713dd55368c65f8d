//! A request's timeout, kept by the engine: the caller's wait ends when it passes, and so
//! does the request's delivery.

#![cfg(test)]

use std::time::Duration;

use shoal_proto::Limits;

use super::{Handled, Sim};
use crate::Error;
use crate::engine::Done;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_request_unanswered_within_its_timeout_ends_as_a_timeout_and_its_delivery_stops() {
    let mut sim = Sim::new(11);
    let (shop, pricing) = (sim.node("shop"), sim.node("pricing"));
    // The handler answers after 10 s; the caller waits 2 s.
    sim.handle(pricing, "quote", |_| Handled::ok_after(10 * SECOND));
    sim.connect(shop, pricing);
    let msg = sim.command("quote", "book");
    let started = sim.elapsed();
    let op = sim.request_within(shop, "pricing", msg, 2 * SECOND);
    assert!(!sim.run_for(SECOND));
    assert!(sim.result(shop, op).is_none(), "ended before its timeout");
    sim.run_for(2 * SECOND);
    match sim.result(shop, op) {
        Some(Err(Error::Timeout(timeout))) => assert_eq!(*timeout, 2 * SECOND),
        other => panic!("not a timeout: {other:?}"),
    }
    assert!(sim.elapsed() - started >= 2 * SECOND);
    // Nothing of the request is left to retry, and its late answer changes nothing.
    assert!(
        sim.run_for(60 * SECOND),
        "the sender still has work for the request"
    );
    assert!(matches!(sim.result(shop, op), Some(Err(Error::Timeout(_)))));
}

#[test]
fn a_request_answered_in_time_leaves_no_deadline_behind() {
    let mut sim = Sim::new(12);
    let (shop, pricing) = (sim.node("shop"), sim.node("pricing"));
    sim.handle(pricing, "quote", |_| Handled::reply("42"));
    sim.connect(shop, pricing);
    let msg = sim.command("quote", "book");
    let op = sim.request_within(shop, "pricing", msg, 30 * SECOND);
    assert!(sim.run_for(SECOND), "the answered request keeps a deadline");
    match sim.result(shop, op) {
        Some(Ok(Done::Replied(reply))) => assert_eq!(reply.payload(), "42"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_is_answered_by_its_reply_alone_and_counted_as_acknowledged() {
    let mut sim = Sim::new(13);
    let (shop, pricing) = (sim.node("shop"), sim.node("pricing"));
    sim.handle(pricing, "quote", |_| Handled::reply("42"));
    sim.connect(shop, pricing);
    sim.run_for(SECOND);
    let before = sim.net.frames();
    let msg = sim.command("quote", "book");
    let op = sim.request(shop, "pricing", msg);
    sim.run_for(SECOND);
    match sim.result(shop, op) {
        Some(Ok(Done::Replied(reply))) => assert_eq!(reply.payload(), "42"),
        other => panic!("{other:?}"),
    }
    let after = sim.net.frames();
    // One frame each way: the request, and the reply that answers it (no ack beside it).
    assert_eq!(after.messages - before.messages, 1);
    assert_eq!(after.acks - before.acks, 0, "an ack went with the reply");
    assert_eq!(after.others - before.others, 1);
    // The reply ended the request's attempt as an ack does: counted, and nothing left.
    let engine = &sim.nodes[shop].engine;
    assert_eq!(engine.stats().acked, 1);
    assert!(engine.out.deliveries.is_empty());
}

/// A request made with the id of one still waiting (a cloned message) is refused before
/// anything is sent; the first gets its reply. Before, the second took the first's place in
/// the replies' table: the first waited for its timeout, answered or not.
#[test]
fn a_request_with_the_id_of_one_waiting_is_refused_and_the_first_is_answered() {
    let mut sim = Sim::new(14);
    let (shop, pricing) = (sim.node("shop"), sim.node("pricing"));
    sim.handle(pricing, "quote", |_| Handled::reply("42"));
    sim.connect(shop, pricing);
    sim.run_for(SECOND);
    let msg = sim.command("quote", "book");
    let id = msg.id();
    let first = sim.request(shop, "pricing", msg.clone());
    let now = sim.now;
    match sim.nodes[shop]
        .engine
        .request("pricing", msg.clone(), SECOND, now)
    {
        Err(Error::DuplicateRequest(refused)) => assert_eq!(refused, id),
        other => panic!("a second request with a waiting one's id: {other:?}"),
    }
    sim.run_for(SECOND);
    match sim.result(shop, first) {
        Some(Ok(Done::Replied(reply))) => assert_eq!(reply.payload(), "42"),
        other => panic!("{other:?}"),
    }
    // Once answered, the id is free again (the receiver answers from its kept reply).
    let op = sim.request(shop, "pricing", msg);
    sim.run_for(SECOND);
    match sim.result(shop, op) {
        Some(Ok(Done::Replied(reply))) => assert_eq!(reply.payload(), "42"),
        other => panic!("{other:?}"),
    }
}

/// A request whose message reaches no handler by its timeout ends as a send would, dead-
/// lettered with the reason (before, a bare `Error::Timeout` hid it): the instance has no
/// handler for it, or no instance is connected.
#[test]
fn a_request_no_handler_took_by_its_timeout_is_dead_lettered_with_the_reason() {
    let mut sim = Sim::new(15);
    let (shop, pricing) = (sim.node("shop"), sim.node("pricing"));
    sim.connect(shop, pricing);
    sim.run_for(SECOND);
    let msg = sim.command("quote", "book");
    let op = sim.request_within(shop, "pricing", msg, 2 * SECOND);
    sim.run_for(3 * SECOND);
    match sim.result(shop, op) {
        Some(Err(Error::DeadLettered(letter))) => {
            assert!(
                letter.last_failure.contains("has no handler for `quote`"),
                "{letter}"
            );
        }
        other => panic!("not dead-lettered with its reason: {other:?}"),
    }
    assert_eq!(sim.nodes[shop].engine.dead_letters().len(), 1);
    // Nothing of the request is left to retry.
    assert!(sim.run_for(60 * SECOND), "the sender still has work");

    let msg = sim.command("quote", "book");
    let op = sim.request_within(shop, "nobody", msg, 2 * SECOND);
    sim.run_for(3 * SECOND);
    match sim.result(shop, op) {
        Some(Err(Error::DeadLettered(letter))) => assert!(
            letter
                .last_failure
                .contains("no instance of service `nobody` is connected"),
            "{letter}"
        ),
        other => panic!("not dead-lettered with its reason: {other:?}"),
    }
}

/// A target service name no node can have is refused at once, by `send` and `request`
/// alike: empty, or longer than `max_name_len` (as a message name that long is). Before,
/// the message waited out its retry deadline and was dead-lettered.
#[test]
fn a_service_name_no_node_can_have_is_refused_at_once() {
    let mut sim = Sim::new(16);
    let shop = sim.node("shop");
    let now = sim.now;
    let long = "s".repeat(Limits::default().max_name_len + 1);
    for service in ["", long.as_str()] {
        let msg = sim.command("quote", "book");
        let sent = sim.nodes[shop]
            .engine
            .send(service, msg, &Default::default(), now);
        let msg = sim.command("quote", "book");
        let requested = sim.nodes[shop].engine.request(service, msg, SECOND, now);
        for result in [sent, requested] {
            match (service.is_empty(), result) {
                (true, Err(Error::EmptyServiceName)) => {}
                (false, Err(Error::Encode(e))) => {
                    assert!(e.to_string().contains("max_name_len"), "{e}");
                }
                (_, other) => panic!("`{service}` not refused: {other:?}"),
            }
        }
    }
    assert!(sim.nodes[shop].engine.dead_letters().is_empty());
}
