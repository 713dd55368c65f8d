//! Point-to-point throughput rows of `shoal-throughput`: one sending node, one receiving node
//! of service [`SERVICE`], [`RELIABLE_WINDOW`] messages in flight (that many tasks, each
//! sending and awaiting in a loop, like the reliable pub/sub row).
//!
//! * `shoal-p2p-<size>` — `send` of a command whose handler (`sink`) only counts it;
//!   counted when **acked** (the handler ran and its ack came back).
//! * `shoal-p2p-request-<size>` — `request` to a handler (`echo`) that replies with the
//!   payload; counted when the **reply** arrived (so the payload crosses twice).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use shoal::{MeshCa, Message, Node};

use super::{RELIABLE_WINDOW, acked_loops};
use crate::error::{BenchError, BenchResult};
use crate::runtime::run_pair;
use crate::shoal_scenarios::shoal_err;
use crate::throughput::{Schedule, ThroughputReport};
use crate::{BenchConfig, LOOPBACK};

/// Service of the receiving node.
pub const SERVICE: &str = "bench-p2p";
/// How long a connection may take to come up, and a request to be answered.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which point-to-point call a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `send`, counted when acked: row `shoal-p2p-<size>`.
    Send,
    /// `request`, counted when the reply arrived: row `shoal-p2p-request-<size>`.
    Request,
}

impl Mode {
    /// The row name for `payload`.
    pub fn row(self, payload: usize) -> String {
        match self {
            Self::Send => format!("shoal-p2p-{payload}"),
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
    let window = run_pair(
        &name,
        &config,
        move |announce, shutdown| async move {
            let node = Node::builder(SERVICE)
                .listen(LOOPBACK)
                .identity(server_ca.issue(SERVICE).map_err(shoal_err)?)
                .trust(server_ca)
                .start()
                .await
                .map_err(shoal_err)?;
            node.handle("sink", |_msg: Message| async { Ok(()) });
            node.handle(
                "echo",
                |msg: Message| async move { Ok(msg.payload().clone()) },
            );
            announce.send(node.local_addr())?;
            shutdown.wait().await;
            node.shutdown().await;
            Ok(())
        },
        move |addr| sender(ca, addr, config, payload, mode),
    )?;
    Ok(ThroughputReport::new(name, payload, window))
}

async fn sender(
    ca: MeshCa,
    server: SocketAddr,
    config: BenchConfig,
    payload: usize,
    mode: Mode,
) -> BenchResult<crate::throughput::Window> {
    let node = Node::builder("bench-p2p-sender")
        .listen(LOOPBACK)
        .identity(ca.issue("bench-p2p-sender").map_err(shoal_err)?)
        .trust(ca)
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
            Mode::Send => {
                let send = |node: Node, body: Bytes| async move {
                    node.send(SERVICE, Message::command("sink", body))
                        .await
                        .map_err(shoal_err)?;
                    Ok(1)
                };
                acked_loops(RELIABLE_WINDOW, &node, &body, schedule, send).await
            }
            Mode::Request => {
                let request = |node: Node, body: Bytes| async move {
                    let len = body.len();
                    let reply = node
                        .request(SERVICE, Message::command("echo", body), TIMEOUT)
                        .await
                        .map_err(shoal_err)?;
                    if reply.payload().len() != len {
                        return Err(BenchError::msg("echo reply has the wrong length"));
                    }
                    Ok(1)
                };
                acked_loops(RELIABLE_WINDOW, &node, &body, schedule, request).await
            }
        }
    }
    .await;
    node.shutdown().await;
    result
}
