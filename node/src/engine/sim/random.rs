//! Thousands of seeded fault schedules, each checked against the protocol's invariants:
//!
//! - **Nothing acknowledged is lost**: every send that returned a receipt was handled by the
//!   instance the receipt names, and every copy of a publish's receipt by its group's instance.
//! - **No handler runs twice for one id on a live instance**: a node that never crashed
//!   handles each message (each group's copy of an event) successfully at most once.
//! - **Per-key order holds**: of two acknowledged messages with one key and destination, the
//!   later one's handler started after the earlier one's first successful handling ended.
//! - **Everything ends**: every call gets its result (a receipt or a dead letter) within its
//!   retry deadline and hold.
//!
//! A schedule draws its faults (loss, duplication, delay and reordering of the frames that
//! carry messages and answers), its handlers (delays, retryable failures), a mix of sends,
//! keyed sends, publishes, ordered batches and separate calls' commands, events and requests
//! travelling together (`send/each.rs`, `send/each_request.rs`), background events and
//! commands (staged to go together, `send/staged.rs`: each handled by every group, or by an
//! instance, or dead-lettered), and a
//! crash of one instance and a partition healed later. `SHOAL_SIM_SEEDS=N` runs N schedules instead of the default; a failure names
//! its seed, and `SHOAL_SIM_SEED=S` replays one.

#![cfg(test)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::RngExt;
use shoal_proto::MessageId;

use super::{Faults, Handled, HandlerRun, Sim};
use crate::engine::send::Publishing;
use crate::engine::{Done, OpId};
use crate::handler::HandlerError;
use crate::{Error, Message, PublishOptions};

/// How long separate calls' requests wait for their replies: past every retry deadline, so
/// that a request that ends by its timeout is one that hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One call of the workload and what to check about it.
struct Call {
    node: usize,
    op: Option<OpId>,
    /// Receipt ready at the call (best effort, no audience).
    done: Option<Result<Done, Error>>,
    ids: Vec<MessageId>,
    /// Each message's key.
    keys: Vec<Option<String>>,
    /// Background events or commands (`send/staged.rs`): nobody is told of them, so each must
    /// be handled (by both groups, or by `billing`) or be a dead letter of the sender's.
    background: Background,
}

/// What a call's messages are, when nobody is told what became of them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Background {
    /// A call with a result.
    No,
    Events,
    Commands,
}

/// Runs one schedule; returns the messages handled, or why an invariant broke.
fn schedule(seed: u64) -> Result<u64, String> {
    let mut sim = Sim::new(seed);
    let faults = Faults {
        latency: Duration::from_micros(sim.rng.random_range(20..500)),
        jitter: Duration::from_micros(sim.rng.random_range(0..2000)),
        loss: sim.rng.random_range(0.0..0.08),
        duplicate: sim.rng.random_range(0.0..0.1),
        reorder: sim.rng.random_bool(0.5),
    };
    let senders: Vec<usize> = (0..2).map(|_| sim.node("orders")).collect();
    let billing: Vec<usize> = (0..3).map(|_| sim.node("billing")).collect();
    let audit: Vec<usize> = (0..2).map(|_| sim.node("audit")).collect();
    let fail_rate = sim.rng.random_range(0.0..0.1);
    for &node in billing.iter().chain(&audit) {
        let delay = Duration::from_micros(sim.rng.random_range(0..3000));
        let salt: u64 = sim.rng.random();
        let handler = move |msg: &Message| flaky(msg, salt, fail_rate, delay);
        sim.handle(node, "charge", handler);
        let group = if billing.contains(&node) {
            "billing"
        } else {
            "audit"
        };
        sim.subscribe(node, "order.*", Some(group), move |msg| {
            flaky(msg, salt ^ 1, fail_rate, delay)
        });
    }
    for &s in &senders {
        for &r in billing.iter().chain(&audit) {
            sim.connect_with(s, r, faults.clone()).ok_or("duplicate")?;
        }
    }
    sim.run_for(Duration::from_millis(10));

    let crash_at = sim.rng.random_range(0..120);
    let crashed = billing[sim.rng.random_range(0..billing.len())];
    let partition_at = sim.rng.random_range(0..120);
    let cut = (senders[0], audit[sim.rng.random_range(0..audit.len())]);
    let mut calls = Vec::new();
    for i in 0..120 {
        if i == crash_at {
            sim.crash(crashed, Duration::from_millis(1500));
        }
        if i == partition_at {
            sim.partition(cut.0, cut.1, Duration::from_millis(1500));
        }
        if i == partition_at + 20 {
            sim.connect_with(cut.0, cut.1, faults.clone());
        }
        let node = senders[sim.rng.random_range(0..senders.len())];
        let draw_key = |sim: &mut Sim| {
            sim.rng
                .random_bool(0.5)
                .then(|| format!("customer-{}", sim.rng.random_range(0..4)))
        };
        let key = draw_key(&mut sim);
        calls.push(match sim.rng.random_range(0..13) {
            // Background commands sent one after another, keyed or not: unkeyed ones sent
            // while others are on their way are staged and go together (send/staged.rs).
            12 => {
                let count = sim.rng.random_range(1..6);
                let (mut ids, mut keys) = (Vec::new(), Vec::new());
                for j in 0..count {
                    let msg = keyed(sim.command("charge", format!("{i}.{j}")), &key);
                    ids.push(msg.id());
                    keys.push(key.clone());
                    sim.send_background(node, "billing", msg)
                        .map_err(|e| format!("background send refused: {e}"))?;
                }
                Call {
                    node,
                    op: None,
                    done: None,
                    keys,
                    ids,
                    background: Background::Commands,
                }
            }
            // Background events published one after another, by either call: those published
            // while others are on their way are staged and go together (send/staged.rs).
            11 => {
                let count = sim.rng.random_range(1..6);
                let mut ids = Vec::new();
                for j in 0..count {
                    let event = sim.event("order.created", format!("{i}.{j}"));
                    ids.push(event.id());
                    // Alternating: a choice of its own would shift the seeds' schedules.
                    let published = if (i + j) % 2 == 0 {
                        sim.publish_background(node, event).map(drop)
                    } else {
                        sim.publish(node, vec![event], &PublishOptions::background())
                            .map(drop)
                    };
                    published.map_err(|e| format!("background publish refused: {e}"))?;
                }
                Call {
                    node,
                    op: None,
                    done: Some(Ok(Done::Published(crate::PublishReceipt {
                        id: ids[0],
                        deliveries: Default::default(),
                        dropped: Vec::new(),
                    }))),
                    keys: vec![None; ids.len()],
                    ids,
                    background: Background::Events,
                }
            }
            // Separate calls' requests travelling together (send/each_request.rs).
            10 => {
                let count = sim.rng.random_range(2..6);
                let requests: Vec<Message> = (0..count)
                    .map(|j| sim.command("charge", format!("{i}.{j}")))
                    .collect();
                let ids: Vec<MessageId> = requests.iter().map(Message::id).collect();
                let op = sim
                    .request_each(node, "billing", requests, REQUEST_TIMEOUT)
                    .map_err(|e| format!("request_each refused: {e}"))?;
                Call {
                    node,
                    op: Some(op),
                    done: None,
                    keys: vec![None; ids.len()],
                    ids,
                    background: Background::No,
                }
            }
            n @ 0..=4 => {
                // 4: separate calls' commands travelling together (send/each.rs), each with
                // a key of its own or none (parts.rs).
                let (ids, keys, op) = if n == 4 {
                    let count = sim.rng.random_range(2..6);
                    let keys: Vec<Option<String>> =
                        (0..count).map(|_| draw_key(&mut sim)).collect();
                    let commands: Vec<Message> = keys
                        .iter()
                        .enumerate()
                        .map(|(j, key)| keyed(sim.command("charge", format!("{i}.{j}")), key))
                        .collect();
                    let ids = commands.iter().map(Message::id).collect();
                    let op = sim
                        .send_each(node, "billing", commands)
                        .map_err(|e| format!("send_each refused: {e}"))?;
                    (ids, keys, op)
                } else {
                    let msg = keyed(sim.command("charge", format!("{i}")), &key);
                    (vec![msg.id()], vec![key], sim.send(node, "billing", msg))
                };
                Call {
                    node,
                    op: Some(op),
                    done: None,
                    ids,
                    keys,
                    background: Background::No,
                }
            }
            n => {
                // 9: a batch (one key); 8: separate calls' events travelling together, each
                // with a key of its own or none (send/each.rs, parts.rs).
                let together = n == 8;
                let count = if n == 9 || together {
                    sim.rng.random_range(2..6)
                } else {
                    1
                };
                let keys: Vec<Option<String>> = (0..count)
                    .map(|_| {
                        if together {
                            draw_key(&mut sim)
                        } else {
                            key.clone()
                        }
                    })
                    .collect();
                let events: Vec<Message> = keys
                    .iter()
                    .enumerate()
                    .map(|(j, key)| keyed(sim.event("order.created", format!("{i}.{j}")), key))
                    .collect();
                let ids = events.iter().map(Message::id).collect();
                let published = if together {
                    sim.publish_each(node, events)
                } else {
                    sim.publish(node, events, &PublishOptions::default())
                };
                let (op, done) = match published {
                    Ok(Publishing::Waiting(op)) => (Some(op), None),
                    Ok(Publishing::Done(receipt)) => (None, Some(Ok(Done::Published(receipt)))),
                    Err(e) => return Err(format!("publish refused: {e}")),
                };
                Call {
                    node,
                    op,
                    done,
                    ids,
                    keys,
                    background: Background::No,
                }
            }
        });
        let gap = Duration::from_micros(sim.rng.random_range(0..3000));
        sim.run_for(gap);
    }
    // Every call ends within its retry deadline (30 s) or hold (30 s), plus an ack timeout.
    sim.run_for(Duration::from_secs(70));
    check(&sim, &calls, crashed)?;
    Ok(sim.handled)
}

/// `msg` with `key`, if any.
fn keyed(msg: Message, key: &Option<String>) -> Message {
    match key {
        Some(key) => msg.with_key(key.clone()),
        None => msg,
    }
}

/// A handler that takes `delay` and fails retryably for a share of messages (the same ones
/// every time they come, on any instance, so some are dead-lettered after their attempts).
fn flaky(msg: &Message, salt: u64, fail_rate: f64, delay: Duration) -> Handled {
    let roll = (msg.id().as_u128() as u64 ^ salt ^ u64::from(msg.attempt()))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if (roll >> 11) as f64 / (1u64 << 53) as f64 <= fail_rate {
        Handled::fail(HandlerError::retryable("flaky"))
    } else {
        Handled::ok_after(delay)
    }
}

fn check(sim: &Sim, calls: &[Call], crashed: usize) -> Result<(), String> {
    // Successful runs by node, label and id.
    let mut ok: BTreeMap<(usize, String, MessageId), Vec<&HandlerRun>> = BTreeMap::new();
    for run in sim.runs.iter().filter(|r| r.ok) {
        ok.entry((run.node, run.label.clone(), run.id))
            .or_default()
            .push(run);
    }
    for ((node, label, id), runs) in &ok {
        if *node != crashed && runs.len() > 1 {
            return Err(format!(
                "{id} handled {} times by node {node} ({label})",
                runs.len()
            ));
        }
    }
    let first_ok = |label: &str, id: MessageId| -> Option<(Instant, Instant)> {
        ok.iter()
            .filter(|((_, l, i), _)| l == label && *i == id)
            .flat_map(|(_, runs)| runs.iter())
            .map(|r| (r.started, r.ended))
            .min_by_key(|(_, ended)| *ended)
    };
    // Acknowledged keyed messages, per sender, destination (the handler's label) and key, in
    // call order: the order promised is each sender's.
    let mut acked_by_key: BTreeMap<(usize, String, String), Vec<(MessageId, usize)>> =
        BTreeMap::new();
    for (index, call) in calls.iter().enumerate() {
        if call.background != Background::No {
            let letters = sim.nodes[call.node].engine.dead_letters();
            for id in &call.ids {
                let handlers: &[&str] = match call.background {
                    Background::Events => &["billing", "audit"],
                    _ => &["charge"],
                };
                for &handler in handlers {
                    let lettered = letters.iter().any(|l| {
                        l.message.id() == *id
                            && match call.background {
                                Background::Events => {
                                    l.group.as_deref() == Some(&format!("group `{handler}`"))
                                }
                                _ => l.service == "billing",
                            }
                    });
                    if first_ok(handler, *id).is_none() && !lettered {
                        return Err(format!(
                            "call {index}: background message {id} neither handled by \
                             {handler} nor dead-lettered"
                        ));
                    }
                }
            }
            // Keyed background commands keep their key's order with the other calls': those
            // handled take part in the order check below.
            if call.background == Background::Commands {
                for (id, key) in call.ids.iter().zip(&call.keys) {
                    if let Some(key) = key
                        && first_ok("charge", *id).is_some()
                    {
                        acked_by_key
                            .entry((call.node, "charge".to_owned(), key.clone()))
                            .or_default()
                            .push((*id, index));
                    }
                }
            }
            continue;
        }
        let result = match (call.op, &call.done) {
            (Some(op), _) => sim.result(call.node, op),
            (None, done) => done.as_ref(),
        };
        let result = result.ok_or_else(|| format!("call {index} never ended"))?;
        let mut acked = |label: &str, id: MessageId| {
            let at = call.ids.iter().position(|i| *i == id);
            if let Some(Some(key)) = at.and_then(|at| call.keys.get(at)) {
                acked_by_key
                    .entry((call.node, label.to_owned(), key.clone()))
                    .or_default()
                    .push((id, index));
            }
        };
        match result {
            Ok(Done::Sent(receipt)) => {
                let node = node_index(sim, receipt.node)?;
                if !ok.contains_key(&(node, "charge".into(), call.ids[0])) {
                    return Err(format!(
                        "call {index}: acked by node {node}, never handled there"
                    ));
                }
                acked("charge", call.ids[0]);
            }
            Ok(Done::Published(receipt)) => {
                for copy in &receipt.deliveries {
                    let node = node_index(sim, copy.node)?;
                    let group = copy.group.clone().unwrap_or_default();
                    for id in &call.ids {
                        // The receipt names the instance of the last attempt; a batch's events
                        // acknowledged in an earlier attempt were handled by another one.
                        let handled = if call.ids.len() == 1 {
                            ok.contains_key(&(node, group.clone(), *id))
                        } else {
                            first_ok(&group, *id).is_some()
                        };
                        if !handled {
                            return Err(format!("call {index}: {group} acked {id}, never handled"));
                        }
                        acked(&group, *id);
                    }
                }
            }
            Ok(Done::SentEach(results)) => {
                if results.len() != call.ids.len() {
                    return Err(format!("call {index}: {} results", results.len()));
                }
                for (id, result) in call.ids.iter().zip(results) {
                    match result {
                        // Each receipt names the instance that acknowledged its command.
                        Ok(receipt) => {
                            let node = node_index(sim, receipt.node)?;
                            if receipt.id != *id || !ok.contains_key(&(node, "charge".into(), *id))
                            {
                                return Err(format!(
                                    "call {index}: {id} acked by node {node}, never handled there"
                                ));
                            }
                            acked("charge", *id);
                        }
                        Err(Error::DeadLettered(_)) => {}
                        Err(e) => return Err(format!("call {index}: {id}: {e}")),
                    }
                }
            }
            // Each request answered on its own, by a reply to it from a handler that ran.
            Ok(Done::RepliedEach) => {
                for (at, id) in (0u32..).zip(&call.ids) {
                    let answer = call
                        .op
                        .and_then(|op| sim.nodes[call.node].answers.get(&(op, at)));
                    match answer.map(|(_, result)| result) {
                        Some(Ok(reply)) if reply.envelope().correlation_id == Some(*id) => {
                            if first_ok("charge", *id).is_none() {
                                return Err(format!("call {index}: {id} answered, never handled"));
                            }
                        }
                        Some(Err(Error::DeadLettered(_))) => {}
                        other => return Err(format!("call {index}: {id}: {other:?}")),
                    }
                }
            }
            Ok(Done::PublishedEach(results)) => {
                if results.len() != call.ids.len() {
                    return Err(format!("call {index}: {} results", results.len()));
                }
                for (id, result) in call.ids.iter().zip(results) {
                    match result {
                        Ok(receipt) if receipt.id != *id => {
                            return Err(format!("call {index}: {id}'s receipt names another"));
                        }
                        Ok(receipt) => {
                            for copy in &receipt.deliveries {
                                let group = copy.group.clone().unwrap_or_default();
                                if first_ok(&group, *id).is_none() {
                                    return Err(format!(
                                        "call {index}: {group} acked {id}, never handled"
                                    ));
                                }
                                acked(&group, *id);
                            }
                        }
                        Err(Error::DeadLettered(_)) => {}
                        Err(e) => return Err(format!("call {index}: {id}: {e}")),
                    }
                }
            }
            Ok(other) => return Err(format!("call {index}: unexpected {other:?}")),
            Err(Error::DeadLettered(_)) => {}
            Err(e) => return Err(format!("call {index}: {e}")),
        }
    }
    for ((_, label, key), ids) in &acked_by_key {
        for pair in ids.windows(2) {
            let (Some((_, ended)), Some((started, _))) =
                (first_ok(label, pair[0].0), first_ok(label, pair[1].0))
            else {
                continue;
            };
            if started < ended {
                return Err(format!(
                    "key {key} at {label}: {} (call {}) started before {} (call {}) was done",
                    pair[1].0, pair[1].1, pair[0].0, pair[0].1
                ));
            }
        }
    }
    Ok(())
}

fn node_index(sim: &Sim, id: shoal_proto::NodeId) -> Result<usize, String> {
    sim.nodes
        .iter()
        .position(|n| n.engine.id() == id)
        .ok_or_else(|| format!("unknown node {id}"))
}

#[test]
fn seeded_fault_schedules_keep_the_invariants() {
    let seeds: Vec<u64> = match std::env::var("SHOAL_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SHOAL_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SHOAL_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(300);
            (0..count).collect()
        }
    };
    let started = Instant::now();
    let mut handled = 0;
    for seed in &seeds {
        match schedule(*seed) {
            Ok(n) => handled += n,
            Err(why) => panic!("seed {seed}: {why} (replay with SHOAL_SIM_SEED={seed})"),
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} schedules, {handled} messages handled in {elapsed:?} of real time ({:.0} per second)",
        seeds.len(),
        handled as f64 / elapsed.as_secs_f64()
    );
}
