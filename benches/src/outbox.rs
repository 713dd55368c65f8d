//! The transactional outbox: what it costs over a direct `send`, and how many messages per
//! second go through it, committed in transactions of 1, 10 and 100 messages.
//!
//! Same two threads and runtimes as every scenario ([`crate::runtime`]): the receiving node on
//! one, the sending node, its outbox relay and the "service" committing transactions on the
//! other. The outbox is a SQLite file in a fresh temporary folder (WAL, `synchronous =
//! NORMAL`, as [`SqliteOutbox::connect`] sets up), removed after the run.
//!
//! Latency rows (round trip table; both to the moment the receiver's handler ran, which
//! signals the sending thread through a channel):
//! * `shoal-send-handled` — `send` called, until the handler ran (the ack is then awaited
//!   before the next message, untimed).
//! * `shoal-outbox-handled` — a transaction with one domain row and one enqueued message
//!   begun, committed with [`SqliteOutbox::commit`] (which wakes the relay), until the
//!   handler ran.
//!
//! Throughput rows (`shoal-outbox-txn-<k>`): transactions of `k` messages (each with a domain
//! row) committed as fast as the relay keeps up (at most [`MAX_BACKLOG`] messages ahead);
//! counts messages **handled** by the receiver per second, compared with `shoal-p2p-64`
//! (direct `send`s, many in flight) when that row ran too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::outbox::rusqlite::{Connection, params};
use shoal::outbox::{Destination, OutboxStore, RelayOptions, SqliteOutbox};
use shoal::{MeshCa, Message, Node};
use tokio::sync::mpsc;

use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::report::{self, LatencyReport};
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::shoal_scenarios::{builder, shoal_err};
use crate::throughput::{Schedule, ThroughputReport};

/// Row: direct `send` until the handler ran.
pub const SEND_HANDLED: &str = "shoal-send-handled";
/// Row: outbox commit until the handler ran.
pub const OUTBOX_HANDLED: &str = "shoal-outbox-handled";
/// Messages per transaction in the throughput rows.
pub const TXN_SIZES: [u64; 3] = [1, 10, 100];
/// Most messages committed but not yet handled in the throughput rows.
pub const MAX_BACKLOG: u64 = 20_000;
/// The row the throughput rows are compared with.
pub const DIRECT_ROW: &str = "shoal-p2p-64";

const SERVICE: &str = "bench-ledger";
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the receiving side tells the sending side.
struct Receiver {
    /// Messages handled so far.
    handled: Arc<AtomicU64>,
    /// One `()` per handled message.
    signals: mpsc::UnboundedReceiver<()>,
}

/// One run of the latency rows.
pub fn run_latency(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run_both(config, |sender, receiver, config| {
        Box::pin(async move { sender.latency(receiver, &config).await })
    })
}

/// One run of the throughput rows.
pub fn run_throughput(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    run_both(config, |sender, receiver, config| {
        Box::pin(async move { sender.throughput(receiver, &config).await })
    })
}

type Boxed<T> = std::pin::Pin<Box<dyn Future<Output = BenchResult<T>>>>;

fn run_both<T: Send + 'static>(
    config: &BenchConfig,
    body: fn(Sender, Receiver, BenchConfig) -> Boxed<T>,
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
        move |addr| async move {
            let sender = Sender::start(ca, addr).await?;
            let receiver = Receiver { handled, signals };
            let result = body(sender.clone(), receiver, config).await;
            sender.node.shutdown().await;
            result
        },
    )
}

async fn serve(
    ca: MeshCa,
    handled: Arc<AtomicU64>,
    signal: mpsc::UnboundedSender<()>,
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
) -> BenchResult<()> {
    let node = builder(&ca, SERVICE)?.start().await.map_err(shoal_err)?;
    node.handle("credit", move |_msg: Message| {
        handled.fetch_add(1, Ordering::Relaxed);
        let _ = signal.send(());
        async { Ok::<_, shoal::HandlerError>(()) }
    });
    announce.send(node.local_addr())?;
    shutdown.wait().await;
    node.shutdown().await;
    Ok(())
}

/// The sending service: a node with an outbox relay, and its own connection to the database.
#[derive(Clone)]
struct Sender {
    node: Node,
    outbox: Arc<SqliteOutbox>,
    /// Keeps the database's folder until the last clone is gone.
    _dir: Arc<TempDir>,
}

impl Sender {
    async fn start(ca: MeshCa, server: SocketAddr) -> BenchResult<Self> {
        let dir = Arc::new(TempDir::new()?);
        let outbox = Arc::new(SqliteOutbox::open(dir.0.join("sender.db")).map_err(outbox_err)?);
        let node = builder(&ca, "bench-payments")?
            .peer(server)
            .outbox(
                Arc::clone(&outbox) as Arc<dyn OutboxStore>,
                RelayOptions::default(),
            )
            .start()
            .await
            .map_err(shoal_err)?;
        node.wait_for_instances(SERVICE, 1, TIMEOUT)
            .await
            .map_err(shoal_err)?;
        Ok(Self {
            node,
            outbox,
            _dir: dir,
        })
    }

    fn connection(&self) -> BenchResult<Connection> {
        let conn = self.outbox.connect().map_err(outbox_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, amount INTEGER)",
        )
        .map_err(sql_err)?;
        Ok(conn)
    }

    /// Commits one transaction of `k` payments, each with its message.
    fn commit(&self, conn: &mut Connection, k: u64, payload: &Bytes) -> BenchResult<()> {
        let tx = conn.transaction().map_err(sql_err)?;
        for _ in 0..k {
            tx.execute("INSERT INTO payments (amount) VALUES (?1)", params![42])
                .map_err(sql_err)?;
            let msg = Message::command("credit", payload.clone());
            let to = Destination::Service(SERVICE.into());
            self.outbox.enqueue(&tx, &to, &msg).map_err(outbox_err)?;
        }
        self.outbox.commit(tx).map_err(outbox_err)
    }

    async fn latency(
        &self,
        mut receiver: Receiver,
        config: &BenchConfig,
    ) -> BenchResult<Vec<LatencyReport>> {
        let payload = Bytes::from(vec![0xA5u8; config.payload]);
        let mut conn = self.connection()?;
        let mut direct = report::new_histogram()?;
        let mut outboxed = report::new_histogram()?;
        for i in 0..config.warmup + config.count {
            let start = Instant::now();
            let send = self
                .node
                .send(SERVICE, Message::command("credit", payload.clone()));
            let acked = tokio::spawn(send);
            handled(&mut receiver).await?;
            let elapsed = start.elapsed();
            acked.await.map_err(BenchError::msg)?.map_err(shoal_err)?;
            let start = Instant::now();
            self.commit(&mut conn, 1, &payload)?;
            handled(&mut receiver).await?;
            if i >= config.warmup {
                report::record(&mut direct, elapsed);
                report::record(&mut outboxed, start.elapsed());
            }
        }
        Ok(vec![
            LatencyReport::from_histogram(SEND_HANDLED, &direct),
            LatencyReport::from_histogram(OUTBOX_HANDLED, &outboxed),
        ])
    }

    async fn throughput(
        &self,
        receiver: Receiver,
        config: &BenchConfig,
    ) -> BenchResult<Vec<ThroughputReport>> {
        let payload = Bytes::from(vec![0xA5u8; config.payload]);
        let mut conn = self.connection()?;
        let handled = receiver.handled;
        let mut rows = Vec::new();
        let mut committed = handled.load(Ordering::Relaxed);
        for k in TXN_SIZES {
            let schedule = Schedule::starting_now(config.duration);
            let produce = async {
                while !schedule.over() {
                    if committed - handled.load(Ordering::Relaxed) + k > MAX_BACKLOG {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    self.commit(&mut conn, k, &payload)?;
                    committed += k;
                    // Let the relay and the node run between transactions.
                    tokio::task::yield_now().await;
                }
                BenchResult::Ok(())
            };
            let (produced, window) = tokio::join!(produce, schedule.sample(&handled));
            produced?;
            rows.push(
                ThroughputReport::new(format!("shoal-outbox-txn-{k}"), config.payload, window)
                    .compared_with(DIRECT_ROW),
            );
            // Drain before the next row, bounded.
            let deadline = Instant::now() + TIMEOUT;
            while handled.load(Ordering::Relaxed) < committed {
                if Instant::now() > deadline {
                    return Err(BenchError::msg("outbox did not drain within 10 s"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(rows)
    }
}

/// Waits (bounded) for the receiver's next handled message.
async fn handled(receiver: &mut Receiver) -> BenchResult<()> {
    match tokio::time::timeout(TIMEOUT, receiver.signals.recv()).await {
        Ok(Some(())) => Ok(()),
        Ok(None) => Err(BenchError::msg("the receiving node stopped")),
        Err(_) => Err(BenchError::msg("no message handled within 10 s")),
    }
}

/// A temporary folder for the outbox database, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> BenchResult<Self> {
        let path = std::env::temp_dir().join(format!(
            "shoal-bench-outbox-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&path).map_err(BenchError::from)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn outbox_err(e: shoal::outbox::OutboxError) -> BenchError {
    BenchError::msg(format!("outbox: {e}"))
}

fn sql_err(e: shoal::outbox::rusqlite::Error) -> BenchError {
    BenchError::msg(format!("sqlite: {e}"))
}
