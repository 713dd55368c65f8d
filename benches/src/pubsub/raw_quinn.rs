//! The raw quinn rows of the `pubsub` scenario: `quinn-oneway` (one receiver) and
//! `quinn-fanout-N`: N server endpoints on the server thread (placed like Shoal's N
//! subscriber nodes), one client endpoint with one connection and one long-lived bidi stream
//! per server, mutual TLS, `u32` length prefix + stamped payload, 1-byte acks.

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use quinn::Endpoint;
use tokio::task::JoinSet;

use super::{Probe, quinn_row, stamped_len};
use crate::error::{BenchError, BenchResult};
use crate::quinn_echo;
use crate::report::LatencyReport;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::{BenchConfig, certs};

/// Raw quinn to `n` receivers ([`quinn_row`]): `n` server endpoints on the server thread, one
/// client endpoint with `n` connections on the client thread.
pub(super) fn run(config: &BenchConfig, n: usize) -> BenchResult<Vec<LatencyReport>> {
    let name = quinn_row(n);
    let pki = certs::generate_pki()?;
    let server_cfg = quinn_echo::server_config(&pki)?;
    let client_cfg = quinn_echo::client_config(&pki)?;
    let probe = Probe::new(config, n)?;
    let (server_probe, client_probe) = (probe.clone(), probe.clone());
    let last = run_pair(
        &name,
        config,
        move |announce, shutdown| quinn_servers(announce, shutdown, server_cfg, n, server_probe),
        move |addrs| quinn_client(addrs, client_cfg, client_probe),
    )?;
    probe.rows(&name, &last)
}

/// Starts `n` quinn server endpoints, announces their addresses, and serves one connection
/// on each until told to stop.
async fn quinn_servers(
    announce: Announce<Vec<SocketAddr>>,
    shutdown: Shutdown,
    server_cfg: quinn::ServerConfig,
    n: usize,
    probe: Probe,
) -> BenchResult<()> {
    let endpoints = (0..n)
        .map(|_| crate::raw_endpoint::server(server_cfg.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    announce.send(
        endpoints
            .iter()
            .map(Endpoint::local_addr)
            .collect::<Result<_, _>>()?,
    )?;
    let result = shutdown
        .run_until(async {
            let mut tasks = JoinSet::new();
            for (i, endpoint) in endpoints.iter().enumerate() {
                tasks.spawn(receive_frames(endpoint.clone(), i, probe.clone()));
            }
            // Bounded: one result per task.
            while let Some(joined) = tasks.join_next().await {
                joined.map_err(|e| BenchError::msg(format!("quinn receiver: {e}")))??;
            }
            Ok(())
        })
        .await;
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    result
}

/// Receiver `i`: accepts one connection and its one stream, then per frame records the
/// arrival and writes a 1-byte ack.
async fn receive_frames(endpoint: Endpoint, i: usize, probe: Probe) -> BenchResult<()> {
    let connection = quinn_echo::first_connection(&endpoint).await?;
    let Some((mut send, mut recv)) = quinn_echo::accept_bi_or_end(&connection).await? else {
        return Ok(());
    };
    let config = probe.0.config;
    let mut frame = vec![0u8; 4 + stamped_len(config.payload)];
    for _ in 0..config.max_round_trips() {
        if !quinn_echo::read_or_end(&mut recv, &mut frame).await? {
            return Ok(());
        }
        probe
            .arrived(i, &frame[4..])
            .ok_or_else(|| BenchError::msg("frame without a stamp"))?;
        send.write_all(&[1]).await?;
    }
    Ok(())
}

/// The quinn client: one endpoint, one connection and one bidi stream per server; each
/// frame is written to every stream, then every ack is read.
async fn quinn_client(
    servers: Vec<SocketAddr>,
    client_cfg: quinn::ClientConfig,
    probe: Probe,
) -> BenchResult<Histogram<u64>> {
    let mut endpoint = crate::raw_endpoint::client()?;
    endpoint.set_default_client_config(client_cfg);
    let mut connections = Vec::with_capacity(servers.len());
    for server in servers {
        connections.push(endpoint.connect(server, certs::SERVER_NAME)?.await?);
    }
    let len = stamped_len(probe.0.config.payload);
    let prefix = u32::try_from(len).map_err(|_| BenchError::msg("payload too large"))?;
    let result = async {
        let mut streams = Vec::with_capacity(connections.len());
        for connection in &connections {
            streams.push(connection.open_bi().await?);
        }
        let mut ack = [0u8; 1];
        let last = probe
            .closed_loop(&prefix.to_be_bytes(), async |_seq, frame| {
                for (send, _) in &mut streams {
                    send.write_all(frame).await?;
                }
                for (_, recv) in &mut streams {
                    recv.read_exact(&mut ack).await?;
                }
                Ok(())
            })
            .await?;
        for (send, _) in &mut streams {
            let _ = send.finish();
        }
        Ok(last)
    }
    .await;
    for connection in &connections {
        connection.close(0u32.into(), b"done");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}
