//! Shoal's own scenarios: two Shoal nodes on loopback, one serving an `echo` handler.
//!
//! Same runtime settings as the floors (each side on its own `current_thread` runtime and OS
//! thread, pinned per `--placement`), same payload, mutual TLS like raw quinn, so the ratio to
//! `quinn-stream` is the cost of Shoal's envelope, framing, acks, dedup and handler dispatch.

use std::net::SocketAddr;
use std::time::Duration;

use shoal::{MeshCa, Message, Node};

use crate::error::{BenchError, BenchResult};
use crate::measure::{RoundTrip, measure};
use crate::report::LatencyReport;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::{BenchConfig, LOOPBACK};

/// Row name: `send` until the receiver's handler finished and its ack came back.
pub const SEND_NAME: &str = "shoal-send";
/// Row name: `request` until the reply came back.
pub const REQUEST_NAME: &str = "shoal-request";

const SERVICE: &str = "bench-echo";
const TIMEOUT: Duration = Duration::from_secs(5);

/// One run of `shoal-send`.
pub fn run_send(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run(SEND_NAME, config, Mode::Send)
}

/// One run of `shoal-request`.
pub fn run_request(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    run(REQUEST_NAME, config, Mode::Request)
}

#[derive(Clone, Copy)]
enum Mode {
    Send,
    Request,
}

fn run(name: &'static str, config: &BenchConfig, mode: Mode) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let report = run_pair(
        name,
        &config,
        move |announce, shutdown| serve(server_ca, announce, shutdown),
        move |addr| client(name, ca, addr, config, mode),
    )?;
    Ok(vec![report])
}

async fn serve(ca: MeshCa, announce: Announce<SocketAddr>, shutdown: Shutdown) -> BenchResult<()> {
    let node = Node::builder(SERVICE)
        .listen(LOOPBACK)
        .identity(ca.issue(SERVICE).map_err(shoal_err)?)
        .trust(ca)
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

async fn client(
    name: &str,
    ca: MeshCa,
    server: SocketAddr,
    config: BenchConfig,
    mode: Mode,
) -> BenchResult<LatencyReport> {
    let node = Node::builder("bench-client")
        .listen(LOOPBACK)
        .identity(ca.issue("bench-client").map_err(shoal_err)?)
        .trust(ca)
        .peer(server)
        .start()
        .await
        .map_err(shoal_err)?;
    node.wait_for_instances(SERVICE, 1, TIMEOUT)
        .await
        .map_err(shoal_err)?;
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

pub(crate) fn shoal_err(e: shoal::Error) -> BenchError {
    BenchError::msg(format!("shoal: {e}"))
}
