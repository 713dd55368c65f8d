//! Per-key order on real sockets: 20,000 messages over 200 keys to a 3-instance service, with
//! one instance killed and one added mid-run, by point-to-point `send` and by `publish`.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::{HandlerError, Message, Node};
use shoal_tests::{Mesh, WAIT, audience_sizes, until, wait_instances};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::timeout;

const KEYS: usize = 200;
const PER_KEY: usize = 100;
const SERVICE: &str = "ledger";
const TOPIC: &str = "account.changed";
/// The victim is killed, and a fourth instance started, after this many handler runs.
const CHANGE_AFTER: usize = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Send,
    Publish,
}

/// One handler run: key, sequence number, instance, attempt.
type Run = (usize, usize, usize, u32);

struct Recorder {
    runs: Mutex<Vec<Run>>,
    /// Keys whose handler is running now, with the instance it runs on: a second one at once
    /// breaks "one at a time".
    running: Mutex<HashMap<usize, usize>>,
    /// The instance aborted mid-run. Its handlers are stopped, each dropped when its task is
    /// next polled, which on a multi-thread runtime may come after the sender has already
    /// failed over to a live instance. Such a run is over when the abort returns, as it
    /// would be in a process that crashed.
    aborted: Mutex<Option<usize>>,
    overlaps: AtomicUsize,
    handled: AtomicUsize,
    reached: Notify,
}

/// A key's handler is running on an instance while this lives.
struct Running<'a> {
    rec: &'a Recorder,
    key: usize,
    instance: usize,
}

impl<'a> Running<'a> {
    /// Marks `key` running on `instance`; counts an overlap if it runs on a live instance
    /// already.
    fn start(rec: &'a Recorder, key: usize, instance: usize) -> Self {
        let aborted = *rec.aborted.lock().unwrap();
        let before = rec.running.lock().unwrap().insert(key, instance);
        if before.is_some_and(|on| Some(on) != aborted) {
            rec.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        Self { rec, key, instance }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut running = self.rec.running.lock().unwrap();
        // A run of the aborted instance dropped late leaves the key to the one after it.
        if running.get(&self.key) == Some(&self.instance) {
            running.remove(&self.key);
        }
    }
}

fn parse(msg: &Message) -> (usize, usize) {
    let text = std::str::from_utf8(msg.payload()).unwrap();
    let (key, seq) = text.split_once('/').unwrap();
    (key.parse().unwrap(), seq.parse().unwrap())
}

async fn start_instance(
    mesh: &Mesh,
    index: usize,
    via: Via,
    rec: &Arc<Recorder>,
    peers: &[std::net::SocketAddr],
) -> Node {
    let node = mesh.start(SERVICE, peers).await;
    let rec = Arc::clone(rec);
    let handler = move |msg: Message| {
        let rec = Arc::clone(&rec);
        async move {
            let (key, seq) = parse(&msg);
            // The key stops running when this handler ends, or when its instance is aborted:
            // then it does not run any more either.
            let running = Running::start(&rec, key, index);
            rec.runs
                .lock()
                .unwrap()
                .push((key, seq, index, msg.attempt()));
            // Give another message of the same key a chance to overlap, were it sent early.
            tokio::task::yield_now().await;
            drop(running);
            if rec.handled.fetch_add(1, Ordering::SeqCst) + 1 == CHANGE_AFTER {
                rec.reached.notify_one();
            }
            Ok::<_, HandlerError>(())
        }
    };
    match via {
        Via::Send => node.handle("apply", handler),
        Via::Publish => {
            node.subscribe(TOPIC, handler).await.unwrap();
        }
    }
    node
}

async fn run(via: Via) {
    let mesh = Mesh::new();
    let rec = Arc::new(Recorder {
        runs: Mutex::default(),
        running: Mutex::default(),
        aborted: Mutex::default(),
        overlaps: AtomicUsize::new(0),
        handled: AtomicUsize::new(0),
        reached: Notify::new(),
    });
    let mut instances = Vec::new();
    for index in 0..3 {
        instances.push(start_instance(&mesh, index, via, &rec, &[]).await);
    }
    let addrs: Vec<_> = instances.iter().map(Node::local_addr).collect();
    let sender = mesh.start("teller", &addrs).await;
    wait_instances(&sender, SERVICE, 3).await;
    if via == Via::Publish {
        until(&sender, "every subscription known", |n| {
            audience_sizes(n, TOPIC) == [3]
        })
        .await;
    }

    // All 20,000 calls are made up front, keys interleaved; each call takes its place in its
    // key's order when it is made, so spawning them in any order changes nothing.
    let mut calls = JoinSet::new();
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            let body = format!("{key}/{seq}");
            let label = format!("customer-{key}");
            match via {
                Via::Send => {
                    let call =
                        sender.send(SERVICE, Message::command("apply", body).with_key(label));
                    calls.spawn(async move { call.await.map(|_| ()) });
                }
                Via::Publish => {
                    let call = sender.publish(Message::event(TOPIC, body).with_key(label));
                    calls.spawn(async move { call.await.map(|_| ()) });
                }
            }
        }
    }

    timeout(WAIT, rec.reached.notified())
        .await
        .expect("messages flowing");
    *rec.aborted.lock().unwrap() = Some(0);
    instances[0].abort();
    let newcomer = start_instance(&mesh, 3, via, &rec, &[sender.local_addr()]).await;
    let mut failures = Vec::new();
    timeout(Duration::from_secs(90), async {
        while let Some(joined) = calls.join_next().await {
            if let Err(e) = joined.unwrap() {
                failures.push(e.to_string());
            }
        }
    })
    .await
    .expect("every call resolved within 90 s");
    assert!(
        failures.is_empty(),
        "{via:?}: {} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(
        rec.overlaps.load(Ordering::SeqCst),
        0,
        "{via:?}: two messages of one key ran at once"
    );

    let runs = rec.runs.lock().unwrap().clone();
    let mut per_key: HashMap<usize, Vec<(usize, usize, u32)>> = HashMap::new();
    for (key, seq, instance, attempt) in runs {
        per_key
            .entry(key)
            .or_default()
            .push((seq, instance, attempt));
    }
    let mut redelivered = 0;
    for key in 0..KEYS {
        let handled = &per_key[&key];
        let mut next = 0;
        let mut previous: Option<(usize, usize, u32)> = None;
        for &(seq, instance, attempt) in handled {
            if seq == next {
                next += 1;
            } else {
                // The only other case allowed: the killed instance handled `seq` but died
                // before its ack left, and the survivor handled it again (a redelivery).
                let prev = previous.unwrap();
                assert!(
                    seq + 1 == next && prev.0 == seq && prev.1 == 0 && attempt > prev.2,
                    "{via:?}: key {key} out of order: {handled:?}"
                );
                redelivered += 1;
            }
            previous = Some((seq, instance, attempt));
        }
        assert_eq!(next, PER_KEY, "{via:?}: key {key} has gaps: {handled:?}");
    }
    let on_newcomer = per_key.values().flatten().filter(|r| r.1 == 3).count();
    assert!(on_newcomer > 0, "{via:?}: the added instance took no keys");
    eprintln!(
        "{via:?}: {} messages over {KEYS} keys in order; {redelivered} redelivered after the \
         kill; the added instance handled {on_newcomer}",
        KEYS * PER_KEY
    );
    drop(newcomer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_sends_stay_in_order_while_instances_die_and_join() {
    run(Via::Send).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_events_stay_in_order_while_instances_die_and_join() {
    run(Via::Publish).await;
}

/// A keyed send waits for the one before it, but not forever: when its predecessor is still
/// in progress (here, a handler that does not finish) at its retry deadline, it is
/// dead-lettered with a reason that says why.
#[tokio::test(flavor = "current_thread")]
async fn a_keyed_send_behind_a_stuck_one_ends_at_its_deadline() {
    let mesh = Mesh::new();
    let ledger = mesh.start(SERVICE, &[]).await;
    let (release, released) = tokio::sync::watch::channel(false);
    ledger.handle("apply", move |msg: Message| {
        let mut released = released.clone();
        async move {
            if msg.payload() == "0" {
                let _ = released.wait_for(|r| *r).await;
            }
            Ok::<_, HandlerError>(())
        }
    });
    let sender = mesh.start("teller", &[ledger.local_addr()]).await;
    wait_instances(&sender, SERVICE, 1).await;

    let first = sender.send(SERVICE, Message::command("apply", "0").with_key("k"));
    let policy = shoal::RetryPolicy {
        deadline: Duration::from_millis(300),
        ..shoal::RetryPolicy::default()
    };
    let second = sender.send_with(
        SERVICE,
        Message::command("apply", "1").with_key("k"),
        shoal::SendOptions::with_retry(policy),
    );
    let err = timeout(WAIT, second).await.unwrap().unwrap_err();
    let shoal::Error::DeadLettered(letter) = err else {
        panic!("{err}")
    };
    assert!(letter.last_failure.contains("same key"), "{letter}");
    // The first one still goes through once its handler finishes.
    release.send(true).unwrap();
    timeout(WAIT, first).await.unwrap().unwrap();
}

/// A send is on its way from the call on: a keyed send whose predecessor's future is never
/// polled still goes, in order, once the node has delivered the first one.
#[tokio::test(flavor = "current_thread")]
async fn a_keyed_send_behind_an_unpolled_one_goes_in_order() {
    let mesh = Mesh::new();
    let ledger = mesh.start(SERVICE, &[]).await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    ledger.handle("apply", move |msg: Message| {
        let _ = seen_tx.send(msg.payload().clone());
        async { Ok::<_, HandlerError>(()) }
    });
    let sender = mesh.start("teller", &[ledger.local_addr()]).await;
    wait_instances(&sender, SERVICE, 1).await;

    let first = sender.send(SERVICE, Message::command("apply", "0").with_key("k"));
    let second = sender.send(SERVICE, Message::command("apply", "1").with_key("k"));
    timeout(WAIT, second).await.unwrap().unwrap();
    assert_eq!(seen.recv().await.unwrap(), "0");
    assert_eq!(seen.recv().await.unwrap(), "1");
    drop(first);
}
