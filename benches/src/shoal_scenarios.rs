//! Shoal's own scenarios: two Shoal nodes on loopback, one serving an `echo` handler.
//!
//! * `shoal-send`, `shoal-request` — closed loop (one message at a time).
//! * `shoal-at-rate` — the same two calls at a fixed offered rate (`--rate`), latency from
//!   each message's intended send time ([`crate::measure::open_loop()`]): rows
//!   `shoal-request-at-<rate>` and `shoal-send-at-<rate>` (e.g. `shoal-request-at-10k`).
//!
//! Same runtime settings as the floors (each side on its own `current_thread` runtime and OS
//! thread, pinned per `--placement`), same payload, mutual TLS like raw quinn, so the ratio to
//! `quinn-stream` is the cost of Shoal's envelope, framing, acks, dedup and handler dispatch.

use std::net::SocketAddr;
use std::time::Duration;

use shoal::{MeshCa, Message, Node, NodeBuilder};

use crate::error::{BenchError, BenchResult};
use crate::measure::open_loop::LOSS_TIMEOUT;
use crate::measure::{RoundTrip, at_rate_name, measure, open_loop};
use crate::report::LatencyReport;
use crate::report::rate::RateReport;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::{BenchConfig, LOOPBACK};

/// Row name: `send` until the receiver's handler finished and its ack came back.
pub const SEND_NAME: &str = "shoal-send";
/// Row name: `request` until the reply came back.
pub const REQUEST_NAME: &str = "shoal-request";

/// Service of the serving node (its handler `echo` answers with the payload).
pub(crate) const SERVICE: &str = "bench-echo";
const TIMEOUT: Duration = Duration::from_secs(5);

/// One run of `shoal-send`.
pub fn run_send(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run(SEND_NAME, config, Mode::Send)
}

/// One run of `shoal-request`.
pub fn run_request(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run(REQUEST_NAME, config, Mode::Request)
}

/// One run of `shoal-at-rate`: `shoal-request-at-<rate>` then `shoal-send-at-<rate>`, each
/// on fresh nodes.
pub fn run_at_rate(config: &BenchConfig, rate: u64) -> BenchResult<Vec<RateReport>> {
    at_rate(config, rate, [REQUEST_NAME, SEND_NAME], None)
}

/// [`run_at_rate`] with both nodes polling for input for `window` after each activity
/// ([`NodeBuilder::busy_poll`]), as rows `<request>-at-<rate>` and `<send>-at-<rate>`.
pub fn run_at_rate_busy_poll(
    config: &BenchConfig,
    rate: u64,
    [request, send]: [&'static str; 2],
    window: Duration,
) -> BenchResult<Vec<RateReport>> {
    at_rate(config, rate, [request, send], Some(window))
}

fn at_rate(
    config: &BenchConfig,
    rate: u64,
    [request, send]: [&'static str; 2],
    busy_poll: Option<Duration>,
) -> BenchResult<Vec<RateReport>> {
    [(request, Mode::Request), (send, Mode::Send)]
        .into_iter()
        .map(|(variant, mode)| {
            let config = *config;
            let name = at_rate_name(variant, rate);
            let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
            let server_ca = ca.clone();
            run_pair(
                &name.clone(),
                &config,
                move |announce, shutdown| serve_tuned(server_ca, announce, shutdown, busy_poll),
                move |addr| client_at_rate(name, ca, addr, config, mode, rate, busy_poll),
            )
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Mode {
    Send,
    Request,
}

/// One run of `shoal-send` (`request`: `shoal-request`) as row `name`, both nodes polling
/// for input for `window` after each activity ([`NodeBuilder::busy_poll`]).
pub fn run_busy_poll(
    name: &'static str,
    config: &BenchConfig,
    request: bool,
    window: Duration,
) -> BenchResult<LatencyReport> {
    let mode = if request { Mode::Request } else { Mode::Send };
    Ok(run_tuned(name, config, mode, Some(window))?.remove(0))
}

fn run(name: &'static str, config: &BenchConfig, mode: Mode) -> BenchResult<Vec<LatencyReport>> {
    run_tuned(name, config, mode, None)
}

fn run_tuned(
    name: &'static str,
    config: &BenchConfig,
    mode: Mode,
    busy_poll: Option<Duration>,
) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let report = run_pair(
        name,
        &config,
        move |announce, shutdown| serve_tuned(server_ca, announce, shutdown, busy_poll),
        move |addr| client(name, ca, addr, config, mode, busy_poll),
    )?;
    Ok(vec![report])
}

/// The serving side of every two-node Shoal scenario: a node of [`SERVICE`] whose `echo`
/// handler answers with the payload, alive until told to stop.
pub(crate) async fn serve(
    ca: MeshCa,
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
) -> BenchResult<()> {
    serve_tuned(ca, announce, shutdown, None).await
}

/// [`serve`], polling for input for the window given after each activity.
async fn serve_tuned(
    ca: MeshCa,
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
    busy_poll: Option<Duration>,
) -> BenchResult<()> {
    let node = polling(builder(&ca, SERVICE)?, busy_poll)
        .start()
        .await
        .map_err(shoal_err)?;
    node.handle(
        "echo",
        |msg: Message| async move { Ok(msg.payload().clone()) },
    );
    announce.send(node.local_addr())?;
    shutdown.wait().await;
    node.shutdown().await;
    Ok(())
}

/// A builder for a node of `service` on loopback, with a certificate from `ca` and trusting
/// it: where every side of a Shoal scenario starts (add peers and options, then `start`).
pub(crate) fn builder(ca: &MeshCa, service: &str) -> BenchResult<NodeBuilder> {
    Ok(Node::builder(service)
        .listen(LOOPBACK)
        .identity(ca.issue(service).map_err(shoal_err)?)
        .trust(ca.clone()))
}

/// `builder`, polling for input for `window` after each activity when there is one.
fn polling(builder: NodeBuilder, window: Option<Duration>) -> NodeBuilder {
    match window {
        Some(window) => builder.busy_poll(window),
        None => builder,
    }
}

/// The client node, peered with the server and connected to it.
pub(crate) async fn start_client(ca: MeshCa, server: SocketAddr) -> BenchResult<Node> {
    start_client_tuned(ca, server, None).await
}

async fn start_client_tuned(
    ca: MeshCa,
    server: SocketAddr,
    busy_poll: Option<Duration>,
) -> BenchResult<Node> {
    let node = polling(builder(&ca, "bench-client")?, busy_poll)
        .peer(server)
        .start()
        .await
        .map_err(shoal_err)?;
    node.wait_for_instances(SERVICE, 1, TIMEOUT)
        .await
        .map_err(shoal_err)?;
    Ok(node)
}

async fn client(
    name: &str,
    ca: MeshCa,
    server: SocketAddr,
    config: BenchConfig,
    mode: Mode,
    busy_poll: Option<Duration>,
) -> BenchResult<LatencyReport> {
    let node = start_client_tuned(ca, server, busy_poll).await?;
    let payload = bytes::Bytes::from(vec![0xA5u8; config.payload]);
    let report = measure(name, &config, async |_attempt| {
        let msg = Message::command("echo", payload.clone());
        match mode {
            Mode::Send => {
                node.send(SERVICE, msg).await.map_err(shoal_err)?;
            }
            Mode::Request => {
                let reply = node
                    .request(SERVICE, msg, TIMEOUT)
                    .await
                    .map_err(shoal_err)?;
                if reply.payload().len() != payload.len() {
                    return Err(BenchError::msg("echo reply has the wrong length"));
                }
            }
        }
        Ok(RoundTrip::Done)
    })
    .await;
    node.shutdown().await;
    report
}

/// Open loop at `rate`: every message is its own `send` or `request` future; one that is not
/// answered within [`LOSS_TIMEOUT`] counts as lost.
async fn client_at_rate(
    name: String,
    ca: MeshCa,
    server: SocketAddr,
    config: BenchConfig,
    mode: Mode,
    rate: u64,
    busy_poll: Option<Duration>,
) -> BenchResult<RateReport> {
    let node = start_client_tuned(ca, server, busy_poll).await?;
    let payload = bytes::Bytes::from(vec![0xA5u8; config.payload]);
    let report = open_loop(&name, &config, rate, |_seq| {
        let msg = Message::command("echo", payload.clone());
        let node = node.clone();
        async move {
            let outcome = match mode {
                Mode::Send => node.send(SERVICE, msg).await.map(drop),
                Mode::Request => node.request(SERVICE, msg, LOSS_TIMEOUT).await.map(drop),
            };
            match outcome {
                Ok(()) => Ok(RoundTrip::Done),
                Err(shoal::Error::Timeout(_)) => Ok(RoundTrip::Lost),
                // A request whose message had not reached the server by its timeout (waiting
                // to be retried) ends dead-lettered: lost, as one unanswered is.
                Err(shoal::Error::DeadLettered(_)) if matches!(mode, Mode::Request) => {
                    Ok(RoundTrip::Lost)
                }
                Err(e) => Err(shoal_err(e)),
            }
        }
    })
    .await;
    node.shutdown().await;
    report
}

pub(crate) fn shoal_err(e: shoal::Error) -> BenchError {
    BenchError::msg(format!("shoal: {e}"))
}
