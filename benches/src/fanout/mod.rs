//! `fanout` (rows `shoal-fanout-…`): one publisher to 1, 4 and 16 subscribers on a LAN of
//! network namespaces, reliable `publish`, once with multicast fan-out on and once on the
//! unicast path in the same run (issue 14's benchmark). Run by hand as root
//! (`benches/src/bin/fanout.rs`); never in CI.
//!
//! The LAN is `shoal_discovery::netns::Lan`: host `h0` is the publisher, `h1..` the
//! subscribers, the bridge in a namespace of its own; nodes dial each other as static peers
//! (no mDNS). Every subscriber has an every-instance subscription, so each event goes to all
//! of them. Every node runs on its own thread inside its host's namespace, all in this
//! process, so send and receive stamps come from one clock.
//!
//! Per row (subscribers × payload × path), on one set of started nodes:
//!
//! 1. **Throughput**: up to [`Options::window`] publishes in flight, for at most
//!    [`Options::events`] events or [`Options::seconds`]. Gives delivered msgs/s per
//!    subscriber, the publisher's CPU per event (its node thread's CPU time, from
//!    `/proc/self/task/<tid>/schedstat`; the publish loop runs on that thread too) and the
//!    bytes the publisher's `lan0` sent per event (`tx_bytes` from `ip -s -j link` in its
//!    namespace). "Per event" is per published event, which reaches every subscriber.
//! 2. **Latency**: one publish at a time (the next after the receipt), at most
//!    [`Options::latency_events`] or [`Options::seconds`]; per event the latency of the
//!    *last* subscriber to run its handler (send stamp in the payload).
//! 3. **Latency under 1 % loss**: the same with `nft … meta l4proto udp numgen random mod
//!    100 < 1 drop` in every subscriber's namespace's input chain (datagrams and QUIC alike).

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use shoal::{HandlerError, MeshCa, Message, MulticastConfig, Node, NodeBuilder, SubscribeOptions};
use shoal_discovery::netns::{self, HOST_IF, Lan};

use crate::error::{BenchError, BenchResult};
use crate::shoal_scenarios::shoal_err;

mod links;
mod ns_node;
mod render;
mod slots;

pub use render::{render_markdown, render_text, targets};

use links::{nft_loss, tx_bytes};
use ns_node::NsNode;
use slots::Slots;

const TOPIC: &str = "fanout.tick";
/// The nftables table the loss pass adds in each subscriber's namespace (and then deletes).
pub(super) const LOSS_TABLE: &str = "shoal_fanout";
/// The loss rule (1 % of UDP packets dropped on arrival).
pub const LOSS_RULE: &str = "meta l4proto udp numgen random mod 100 < 1 drop";
/// Bound for a step that normally takes milliseconds (connections, subscriptions).
const STEP: Duration = Duration::from_secs(15);
/// Events published (not measured) before each row, so keys and connections are warm.
const WARM_UP: u64 = 300;
/// Stamp and sequence number at the head of each payload.
const HEADER: usize = 16;

/// The path the events take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `NodeBuilder::multicast` on `lan0`.
    Multicast,
    /// No multicast: one QUIC copy per subscriber (the floor of the ratios).
    Unicast,
}

impl Path {
    /// Its name in row names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Multicast => "multicast",
            Self::Unicast => "unicast",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Subscriber counts (rows), each at most [`netns::MAX_HOSTS`] - 1.
    pub subscribers: Vec<usize>,
    /// Payload sizes in bytes (at least 16: stamp and sequence number).
    pub sizes: Vec<usize>,
    /// Most events in a throughput pass.
    pub events: u64,
    /// Most events in a latency pass.
    pub latency_events: u64,
    /// Publishes in flight in a throughput pass.
    pub window: usize,
    /// Longest any one pass runs.
    pub seconds: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            subscribers: vec![1, 4, 16],
            sizes: vec![64, 1024],
            events: 20_000,
            latency_events: 2_000,
            window: 64,
            seconds: Duration::from_secs(2),
        }
    }
}

/// The row name of one combination, e.g. `shoal-fanout-multicast-16-1024B`.
pub fn row_name(path: Path, subscribers: usize, size: usize) -> String {
    format!("shoal-fanout-{}-{subscribers}-{size}B", path.name())
}

/// Every row `options` asks for, in run order (per subscriber count: multicast, then unicast).
pub fn plan(options: &Options) -> Vec<(Path, usize, usize)> {
    let mut rows = Vec::new();
    for &n in &options.subscribers {
        for path in [Path::Multicast, Path::Unicast] {
            for &size in &options.sizes {
                rows.push((path, n, size));
            }
        }
    }
    rows
}

/// Latency percentiles, ns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Events measured.
    pub samples: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

/// One row's figures.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its name ([`row_name`]).
    pub name: String,
    /// The path.
    pub path: Path,
    /// Subscribers.
    pub subscribers: usize,
    /// Payload bytes.
    pub size: usize,
    /// Delivered events per second per subscriber (throughput pass).
    pub per_sub_rate: f64,
    /// Publisher thread CPU ns per published event (throughput pass).
    pub cpu_ns_per_event: f64,
    /// A subscriber's thread CPU ns per event, the mean over subscribers (throughput pass).
    pub sub_cpu_ns_per_event: f64,
    /// Events per datagram sent to the group, heartbeats and repairs counted as datagrams
    /// (throughput pass; `None` on unicast).
    pub events_per_datagram: Option<f64>,
    /// Bytes sent on the publisher's link per published event (throughput pass).
    pub bytes_per_event: f64,
    /// Last subscriber's latency, no loss.
    pub latency: Latency,
    /// Last subscriber's latency, 1 % UDP loss at each subscriber (`None`: no `nft`).
    pub lossy: Option<Latency>,
    /// Datagrams the publisher sent to the group over the whole row.
    pub datagrams: u64,
    /// Lost datagrams the publisher sent again over the whole row, the 1 % loss pass
    /// included (`NodeStats::multicast_repairs`; 0 on unicast, where QUIC resends).
    pub repairs: u64,
    /// Subscribers moved to unicast (multicast rows).
    pub demotions: u64,
}

/// Runs every row of `options`; prints progress on stderr. Returns `Ok(None)` (after saying
/// "skipped: …" on stdout) without the rights to create namespaces.
///
/// # Errors
///
/// A node that does not start or connect, a publish that fails, a subscriber that missed an
/// event.
pub fn run(options: &Options) -> BenchResult<Option<Vec<Row>>> {
    if !netns::can_create_netns_or_say_skipped("fanout") {
        return Ok(None);
    }
    check_options(options)?;
    let nft = netns::nft_available();
    if !nft {
        println!("fanout: loss passes skipped: `nft` is not installed");
    }
    let hosts = options.subscribers.iter().max().copied().unwrap_or(1) + 1;
    let lan = Lan::new(hosts)?;
    eprintln!(
        "fanout: LAN {} (if interrupted: scripts/netns.sh down {0})",
        lan.prefix()
    );
    let ca = MeshCa::generate("shoal fanout bench").map_err(shoal_err)?;
    let runtime = crate::runtime::build()?;
    let mut rows = Vec::new();
    for (set, &n) in options.subscribers.iter().enumerate() {
        for path in [Path::Multicast, Path::Unicast] {
            // A fresh port per set, so no packet of the last set reaches this one.
            let port = 7100 + u16::try_from(set * 2 + usize::from(path == Path::Unicast))?;
            let nodes = NodeSet::start(&lan, &ca, n, path, port)?;
            for &size in &options.sizes {
                let name = row_name(path, n, size);
                eprintln!("fanout: {name} ...");
                let row = runtime
                    .block_on(nodes.row(&lan, options, size, nft))
                    .map_err(|e| e.context(&name))?;
                rows.push(Row { name, ..row });
            }
        }
    }
    Ok(Some(rows))
}

fn check_options(options: &Options) -> BenchResult<()> {
    if options
        .subscribers
        .iter()
        .any(|&n| n == 0 || n >= netns::MAX_HOSTS)
    {
        return Err(BenchError::msg(format!(
            "subscribers: 1..{} each",
            netns::MAX_HOSTS
        )));
    }
    if options.sizes.iter().any(|&s| s < HEADER) {
        return Err(BenchError::msg(format!("sizes: at least {HEADER} bytes")));
    }
    Ok(())
}

/// A publisher and `n` subscribers, started for one path.
struct NodeSet {
    publisher: NsNode,
    subscribers: Vec<NsNode>,
    slots: Arc<Slots>,
    next_seq: AtomicU64,
    publisher_ns: String,
    path: Path,
    subscribed: AtomicBool,
}

impl NodeSet {
    fn start(lan: &Lan, ca: &MeshCa, n: usize, path: Path, port: u16) -> BenchResult<Self> {
        let addr = |i: usize| SocketAddr::V4(SocketAddrV4::new(Lan::host_addr(i), port));
        let builder = |i: usize, service: &str, peers: Vec<SocketAddr>| -> BenchResult<_> {
            let builder = Node::builder(service)
                .listen(addr(i))
                .identity(ca.issue(service).map_err(shoal_err)?)
                .trust(ca.clone())
                .peers(peers)
                .shutdown_grace(Duration::from_secs(2));
            Ok(match path {
                Path::Multicast => builder.multicast(MulticastConfig::new(HOST_IF)),
                Path::Unicast => builder,
            })
        };
        let subscribers = (1..=n)
            .map(|i| NsNode::start(lan.host(i), builder(i, "sub", vec![addr(0)])?))
            .collect::<BenchResult<Vec<_>>>()?;
        let publisher: NodeBuilder = builder(0, "pub", (1..=n).map(addr).collect())?;
        let publisher = NsNode::start(lan.host(0), publisher)?;
        Ok(Self {
            publisher,
            subscribers,
            slots: Arc::new(Slots::new(1 << 20)),
            next_seq: AtomicU64::new(0),
            publisher_ns: lan.host(0).to_owned(),
            path,
            subscribed: AtomicBool::new(false),
        })
    }

    /// Subscribes everyone (once) and waits until the publisher knows them all.
    async fn ready(&self) -> BenchResult<()> {
        let n = self.subscribers.len();
        if self.subscribed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        for sub in &self.subscribers {
            let slots = Arc::clone(&self.slots);
            sub.node
                .subscribe_with(
                    SubscribeOptions::new(TOPIC).every_instance(),
                    move |msg: Message| {
                        slots.record(msg.payload());
                        async { Ok::<_, HandlerError>(()) }
                    },
                )
                .await
                .map_err(shoal_err)?;
        }
        let node = &self.publisher.node;
        node.wait_for_instances("sub", n, STEP)
            .await
            .map_err(shoal_err)?;
        node.wait_for_subscribers(TOPIC, n, STEP)
            .await
            .map_err(shoal_err)
    }

    /// The CPU time of every subscriber's thread, summed.
    fn subscribers_cpu_ns(&self) -> BenchResult<u64> {
        self.subscribers.iter().map(NsNode::cpu_ns).sum()
    }

    /// Reserves `count` sequence numbers.
    fn reserve(&self, count: u64) -> BenchResult<std::ops::Range<u64>> {
        let start = self.next_seq.fetch_add(count, Ordering::Relaxed);
        let end = start + count;
        if usize::try_from(end).unwrap_or(usize::MAX) > self.slots.capacity() {
            return Err(BenchError::msg("more events than the run has slots for"));
        }
        Ok(start..end)
    }

    async fn row(&self, lan: &Lan, options: &Options, size: usize, nft: bool) -> BenchResult<Row> {
        self.ready().await?;
        let n = self.subscribers.len();
        let before = self.publisher.node.stats();
        self.publish(self.reserve(WARM_UP)?, size, 16, options.seconds * 5)
            .await?;

        let (cpu0, tx0) = (self.publisher.cpu_ns()?, tx_bytes(&self.publisher_ns)?);
        let sub_cpu0 = self.subscribers_cpu_ns()?;
        let events0 = self.publisher.node.stats();
        let seqs = self.reserve(options.events)?;
        let (published, elapsed) = self
            .publish(seqs.clone(), size, options.window, options.seconds)
            .await?;
        let (cpu1, tx1) = (self.publisher.cpu_ns()?, tx_bytes(&self.publisher_ns)?);
        let sub_cpu1 = self.subscribers_cpu_ns()?;
        let events1 = self.publisher.node.stats();
        self.check_delivered(seqs.start..seqs.start + published, n)?;
        let per_event = |delta: u64| delta as f64 / published.max(1) as f64;

        let latency = self.latency(options, size).await?;
        let lossy = if nft {
            for i in 1..=n {
                nft_loss(lan.host(i), true)?;
            }
            let lossy = self.latency(options, size).await;
            for i in 1..=n {
                nft_loss(lan.host(i), false)?;
            }
            Some(lossy?)
        } else {
            None
        };
        let after = self.publisher.node.stats();
        Ok(Row {
            name: String::new(),
            path: self.path,
            subscribers: n,
            size,
            per_sub_rate: published as f64 / elapsed.as_secs_f64(),
            cpu_ns_per_event: per_event(cpu1.saturating_sub(cpu0)),
            sub_cpu_ns_per_event: per_event(sub_cpu1.saturating_sub(sub_cpu0)) / n.max(1) as f64,
            events_per_datagram: (events1.multicast_sent > events0.multicast_sent).then(|| {
                (events1.multicast_events - events0.multicast_events) as f64
                    / (events1.multicast_sent - events0.multicast_sent) as f64
            }),
            bytes_per_event: per_event(tx1.saturating_sub(tx0)),
            latency,
            lossy,
            datagrams: after.multicast_sent - before.multicast_sent,
            repairs: after.multicast_repairs - before.multicast_repairs,
            demotions: after.multicast_demotions - before.multicast_demotions,
        })
    }

    /// Publishes events `seqs` with `window` in flight on the publisher's thread, stopping
    /// early after `limit`; returns how many were published (every receipt resolved) and how
    /// long from the first to the last receipt.
    async fn publish(
        &self,
        seqs: std::ops::Range<u64>,
        size: usize,
        window: usize,
        limit: Duration,
    ) -> BenchResult<(u64, Duration)> {
        let slots = Arc::clone(&self.slots);
        let result = self
            .publisher
            .run(move |node: Node| async move {
                let start = Instant::now();
                let mut in_flight = FuturesUnordered::new();
                let mut next = seqs.start;
                let mut done = 0;
                loop {
                    while in_flight.len() < window && next < seqs.end && start.elapsed() < limit {
                        let event = Message::event(TOPIC, slots.payload(next, size));
                        in_flight.push(node.publish(event));
                        next += 1;
                    }
                    match in_flight.next().await {
                        Some(Ok(_receipt)) => done += 1,
                        Some(Err(e)) => return Err(shoal_err(e).context("publish")),
                        None => return Ok((done, start.elapsed())),
                    }
                }
            })
            .await?;
        // No hang: the node's ack timeout resolves (or fails) every receipt.
        result
    }

    /// The closed-loop latency pass: one event at a time, the last subscriber's latency each.
    async fn latency(&self, options: &Options, size: usize) -> BenchResult<Latency> {
        let seqs = self.reserve(options.latency_events)?;
        let (published, _) = self.publish(seqs.clone(), size, 1, options.seconds).await?;
        let measured = seqs.start..seqs.start + published;
        self.check_delivered(measured.clone(), self.subscribers.len())?;
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| BenchError::msg(format!("histogram: {e}")))?;
        for seq in measured {
            let i = usize::try_from(seq)?;
            let ns = self.slots.latency_ns(i).max(1);
            histogram.saturating_record(ns);
        }
        Ok(Latency {
            samples: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
        })
    }

    /// Every event of `seqs` ran exactly once on each of `n` subscribers.
    fn check_delivered(&self, seqs: std::ops::Range<u64>, n: usize) -> BenchResult<()> {
        for seq in seqs {
            let got = self.slots.runs(usize::try_from(seq)?);
            if usize::try_from(got)? != n {
                return Err(BenchError::msg(format!(
                    "event {seq} ran on {got} subscribers, not {n}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_names_every_row_with_its_unicast_floor() {
        let rows = plan(&Options::default());
        assert_eq!(rows.len(), 12);
        let names: Vec<String> = rows.iter().map(|&(p, n, s)| row_name(p, n, s)).collect();
        assert!(names.contains(&"shoal-fanout-multicast-16-1024B".to_owned()));
        for name in names.iter().filter(|n| n.contains("multicast")) {
            let floor = name.replace("multicast", "unicast");
            assert!(names.contains(&floor), "{name} has no unicast floor");
        }
    }
}
