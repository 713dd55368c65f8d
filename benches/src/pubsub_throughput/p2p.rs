//! Point-to-point throughput rows of `shoal-throughput`: one sending node, one receiving node
//! of service [`SERVICE`], [`RELIABLE_WINDOW`] messages in flight (that many tasks, each
//! sending and awaiting in a loop, like the reliable pub/sub row).
//!
//! * `shoal-p2p-<size>` — `send` of a command whose handler (`sink`) only counts it;
//!   counted when **acked** (the handler ran and its ack came back).
//! * `shoal-p2p-background-<size>` — [`Node::send_background`] of the same command from one
//!   loop (reliable: acked, retried, dead-lettered, but not awaited), yielding every
//!   [`super::BEST_EFFORT_BATCH`] sends, and waiting for room (`Node::wait_for_background_room`)
//!   whenever the node refuses one with `Error::Backlog` (not counted); counted when the
//!   receiver's handler **ran**. NATS's queue-group row is
//!   of this kind.
//! * `shoal-p2p-keyed-<size>` — the same `send`, each task under a partition key of its own
//!   (`customer-<task>`), so every call takes its key's ordering turn; 64 B only.
//! * `shoal-p2p-request-<size>` — `request` to a handler (`echo`) that replies with the
//!   payload; counted when the **reply** arrived (so the payload crosses twice). A request
//!   without a reply within 10 s (`TIMEOUT`) is counted in the row's `dropped` column (and the
//!   loop goes on) rather than failing the whole scenario: a loaded machine should show as
//!   such in the table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shoal::{MeshCa, Message, Node};

use super::{RELIABLE_WINDOW, acked_loops, one_loop, room_if_refused};
use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::runtime::run_pair;
use crate::shoal_scenarios::{builder, shoal_err};
use crate::throughput::{Schedule, ThroughputReport};

/// Service of the receiving node.
pub const SERVICE: &str = "bench-p2p";
/// How long a connection may take to come up, and a request to be answered.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which point-to-point call a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `send`, counted when acked: row `shoal-p2p-<size>`.
    Send,
    /// `send_background` from one loop, counted when handled: row
    /// `shoal-p2p-background-<size>`.
    BackgroundSend,
    /// `send` under a partition key per task, counted when acked: row `shoal-p2p-keyed-<size>`.
    KeyedSend,
    /// `request`, counted when the reply arrived: row `shoal-p2p-request-<size>`.
    Request,
}

impl Mode {
    /// The row name for `payload`.
    pub fn row(self, payload: usize) -> String {
        match self {
            Self::Send => format!("shoal-p2p-{payload}"),
            Self::BackgroundSend => format!("shoal-p2p-background-{payload}"),
            Self::KeyedSend => format!("shoal-p2p-keyed-{payload}"),
            Self::Request => format!("shoal-p2p-request-{payload}"),
        }
    }
}

/// One row: a fresh pair of nodes, one window.
pub fn run(config: &BenchConfig, payload: usize, mode: Mode) -> BenchResult<ThroughputReport> {
    let config = *config;
    let name = mode.row(payload);
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let dropped = Arc::new(AtomicU64::new(0));
    let client_dropped = Arc::clone(&dropped);
    let handled = Arc::new(AtomicU64::new(0));
    let (server_handled, client_handled) = (Arc::clone(&handled), handled);
    let window = run_pair(
        &name,
        &config,
        move |announce, shutdown| async move {
            let node = builder(&server_ca, SERVICE)?
                .start()
                .await
                .map_err(shoal_err)?;
            node.handle("sink", move |_msg: Message| {
                server_handled.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            });
            node.handle(
                "echo",
                |msg: Message| async move { Ok(msg.payload().clone()) },
            );
            announce.send(node.local_addr())?;
            shutdown.wait().await;
            node.shutdown().await;
            Ok(())
        },
        move |addr| {
            let counters = Counters {
                dropped: client_dropped,
                handled: client_handled,
            };
            sender(ca, addr, config, payload, mode, counters)
        },
    )?;
    Ok(ThroughputReport::new(name, payload, window).with_dropped(dropped.load(Ordering::Relaxed)))
}

/// What the receiving side counts for the sender: requests not answered in time, and the
/// commands its handler ran.
struct Counters {
    dropped: Arc<AtomicU64>,
    handled: Arc<AtomicU64>,
}

async fn sender(
    ca: MeshCa,
    server: SocketAddr,
    config: BenchConfig,
    payload: usize,
    mode: Mode,
    counters: Counters,
) -> BenchResult<crate::throughput::Window> {
    let Counters { dropped, handled } = counters;
    let node = builder(&ca, "bench-p2p-sender")?
        .peer(server)
        .start()
        .await
        .map_err(shoal_err)?;
    let result = async {
        node.wait_for_instances(SERVICE, 1, TIMEOUT)
            .await
            .map_err(shoal_err)?;
        let body = Bytes::from(vec![0xA5u8; payload]);
        let schedule = Schedule::starting_now(config.duration);
        match mode {
            Mode::Send | Mode::KeyedSend => {
                let keyed = mode == Mode::KeyedSend;
                let send = move |node: Node, body: Bytes, task: usize| async move {
                    let mut command = Message::command("sink", body);
                    if keyed {
                        command = command.with_key(format!("customer-{task}"));
                    }
                    node.send(SERVICE, command).await.map_err(shoal_err)?;
                    Ok(1)
                };
                acked_loops(RELIABLE_WINDOW, &node, &body, schedule, send).await
            }
            Mode::BackgroundSend => {
                let send = one_loop(schedule, async || {
                    let command = Message::command("sink", body.clone());
                    room_if_refused(&node, node.send_background(SERVICE, command)).await
                });
                let (sent, window) = tokio::join!(send, schedule.sample(&handled));
                sent.map(|()| window)
            }
            Mode::Request => {
                let request = move |node: Node, body: Bytes, _| {
                    let dropped = Arc::clone(&dropped);
                    async move {
                        let len = body.len();
                        let reply = match node
                            .request(SERVICE, Message::command("echo", body), TIMEOUT)
                            .await
                        {
                            Ok(reply) => reply,
                            Err(shoal::Error::Timeout(_)) => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                return Ok(0);
                            }
                            Err(e) => return Err(shoal_err(e)),
                        };
                        if reply.payload().len() != len {
                            return Err(BenchError::msg("echo reply has the wrong length"));
                        }
                        Ok(1)
                    }
                };
                acked_loops(RELIABLE_WINDOW, &node, &body, schedule, request).await
            }
        }
    }
    .await;
    node.shutdown().await;
    result
}
