//! Publish/subscribe one-way latency: publish → subscriber handler, to 1 and 8 subscriber
//! nodes (scenario `shoal-publish`), against raw quinn's one-way floor to 1 and 8 receivers
//! (scenario `quinn-fanout`).
//!
//! Rivals measure their `<variant>-publish-1`, `-publish-8` and `-publish-8-last` rows the
//! same way by reusing [`Probe`]: [`Probe::new`] before the run, [`Probe::arrived`] in each
//! subscriber when a message arrives, [`Probe::closed_loop`] on the publishing side (its
//! `deliver` closure publishes and waits for every subscriber's ack), [`Probe::rows`] after.
//!
//! All nodes live in one process, so a `std::time::Instant` taken before the run is a clock
//! every thread shares: each message carries its sequence number and its send time (ns since
//! that instant) in its first 16 bytes, and the receiver records `now - sent` on arrival.
//! The loop is **closed**: the next message leaves when the previous one was acknowledged
//! by every receiver (raw quinn: a 1-byte ack written after recording; Shoal: the reliable
//! `publish` resolves when every subscriber group's handler ran and acked). The ack's way
//! back is not timed.
//!
//! Setting as everywhere ([`crate::runtime`]): the receiving side (*all* quinn servers, or
//! *all* subscriber nodes) on one thread and `current_thread` runtime, the sender on another.
//!
//! Rows:
//! * `quinn-oneway` — the baseline: one long-lived bidi stream, mutual TLS, `u32` length
//!   prefix + payload, the server records arrival then writes 1 byte back.
//! * `quinn-fanout-N` (N > 1) — the same to N servers, each its own endpoint (socket) with
//!   one connection from the client's single endpoint; the client writes each frame to all N
//!   streams, then reads the N acks. Every server's latency (N samples per frame).
//! * `shoal-publish-N` — every subscriber's handler latency (N samples per event); each of
//!   the N subscriber nodes is its own service, so its own group, and gets every event.
//! * `-last` variants of both (N > 1) — per message, until the *last* of the N receivers
//!   got it.
//!
//! [`SAME_FAN_OUT`] pairs each Shoal row with the raw quinn row of the same N.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use shoal::{HandlerError, MeshCa, Message, Node};

use crate::error::{BenchError, BenchResult};
use crate::report::{self, LatencyReport, PeerColumn};
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::shoal_scenarios::shoal_err;
use crate::{BenchConfig, LOOPBACK};

mod raw_quinn;

/// Baseline row: raw quinn, one-way over one long-lived stream.
pub const ONEWAY_NAME: &str = "quinn-oneway";
/// Prefix of the raw quinn fan-out rows (`quinn-fanout-8`, `quinn-fanout-8-last`).
/// Also the name of the scenario that runs every raw row (`quinn-oneway` included).
pub const FANOUT_PREFIX: &str = "quinn-fanout";
/// Prefix of the Shoal rows (`shoal-publish-1`, `shoal-publish-8-last`, ...). Also the name
/// of the scenario that runs them.
pub const PUBLISH_PREFIX: &str = "shoal-publish";
/// Suffix of the rows timing each message until the last of its receivers got it.
pub const LAST_SUFFIX: &str = "-last";
/// Subscriber (and raw quinn receiver) counts measured.
pub const FAN_OUTS: [usize; 2] = [1, 8];
/// Topic every pub/sub scenario publishes on.
pub const TOPIC: &str = "bench.topic";
/// Bytes of each message that carry the sequence number and the send time.
pub const STAMP_LEN: usize = 16;
/// How long a publisher waits for its subscribers to be known.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The one-way table's extra ratio column: each Shoal row against raw quinn with the same
/// number of receivers (see [`same_fan_out`]).
pub const SAME_FAN_OUT: PeerColumn = PeerColumn {
    header: "p50 / p99 vs raw quinn, same N",
    peer_of: same_fan_out,
};

/// Bytes per message in one-way scenarios: the payload, but at least [`STAMP_LEN`].
pub fn stamped_len(payload: usize) -> usize {
    payload.max(STAMP_LEN)
}

/// Row name of raw quinn to `n` receivers: [`ONEWAY_NAME`] for 1, `quinn-fanout-<n>` above.
pub fn quinn_row(n: usize) -> String {
    if n == 1 {
        ONEWAY_NAME.to_owned()
    } else {
        format!("{FANOUT_PREFIX}-{n}")
    }
}

/// The raw quinn row a Shoal row compares with: `shoal-publish-N[-last]` →
/// `quinn-fanout-N[-last]` (`quinn-oneway` for N = 1); `None` for other rows.
pub fn same_fan_out(row: &str) -> Option<String> {
    let rest = row.strip_prefix(PUBLISH_PREFIX)?.strip_prefix('-')?;
    let (n, last) = match rest.strip_suffix(LAST_SUFFIX) {
        Some(n) => (n, LAST_SUFFIX),
        None => (rest, ""),
    };
    let n: usize = n.parse().ok()?;
    Some(format!("{}{last}", quinn_row(n)))
}

/// One run of `quinn-fanout`: raw quinn to every one of [`FAN_OUTS`], each on fresh sockets.
pub fn run_quinn(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let mut rows = Vec::new();
    for n in FAN_OUTS {
        rows.extend(raw_quinn::run(config, n)?);
    }
    Ok(rows)
}

/// One run of `shoal-publish`: Shoal to every one of [`FAN_OUTS`], each on fresh nodes.
pub fn run_shoal_publish(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let mut rows = Vec::new();
    for n in FAN_OUTS {
        rows.extend(run_shoal(config, n)?);
    }
    Ok(rows)
}

/// Nanoseconds since `base` (saturating; a run is far shorter than 584 years).
fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Writes `seq` and the current time into the first [`STAMP_LEN`] bytes of `buf`.
fn stamp(buf: &mut [u8], seq: u64, base: Instant) -> u64 {
    let sent = nanos_since(base);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sent.to_le_bytes());
    sent
}

/// `(seq, one-way latency ns, arrival ns)` of a stamped message, read on arrival.
fn arrival(buf: &[u8], base: Instant) -> Option<(u64, u64, u64)> {
    let now = nanos_since(base);
    let seq = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    Some((seq, now.saturating_sub(sent), now))
}

fn lock(h: &Mutex<Histogram<u64>>) -> std::sync::MutexGuard<'_, Histogram<u64>> {
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one fan-out run records, shared by the harness, the receiving thread (per-receiver
/// latencies) and the sending thread (the `-last` times). Cloning is one `Arc` clone.
///
/// Rival scenarios (e.g. [`crate::rivals`]' NATS publish rows) use it too, so every one-way
/// row is measured the same way.
#[derive(Clone)]
pub struct Probe(Arc<ProbeState>);

struct ProbeState {
    config: BenchConfig,
    /// The shared clock stamps are taken against.
    base: Instant,
    /// One latency histogram per receiver.
    per_receiver: Vec<Mutex<Histogram<u64>>>,
    /// Latest arrival (ns since `base`) of the message in flight, over all receivers.
    latest: AtomicU64,
}

impl Probe {
    /// A probe for one run to `receivers` receivers (`config.warmup` unrecorded messages,
    /// then `config.count` recorded ones, each of `max(config.payload, 16)` bytes).
    pub fn new(config: &BenchConfig, receivers: usize) -> BenchResult<Self> {
        let per_receiver = (0..receivers)
            .map(|_| report::new_histogram().map(Mutex::new))
            .collect::<BenchResult<_>>()?;
        Ok(Self(Arc::new(ProbeState {
            config: *config,
            base: Instant::now(),
            per_receiver,
            latest: AtomicU64::new(0),
        })))
    }

    /// The run's settings.
    pub fn config(&self) -> &BenchConfig {
        &self.0.config
    }

    /// Receiver `i` got the stamped message `buf`: records its latency (after the warm-up)
    /// and its arrival. `None` if `buf` carries no stamp.
    pub fn arrived(&self, i: usize, buf: &[u8]) -> Option<()> {
        let (seq, latency, now) = arrival(buf, self.0.base)?;
        if seq >= self.0.config.warmup {
            lock(self.0.per_receiver.get(i)?).saturating_record(latency.max(1));
        }
        self.0.latest.fetch_max(now, Ordering::AcqRel);
        Some(())
    }

    /// The sending side's closed loop: per message, stamps `header` + a stamped payload,
    /// has `deliver` send it and wait until every receiver acknowledged it, and records the
    /// time until the last receiver got it. Returns those times (measured messages only).
    pub async fn closed_loop(
        &self,
        header: &[u8],
        mut deliver: impl AsyncFnMut(u64, &[u8]) -> BenchResult<()>,
    ) -> BenchResult<Histogram<u64>> {
        let BenchConfig {
            warmup,
            count,
            payload,
            ..
        } = self.0.config;
        let mut last = report::new_histogram()?;
        let mut buf = header.to_vec();
        buf.resize(header.len() + stamped_len(payload), 0xA5);
        for seq in 0..warmup + count {
            self.0.latest.store(0, Ordering::Release);
            let sent = stamp(&mut buf[header.len()..], seq, self.0.base);
            deliver(seq, &buf).await?;
            if seq >= warmup {
                let arrived = self.0.latest.load(Ordering::Acquire);
                last.saturating_record(arrived.saturating_sub(sent).max(1));
            }
        }
        Ok(last)
    }

    /// The rows of a run named `name`: every receiver's latencies merged (each receiver
    /// must have recorded every measured message once) and, for more than one receiver,
    /// `<name>-last` from `last`.
    pub fn rows(&self, name: &str, last: &Histogram<u64>) -> BenchResult<Vec<LatencyReport>> {
        let count = self.0.config.count;
        let mut all = report::new_histogram()?;
        for h in &self.0.per_receiver {
            let h = lock(h);
            if h.len() != count {
                return Err(BenchError::msg(format!(
                    "{name}: receiver recorded {} of {count} messages",
                    h.len()
                )));
            }
            all.add(&*h)
                .map_err(|e| BenchError::msg(format!("merging histograms: {e:?}")))?;
        }
        let mut rows = vec![LatencyReport::from_histogram(name, &all)];
        if self.0.per_receiver.len() > 1 {
            rows.push(LatencyReport::from_histogram(
                format!("{name}{LAST_SUFFIX}"),
                last,
            ));
        }
        Ok(rows)
    }
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
    let name = format!("{PUBLISH_PREFIX}-{n}");
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let probe = Probe::new(config, n)?;
    let (server_probe, client_probe) = (probe.clone(), probe.clone());
    let last = run_pair(
        &name,
        config,
        move |announce, shutdown| async move {
            let nodes = start_subscribers(&server_ca, n, |i| {
                let probe = server_probe.clone();
                move |msg: Message| {
                    let probe = probe.clone();
                    async move {
                        probe
                            .arrived(i, msg.payload())
                            .ok_or_else(|| HandlerError::permanent("event without a stamp"))
                    }
                }
            })
            .await?;
            serve_subscribers(nodes, announce, shutdown).await
        },
        move |addrs| publish_loop(ca, addrs, client_probe),
    )?;
    probe.rows(&name, &last)
}

/// The publisher side: closed loop of reliable publishes; returns, per measured event, the
/// time until the last subscriber's handler ran.
async fn publish_loop(
    ca: MeshCa,
    subscribers: Vec<SocketAddr>,
    probe: Probe,
) -> BenchResult<Histogram<u64>> {
    let node = start_publisher(ca, &subscribers).await?;
    let result = probe
        .closed_loop(&[], async |seq, buf| {
            let event = Message::event(TOPIC, Bytes::copy_from_slice(buf));
            let receipt = node.publish(event).await.map_err(shoal_err)?;
            if receipt.deliveries.len() == subscribers.len() {
                Ok(())
            } else {
                Err(BenchError::msg(format!(
                    "event {seq} reached {} of {} subscribers",
                    receipt.deliveries.len(),
                    subscribers.len()
                )))
            }
        })
        .await;
    node.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let base = Instant::now();
        let mut buf = vec![0u8; stamped_len(4)];
        assert_eq!(buf.len(), STAMP_LEN);
        let sent = stamp(&mut buf, 7, base);
        let (seq, latency, now) = arrival(&buf, base).expect("stamped");
        assert_eq!(seq, 7);
        assert_eq!(now - sent, latency);
        assert!(arrival(&buf[..10], base).is_none());
    }

    #[test]
    fn shoal_rows_pair_with_quinn_rows_of_the_same_fan_out() {
        assert_eq!(
            same_fan_out("shoal-publish-1").as_deref(),
            Some(ONEWAY_NAME)
        );
        assert_eq!(
            same_fan_out("shoal-publish-8-last").as_deref(),
            Some("quinn-fanout-8-last")
        );
        assert_eq!(quinn_row(8), "quinn-fanout-8");
        assert_eq!(same_fan_out("quinn-fanout-8"), None);
        assert_eq!(same_fan_out("shoal-publish-x"), None);
    }
}
