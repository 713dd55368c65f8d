//! Publish/subscribe one-way latency: publish → subscriber handler, to 1, 4 and 16 subscriber
//! nodes, against raw quinn's one-way floor, all in the same run.
//!
//! All nodes live in one process, so a `std::time::Instant` taken before the run is a clock
//! every thread shares: each message carries its sequence number and its send time (ns since
//! that instant) in its first 16 bytes, and the receiver records `now - sent` on arrival.
//! The loop is **closed**: the next message leaves when the previous one was acknowledged
//! (raw quinn: a 1-byte ack written after recording; Shoal: the reliable `publish` resolves
//! when every subscriber group's handler ran and acked). The ack's way back is not timed.
//!
//! Setting as everywhere ([`crate::runtime`]): the receiving side (quinn server, or *all*
//! subscriber nodes) on one thread and `current_thread` runtime, the sender on another.
//!
//! Rows:
//! * `quinn-oneway` — the baseline: one long-lived bidi stream, mutual TLS, `u32` length
//!   prefix + payload, the server records arrival then writes 1 byte back.
//! * `shoal-publish-N` — every subscriber's handler latency (N samples per event); each of
//!   the N subscriber nodes is its own service, so its own group, and gets every event.
//! * `shoal-publish-N-last` (N > 1) — per event, until the *last* of the N handlers ran.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use quinn::{Endpoint, ReadError, ReadExactError};
use shoal::{HandlerError, MeshCa, Message, Node};

use crate::error::{BenchError, BenchResult};
use crate::quinn_echo::{self, closed_by_peer};
use crate::report::{self, LatencyReport};
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::shoal_scenarios::shoal_err;
use crate::{BenchConfig, LOOPBACK, certs};

/// Baseline row: raw quinn, one-way over one long-lived stream.
pub const ONEWAY_NAME: &str = "quinn-oneway";
/// Prefix of the Shoal rows (`shoal-publish-1`, `shoal-publish-4-last`, ...).
pub const PUBLISH_PREFIX: &str = "shoal-publish";
/// Subscriber counts measured, each in its own group.
pub const FAN_OUTS: [usize; 3] = [1, 4, 16];
/// Topic every pub/sub scenario publishes on.
pub const TOPIC: &str = "bench.topic";
/// Bytes of each message that carry the sequence number and the send time.
pub const STAMP_LEN: usize = 16;
/// How long a publisher waits for its subscribers to be known.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A latency histogram the receiving thread records into and the harness reads afterwards.
type Shared = Arc<Mutex<Histogram<u64>>>;

/// Bytes per message in one-way scenarios: the payload, but at least [`STAMP_LEN`].
pub fn stamped_len(payload: usize) -> usize {
    payload.max(STAMP_LEN)
}

/// One run: `quinn-oneway`, then Shoal with each of [`FAN_OUTS`], each on fresh sockets.
pub fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let mut rows = vec![run_quinn(config)?];
    for n in FAN_OUTS {
        rows.extend(run_shoal(config, n)?);
    }
    Ok(rows)
}

/// Nanoseconds since `base` (saturating; a run is far shorter than 584 years).
fn nanos_since(base: std::time::Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Writes `seq` and the current time into the first [`STAMP_LEN`] bytes of `buf`.
fn stamp(buf: &mut [u8], seq: u64, base: std::time::Instant) -> u64 {
    let sent = nanos_since(base);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sent.to_le_bytes());
    sent
}

/// `(seq, one-way latency ns, arrival ns)` of a stamped message, read on arrival.
fn arrival(buf: &[u8], base: std::time::Instant) -> Option<(u64, u64, u64)> {
    let now = nanos_since(base);
    let seq = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    Some((seq, now.saturating_sub(sent), now))
}

fn shared_histogram() -> BenchResult<Shared> {
    Ok(Arc::new(Mutex::new(report::new_histogram()?)))
}

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, Histogram<u64>> {
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks that a receiver recorded exactly the measured messages, once each.
fn expect_count(name: &str, h: &Histogram<u64>, count: u64) -> BenchResult<()> {
    if h.len() == count {
        Ok(())
    } else {
        Err(BenchError::msg(format!(
            "{name}: receiver recorded {} of {count} messages",
            h.len()
        )))
    }
}

fn run_quinn(config: &BenchConfig) -> BenchResult<LatencyReport> {
    let config = *config;
    let pki = certs::generate_pki()?;
    let server_cfg = quinn_echo::server_config(&pki)?;
    let client_cfg = quinn_echo::client_config(&pki)?;
    let base = std::time::Instant::now();
    let histogram = shared_histogram()?;
    let server_histogram = Arc::clone(&histogram);
    run_pair(
        ONEWAY_NAME,
        &config,
        move |announce, shutdown| {
            quinn_server(
                announce,
                shutdown,
                server_cfg,
                config,
                base,
                server_histogram,
            )
        },
        move |addr| quinn_client(addr, client_cfg, config, base),
    )?;
    let h = lock(&histogram);
    expect_count(ONEWAY_NAME, &h, config.count)?;
    Ok(LatencyReport::from_histogram(ONEWAY_NAME, &h))
}

async fn quinn_server(
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
    server_cfg: quinn::ServerConfig,
    config: BenchConfig,
    base: std::time::Instant,
    histogram: Shared,
) -> BenchResult<()> {
    let endpoint = Endpoint::server(server_cfg, LOOPBACK)?;
    announce.send(endpoint.local_addr()?)?;
    let result = shutdown
        .run_until(async {
            let incoming = endpoint
                .accept()
                .await
                .ok_or_else(|| BenchError::msg("endpoint closed before a client connected"))?;
            let connection = incoming.await?;
            let (mut send, mut recv) = match connection.accept_bi().await {
                Ok(stream) => stream,
                Err(e) if closed_by_peer(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut frame = vec![0u8; 4 + stamped_len(config.payload)];
            for _ in 0..config.max_round_trips() {
                match recv.read_exact(&mut frame).await {
                    Ok(()) => {}
                    Err(ReadExactError::FinishedEarly(0)) => return Ok(()),
                    Err(ReadExactError::ReadError(ReadError::ConnectionLost(e)))
                        if closed_by_peer(&e) =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
                let (seq, latency, _) = arrival(&frame[4..], base)
                    .ok_or_else(|| BenchError::msg("frame without a stamp"))?;
                if seq >= config.warmup {
                    lock(&histogram).saturating_record(latency.max(1));
                }
                send.write_all(&[1]).await?;
            }
            Ok(())
        })
        .await;
    endpoint.close(0u32.into(), b"done");
    result
}

async fn quinn_client(
    server: SocketAddr,
    client_cfg: quinn::ClientConfig,
    config: BenchConfig,
    base: std::time::Instant,
) -> BenchResult<()> {
    let mut endpoint = Endpoint::client(LOOPBACK)?;
    endpoint.set_default_client_config(client_cfg);
    let connection = endpoint.connect(server, certs::SERVER_NAME)?.await?;
    let len = stamped_len(config.payload);
    let prefix = u32::try_from(len).map_err(|_| BenchError::msg("payload too large"))?;
    let mut frame = vec![0xA5u8; 4 + len];
    frame[..4].copy_from_slice(&prefix.to_be_bytes());
    let result = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        let mut ack = [0u8; 1];
        for seq in 0..config.warmup + config.count {
            stamp(&mut frame[4..], seq, base);
            send.write_all(&frame).await?;
            recv.read_exact(&mut ack).await?;
        }
        let _ = send.finish();
        Ok(())
    }
    .await;
    connection.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

/// Starts `n` subscriber nodes (services `bench-sub-0..n`, so `n` groups) on the current
/// runtime, each subscribed to [`TOPIC`] with the handler `make_handler(i)` returns.
pub(crate) async fn start_subscribers<H, Fut>(
    ca: &MeshCa,
    n: usize,
    mut make_handler: impl FnMut(usize) -> H,
) -> BenchResult<Vec<Node>>
where
    H: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let service = format!("bench-sub-{i}");
        let node = Node::builder(&service)
            .listen(LOOPBACK)
            .identity(ca.issue(&service).map_err(shoal_err)?)
            .trust(ca.clone())
            .start()
            .await
            .map_err(shoal_err)?;
        node.subscribe(TOPIC, make_handler(i))
            .await
            .map_err(shoal_err)?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Starts the publisher node, peered with `subscribers`, and waits until it knows all of
/// them as audiences of [`TOPIC`].
pub(crate) async fn start_publisher(ca: MeshCa, subscribers: &[SocketAddr]) -> BenchResult<Node> {
    let node = Node::builder("bench-publisher")
        .listen(LOOPBACK)
        .identity(ca.issue("bench-publisher").map_err(shoal_err)?)
        .trust(ca)
        .peers(subscribers.iter().copied())
        .start()
        .await
        .map_err(shoal_err)?;
    node.wait_for_subscribers(TOPIC, subscribers.len(), SETUP_TIMEOUT)
        .await
        .map_err(shoal_err)?;
    Ok(node)
}

/// Runs subscriber nodes until told to stop, then shuts them down.
pub(crate) async fn serve_subscribers(
    nodes: Vec<Node>,
    announce: Announce<Vec<SocketAddr>>,
    shutdown: Shutdown,
) -> BenchResult<()> {
    announce.send(nodes.iter().map(Node::local_addr).collect())?;
    shutdown.wait().await;
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}

fn run_shoal(config: &BenchConfig, n: usize) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    let name = format!("{PUBLISH_PREFIX}-{n}");
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let base = std::time::Instant::now();
    let per_sub = (0..n)
        .map(|_| shared_histogram())
        .collect::<BenchResult<Vec<_>>>()?;
    let server_hists = per_sub.clone();
    // Latest handler arrival (ns since `base`) of the event in flight.
    let latest = Arc::new(AtomicU64::new(0));
    let server_latest = Arc::clone(&latest);
    let last = run_pair(
        &name,
        &config,
        move |announce, shutdown| async move {
            let nodes = start_subscribers(&server_ca, n, |i| {
                let (h, latest) = (Arc::clone(&server_hists[i]), Arc::clone(&server_latest));
                move |msg: Message| {
                    let (h, latest) = (Arc::clone(&h), Arc::clone(&latest));
                    async move {
                        let (seq, latency, now) = arrival(msg.payload(), base)
                            .ok_or_else(|| HandlerError::permanent("event without a stamp"))?;
                        if seq >= config.warmup {
                            lock(&h).saturating_record(latency.max(1));
                        }
                        latest.fetch_max(now, Ordering::AcqRel);
                        Ok(())
                    }
                }
            })
            .await?;
            serve_subscribers(nodes, announce, shutdown).await
        },
        move |addrs| publish_loop(ca, addrs, config, base, latest),
    )?;
    let mut all = report::new_histogram()?;
    for h in &per_sub {
        let h = lock(h);
        expect_count(&name, &h, config.count)?;
        all.add(&*h)
            .map_err(|e| BenchError::msg(format!("merging histograms: {e:?}")))?;
    }
    let mut rows = vec![LatencyReport::from_histogram(&name, &all)];
    if n > 1 {
        rows.push(LatencyReport::from_histogram(format!("{name}-last"), &last));
    }
    Ok(rows)
}

/// The publisher side: closed loop of reliable publishes; returns, per measured event, the
/// time until the last subscriber's handler ran.
async fn publish_loop(
    ca: MeshCa,
    subscribers: Vec<SocketAddr>,
    config: BenchConfig,
    base: std::time::Instant,
    latest: Arc<AtomicU64>,
) -> BenchResult<Histogram<u64>> {
    let node = start_publisher(ca, &subscribers).await?;
    let mut last = report::new_histogram()?;
    let mut buf = vec![0xA5u8; stamped_len(config.payload)];
    let result = async {
        for seq in 0..config.warmup + config.count {
            latest.store(0, Ordering::Release);
            let sent = stamp(&mut buf, seq, base);
            let event = Message::event(TOPIC, Bytes::copy_from_slice(&buf));
            let receipt = node.publish(event).await.map_err(shoal_err)?;
            if receipt.deliveries.len() != subscribers.len() {
                return Err(BenchError::msg(format!(
                    "event {seq} reached {} of {} subscribers",
                    receipt.deliveries.len(),
                    subscribers.len()
                )));
            }
            if seq >= config.warmup {
                let arrived = latest.load(Ordering::Acquire);
                last.saturating_record(arrived.saturating_sub(sent).max(1));
            }
        }
        Ok(last)
    }
    .await;
    node.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let base = std::time::Instant::now();
        let mut buf = vec![0u8; stamped_len(4)];
        assert_eq!(buf.len(), STAMP_LEN);
        let sent = stamp(&mut buf, 7, base);
        let (seq, latency, now) = arrival(&buf, base).expect("stamped");
        assert_eq!(seq, 7);
        assert_eq!(now - sent, latency);
        assert!(arrival(&buf[..10], base).is_none());
    }
}
