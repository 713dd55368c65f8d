//! `udp-echo`: the floor of floors — round-trip time of one plain UDP datagram over
//! loopback between two tokio runtimes, with no encryption, framing or protocol at all.
//!
//! The server is a tokio `UdpSocket` on `127.0.0.1:0` echoing every datagram to its
//! sender; the client sends one datagram, waits for the echo, and repeats (closed loop).
//! Each datagram carries `max(payload, 8)` bytes, the first 8 being the attempt number so a
//! late echo of a lost round trip is never mistaken for the current one.

use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::error::BenchResult;
use crate::measure::{LOSS_TIMEOUT, RoundTrip, measure};
use crate::report::LatencyReport;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::{BenchConfig, LOOPBACK, datagram_len};

/// Scenario name (row name in the reports).
pub const NAME: &str = "udp-echo";

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// Stale echoes read per round trip before giving up on it (bounds the receive loop).
const MAX_STALE_REPLIES: usize = 64;

/// Runs one `udp-echo` run.
pub fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let len = datagram_len(config.payload);
    if len > MAX_UDP_PAYLOAD {
        return Err(crate::error::BenchError::msg(format!(
            "{NAME}: payload {len} exceeds the UDP maximum of {MAX_UDP_PAYLOAD} bytes"
        )));
    }
    let report = run_pair(
        NAME,
        &config,
        move |announce, shutdown| serve(announce, shutdown, config),
        move |addr| client(addr, config),
    )?;
    Ok(vec![report])
}

async fn serve(
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
    config: BenchConfig,
) -> BenchResult<()> {
    let socket = UdpSocket::bind(LOOPBACK).await?;
    announce.send(socket.local_addr()?)?;
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
    shutdown
        .run_until(async {
            for _ in 0..config.max_round_trips() {
                let (n, from) = socket.recv_from(&mut buf).await?;
                socket.send_to(&buf[..n], from).await?;
            }
            Ok(())
        })
        .await
}

async fn client(server: SocketAddr, config: BenchConfig) -> BenchResult<LatencyReport> {
    let socket = UdpSocket::bind(LOOPBACK).await?;
    socket.connect(server).await?;
    let mut out = vec![0xA5u8; datagram_len(config.payload)];
    let mut reply = vec![0u8; MAX_UDP_PAYLOAD];
    measure(NAME, &config, async |attempt| {
        out[..8].copy_from_slice(&attempt.to_le_bytes());
        socket.send(&out).await?;
        let deadline = Instant::now() + LOSS_TIMEOUT;
        for _ in 0..MAX_STALE_REPLIES {
            match tokio::time::timeout_at(deadline, socket.recv(&mut reply)).await {
                Err(_elapsed) => return Ok(RoundTrip::Lost),
                Ok(received) => {
                    let n = received?;
                    if n == out.len() && reply[..8] == out[..8] {
                        return Ok(RoundTrip::Done);
                    }
                }
            }
        }
        Ok(RoundTrip::Lost)
    })
    .await
}
