//! Separate calls' requests that travel as one operation (`send/each_request.rs`): one
//! delivery for all, and each caller answered by its own reply as soon as it comes.

#![cfg(test)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use shoal_proto::SeqRange;

use super::super::delivery::State;
use super::{Faults, Handled, Sim};
use crate::engine::{Done, OpId};
use crate::handler::HandlerError;
use crate::{Error, Message};

const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// What the handler saw: (request number, attempt) of each run.
type Log = Rc<RefCell<Vec<(u32, u32)>>>;

/// Requests `0..n` for `quote`, each with its number as payload.
fn quotes(sim: &mut Sim, n: u32) -> Vec<Message> {
    (0..n)
        .map(|i| sim.command("quote", i.to_string()))
        .collect()
}

/// A `pricing` handler that logs (number, attempt), then does what `answer` says; its
/// replies say `price of <n>`.
fn pricing(
    log: &Log,
    answer: impl Fn(u32) -> Duration + 'static,
) -> impl Fn(&Message) -> Handled + 'static {
    let log = Rc::clone(log);
    move |msg| {
        let n: u32 = String::from_utf8_lossy(msg.payload())
            .parse()
            .expect("a number");
        log.borrow_mut().push((n, msg.attempt()));
        Handled {
            after: answer(n),
            result: Ok(Some(format!("price of {n}").into())),
        }
    }
}

/// A simulation (from `seed`) with a `shop` node connected to a `pricing` node over a link
/// with `faults`, whose handler is [`pricing`] with `delay`; returns it, `shop` and the log.
fn shop_and_pricing(
    seed: u64,
    faults: Faults,
    delay: impl Fn(u32) -> Duration + 'static,
) -> (Sim, usize, Log) {
    let mut sim = Sim::new(seed);
    let (shop, server) = (sim.node("shop"), sim.node("pricing"));
    sim.connect_with(shop, server, faults);
    let log = Log::default();
    sim.handle(server, "quote", pricing(&log, delay));
    sim.run_for(SECOND);
    (sim, shop, log)
}

/// When request `index` of `op` on `node` was answered, and its reply's payload (or error).
fn answer(sim: &Sim, node: usize, op: OpId, index: u32) -> (Duration, Result<String, &Error>) {
    let (at, result) = sim.nodes[node]
        .answers
        .get(&(op, index))
        .unwrap_or_else(|| panic!("request {index} was not answered"));
    let reply = result
        .as_ref()
        .map(|r| String::from_utf8_lossy(r.payload()).into_owned());
    (*at, reply)
}

/// The payload of request `index`'s reply.
fn reply_of(sim: &Sim, node: usize, op: OpId, index: u32) -> String {
    match answer(sim, node, op, index) {
        (_, Ok(reply)) => reply,
        (_, Err(e)) => panic!("request {index} failed: {e}"),
    }
}

/// Asserts that `log` holds requests `0..n` once each, in their first attempt.
fn assert_handled_once(log: &Log, n: u32) {
    let mut seen = log.borrow().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..n).map(|m| (m, 1)).collect::<Vec<_>>());
}

#[test]
fn requests_share_a_delivery_and_each_caller_has_its_reply_as_soon_as_it_comes() {
    // Request 0 takes 3 s; the others 5 ms.
    let (mut sim, shop, log) = shop_and_pricing(501, Faults::default(), |n| {
        if n == 0 { 3 * SECOND } else { 5 * MS }
    });
    let started = sim.elapsed();
    let requests = quotes(&mut sim, 8);
    let op = sim
        .request_each(shop, "pricing", requests, 30 * SECOND)
        .expect("sent");
    assert_eq!(sim.nodes[shop].engine.out.deliveries.len(), 1);
    sim.run_for(SECOND);
    for n in 1..8 {
        let (at, _) = answer(&sim, shop, op, n);
        assert_eq!(reply_of(&sim, shop, op, n), format!("price of {n}"));
        assert!(at - started < SECOND, "request {n} waited for request 0");
    }
    assert!(!sim.nodes[shop].answers.contains_key(&(op, 0)));
    assert!(sim.result(shop, op).is_none(), "ended before request 0");
    assert!(sim.run_for(10 * SECOND), "work left after every reply");
    let (at, _) = answer(&sim, shop, op, 0);
    assert_eq!(reply_of(&sim, shop, op, 0), "price of 0");
    assert!(at - started >= 3 * SECOND);
    assert!(matches!(sim.result(shop, op), Some(Ok(Done::RepliedEach))));
    assert_handled_once(&log, 8);
    // The replies answered the attempt: nothing timed out, nothing was sent again.
    let engine = &sim.nodes[shop].engine;
    assert_eq!(engine.stats().retries, 0);
    assert_eq!(engine.stats().acked, 1, "one delivery, acknowledged");
    assert!(engine.out.deliveries.is_empty() && engine.out.replies.is_empty());
}

#[test]
fn a_request_refused_for_good_fails_alone_and_at_once() {
    let mut sim = Sim::new(502);
    let (shop, server) = (sim.node("shop"), sim.node("pricing"));
    sim.connect(shop, server);
    // Request 2's handler fails for good; request 0 takes 5 s.
    sim.handle(server, "quote", |msg| match msg.payload().as_ref() {
        b"2" => Handled::fail(HandlerError::permanent("no such product")),
        b"0" => Handled {
            after: 5 * SECOND,
            result: Ok(Some("slow".into())),
        },
        _ => Handled::reply("fast"),
    });
    sim.run_for(SECOND);
    let started = sim.elapsed();
    let requests = quotes(&mut sim, 4);
    let id = requests[2].id();
    let op = sim
        .request_each(shop, "pricing", requests, 30 * SECOND)
        .expect("sent");
    sim.run_for(SECOND);
    match answer(&sim, shop, op, 2) {
        (at, Err(Error::DeadLettered(letter))) => {
            assert_eq!(letter.message.id(), id);
            assert!(at - started < SECOND);
        }
        other => panic!("request 2: {other:?}"),
    }
    for n in [1, 3] {
        assert_eq!(reply_of(&sim, shop, op, n), "fast");
    }
    assert!(sim.run_for(10 * SECOND));
    assert_eq!(reply_of(&sim, shop, op, 0), "slow");
    assert!(matches!(sim.result(shop, op), Some(Ok(Done::RepliedEach))));
}

/// Those not answered when their instance crashed go on to another, together; each is
/// handled on one instance, and each caller gets its reply once.
#[test]
fn requests_not_answered_fail_over_together() {
    let mut sim = Sim::new(503);
    let shop = sim.node("shop");
    let (p1, p2) = (sim.node("pricing"), sim.node("pricing"));
    let (log1, log2) = (Log::default(), Log::default());
    // p1 answers request 0 at once and is still at the others when it crashes.
    sim.handle(
        p1,
        "quote",
        pricing(&log1, |n| if n == 0 { MS } else { 10 * SECOND }),
    );
    sim.handle(p2, "quote", pricing(&log2, |_| MS));
    sim.connect(shop, p1);
    let requests = quotes(&mut sim, 4);
    let op = sim
        .request_each(shop, "pricing", requests, 60 * SECOND)
        .expect("sent");
    sim.connect(shop, p2);
    sim.run_for(100 * MS);
    sim.crash(p1, 1500 * MS);
    assert!(sim.run_for(30 * SECOND), "never settled");
    for n in 0..4 {
        assert_eq!(reply_of(&sim, shop, op, n), format!("price of {n}"));
    }
    assert!(matches!(sim.result(shop, op), Some(Ok(Done::RepliedEach))));
    // p1 ran them all; only those it had not answered went on to p2.
    assert_eq!(log1.borrow().len(), 4);
    let mut on_p2 = log2.borrow().clone();
    on_p2.sort_unstable();
    assert_eq!(on_p2, [(1, 2), (2, 2), (3, 2)]);
}

#[test]
fn the_timeout_ends_the_requests_still_waiting_and_no_other() {
    let (mut sim, shop, _) = shop_and_pricing(504, Faults::default(), |n| {
        if n == 1 { 10 * SECOND } else { MS }
    });
    let requests = quotes(&mut sim, 3);
    let op = sim
        .request_each(shop, "pricing", requests, 2 * SECOND)
        .expect("sent");
    sim.run_for(3 * SECOND);
    assert_eq!(reply_of(&sim, shop, op, 0), "price of 0");
    assert_eq!(reply_of(&sim, shop, op, 2), "price of 2");
    // Request 1's caller hears of the timeout with the operation's end.
    assert!(!sim.nodes[shop].answers.contains_key(&(op, 1)));
    match sim.result(shop, op) {
        Some(Err(Error::Timeout(after))) => assert_eq!(*after, 2 * SECOND),
        other => panic!("not a timeout: {other:?}"),
    }
    // Nothing waits for a reply any more (request 1's is still to come).
    assert!(sim.nodes[shop].engine.out.replies.is_empty());
    assert!(sim.run_for(60 * SECOND), "the sender still has work");
    let engine = &sim.nodes[shop].engine;
    assert!(engine.out.deliveries.is_empty() && engine.out.replies.is_empty());
}

/// A node of an earlier release acks requests before it replies: the acks end the delivery,
/// and the operation ends with the last reply.
#[test]
fn requests_acked_before_their_replies_end_with_the_last_reply() {
    let (mut sim, shop, _) = shop_and_pricing(506, Faults::default(), |_| SECOND);
    let requests = quotes(&mut sim, 3);
    let op = sim
        .request_each(shop, "pricing", requests, 30 * SECOND)
        .expect("sent");
    sim.run_for(100 * MS);
    let engine = &mut sim.nodes[shop].engine;
    let Some(State::Flight {
        conn, first, count, ..
    }) = engine
        .out
        .deliveries
        .values()
        .next()
        .map(|d| d.state.clone())
    else {
        panic!("not in flight");
    };
    let range = SeqRange {
        start: first,
        len: u64::from(count),
    };
    engine.on_ack(conn, vec![range], sim.now);
    sim.settle();
    assert!(sim.nodes[shop].engine.out.deliveries.is_empty(), "acked");
    assert!(sim.result(shop, op).is_none(), "ended before the replies");
    sim.run_for(2 * SECOND);
    for n in 0..3 {
        assert_eq!(reply_of(&sim, shop, op, n), format!("price of {n}"));
    }
    assert!(matches!(sim.result(shop, op), Some(Ok(Done::RepliedEach))));
}

/// Replies that come while their requests wait for an instance (their attempt failed) count
/// as acknowledged there: they are not sent again, and the delivery ends with the last.
#[test]
fn replies_that_come_between_attempts_end_the_delivery() {
    let (mut sim, shop, _) = shop_and_pricing(507, Faults::default(), |_| 10 * SECOND);
    let requests = quotes(&mut sim, 3);
    let ids: Vec<_> = requests.iter().map(Message::id).collect();
    let op = sim
        .request_each(shop, "pricing", requests, 60 * SECOND)
        .expect("sent");
    sim.run_for(100 * MS);
    let server = shop + 1; // made right after `shop` (shop_and_pricing)
    sim.crash(server, 100 * MS);
    sim.run_for(SECOND);
    let waiting = |sim: &Sim| -> Vec<State> {
        let engine = &sim.nodes[shop].engine;
        engine
            .out
            .deliveries
            .values()
            .map(|d| d.state.clone())
            .collect()
    };
    assert!(
        matches!(waiting(&sim).as_slice(), [s] if !matches!(s, State::Flight { .. })),
        "{:?}",
        waiting(&sim)
    );
    // The replies come anyway (sent before the crash, say, on a connection that outlived it).
    for (n, id) in ids.iter().enumerate() {
        let mut reply = sim.command("price", format!("late {n}"));
        reply.env.correlation_id = Some(*id);
        let now = sim.now;
        sim.nodes[shop].engine.on_reply(reply.env, now);
        sim.settle();
        let left = if n < 2 { 1 } else { 0 };
        assert_eq!(waiting(&sim).len(), left, "after reply {n}");
    }
    for n in 0..3 {
        assert_eq!(reply_of(&sim, shop, op, n), format!("late {n}"));
    }
    assert!(matches!(sim.result(shop, op), Some(Ok(Done::RepliedEach))));
    let engine = &sim.nodes[shop].engine;
    assert!(engine.out.replies.is_empty());
}

#[test]
fn requests_through_loss_and_duplication_are_each_handled_once_and_answered_once() {
    for seed in 510..516 {
        let faults = Faults {
            loss: 0.2,
            duplicate: 0.2,
            ..Faults::default()
        };
        let (mut sim, shop, log) = shop_and_pricing(seed, faults, |_| MS);
        let requests = quotes(&mut sim, 40);
        let op = sim
            .request_each(shop, "pricing", requests, 120 * SECOND)
            .expect("sent");
        assert!(sim.run_for(60 * SECOND), "seed {seed}: never settled");
        for n in 0..40 {
            assert_eq!(
                reply_of(&sim, shop, op, n),
                format!("price of {n}"),
                "seed {seed}"
            );
        }
        assert!(matches!(sim.result(shop, op), Some(Ok(Done::RepliedEach))));
        let mut handled: Vec<u32> = log.borrow().iter().map(|(n, _)| *n).collect();
        handled.sort_unstable();
        assert_eq!(
            handled,
            (0..40).collect::<Vec<_>>(),
            "seed {seed}: once each"
        );
    }
}

#[test]
fn requests_that_cannot_travel_together_are_refused_and_left_to_go_alone() {
    let mut sim = Sim::new(505);
    let (shop, server) = (sim.node("shop"), sim.node("pricing"));
    sim.connect(shop, server);
    sim.handle(server, "quote", |_| Handled::reply("ok"));
    sim.run_for(SECOND);
    let mut requests = quotes(&mut sim, 3);
    // A cloned request: its reply could answer only one of the two.
    requests.push(requests[1].clone());
    let id = requests[1].id();
    match sim.request_each(shop, "pricing", requests, SECOND) {
        Err(Error::DuplicateRequest(dup)) => assert_eq!(dup, id),
        other => panic!("{other:?}"),
    }
    // One waiting for its reply already.
    let waiting = sim.command("quote", "waiting");
    sim.request(shop, "pricing", waiting.clone());
    let mut requests = quotes(&mut sim, 2);
    requests.push(waiting);
    assert!(matches!(
        sim.request_each(shop, "pricing", requests, SECOND),
        Err(Error::DuplicateRequest(_))
    ));
    assert_eq!(sim.nodes[shop].engine.out.replies.len(), 1);
}
