//! A fixed amount of Shoal work, for counting instructions rather than timing them.
//!
//! On a shared, noisy machine wall-clock figures move by tens of percent from run to run;
//! `valgrind --tool=callgrind` counts the instructions a run executes, the same on every run
//! of the same binary and input. This program does a fixed number of messages between two
//! nodes on loopback, each on its own thread and `current_thread` runtime like the
//! benchmarks, and exits, so the count divided by the messages is the CPU cost per message:
//!
//! ```sh
//! cargo build --release -p shoal-benches --bin fixed-load
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/fixed-load send 20000
//! callgrind_annotate /tmp/cg.out | head -40
//! ```
//!
//! Modes: `send` (point-to-point, acknowledged), `publish` (one reliable event per
//! `publish`), `batch` (reliable `publish_batch` of 256), `request` (request/reply),
//! `background` (one loop of background publishes, [`shoal::Node::publish_background`],
//! done when the receiver handled them all), `background-future` (the same through
//! `publish_with` and [`shoal::PublishOptions::background`], a future per event),
//! `send-background` (the same with commands, [`shoal::Node::send_background`]).
//! [`IN_FLIGHT`] calls are kept in flight, as in the throughput rows, or one at a time with
//! the option `closed`, as in the latency rows (`fixed-load send 20000 closed`). The option
//! `metrics` turns Prometheus metrics on in both nodes (recorded, not served), so the cost of
//! recording is the difference between two runs: `fixed-load send 20000 metrics`. The option
//! `keyed` gives every message a partition key, one per task (`customer-<task>`), so the
//! calls of a task are ordered and the tasks run side by side: `fixed-load send 20000 keyed`.
//! The option `multi-thread` runs each node on tokio's multi-thread runtime with its default
//! worker count (one per CPU, what `#[tokio::main]` gives) instead of a `current_thread` one:
//! `fixed-load publish 200000 multi-thread`; `workers=N` does the same with `N` workers per
//! node (`workers=1`: one each, as `shoal-bench --runtime multi-thread` runs them). The option
//! `busy-poll` has both nodes poll for input for a millisecond after each activity
//! ([`shoal::NodeBuilder::busy_poll`]):
//! `fixed-load send 20000 closed busy-poll`; `busy-poll=N` polls for `N` µs after each
//! activity instead, and `busy-poll=0` turns off even the default polling under load
//! ([`shoal::NodeBuilder::busy_poll_under_load`]): `fixed-load send 1500000 busy-poll=0`. The
//! option `in-flight=N` keeps `N` calls in flight instead of [`IN_FLIGHT`]: `fixed-load
//! publish 1500000 in-flight=1024`. The option
//! `batch=N` makes `batch` mode's batches `N` events instead of [`BATCH`]: with
//! `in-flight=M`, `N * M` events in flight as `M` calls (`fixed-load batch 1500000 batch=4
//! in-flight=64`). The option `window=N` sets both nodes'
//! [`shoal::NodeBuilder::max_in_flight_per_peer`] (default 4096): `fixed-load background
//! 3000000 window=4096`. The option `payload=N` makes every message's payload `N` bytes
//! instead of 64: `fixed-load background 20000 payload=65536`. The option `handlers=N` sets
//! both nodes' [`shoal::NodeBuilder::max_concurrent_handlers`] (default 1024), and
//! `backlog=N` their [`shoal::NodeBuilder::max_background_publishes`] (default 4096).
//! The option `yield=N` makes the background modes' loop yield every `N` calls instead of
//! every [`BACKGROUND_YIELD`] (`fixed-load background 3000000 yield=256`).
//!
//! It prints the messages handled per second, the writes of each node, the sender's retries
//! and the receiver's duplicates (a retry means an ack did not come in time). On Linux, with
//! `current_thread` runtimes, it also prints how each node's thread spent the timed part
//! (from `/proc/<pid>/task/<tid>/schedstat`): running, waiting for a CPU (other processes had
//! it), and asleep (the node had nothing to do: it waited for its peer). A node asleep much
//! of the time while its peer runs is not CPU-bound: the two take turns. Last, the share of
//! the CPUs' time a hypervisor took for other guests meanwhile ([`shoal_benches::steal`]): a
//! run far slower than the others with much taken measured the VM's neighbours.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::{HandlerError, MeshCa, Message, Node};
use shoal_benches::steal::{CpuTimes, stolen_since};

/// Calls in flight at once.
const IN_FLIGHT: u64 = 256;
/// Background publishes between two yields in `background` mode (as the throughput rows).
const BACKGROUND_YIELD: u64 = 64;
/// Events per batch in `batch` mode.
const BATCH: u64 = 256;
const TOPIC: &str = "load.topic";
const SERVICE: &str = "load-sink";
const WAIT: Duration = Duration::from_secs(30);
/// The busy-polling window of option `busy-poll`.
const BUSY_POLL: Duration = Duration::from_millis(1);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What a loop of background calls calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// [`shoal::Node::publish_background`].
    Publish,
    /// `publish_with` with [`shoal::PublishOptions::background`].
    PublishFuture,
    /// [`shoal::Node::send_background`].
    Send,
}

/// Publishes `count` events (or sends `count` commands) in the background with `call` from
/// one loop, yielding every `every` calls, and waiting for room whenever the node
/// holds as many as it may (`Error::Backlog`: the message is sent again once the node
/// delivered half).
async fn in_background(
    node: &Node,
    count: u64,
    body: Bytes,
    (call, every): (Call, u64),
) -> std::result::Result<(), shoal::Error> {
    let mut published = 0;
    // Bounded in time (refusals may be many, while a slow receiver catches up) and count.
    let deadline = Instant::now() + WAIT;
    for i in 0..count.saturating_mul(1000) {
        if published == count {
            break;
        }
        if i % every == 0 {
            if Instant::now() > deadline {
                break;
            }
            tokio::task::yield_now().await;
        }
        let sent = match call {
            Call::Send => {
                let command = Message::command("sink", body.clone());
                node.send_background(SERVICE, command).map(drop)
            }
            Call::Publish => {
                let event = Message::event(TOPIC, body.clone());
                node.publish_background(event).map(drop)
            }
            Call::PublishFuture => {
                let event = Message::event(TOPIC, body.clone());
                let options = shoal::PublishOptions::background();
                node.publish_with(event, options).await.map(drop)
            }
        };
        match sent {
            Ok(()) => published += 1,
            Err(shoal::Error::Backlog { .. }) => node.wait_for_background_room().await,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "send".into());
    let count: u64 = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let (mut metrics, mut closed, mut keyed, mut multi_thread) = (false, false, false, false);
    let (mut busy_poll, mut in_flight, mut batch) = (None, IN_FLIGHT, BATCH);
    let (mut workers, mut window, mut payload) = (None, None, 64);
    let (mut handlers, mut backlog, mut every) = (None, None, BACKGROUND_YIELD);
    for option in args {
        if let Some(n) = option.strip_prefix("yield=") {
            every = n.parse::<u64>()?.max(1);
            continue;
        }
        if let Some(n) = option.strip_prefix("backlog=") {
            backlog = Some(n.parse()?);
            continue;
        }
        if let Some(n) = option.strip_prefix("handlers=") {
            handlers = Some(n.parse()?);
            continue;
        }
        if let Some(n) = option.strip_prefix("payload=") {
            payload = n.parse()?;
            continue;
        }
        if let Some(n) = option.strip_prefix("window=") {
            window = Some(n.parse()?);
            continue;
        }
        if let Some(n) = option.strip_prefix("workers=") {
            workers = Some(n.parse()?);
            multi_thread = true;
            continue;
        }
        if let Some(n) = option.strip_prefix("in-flight=") {
            in_flight = n.parse()?;
            continue;
        }
        if let Some(n) = option.strip_prefix("busy-poll=") {
            busy_poll = Some(Duration::from_micros(n.parse()?));
            continue;
        }
        if let Some(n) = option.strip_prefix("batch=") {
            batch = n.parse()?;
            continue;
        }
        match option.as_str() {
            "metrics" => metrics = true,
            "closed" => closed = true,
            "keyed" => keyed = true,
            "multi-thread" => multi_thread = true,
            "busy-poll" => busy_poll = Some(BUSY_POLL),
            other => {
                return Err(format!(
                    "unknown option {other}: metrics, closed, keyed, multi-thread, busy-poll, \
                     busy-poll=MICROS, in-flight=N, batch=N, workers=N, window=N, handlers=N, \
                     backlog=N, yield=N or payload=N"
                )
                .into());
            }
        }
    }
    let in_flight = if closed { 1 } else { in_flight.max(1) };
    // Records per-message metrics without serving them when asked (`metrics`); polls for
    // input for a millisecond after each activity when asked (`busy-poll`, or as long as
    // `busy-poll=N` says).
    let with_metrics = move |builder: shoal::NodeBuilder| {
        let builder = match window {
            Some(max) => builder.max_in_flight_per_peer(max),
            None => builder,
        };
        let builder = match handlers {
            Some(max) => builder.max_concurrent_handlers(max),
            None => builder,
        };
        let builder = match backlog {
            Some(max) => builder.max_background_publishes(max),
            None => builder,
        };
        let builder = match busy_poll {
            Some(window) => builder.busy_poll(window),
            None => builder,
        };
        if metrics {
            builder.metrics(shoal::MetricsConfig::record())
        } else {
            builder
        }
    };
    let modes = [
        "send",
        "publish",
        "batch",
        "request",
        "background",
        "background-future",
        "send-background",
    ];
    if !modes.contains(&mode.as_str()) {
        return Err(format!("unknown mode {mode}: one of {}", modes.join(", ")).into());
    }
    let ca = MeshCa::generate("fixed load")?;
    let handled = Arc::new(AtomicU64::new(0));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let receiver = {
        let (ca, handled) = (ca.clone(), Arc::clone(&handled));
        // Returns the receiver's stats, read as it stops.
        std::thread::spawn(move || -> Result<shoal::NodeStats> {
            let _ = tid_tx.send(ThreadTimes::own_tid());
            let runtime = runtime(multi_thread, workers)?;
            runtime.block_on(async move {
                let node = with_metrics(Node::builder(SERVICE))
                    .identity(ca.issue(SERVICE)?)
                    .trust(ca)
                    .start()
                    .await?;
                let counter = Arc::clone(&handled);
                node.handle("sink", move |msg: Message| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async move { Ok::<_, HandlerError>(msg.payload().clone()) }
                });
                let counter = Arc::clone(&handled);
                node.subscribe(TOPIC, move |_msg: Message| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async { Ok::<_, HandlerError>(()) }
                })
                .await?;
                addr_tx.send(node.local_addr())?;
                let _ = done_rx.await;
                let stats = node.stats();
                node.shutdown().await;
                Ok(stats)
            })
        })
    };
    let addr = addr_rx.recv()?;
    // The two node threads, measured over the timed part (current_thread runtimes only: a
    // multi-thread runtime works on threads of its own).
    let threads = [
        ("sender", ThreadTimes::own_tid()),
        ("receiver", tid_rx.recv()?),
    ];
    let threads = threads.map(|(name, tid)| (name, tid.filter(|_| !multi_thread)));
    let runtime = runtime(multi_thread, workers)?;
    let label = mode.clone();
    let all_handled = Arc::clone(&handled);
    let (took, stats, spent, stolen) = runtime.block_on(async move {
        let handled = all_handled;
        let node = with_metrics(Node::builder("load-source"))
            .identity(ca.issue("load-source")?)
            .trust(ca)
            .peer(addr)
            .start()
            .await?;
        node.wait_for_instances(SERVICE, 1, WAIT).await?;
        node.wait_for_subscribers(TOPIC, 1, WAIT).await?;
        let before = threads.map(|(_, tid)| tid.and_then(ThreadTimes::read));
        let cpu = CpuTimes::now();
        let started = Instant::now();
        let per_call = if mode == "batch" { batch } else { 1 };
        let calls = count.div_ceil(per_call);
        let mut tasks = Vec::new();
        let call = match mode.as_str() {
            "background" => Some(Call::Publish),
            "background-future" => Some(Call::PublishFuture),
            "send-background" => Some(Call::Send),
            _ => None,
        };
        let background = call.is_some();
        if let Some(call) = call {
            let (node, handled) = (node.clone(), Arc::clone(&handled));
            tasks.push(tokio::spawn(async move {
                let body = Bytes::from(vec![0xA5u8; payload]);
                in_background(&node, count, body, (call, every)).await?;
                // Done when the receiver handled them all.
                let deadline = Instant::now() + WAIT;
                while handled.load(Ordering::Relaxed) < count && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok::<_, shoal::Error>(())
            }));
        }
        let calls = if background { 0 } else { calls };
        for task in 0..in_flight.min(calls) {
            let (node, mode) = (node.clone(), mode.clone());
            let mine = (calls - task).div_ceil(in_flight);
            tasks.push(tokio::spawn(async move {
                let body = Bytes::from(vec![0xA5u8; payload]);
                let key = format!("customer-{task}");
                let with_key = |message: Message| {
                    if keyed {
                        message.with_key(key.as_str())
                    } else {
                        message
                    }
                };
                for _ in 0..mine {
                    match mode.as_str() {
                        "send" => {
                            node.send(SERVICE, with_key(Message::command("sink", body.clone())))
                                .await?;
                        }
                        "request" => {
                            let message = with_key(Message::command("sink", body.clone()));
                            node.request(SERVICE, message, WAIT).await?;
                        }
                        "publish" => {
                            node.publish(with_key(Message::event(TOPIC, body.clone())))
                                .await?;
                        }
                        _ => {
                            let events = (0..batch)
                                .map(|_| with_key(Message::event(TOPIC, body.clone())))
                                .collect();
                            node.publish_batch(events).await?;
                        }
                    }
                }
                Ok::<_, shoal::Error>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let took = started.elapsed();
        let after = threads.map(|(_, tid)| tid.and_then(ThreadTimes::read));
        let stolen = stolen_since(cpu.as_ref());
        let stats = node.stats();
        node.shutdown().await;
        let spent = std::array::from_fn::<_, 2, _>(|i| {
            let (name, _) = threads[i];
            before[i]
                .zip(after[i])
                .map(|(b, a)| describe(name, a.since(&b, took)))
        });
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((took, stats, spent, stolen))
    })?;
    let _ = done_tx.send(());
    let received = receiver.join().map_err(|_| "the receiver panicked")??;
    let handled = handled.load(Ordering::Relaxed);
    // A retry (an ack that did not come in time) shows as a duplicate on the receiver.
    println!(
        "{label}: {handled} messages handled in {took:?} ({:.0} per second); writes: {} by the \
         sender, {} by the receiver; retries: {}, duplicates: {}{}",
        handled as f64 / took.as_secs_f64(),
        stats.writes,
        received.writes,
        stats.retries,
        received.duplicates,
        if stats.background_refused > 0 {
            format!(
                "; background messages refused (backlog full): {}",
                stats.background_refused
            )
        } else {
            String::new()
        },
    );
    let spent: Vec<String> = spent.into_iter().flatten().collect();
    if !spent.is_empty() {
        println!(
            "threads (running / waiting for a CPU / asleep): {}",
            spent.join(", ")
        );
    }
    if let Some(stolen) = stolen {
        println!("CPUs: {stolen}");
    }
    Ok(())
}

/// How long a thread ran and waited for a CPU, from the kernel's scheduler statistics.
#[derive(Clone, Copy, Debug)]
struct ThreadTimes {
    running: Duration,
    waiting: Duration,
}

impl ThreadTimes {
    /// The calling thread's id, where `/proc` says (`/proc/thread-self` names
    /// `<pid>/task/<tid>`).
    fn own_tid() -> Option<u32> {
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        link.file_name()?.to_str()?.parse().ok()
    }

    /// Thread `tid`'s times so far (`schedstat`: nanoseconds running, nanoseconds waiting on
    /// a run queue, time slices). `None` where `/proc` does not have them.
    fn read(tid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let (running, waiting) = (fields.next()?.ok()?, fields.next()?.ok()?);
        Some(Self {
            running: Duration::from_nanos(running),
            waiting: Duration::from_nanos(waiting),
        })
    }

    /// The times between `earlier` and now, as shares of `wall`.
    fn since(&self, earlier: &Self, wall: Duration) -> [f64; 3] {
        let share = |d: Duration| d.as_secs_f64() / wall.as_secs_f64() * 100.0;
        let running = share(self.running.saturating_sub(earlier.running));
        let waiting = share(self.waiting.saturating_sub(earlier.waiting));
        [running, waiting, (100.0 - running - waiting).max(0.0)]
    }
}

/// `name 63 % / 2 % / 35 %`: a thread's shares of the timed part running, waiting for a
/// CPU and asleep.
fn describe(name: &str, [running, waiting, asleep]: [f64; 3]) -> String {
    format!("{name} {running:.0} % / {waiting:.0} % / {asleep:.0} %")
}

/// A node's runtime: `current_thread` like the benchmarks, or tokio's multi-thread one with
/// its default worker count (option `multi-thread`) or `workers` of them (option `workers=N`).
fn runtime(multi_thread: bool, workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    if multi_thread {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(workers) = workers {
            builder.worker_threads(workers);
        }
        builder.enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}
