//! ZeroMQ throughput: PUB/SUB and PUSH/PULL, messages counted where they arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::time::{Duration, Instant};

use ::zmq::{Context, Message, Socket};

use super::{
    Ctl, Endpoints, IO_TIMEOUT, MAX_LOOPS, POLL_INTERVAL, answer_hello, await_subscribers, bind,
    bind_publisher, connect, connect_subscriber, on_topic, receive_endpoints, run_threads, socket,
    would_block,
};
use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::pubsub_throughput::quinn_name;
use crate::runtime;
use crate::throughput::{Schedule, ThroughputReport, Window};

/// Payload sizes of the throughput rows (`--payload` does not apply here).
pub const THROUGHPUT_PAYLOADS: [usize; 3] = [64, 1024, 65536];

/// Sends between two looks at the clock (and yields to the window's timer).
const SEND_BATCH: u64 = 64;
/// Receiving loops look at the stop flag once every this many messages.
const CHECK_EVERY: u64 = 1024;
/// After the window: how often the sender looks whether the receiver is still catching up.
const SETTLE_STEP: Duration = Duration::from_millis(10);
/// After the window: a PUB/SUB receiver whose count has not moved for this long has received
/// all it will (the rest was dropped at the high-water mark).
const SETTLE_QUIET: Duration = Duration::from_millis(50);
/// After the window: longest the sender waits for the receiver to catch up.
const SETTLE_MAX: Duration = Duration::from_secs(2);

/// The ZeroMQ pattern of a throughput row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// PUB -> SUB: PUB drops what exceeds its high-water mark.
    PubSub,
    /// PUSH -> PULL: PUSH waits at its high-water mark.
    PushPull,
}

/// One run of [`super::THROUGHPUT_NAME`]: for each of [`THROUGHPUT_PAYLOADS`], a PUB/SUB row
/// then a PUSH/PULL row, each compared with raw quinn's batched row of the same payload.
pub fn run_throughput(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    let mut rows = Vec::new();
    for payload in THROUGHPUT_PAYLOADS {
        for pattern in [Pattern::PubSub, Pattern::PushPull] {
            rows.push(run_row(config, payload, pattern)?);
        }
    }
    Ok(rows)
}

fn run_row(
    config: &BenchConfig,
    payload: usize,
    pattern: Pattern,
) -> BenchResult<ThroughputReport> {
    let received = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&received);
    let duration = config.duration;
    let body = vec![0xA5u8; payload];
    let (name, (window, undelivered)) = match pattern {
        Pattern::PubSub => {
            let name = format!("zmq-pubsub-{payload}");
            let (tx, rx) = mpsc::sync_channel::<Endpoints>(1);
            let message = on_topic(&body);
            let result = run_threads(
                &name,
                config,
                move |ctl| {
                    let endpoints = receive_endpoints(&rx, ctl)?;
                    subscriber(&endpoints, &counted, ctl)
                },
                move |ctl| publisher(&tx, &message, duration, &received, ctl),
            )?;
            (name, result)
        }
        Pattern::PushPull => {
            let name = format!("zmq-p2p-{payload}");
            let (tx, rx) = mpsc::sync_channel::<String>(1);
            let result = run_threads(
                &name,
                config,
                move |ctl| puller(&tx, &counted, ctl),
                move |ctl| {
                    let endpoint = receive_endpoints(&rx, ctl)?;
                    pusher(&endpoint, &body, duration, &received, ctl)
                },
            )?;
            (name, result)
        }
    };
    Ok(ThroughputReport::new(name, payload, window)
        .with_dropped(undelivered)
        .compared_with(quinn_name(payload)))
}

/// SUB: connects, then counts what arrives (answering hellos) until told to stop.
fn subscriber(endpoints: &Endpoints, received: &AtomicU64, ctl: &Ctl) -> BenchResult<()> {
    let ctx = Context::new();
    let (sub, acks) = connect_subscriber(&ctx, endpoints)?;
    count_arrivals(&sub, Some(&acks), received, ctl)
}

/// PULL: binds, announces, then counts what arrives until told to stop.
fn puller(announce: &SyncSender<String>, received: &AtomicU64, ctl: &Ctl) -> BenchResult<()> {
    let ctx = Context::new();
    let pull = socket(&ctx, ::zmq::PULL, POLL_INTERVAL)?;
    announce
        .send(bind(&pull)?)
        .map_err(|_| BenchError::msg("sending side is gone"))?;
    count_arrivals(&pull, None, received, ctl)
}

/// Adds every message arriving on `socket` to `received`, except hellos, which are answered
/// on `hello_acks`. Returns when told to stop; bounded by the run's time limit.
fn count_arrivals(
    socket: &Socket,
    hello_acks: Option<&Socket>,
    received: &AtomicU64,
    ctl: &Ctl,
) -> BenchResult<()> {
    let mut message = Message::new();
    for i in 0..MAX_LOOPS {
        if i % CHECK_EVERY == 0 {
            if ctl.stopped() {
                return Ok(());
            }
            ctl.check("zmq receiver")?;
        }
        match socket.recv(&mut message, 0) {
            Ok(()) => {
                if let Some(acks) = hello_acks
                    && answer_hello(&message, acks, 0)?
                {
                    continue;
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if would_block(&e) => {
                if ctl.stopped() {
                    return Ok(());
                }
                ctl.check("zmq receiver")?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// PUB: binds, waits for the subscriber, then publishes `message` for the window.
fn publisher(
    announce: &SyncSender<Endpoints>,
    message: &[u8],
    duration: Duration,
    received: &AtomicU64,
    ctl: &Ctl,
) -> BenchResult<(Window, u64)> {
    let ctx = Context::new();
    let (publisher, acks, endpoints) = bind_publisher(&ctx)?;
    announce
        .send(endpoints)
        .map_err(|_| BenchError::msg("subscriber side is gone"))?;
    await_subscribers(&publisher, &acks, 1)?;
    let (window, sent) = send_for_window(&publisher, message, duration, received, ctl)?;
    Ok((window, undelivered(sent, received, false)))
}

/// PUSH: connects (ZMQ_IMMEDIATE), then pushes `message` for the window.
fn pusher(
    endpoint: &str,
    message: &[u8],
    duration: Duration,
    received: &AtomicU64,
    ctl: &Ctl,
) -> BenchResult<(Window, u64)> {
    let ctx = Context::new();
    let push = socket(&ctx, ::zmq::PUSH, IO_TIMEOUT)?;
    push.set_immediate(true)?;
    connect(&push, endpoint)?;
    let (window, sent) = send_for_window(&push, message, duration, received, ctl)?;
    Ok((window, undelivered(sent, received, true)))
}

/// Sends `message` on `socket` as fast as it takes it, without blocking (a PUSH at its
/// high-water mark says "try again": then it waits up to 1 ms for room), from now until the
/// end of a [`Schedule`] of `duration`, while the schedule samples `received` over its
/// window. Returns the window and the messages sent (whole run).
fn send_for_window(
    socket: &Socket,
    message: &[u8],
    duration: Duration,
    received: &AtomicU64,
    ctl: &Ctl,
) -> BenchResult<(Window, u64)> {
    runtime::build()?.block_on(async {
        let schedule = Schedule::starting_now(duration);
        let send = async {
            let mut sent = 0u64;
            for i in 0..MAX_LOOPS {
                if i % SEND_BATCH == 0 {
                    if schedule.over() {
                        break;
                    }
                    ctl.check("zmq sender")?;
                    // Lets the window's timer run: sends never wait long enough for it.
                    tokio::task::yield_now().await;
                }
                match socket.send(message, ::zmq::DONTWAIT) {
                    Ok(()) => sent += 1,
                    Err(e) if would_block(&e) => {
                        socket.poll(::zmq::POLLOUT, 1)?;
                    }
                    Err(e) => return Err(BenchError::from(e)),
                }
            }
            Ok(sent)
        };
        let (sent, window) = tokio::join!(send, schedule.sample(received));
        Ok((window, sent?))
    })
}

/// Once the sender has stopped: waits until the receiver has counted all `sent` messages
/// (at most [`SETTLE_MAX`]; without `lossless`, also stops once its count has not moved for
/// [`SETTLE_QUIET`]), and returns how many were sent but never delivered.
fn undelivered(sent: u64, received: &AtomicU64, lossless: bool) -> u64 {
    let start = Instant::now();
    let mut last = received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    let steps = SETTLE_MAX.as_millis() / SETTLE_STEP.as_millis();
    for _ in 0..steps {
        if last >= sent || start.elapsed() >= SETTLE_MAX {
            break;
        }
        std::thread::sleep(SETTLE_STEP);
        let now = received.load(Ordering::Relaxed);
        if now != last {
            quiet_since = Instant::now();
            last = now;
        } else if !lossless && quiet_since.elapsed() >= SETTLE_QUIET {
            break;
        }
    }
    sent.saturating_sub(last)
}
