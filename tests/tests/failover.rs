//! Failover under load: three instances of `work`, one sender, 10,000 commands in flight, and
//! one instance lost mid-run, by crash (`abort`) or graceful `shutdown`.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::{Message, MessageId, Node, NodeBuilder};
use shoal_tests::{Mesh, WAIT, wait_instances};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::timeout;

const MESSAGES: usize = 10_000;
const STOP_AFTER: usize = 2_000;
const WORKERS: usize = 3;
/// The instance that is stopped mid-run.
const VICTIM: usize = 0;

/// One handler run: which instance, which message, which attempt.
type Record = (usize, MessageId, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Crash,
    Graceful,
}

struct Outcome {
    records: Vec<Record>,
    sent: Vec<MessageId>,
    /// From the first send to the last answer.
    took: Duration,
    /// From the moment the instance was stopped to the last answer.
    tail: Duration,
}

/// A node that tolerates long pauses: these tests stop an instance on purpose (by `abort`,
/// which closes its connections at once, or by `shutdown`), and a loaded test machine can
/// starve a runtime for longer than the default 1.5 s idle timeout, which would close a live
/// connection and redeliver its unacknowledged messages elsewhere (at-least-once, but not
/// what these tests look at).
fn tolerant(mesh: &Mesh, service: &str) -> NodeBuilder {
    mesh.builder(service)
        .liveness(Duration::from_millis(250), Duration::from_secs(15))
}

/// Runs the scenario and returns every handler run, in order.
async fn run(stop: Stop) -> Outcome {
    let mesh = Mesh::new();
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(mesh.start_with(tolerant(&mesh, "work"), &[]).await);
    }
    let addrs: Vec<_> = workers.iter().map(Node::local_addr).collect();
    let sender = mesh.start_with(tolerant(&mesh, "sender"), &addrs).await;
    wait_instances(&sender, "work", WORKERS).await;

    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let (reached_tx, reached_rx) = oneshot::channel::<()>();
    let reached_tx = Arc::new(Mutex::new(Some(reached_tx)));
    for (index, worker) in workers.iter().enumerate() {
        let records = Arc::clone(&records);
        let handled = Arc::clone(&handled);
        let reached_tx = Arc::clone(&reached_tx);
        worker.handle("job", move |msg: Message| {
            let records = Arc::clone(&records);
            let handled = Arc::clone(&handled);
            let reached_tx = Arc::clone(&reached_tx);
            async move {
                records
                    .lock()
                    .unwrap()
                    .push((index, msg.id(), msg.attempt()));
                if handled.fetch_add(1, Ordering::SeqCst) + 1 == STOP_AFTER
                    && let Some(tx) = reached_tx.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
                Ok(())
            }
        });
    }

    let started = Instant::now();
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|i| Message::command("job", i.to_string()))
        .collect();
    let sent: Vec<MessageId> = messages.iter().map(Message::id).collect();
    let mut sends = JoinSet::new();
    for msg in messages {
        let sender = sender.clone();
        sends.spawn(async move {
            let id = msg.id();
            let result = sender.send("work", msg).await;
            (id, result, Instant::now())
        });
    }

    timeout(WAIT, reached_rx)
        .await
        .expect("the workers did not get through the first messages in time")
        .unwrap();
    let stopped_at = Instant::now();
    let victim = workers[VICTIM].clone();
    let stopping = match stop {
        Stop::Crash => {
            victim.abort();
            None
        }
        Stop::Graceful => Some(tokio::spawn(async move { victim.shutdown().await })),
    };

    let mut failures = Vec::new();
    let mut ok = HashSet::new();
    let mut last_done = stopped_at;
    let all_sent = async {
        while let Some(joined) = sends.join_next().await {
            let (id, result, done) = joined.unwrap();
            last_done = last_done.max(done);
            match result {
                Ok(receipt) => {
                    assert_eq!(receipt.id, id);
                    ok.insert(id);
                }
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
    };
    timeout(Duration::from_secs(45), all_sent)
        .await
        .expect("sends did not all resolve in time");
    let took = started.elapsed();
    if let Some(stopping) = stopping {
        timeout(WAIT, stopping).await.unwrap().unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {MESSAGES} sends failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(ok.len(), MESSAGES);
    let records = records.lock().unwrap().clone();
    for (index, worker) in workers.iter().enumerate() {
        eprintln!("worker {index}: {:?}", worker.stats());
    }
    eprintln!("sender: {:?}", sender.stats());
    sender.abort();
    for worker in &workers {
        worker.abort();
    }
    Outcome {
        records,
        sent,
        took,
        tail: last_done - stopped_at,
    }
}

/// Checks the at-least-once invariants and returns the ids handled more than once.
fn check(outcome: &Outcome) -> Vec<(MessageId, Vec<(usize, u32)>)> {
    let mut runs: HashMap<MessageId, Vec<(usize, u32)>> = HashMap::new();
    for &(index, id, attempt) in &outcome.records {
        runs.entry(id).or_default().push((index, attempt));
    }
    for id in &outcome.sent {
        assert!(runs.contains_key(id), "message {id} was never handled");
    }
    assert_eq!(runs.len(), MESSAGES, "handlers saw unknown ids");
    let mut duplicates = Vec::new();
    for (id, handled) in runs {
        let instances: HashSet<usize> = handled.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            instances.len(),
            handled.len(),
            "message {id} was handled twice by one instance: {handled:?}"
        );
        if handled.len() > 1 {
            duplicates.push((id, handled));
        }
    }
    duplicates
}

/// Every duplicate is an at-least-once redelivery across the stopped instance: first handled
/// there, then by a survivor on a later attempt.
fn assert_duplicates_start_on_the_victim(duplicates: &[(MessageId, Vec<(usize, u32)>)]) {
    for (id, handled) in duplicates {
        assert_eq!(handled.len(), 2, "{id}: {handled:?}");
        let (first, first_attempt) = handled[0];
        let (second, second_attempt) = handled[1];
        assert_eq!(
            first, VICTIM,
            "{id}: a duplicate must start on the stopped instance: {handled:?}"
        );
        assert_ne!(second, VICTIM);
        assert!(
            second_attempt > first_attempt,
            "{id}: the survivor's run must be a later attempt: {handled:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_an_instance_mid_run_loses_nothing() {
    let outcome = timeout(Duration::from_secs(60), run(Stop::Crash))
        .await
        .expect("the crash scenario took longer than 60 s");
    let duplicates = check(&outcome);
    assert_duplicates_start_on_the_victim(&duplicates);
    let victim_runs = outcome.records.iter().filter(|r| r.0 == VICTIM).count();
    eprintln!(
        "crash: {MESSAGES} messages in {:?} (last answer {:?} after the crash); the crashed \
         instance handled {victim_runs}; {} handled twice (crashed instance, then a survivor)",
        outcome.took,
        outcome.tail,
        duplicates.len()
    );
}

/// Graceful shutdown mid-run: nothing is lost, and (see the next test) nothing should be
/// handled twice. This test checks the at-least-once invariants and reports duplicates; the
/// strict check is `graceful_shutdown_of_an_instance_mid_run_handles_each_message_once`
/// (ignored: it fails intermittently, see there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_an_instance_mid_run_loses_nothing() {
    let outcome = timeout(Duration::from_secs(60), run(Stop::Graceful))
        .await
        .expect("the graceful scenario took longer than 60 s");
    let duplicates = check(&outcome);
    assert_duplicates_start_on_the_victim(&duplicates);
    let victim_runs = outcome.records.iter().filter(|r| r.0 == VICTIM).count();
    eprintln!(
        "graceful: {MESSAGES} messages in {:?} (last answer {:?} after the shutdown began); \
         the stopped instance handled {victim_runs}; {} handled twice",
        outcome.took,
        outcome.tail,
        duplicates.len()
    );
}

/// After a graceful shutdown no message may have been handled twice: every handler that ran
/// on the stopping instance had its ack flushed before the goodbye.
///
/// Regression guard: the stopping node once closed the connection as soon as its acks were
/// acknowledged at the QUIC level, and the sender's reader could drop them unread. Now the
/// stopping node waits for the peer to close after reading its goodbye, and the reader drains
/// before acting on a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_an_instance_mid_run_handles_each_message_once() {
    // Two scenarios at a time: a busier sender makes the race more likely.
    for round in 0..3 {
        let (a, b) = timeout(Duration::from_secs(60), async {
            tokio::join!(run(Stop::Graceful), run(Stop::Graceful))
        })
        .await
        .expect("the graceful scenarios took longer than 60 s");
        for outcome in [a, b] {
            let duplicates = check(&outcome);
            assert!(
                duplicates.is_empty(),
                "round {round}: {} messages handled twice across a graceful shutdown, e.g. {:?}",
                duplicates.len(),
                &duplicates[..duplicates.len().min(5)]
            );
        }
    }
}

/// After a crash, the messages that were in flight to the crashed instance are retried
/// elsewhere as soon as its connection closes (at once here: `abort` closes the connections),
/// not after the 5 s ack timeout.
///
/// Regression guard: an attempt that registered on a peer just after its connection was
/// failed once waited out the whole ack timeout; it now fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_a_crash_does_not_wait_for_the_ack_timeout() {
    let outcome = timeout(Duration::from_secs(60), run(Stop::Crash))
        .await
        .expect("the crash scenario took longer than 60 s");
    assert!(
        outcome.tail < Duration::from_secs(3),
        "the last send was answered {:?} after the crash",
        outcome.tail
    );
}
