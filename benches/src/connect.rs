//! Connection set-up time, TLS included: how long a fresh client takes until it can talk to
//! a server that is already running, over [`connections`] fresh connections per run (after
//! [`warmup_connections`] unrecorded ones).
//!
//! * `quinn-connect` — the floor: build the rustls client configuration (mutual TLS, the same
//!   certificates as every raw quinn scenario), bind a **new** client endpoint, connect, and
//!   receive the first byte the server sends on a uni stream once it has accepted the
//!   connection (so the client certificate was verified: the counterpart of Shoal's hello,
//!   which the server also only writes once the handshake is complete). Then the client
//!   closes and drops its endpoint.
//! * `shoal-connect` — a **new** Shoal node with the server as its static peer: from just
//!   before `NodeBuilder::start` (which binds, builds both TLS configurations and dials) to
//!   the moment the server's service is live in the node's peer table (the node's
//!   [`NodeEvent::PeerUp`](shoal::NodeEvent::PeerUp): TLS handshake and Shoal hello exchange
//!   done), observed race-free with `wait_for_instances`.
//! * `shoal-connect-send` — the same fresh node, from the same instant until its first
//!   `send` to the server's echo handler is acknowledged: what a freshly started service
//!   waits before its first message is known to be handled.
//!
//! Clients are closed (quinn) or shut down gracefully (Shoal) in batches of [`CLOSE_BATCH`],
//! all of a batch at once and not timed: closing one by one would cost a QUIC draining
//! period (~0.1 s) per connection, and never closing would leave the server holding hundreds
//! of connections. The certificate of each fresh node is issued before the clock starts
//! (issuing is key generation, not connection set-up).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use quinn::Endpoint;
use shoal::{MeshCa, Message, Node};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::certs::{self, SERVER_NAME};
use crate::error::{BenchError, BenchResult};
use crate::quinn_echo;
use crate::report::{self, LatencyReport};
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::shoal_scenarios::{self, shoal_err};
use crate::{BenchConfig, LOOPBACK};

/// Row (and scenario) name of the raw quinn floor.
pub const QUINN_NAME: &str = "quinn-connect";
/// Row (and scenario) name of Shoal's connection set-up.
pub const SHOAL_NAME: &str = "shoal-connect";
/// Row name of Shoal's start → first acknowledged send.
pub const SHOAL_SEND_NAME: &str = "shoal-connect-send";
/// Longest one connection may take before the run fails.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long closing clients wait for their closes to be acknowledged (not timed).
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Clients closed together, after every this many samples.
pub const CLOSE_BATCH: usize = 20;

/// Measured connections per run: `--count` / 100, between 10 and 1000 (200 by default).
pub fn connections(config: &BenchConfig) -> u64 {
    (config.count / 100).clamp(10, 1_000)
}

/// Unrecorded connections first: `--warmup` / 100, between 1 and 100 (20 by default).
pub fn warmup_connections(config: &BenchConfig) -> u64 {
    (config.warmup / 100).clamp(1, 100)
}

/// One run of `quinn-connect`.
pub fn run_quinn(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let pki = certs::generate_pki()?;
    let server_cfg = quinn_echo::server_config(&pki)?;
    let report = run_pair(
        QUINN_NAME,
        &config,
        move |announce, shutdown| quinn_server(announce, shutdown, server_cfg, config),
        move |addr| quinn_client(addr, pki, config),
    )?;
    Ok(vec![report])
}

/// Accepts connections; on each, sends one byte on a uni stream as soon as the handshake
/// (client certificate included) is complete, then waits for the client to close.
async fn quinn_server(
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
    server_cfg: quinn::ServerConfig,
    config: BenchConfig,
) -> BenchResult<()> {
    let endpoint = Endpoint::server(server_cfg, LOOPBACK)?;
    announce.send(endpoint.local_addr()?)?;
    let total = warmup_connections(&config) + connections(&config);
    let result = shutdown
        .run_until(async {
            let mut tasks = JoinSet::new();
            for _ in 0..total {
                let Some(incoming) = endpoint.accept().await else {
                    break;
                };
                // A failure here shows on the client side, which times out and says so.
                tasks.spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    if let Ok(mut send) = connection.open_uni().await {
                        let _ = send.write_all(b"h").await;
                        let _ = send.finish();
                    }
                    let _ = tokio::time::timeout(CONNECT_LIMIT, connection.closed()).await;
                });
                // Reap the finished ones so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
            // Dropping the set would abort the last handshakes: let them finish.
            while tasks.join_next().await.is_some() {}
            Ok(())
        })
        .await;
    endpoint.close(0u32.into(), b"done");
    result
}

async fn quinn_client(
    server: SocketAddr,
    pki: certs::TestPki,
    config: BenchConfig,
) -> BenchResult<LatencyReport> {
    let mut histogram = report::new_histogram()?;
    let warmup = warmup_connections(&config);
    let mut open = Vec::with_capacity(CLOSE_BATCH);
    for i in 0..warmup + connections(&config) {
        let start = Instant::now();
        let client_cfg = quinn_echo::client_config(&pki)?;
        let mut endpoint = Endpoint::client(LOOPBACK)?;
        endpoint.set_default_client_config(client_cfg);
        let connected = tokio::time::timeout(CONNECT_LIMIT, async {
            let connection = endpoint.connect(server, SERVER_NAME)?.await?;
            let mut recv = connection.accept_uni().await?;
            let mut first = [0u8; 1];
            recv.read_exact(&mut first).await?;
            Ok::<_, BenchError>(connection)
        })
        .await
        .map_err(|_| BenchError::msg(format!("{QUINN_NAME}: connection {i} took too long")))??;
        let elapsed = start.elapsed();
        if i >= warmup {
            report::record(&mut histogram, elapsed);
        }
        connected.close(0u32.into(), b"done");
        open.push(endpoint);
        if open.len() >= CLOSE_BATCH {
            close_quinn(&mut open).await;
        }
    }
    close_quinn(&mut open).await;
    Ok(LatencyReport::from_histogram(QUINN_NAME, &histogram))
}

/// Waits (bounded) until the closed connections of `endpoints` have drained, all at once.
async fn close_quinn(endpoints: &mut Vec<Endpoint>) {
    let idle = join_all(endpoints.iter().map(Endpoint::wait_idle));
    let _ = tokio::time::timeout(CLOSE_WAIT, idle).await;
    endpoints.clear();
}

/// One run of `shoal-connect` (rows `shoal-connect` and `shoal-connect-send`).
pub fn run_shoal(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    run_pair(
        SHOAL_NAME,
        &config,
        move |announce, shutdown| shoal_scenarios::serve(server_ca, announce, shutdown),
        move |addr| shoal_client(ca, addr, config),
    )
}

async fn shoal_client(
    ca: MeshCa,
    server: SocketAddr,
    config: BenchConfig,
) -> BenchResult<Vec<LatencyReport>> {
    let mut connected = report::new_histogram()?;
    let mut first_send = report::new_histogram()?;
    let warmup = warmup_connections(&config);
    let service = "bench-connect";
    let mut nodes = Vec::with_capacity(CLOSE_BATCH);
    for i in 0..warmup + connections(&config) {
        let identity = ca.issue(service).map_err(shoal_err)?;
        let builder = Node::builder(service)
            .listen(LOOPBACK)
            .identity(identity)
            .trust(ca.clone())
            .peer(server);
        let start = Instant::now();
        let node = builder.start().await.map_err(shoal_err)?;
        let sample = async {
            node.wait_for_instances(shoal_scenarios::SERVICE, 1, CONNECT_LIMIT)
                .await
                .map_err(shoal_err)?;
            let up = start.elapsed();
            let send = node.send(shoal_scenarios::SERVICE, Message::command("echo", "hi"));
            tokio::time::timeout(CONNECT_LIMIT, send)
                .await
                .map_err(|_| BenchError::msg("first send not acknowledged in time"))?
                .map_err(shoal_err)?;
            Ok::<_, BenchError>((up, start.elapsed()))
        }
        .await;
        nodes.push(node);
        if nodes.len() >= CLOSE_BATCH || sample.is_err() {
            join_all(nodes.iter().map(Node::shutdown)).await;
            nodes.clear();
        }
        let (up, sent) = sample.map_err(|e| e.context(format!("{SHOAL_NAME}: node {i}")))?;
        if i >= warmup {
            report::record(&mut connected, up);
            report::record(&mut first_send, sent);
        }
    }
    join_all(nodes.iter().map(Node::shutdown)).await;
    Ok(vec![
        LatencyReport::from_histogram(SHOAL_NAME, &connected),
        LatencyReport::from_histogram(SHOAL_SEND_NAME, &first_send),
    ])
}
