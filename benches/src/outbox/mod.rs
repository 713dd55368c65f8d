//! The transactional outbox: what it costs over a direct `send`, on SQLite (polling) and on
//! PostgreSQL (polling, and tailing the transaction log), at 1, 10 and 100 messages per
//! transaction, and at a fixed offered rate.
//!
//! Same two threads and runtimes as every scenario ([`crate::runtime`]): the receiving node on
//! one; on the other, the sending node with its outbox relay and the "service" committing
//! transactions (each message with a domain row). SQLite: a file in a fresh temporary folder
//! (WAL, `synchronous = NORMAL`). PostgreSQL: a fresh schema in `SHOAL_BENCH_PG_URL`, else in
//! a throwaway cluster `scripts/pg-cluster.sh` starts for the run (`fsync = off`: commits
//! survive a crash of the server, not a power cut, as SQLite's settings; no PostgreSQL, and
//! its rows are skipped, saying why). Every latency is taken from when the transaction
//! committed (or the sends began) to when the receiver's handler ran, for every message.
//!
//! Rows (`k` = messages per transaction; `k` = 1 has no suffix):
//! * latency (`outbox-latency`): `shoal-send-handled[-k]` (`k` direct `send`s at once),
//!   `shoal-outbox-handled[-k]` (SQLite), `pg-polling-handled[-k]`, `pg-tailing-handled[-k]`:
//!   one transaction at a time, until all of its messages were handled.
//! * throughput (`outbox-throughput`): `<store>-txn-k` and `shoal-send-txn-k`: messages
//!   handled per second, transactions committed as fast as the relay keeps up (at most
//!   [`MAX_BACKLOG`] ahead); compared with `shoal-p2p-64` when that row ran too.
//! * offered rate (`outbox-at-rate`): `pg-tailing-at-1000`, `pg-polling-at-1000` and
//!   `shoal-send-handled-at-1000`: one message per transaction (or one `send`) every
//!   millisecond, latency from its intended time to its handler (target: tailing p99 within
//!   2x of the direct send's).

mod stores;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use shoal::{MeshCa, Message, Node};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use stores::{Kind, Postgres, Store};

use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::measure::open_loop::{RateSchedule, at_rate_name};
use crate::report::rate::RateReport;
use crate::report::{self, LatencyReport};
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::shoal_scenarios::{builder, shoal_err};
use crate::throughput::{Schedule, ThroughputReport};

/// Row: direct `send` until the handler ran.
pub const SEND_HANDLED: &str = "shoal-send-handled";
/// Row: SQLite outbox commit until the handler ran.
pub const OUTBOX_HANDLED: &str = "shoal-outbox-handled";
/// Messages per transaction in the latency and throughput rows.
pub const TXN_SIZES: [u64; 3] = [1, 10, 100];
/// Most messages committed but not yet handled in the throughput rows.
pub const MAX_BACKLOG: u64 = 20_000;
/// The row the throughput rows are compared with.
pub const DIRECT_ROW: &str = "shoal-p2p-64";
/// Offered rate of `outbox-at-rate`, messages per second.
pub const OFFERED_RATE: u64 = 1_000;
/// Most messages per row of the outbox latency and offered-rate rows (a PostgreSQL
/// transaction costs about a millisecond: `--count` 20,000 would make a run minutes long).
pub const MAX_OUTBOX_COUNT: u64 = 5_000;

const SERVICE: &str = "bench-ledger";
const TIMEOUT: Duration = Duration::from_secs(20);

/// What the receiving side tells the sending side.
struct Receiver {
    /// Messages handled so far.
    handled: Arc<AtomicU64>,
    /// `(sequence number, when its handler ran)` per handled message.
    signals: mpsc::UnboundedReceiver<(u64, Instant)>,
}

/// One run of the latency rows.
pub fn run_latency(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run_both(config, |ca, server, receiver, config| {
        Box::pin(async move { latency(ca, server, receiver, &config).await })
    })
}

/// One run of the throughput rows.
pub fn run_throughput(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    run_both(config, |ca, server, receiver, config| {
        Box::pin(async move { throughput(ca, server, receiver, &config).await })
    })
}

/// One run of the offered-rate rows (`OFFERED_RATE`, whatever `--rate` says).
pub fn run_at_rate(config: &BenchConfig, _rate: u64) -> BenchResult<Vec<RateReport>> {
    run_both(config, |ca, server, receiver, config| {
        Box::pin(async move { at_rate(ca, server, receiver, &config).await })
    })
}

type Boxed<T> = std::pin::Pin<Box<dyn Future<Output = BenchResult<T>>>>;

fn run_both<T: Send + 'static>(
    config: &BenchConfig,
    body: fn(MeshCa, SocketAddr, Receiver, BenchConfig) -> Boxed<T>,
) -> BenchResult<T> {
    let config = *config;
    let ca = MeshCa::generate("shoal outbox bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let handled = Arc::new(AtomicU64::new(0));
    let (signal, signals) = mpsc::unbounded_channel();
    let counter = Arc::clone(&handled);
    run_pair(
        "outbox",
        &config,
        move |announce, shutdown| serve(server_ca, counter, signal, announce, shutdown),
        move |addr| async move { body(ca, addr, Receiver { handled, signals }, config).await },
    )
}

async fn serve(
    ca: MeshCa,
    handled: Arc<AtomicU64>,
    signal: mpsc::UnboundedSender<(u64, Instant)>,
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
) -> BenchResult<()> {
    let node = builder(&ca, SERVICE)?.start().await.map_err(shoal_err)?;
    node.handle("credit", move |msg: Message| {
        handled.fetch_add(1, Ordering::Relaxed);
        let seq = msg
            .payload()
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(u64::MAX, u64::from_be_bytes);
        let _ = signal.send((seq, Instant::now()));
        async { Ok::<_, shoal::HandlerError>(()) }
    });
    announce.send(node.local_addr())?;
    shutdown.wait().await;
    node.shutdown().await;
    Ok(())
}

/// A payload of `size` bytes (at least 8) carrying `seq`.
fn payload(seq: u64, size: usize) -> Bytes {
    let mut bytes = BytesMut::with_capacity(size.max(8));
    bytes.put_u64(seq);
    bytes.resize(size.max(8), 0xA5);
    bytes.freeze()
}

/// The sending node: with `store`'s outbox relayed, or none (direct sends).
async fn sender(ca: &MeshCa, server: SocketAddr, store: Option<&Store>) -> BenchResult<Node> {
    let mut b = builder(ca, "bench-payments")?.peer(server);
    if let Some(store) = store {
        b = b.outbox(store.relayed(), shoal::outbox::RelayOptions::default());
    }
    let node = b.start().await.map_err(shoal_err)?;
    node.wait_for_instances(SERVICE, 1, TIMEOUT)
        .await
        .map_err(shoal_err)?;
    Ok(node)
}

/// The PostgreSQL of this run, or `None` after saying why its rows are skipped.
fn postgres() -> Option<Postgres> {
    Postgres::get()
        .inspect_err(|why| eprintln!("skipped: the outbox's PostgreSQL rows: {why}"))
        .ok()
}

/// The stores this run measures.
fn kinds(pg: Option<&Postgres>) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| *k == Kind::Sqlite || pg.is_some())
        .collect()
}

fn row_name(prefix: &str, what: &str, k: u64) -> String {
    if k == 1 {
        format!("{prefix}-{what}")
    } else {
        format!("{prefix}-{what}-{k}")
    }
}

/// Waits (bounded) for the handler of each of `seqs` (in any order), returning when each ran.
async fn handled_all(receiver: &mut Receiver, n: usize) -> BenchResult<Vec<Instant>> {
    let mut at = Vec::with_capacity(n);
    while at.len() < n {
        match tokio::time::timeout(TIMEOUT, receiver.signals.recv()).await {
            Ok(Some((_, when))) => at.push(when),
            Ok(None) => return Err(BenchError::msg("the receiving node stopped")),
            Err(_) => return Err(BenchError::msg("no message handled within 20 s")),
        }
    }
    Ok(at)
}

async fn latency(
    ca: MeshCa,
    server: SocketAddr,
    mut receiver: Receiver,
    config: &BenchConfig,
) -> BenchResult<Vec<LatencyReport>> {
    let pg = postgres();
    let url = pg.as_ref().map(|p| p.url.as_str());
    let messages = config.count.min(MAX_OUTBOX_COUNT);
    let mut rows = Vec::new();
    // Direct sends: k at once, each until its handler ran.
    let node = sender(&ca, server, None).await?;
    for k in TXN_SIZES {
        let mut histogram = report::new_histogram()?;
        let rounds = (config.warmup / k).max(1) + messages.div_ceil(k);
        for round in 0..rounds {
            let start = Instant::now();
            let sends: Vec<_> = (0..k)
                .map(|i| {
                    let msg = Message::command("credit", payload(i, config.payload));
                    tokio::spawn(node.send(SERVICE, msg))
                })
                .collect();
            let at = handled_all(&mut receiver, k as usize).await?;
            for send in sends {
                send.await.map_err(BenchError::msg)?.map_err(shoal_err)?;
            }
            if round >= (config.warmup / k).max(1) {
                at.iter()
                    .for_each(|t| report::record(&mut histogram, *t - start));
            }
        }
        let name = if k == 1 {
            SEND_HANDLED.to_owned()
        } else {
            format!("{SEND_HANDLED}-{k}")
        };
        rows.push(LatencyReport::from_histogram(name, &histogram));
    }
    node.shutdown().await;
    for kind in kinds(pg.as_ref()) {
        let mut store = Store::open(kind, url).await?;
        let node = sender(&ca, server, Some(&store)).await?;
        for k in TXN_SIZES {
            let mut histogram = report::new_histogram()?;
            let payloads: Vec<Bytes> = (0..k).map(|i| payload(i, config.payload)).collect();
            let warmup = (config.warmup / k).max(1);
            for round in 0..warmup + messages.div_ceil(k) {
                store.commit(SERVICE, &payloads).await?;
                let committed = Instant::now();
                let at = handled_all(&mut receiver, k as usize).await?;
                if round >= warmup {
                    at.iter().for_each(|t| {
                        report::record(&mut histogram, t.saturating_duration_since(committed))
                    });
                }
            }
            rows.push(LatencyReport::from_histogram(
                row_name(kind.prefix(), "handled", k),
                &histogram,
            ));
        }
        node.shutdown().await;
        store.remove(url).await;
    }
    Ok(rows)
}

async fn throughput(
    ca: MeshCa,
    server: SocketAddr,
    receiver: Receiver,
    config: &BenchConfig,
) -> BenchResult<Vec<ThroughputReport>> {
    let pg = postgres();
    let url = pg.as_ref().map(|p| p.url.as_str());
    let handled = receiver.handled;
    let mut rows = Vec::new();
    let mut committed = handled.load(Ordering::Relaxed);
    let node = sender(&ca, server, None).await?;
    for k in TXN_SIZES {
        let schedule = Schedule::starting_now(config.duration);
        let produce = async {
            while !schedule.over() {
                let sends: Vec<_> = (0..k)
                    .map(|i| {
                        node.send(
                            SERVICE,
                            Message::command("credit", payload(i, config.payload)),
                        )
                    })
                    .collect();
                for send in futures_util::future::join_all(sends).await {
                    send.map_err(shoal_err)?;
                }
                committed += k;
            }
            BenchResult::Ok(())
        };
        let (produced, window) = tokio::join!(produce, schedule.sample(&handled));
        produced?;
        rows.push(
            ThroughputReport::new(format!("shoal-send-txn-{k}"), config.payload, window)
                .compared_with(DIRECT_ROW),
        );
        drain(&handled, committed).await?;
    }
    node.shutdown().await;
    for kind in kinds(pg.as_ref()) {
        let mut store = Store::open(kind, url).await?;
        let node = sender(&ca, server, Some(&store)).await?;
        for k in TXN_SIZES {
            let payloads: Vec<Bytes> = (0..k).map(|i| payload(i, config.payload)).collect();
            let schedule = Schedule::starting_now(config.duration);
            let produce = async {
                while !schedule.over() {
                    if committed - handled.load(Ordering::Relaxed) + k > MAX_BACKLOG {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    store.commit(SERVICE, &payloads).await?;
                    committed += k;
                    // Let the relay and the node run between transactions.
                    tokio::task::yield_now().await;
                }
                BenchResult::Ok(())
            };
            let (produced, window) = tokio::join!(produce, schedule.sample(&handled));
            produced?;
            rows.push(
                ThroughputReport::new(format!("{}-txn-{k}", kind.prefix()), config.payload, window)
                    .compared_with(DIRECT_ROW),
            );
            drain(&handled, committed).await?;
        }
        node.shutdown().await;
        store.remove(url).await;
    }
    Ok(rows)
}

/// Waits (bounded) until `committed` messages were handled, before the next row.
async fn drain(handled: &AtomicU64, committed: u64) -> BenchResult<()> {
    let deadline = Instant::now() + TIMEOUT;
    while handled.load(Ordering::Relaxed) < committed {
        if Instant::now() > deadline {
            return Err(BenchError::msg("outbox did not drain within 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn at_rate(
    ca: MeshCa,
    server: SocketAddr,
    mut receiver: Receiver,
    config: &BenchConfig,
) -> BenchResult<Vec<RateReport>> {
    let Some(pg) = postgres() else {
        return Err(BenchError::skipped(
            "no PostgreSQL for the log-tailing rows",
        ));
    };
    let config = BenchConfig {
        count: config.count.min(MAX_OUTBOX_COUNT),
        ..*config
    };
    let mut rows = Vec::new();
    // Direct sends first: the floor of the same run.
    let node = sender(&ca, server, None).await?;
    let name = at_rate_name(SEND_HANDLED, OFFERED_RATE);
    rows.push(paced(&name, &config, &mut receiver, Target::Send(&node)).await?);
    node.shutdown().await;
    for kind in [Kind::PgTailing, Kind::PgPolling] {
        let mut store = Store::open(kind, Some(&pg.url)).await?;
        let node = sender(&ca, server, Some(&store)).await?;
        let name = at_rate_name(&format!("{}-handled", kind.prefix()), OFFERED_RATE);
        rows.push(paced(&name, &config, &mut receiver, Target::Outbox(&mut store)).await?);
        node.shutdown().await;
        store.remove(Some(&pg.url)).await;
    }
    Ok(rows)
}

/// Where an offered-rate row's messages go.
enum Target<'a> {
    /// A direct `send` from this node.
    Send(&'a Node),
    /// One transaction each, on the service's connection.
    Outbox(&'a mut Store),
}

impl Target<'_> {
    /// Issues message `seq`; returns when it left: the send called, the transaction
    /// committed.
    async fn issue(&mut self, seq: u64, size: usize) -> BenchResult<Instant> {
        let body = payload(seq, size);
        match self {
            Self::Send(node) => {
                let send = node.send(SERVICE, Message::command("credit", body));
                let left = Instant::now();
                tokio::spawn(async move {
                    if let Err(e) = send.await {
                        eprintln!("{SEND_HANDLED}: a send failed: {e}");
                    }
                });
                Ok(left)
            }
            Self::Outbox(store) => {
                store.commit(SERVICE, &[body]).await?;
                Ok(Instant::now())
            }
        }
    }
}

/// One offered-rate row: message `seq` is issued when due (one at a time: a transaction
/// that takes longer than the interval makes the next late, and counted so); its latency
/// runs from when it left (send called, transaction committed) to when its handler ran.
async fn paced(
    name: &str,
    config: &BenchConfig,
    receiver: &mut Receiver,
    mut target: Target<'_>,
) -> BenchResult<RateReport> {
    let schedule = RateSchedule::starting_now(config, OFFERED_RATE)?;
    let total = schedule.total();
    let histogram = RefCell::new(report::new_histogram()?);
    let left: RefCell<HashMap<u64, Instant>> = RefCell::default();
    let ran: RefCell<HashMap<u64, Instant>> = RefCell::default();
    // Records message `seq` once both its times are known (its handler may run first).
    let record = |seq: u64| {
        let (mut left, mut ran) = (left.borrow_mut(), ran.borrow_mut());
        if left.contains_key(&seq) && ran.contains_key(&seq) {
            let (from, to) = (left.remove(&seq), ran.remove(&seq));
            if let (Some(from), Some(to)) = (from, to)
                && schedule.measured(seq)
            {
                report::record(
                    &mut histogram.borrow_mut(),
                    to.saturating_duration_since(from),
                );
            }
        }
    };
    let issue_all = async {
        let mut late = 0;
        for seq in 0..total {
            if schedule.wait_turn(seq).await && schedule.measured(seq) {
                late += 1;
            }
            let at = target.issue(seq, config.payload).await?;
            left.borrow_mut().insert(seq, at);
            record(seq);
        }
        BenchResult::Ok(late)
    };
    let receive_all = async {
        for _ in 0..total {
            match tokio::time::timeout(TIMEOUT, receiver.signals.recv()).await {
                Ok(Some((seq, at))) => {
                    ran.borrow_mut().insert(seq, at);
                    record(seq);
                }
                Ok(None) => return Err(BenchError::msg("the receiving node stopped")),
                Err(_) => {
                    return Err(BenchError::msg(format!(
                        "{name}: a message not handled within 20 s"
                    )));
                }
            }
        }
        BenchResult::Ok(())
    };
    let (late, received) = tokio::join!(issue_all, receive_all);
    let late = late?;
    received?;
    let latency = LatencyReport::from_histogram(name, &histogram.borrow());
    Ok(RateReport::new(latency, OFFERED_RATE, config.count, late))
}
