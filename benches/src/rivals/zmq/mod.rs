//! ZeroMQ, the brokerless messaging library users would pick instead of Shoal: **libzmq** (the
//! C++ library, Debian's `libzmq3-dev` 4.3.4, linked dynamically through rust-zmq 0.9.2 and
//! pkg-config), measured beside Shoal and the raw floors in the same run.
//!
//! # Why this binding
//!
//! libzmq is what ZeroMQ users deploy and the performance reference, so it is measured rather
//! than the pure-Rust `zeromq` crate. rust-zmq 0.10 always compiles a vendored libzmq from
//! C++ sources; 0.9.2, the version before, links the system library found with pkg-config.
//! Install it with `apt-get install -y libzmq3-dev pkg-config`.
//!
//! # Setting
//!
//! Everything runs over `tcp://127.0.0.1:<port>` (no multicast transport, no discovery:
//! ZeroMQ has none). libzmq's API is blocking, so each side is a plain OS thread pinned as
//! `--placement` says (`run_threads`), not a tokio runtime. Each side has its own
//! [`Context`], like two processes, with the default single I/O thread; the context is
//! created on the pinned thread, so its I/O thread inherits that CPU (like a process started
//! under `taskset`). Low-latency configuration, as libzmq's documentation describes it:
//! `TCP_NODELAY` is always set by libzmq on TCP connections; `ZMQ_IMMEDIATE` on the
//! connecting round-robin sockets (REQ, PUSH) so nothing is queued on an unfinished
//! connection; high-water marks at their default of 1000 messages (they matter only to the
//! throughput rows); linger 0 so closing never waits. Every blocking call has a timeout and
//! every loop a bound in count and in time (`--run-timeout`).
//!
//! # Scenarios and rows
//!
//! * [`REQUEST_NAME`] (round trip): REQ sends `--payload` bytes, REP echoes the received
//!   message; row `zmq-request`.
//! * [`PUBLISH_NAME`] (one way): PUB to 1 and 8 SUB sockets subscribed to the topic prefix
//!   [`crate::pubsub::TOPIC`], measured exactly as [`crate::pubsub`] measures Shoal (shared
//!   clock, stamp in the payload, closed loop); every subscriber acks on its own PUSH socket
//!   to the publisher's PULL, and that way back is not timed. Rows `zmq-publish-1`,
//!   `zmq-publish-8`, `zmq-publish-8-last`.
//! * [`THROUGHPUT_NAME`] (throughput) for 64 B, 1 KiB and 64 KiB: `zmq-pubsub-<size>`, PUB to
//!   one SUB, counted as **delivered at the subscriber** (PUB silently drops what exceeds its
//!   high-water mark; those appear in the `dropped` column), and `zmq-p2p-<size>`, PUSH to
//!   PULL (PUSH blocks at its high-water mark, nothing is lost); each compared with
//!   `quinn-batch-<size>`.
//!
//! A PUB socket drops messages to a subscriber whose connection or subscription is not in
//! place yet ("slow joiner"), so publishers first send hello messages until every subscriber
//! has answered one (`await_subscribers`).

mod latency;
mod throughput;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::zmq::{Context, Socket, SocketType};

use crate::error::{BenchError, BenchResult};
use crate::pubsub::TOPIC;
use crate::{BenchConfig, affinity};

pub use latency::{PUBLISH_FAN_OUTS, run_publish, run_request};
pub use throughput::{THROUGHPUT_PAYLOADS, run_throughput};

/// Scenario (and row) name of the REQ/REP round trip.
pub const REQUEST_NAME: &str = "zmq-request";
/// Scenario name of the PUB/SUB one-way latency rows (`zmq-publish-1`, `zmq-publish-8`, ...).
pub const PUBLISH_NAME: &str = "zmq-publish";
/// Scenario name of the PUB/SUB and PUSH/PULL throughput rows.
pub const THROUGHPUT_NAME: &str = "zmq-throughput";

/// How [`REQUEST_NAME`] is configured (printed with the results).
pub const REQUEST_SETUP: &str = "libzmq 4.3.4 (Debian system library, rust-zmq 0.9.2), \
    REQ/REP over tcp://127.0.0.1, TCP_NODELAY (always set by libzmq), ZMQ_IMMEDIATE on REQ, \
    one context per side with 1 I/O thread (default) pinned with its side, linger 0, \
    blocking calls on pinned OS threads";
/// How [`PUBLISH_NAME`] is configured (printed with the results).
pub const PUBLISH_SETUP: &str = "libzmq 4.3.4 (Debian system library, rust-zmq 0.9.2), \
    PUB -> 1 or 8 SUB sockets (topic prefix filter) over tcp://127.0.0.1, acks on PUSH -> \
    PULL, TCP_NODELAY (always set by libzmq), default HWMs (1000), one context per side \
    with 1 I/O thread pinned with its side, all subscribers on one thread (zmq_poll)";
/// How [`THROUGHPUT_NAME`] is configured (printed with the results).
pub const THROUGHPUT_SETUP: &str = "libzmq 4.3.4 (Debian system library, rust-zmq 0.9.2), \
    over tcp://127.0.0.1: PUB -> SUB (PUB drops at its HWM; counted at the subscriber) and \
    PUSH -> PULL (ZMQ_IMMEDIATE; PUSH waits at its HWM), default SNDHWM/RCVHWM (1000), \
    non-blocking sends, one context per side with 1 I/O thread pinned with its side";

/// Where every socket binds: loopback, a port the system picks.
const BIND_ANY: &str = "tcp://127.0.0.1:*";
/// What every endpoint a socket connects to must start with.
const LOOPBACK_PREFIX: &str = "tcp://127.0.0.1:";
/// Longest a receiving loop blocks before it looks at the stop flag and the deadline again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longest any single send or receive of the measuring side waits (loopback answers in
/// microseconds; this only turns a stuck peer into an error).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on the iterations of every loop (the binding bound is the run's time limit).
const MAX_LOOPS: u64 = 1_000_000_000;
/// Pause between two hello messages while waiting for subscribers.
const HELLO_INTERVAL: Duration = Duration::from_millis(5);
/// How long publishers wait for their subscribers to answer a hello.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The sequence number that marks a hello message (and its ack).
const HELLO: u64 = u64::MAX;
/// Bytes of an ack: the acknowledged sequence number, then the subscriber's index.
const ACK_LEN: usize = 16;

/// What both threads of a run share: the run's deadline and the flag that tells the
/// receiving side to stop once the measuring side is done.
#[derive(Debug, Clone)]
struct Ctl {
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl Ctl {
    /// Whether the measuring side is done.
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// An error once the run's time limit has passed.
    fn check(&self, what: &str) -> BenchResult<()> {
        if Instant::now() >= self.deadline {
            Err(BenchError::msg(format!("{what}: hit the run's time limit")))
        } else {
            Ok(())
        }
    }

    /// Time left until the deadline.
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Runs one scenario run as two plain OS threads, pinned as `config.placement` says: the
/// receiving side `server` on `"{label}-server"`, the measuring side `client` on
/// `"{label}-client"`. Returns what `client` returns. When `client` returns, `server` is
/// told to stop (its loops watch [`Ctl::stopped`]) and both threads are joined; both are
/// bounded by `config.run_timeout` through [`Ctl::check`] and socket timeouts. Whichever
/// side binds hands its endpoints to the other over a channel the caller makes
/// ([`receive_endpoints`]). A client error wins over a server error.
fn run_threads<T: Send + 'static>(
    label: &str,
    config: &BenchConfig,
    server: impl FnOnce(&Ctl) -> BenchResult<()> + Send + 'static,
    client: impl FnOnce(&Ctl) -> BenchResult<T> + Send + 'static,
) -> BenchResult<T> {
    let (server_cpu, client_cpu) = config.placement.cpus()?;
    let ctl = Ctl {
        stop: Arc::new(AtomicBool::new(false)),
        deadline: Instant::now() + config.run_timeout,
    };
    let server_thread = spawn_pinned(format!("{label}-server"), server_cpu, ctl.clone(), server)?;
    let client_result = spawn_pinned(format!("{label}-client"), client_cpu, ctl.clone(), client)
        .and_then(join)
        .map_err(|e| e.context(format!("{label} client")));
    ctl.stop.store(true, Ordering::Release);
    let server_result = join(server_thread).map_err(|e| e.context(format!("{label} server")));
    let value = client_result?;
    server_result?;
    Ok(value)
}

fn spawn_pinned<T: Send + 'static>(
    name: String,
    cpu: Option<usize>,
    ctl: Ctl,
    work: impl FnOnce(&Ctl) -> BenchResult<T> + Send + 'static,
) -> BenchResult<JoinHandle<BenchResult<T>>> {
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        if let Some(cpu) = cpu {
            affinity::pin_current_thread(cpu)?;
        }
        work(&ctl)
    })?;
    Ok(handle)
}

fn join<T>(handle: JoinHandle<BenchResult<T>>) -> BenchResult<T> {
    handle
        .join()
        .map_err(|_| BenchError::msg("thread panicked"))?
}

/// Waits (until the deadline) for the endpoints the other side bound.
fn receive_endpoints<I>(rx: &Receiver<I>, ctl: &Ctl) -> BenchResult<I> {
    rx.recv_timeout(ctl.remaining()).map_err(|e| match e {
        RecvTimeoutError::Timeout => BenchError::msg("the other side did not bind in time"),
        RecvTimeoutError::Disconnected => {
            BenchError::msg("the other side ended before binding its sockets")
        }
    })
}

/// Milliseconds for a libzmq timeout option.
fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// A new socket of `kind` on `ctx`: linger 0 (closing never waits for unsent messages) and
/// send/receive timeouts of `timeout`, so no call blocks longer.
fn socket(ctx: &Context, kind: SocketType, timeout: Duration) -> BenchResult<Socket> {
    let what = |e: ::zmq::Error| BenchError::from(e).context(format!("zmq {kind:?} socket"));
    let socket = ctx.socket(kind).map_err(what)?;
    socket.set_linger(0).map_err(what)?;
    socket.set_rcvtimeo(millis(timeout)).map_err(what)?;
    socket.set_sndtimeo(millis(timeout)).map_err(what)?;
    Ok(socket)
}

/// Binds `socket` to a free port on 127.0.0.1 and returns its endpoint.
fn bind(socket: &Socket) -> BenchResult<String> {
    socket
        .bind(BIND_ANY)
        .map_err(|e| BenchError::from(e).context(format!("zmq failed to bind {BIND_ANY}")))?;
    socket
        .get_last_endpoint()?
        .map_err(|_| BenchError::msg("zmq bound endpoint is not UTF-8"))
}

/// Connects `socket` to `endpoint`, which must be on 127.0.0.1.
fn connect(socket: &Socket, endpoint: &str) -> BenchResult<()> {
    if !endpoint.starts_with(LOOPBACK_PREFIX) {
        return Err(BenchError::msg(format!(
            "refusing to connect to {endpoint}: not on 127.0.0.1"
        )));
    }
    socket
        .connect(endpoint)
        .map_err(|e| BenchError::from(e).context(format!("zmq failed to connect to {endpoint}")))
}

/// Turns the error of a blocking libzmq call into a clear one: libzmq reports a timeout as
/// `EAGAIN` ("Resource temporarily unavailable").
fn io_err(what: &'static str) -> impl Fn(::zmq::Error) -> BenchError {
    move |e| {
        if would_block(&e) {
            BenchError::msg(format!("{what}: timed out"))
        } else {
            BenchError::from(e).context(what)
        }
    }
}

/// What a publishing side bound: its PUB socket, and the PULL socket acks come back to.
#[derive(Debug, Clone)]
struct Endpoints {
    publisher: String,
    acks: String,
}

/// The publishing side's sockets on `ctx`, bound: `(PUB, PULL for acks, their endpoints)`.
fn bind_publisher(ctx: &Context) -> BenchResult<(Socket, Socket, Endpoints)> {
    let publisher = socket(ctx, ::zmq::PUB, IO_TIMEOUT)?;
    let acks = socket(ctx, ::zmq::PULL, IO_TIMEOUT)?;
    let endpoints = Endpoints {
        publisher: bind(&publisher)?,
        acks: bind(&acks)?,
    };
    Ok((publisher, acks, endpoints))
}

/// One subscriber's sockets on `ctx`, connected to `endpoints`: `(SUB subscribed to
/// [`TOPIC`], PUSH for acks)`. Both time out after [`POLL_INTERVAL`], so the subscribing
/// loop keeps looking at the stop flag (with one ack in flight at a time, an ack never has
/// to wait for room).
fn connect_subscriber(ctx: &Context, endpoints: &Endpoints) -> BenchResult<(Socket, Socket)> {
    let sub = socket(ctx, ::zmq::SUB, POLL_INTERVAL)?;
    sub.set_subscribe(TOPIC.as_bytes())?;
    connect(&sub, &endpoints.publisher)?;
    let acks = socket(ctx, ::zmq::PUSH, POLL_INTERVAL)?;
    connect(&acks, &endpoints.acks)?;
    Ok((sub, acks))
}

/// A message on [`TOPIC`] whose body is `body`.
fn on_topic(body: &[u8]) -> Vec<u8> {
    [TOPIC.as_bytes(), body].concat()
}

/// The body of a message published on [`TOPIC`] (empty if it is shorter than the topic).
fn body(message: &[u8]) -> &[u8] {
    message.get(TOPIC.len()..).unwrap_or_default()
}

/// Whether a message body is a hello (just the [`HELLO`] marker).
fn is_hello(body: &[u8]) -> bool {
    body == HELLO.to_le_bytes()
}

/// The ack subscriber `index` sends for message `seq`.
fn ack(seq: u64, index: usize) -> [u8; ACK_LEN] {
    let mut out = [0; ACK_LEN];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..].copy_from_slice(&(index as u64).to_le_bytes());
    out
}

/// `(seq, subscriber index)` of an ack.
fn parse_ack(buf: &[u8]) -> Option<(u64, usize)> {
    if buf.len() != ACK_LEN {
        return None;
    }
    let seq = u64::from_le_bytes(buf[..8].try_into().ok()?);
    let index = u64::from_le_bytes(buf[8..].try_into().ok()?);
    Some((seq, usize::try_from(index).ok()?))
}

/// `true` if `e` is libzmq's "try again" (a timeout, or a non-blocking call that would block).
fn would_block(e: &::zmq::Error) -> bool {
    *e == ::zmq::Error::EAGAIN
}

/// The publishing side of the slow-joiner handshake: publishes a hello on `publisher` every
/// [`HELLO_INTERVAL`] until each of `subscribers` has acked one on `acks` (a PULL socket
/// they push to). After this, every subscriber's subscription is in place and nothing more
/// is dropped for want of one. Hellos and acks still in flight afterwards are recognisable
/// and ignored.
fn await_subscribers(publisher: &Socket, acks: &Socket, subscribers: usize) -> BenchResult<()> {
    let hello = on_topic(&HELLO.to_le_bytes());
    let mut answered = vec![false; subscribers];
    let mut buf = [0u8; ACK_LEN];
    let rounds = SETUP_TIMEOUT.as_millis() / HELLO_INTERVAL.as_millis();
    for _ in 0..rounds {
        publisher.send(&hello[..], ::zmq::DONTWAIT)?;
        if acks.poll(::zmq::POLLIN, i64::from(millis(HELLO_INTERVAL)))? == 0 {
            continue;
        }
        for _ in 0..subscribers * 64 {
            match acks.recv_into(&mut buf, ::zmq::DONTWAIT) {
                Ok(len) => {
                    if let Some((HELLO, i)) = buf.get(..len).and_then(parse_ack)
                        && let Some(slot) = answered.get_mut(i)
                    {
                        *slot = true;
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if answered.iter().all(|&a| a) {
            return Ok(());
        }
    }
    let missing = answered.iter().filter(|&&a| !a).count();
    Err(BenchError::msg(format!(
        "{missing} of {subscribers} zmq subscribers did not answer within {SETUP_TIMEOUT:?}"
    )))
}

/// The subscribing side of the handshake: if `message` is a hello, acks it as subscriber
/// `index` on `acks` (without blocking: an ack lost to a full queue is re-sent for the next
/// hello) and returns `true`.
fn answer_hello(message: &[u8], acks: &Socket, index: usize) -> BenchResult<bool> {
    if !is_hello(body(message)) {
        return Ok(false);
    }
    match acks.send(&ack(HELLO, index)[..], ::zmq::DONTWAIT) {
        Ok(()) => Ok(true),
        Err(e) if would_block(&e) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
