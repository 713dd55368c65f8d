//! The collector: reads the node at scrape time and writes every metric with
//! `prometheus-client`'s encoder (never by hand).

use std::fmt;
#[cfg(feature = "outbox")]
use std::sync::Arc;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::engine::metrics::{BUCKETS, DeadReason, Histogram, NackReason, Snapshot};
use crate::runtime::Driver;

/// Reports one node's metrics; holds the node weakly.
#[derive(Debug)]
pub(crate) struct NodeCollector {
    driver: Weak<Driver>,
}

impl NodeCollector {
    pub(crate) fn new(driver: Weak<Driver>) -> Self {
        Self { driver }
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(driver) = self.driver.upgrade() else {
            return Ok(());
        };
        let snapshot = driver.read(|engine| engine.metrics_snapshot());
        let stats = crate::inspect::node_stats(&driver);
        per_message(&mut encoder, &snapshot)?;

        let totals: [(&str, &str, u64); 17] = [
            (
                "shoal_messages_unhandled",
                "Messages refused because no handler or subscription here takes their name.",
                stats.unhandled,
            ),
            (
                "shoal_replies_resent",
                "Duplicates of handled requests answered with the reply kept for them.",
                stats.replies_resent,
            ),
            (
                "shoal_replies_missing",
                "Duplicates of handled requests whose reply was no longer kept (refused for good).",
                stats.replies_missing,
            ),
            (
                "shoal_events_published",
                "Events published by this node (each event of a batch counts).",
                stats.published,
            ),
            (
                "shoal_messages_gathered",
                "Lone events, commands and requests of separate calls that travelled with others of the same turn as one operation.",
                stats.gathered,
            ),
            (
                "shoal_events_unrouted",
                "Events published on a topic nobody subscribed to.",
                stats.events_unrouted,
            ),
            (
                "shoal_events_dropped",
                "Best-effort event copies dropped (full queue, or no live instance of their group).",
                stats.events_dropped,
            ),
            (
                "shoal_background_refused",
                "Background publishes and sends refused because the node held max_background_publishes messages or max_background_bytes.",
                stats.background_refused,
            ),
            (
                "shoal_frames_malformed",
                "Frames from peers that could not be decoded or broke a limit.",
                stats.malformed_frames,
            ),
            (
                "shoal_connections_opened",
                "Peer connections established since start.",
                stats.connections,
            ),
            (
                "shoal_handshake_failures",
                "Connections refused or failed during the TLS or Shoal handshake.",
                stats.handshake_failures,
            ),
            (
                "shoal_connections_refused",
                "Incoming connections refused by the limits against floods, before TLS.",
                stats.connections_refused,
            ),
            (
                "shoal_unauthorized_messages",
                "Messages and replies refused by the policy.",
                stats.unauthorized_messages,
            ),
            (
                "shoal_unauthorized_events",
                "Event copies refused by the policy.",
                stats.unauthorized_events,
            ),
            (
                "shoal_unauthorized_subscriptions",
                "Subscriptions (peers' and this node's) refused by the policy.",
                stats.unauthorized_subscriptions,
            ),
            (
                "shoal_unauthorized_publishes",
                "This node's publish calls refused by the policy.",
                stats.unauthorized_publishes,
            ),
            (
                "shoal_forged_return_addresses",
                "Messages refused because their return address was not their sender's.",
                stats.forged_return_addresses,
            ),
        ];
        for (name, help, value) in totals {
            counter(&mut encoder, name, help, value)?;
        }
        counter(
            &mut encoder,
            "shoal_busy_poll_seconds",
            "Time the node's runtime spent busy polling for input (NodeBuilder::busy_poll, and under load by default).",
            stats.busy_poll_time.as_secs_f64(),
        )?;
        let gauges = [
            (
                "shoal_connections",
                "Peer connections open now.",
                snapshot.connections,
            ),
            (
                "shoal_subscriptions",
                "This node's own subscriptions.",
                snapshot.subscriptions,
            ),
            (
                "shoal_peer_subscriptions",
                "Subscriptions the connected peers announced.",
                snapshot.peer_subscriptions,
            ),
            (
                "shoal_background_publishes",
                "Events of background publishes and commands of background sends on their way, staged ones included (each held until acknowledged).",
                snapshot.background_publishes,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(
                &mut encoder,
                name,
                help,
                i64::try_from(value).unwrap_or(i64::MAX),
            )?;
        }
        #[cfg(feature = "outbox")]
        outbox(&mut encoder, &driver)?;
        Ok(())
    }
}

/// The per (service, message) families; each is written only when it has a series.
fn per_message(encoder: &mut DescriptorEncoder, s: &Snapshot) -> fmt::Result {
    let out = &s.outbound;
    pairs(
        encoder,
        "shoal_messages_sent",
        "Messages handed to a delivery, by destination service (or subscriber group) and message name (or topic).",
        out,
        |o| o.sent,
    )?;
    pairs(
        encoder,
        "shoal_messages_acked",
        "Messages acknowledged by a receiver.",
        out,
        |o| o.acked,
    )?;
    pairs(
        encoder,
        "shoal_messages_retried",
        "Messages sent again (attempts after the first).",
        out,
        |o| o.retried,
    )?;
    reasons(
        encoder,
        "shoal_messages_nacked",
        "Negative acknowledgements received, by the receiver's reason.",
        out,
        |o| {
            NackReason::ALL
                .iter()
                .map(|r| r.as_str())
                .zip(o.nacked)
                .collect()
        },
    )?;
    reasons(
        encoder,
        "shoal_messages_dead_lettered",
        "Messages given up on, by reason (refused, gave_up, shutdown).",
        out,
        |o| {
            DeadReason::ALL
                .iter()
                .map(|r| r.as_str())
                .zip(o.dead_lettered)
                .collect()
        },
    )?;
    histograms(
        encoder,
        "shoal_delivery_duration_seconds",
        "From the start of a reliable delivery to its acknowledgement (retries and waits included).",
        out,
        |o| &o.latency,
    )?;

    let inb = &s.inbound;
    pairs(
        encoder,
        "shoal_messages_handled",
        "Messages (and event copies) whose handlers succeeded here, by sending service and message name (or topic).",
        inb,
        |i| i.handled,
    )?;
    pairs(
        encoder,
        "shoal_messages_handler_failed",
        "Messages whose handler returned an error or panicked.",
        inb,
        |i| i.failed,
    )?;
    pairs(
        encoder,
        "shoal_messages_deduplicated",
        "Copies recognised as duplicates by the dedup window (acked again, not handled).",
        inb,
        |i| i.deduplicated,
    )?;
    histograms(
        encoder,
        "shoal_handler_duration_seconds",
        "How long handlers ran, from being handed the message to their outcome.",
        inb,
        |i| &i.latency,
    )
}

/// A counter family labelled by service and message: `value` of each series.
fn pairs<S>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(String, String, S)],
    value: impl Fn(&S) -> u64,
) -> fmt::Result {
    let samples = rows.iter().map(|(service, message, s)| {
        (
            [("service", service.as_str()), ("message", message.as_str())],
            value(s),
        )
    });
    family(encoder, name, help, samples)
}

/// A counter family labelled by service, message and reason: only the reasons that occurred.
fn reasons<S>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(String, String, S)],
    by_reason: impl Fn(&S) -> Vec<(&'static str, u64)>,
) -> fmt::Result {
    let samples = rows.iter().flat_map(|(service, message, s)| {
        by_reason(s)
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(move |(reason, n)| {
                let labels = [
                    ("service", service.as_str()),
                    ("message", message.as_str()),
                    ("reason", reason),
                ];
                (labels, n)
            })
    });
    family(encoder, name, help, samples)
}

/// A counter family with one sample per label set; nothing when there is none.
fn family<L, I>(encoder: &mut DescriptorEncoder, name: &str, help: &str, samples: I) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet,
    I: Iterator<Item = (L, u64)>,
{
    let mut samples = samples.peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram family labelled by service and message: `histogram` of each series that has
/// observations.
fn histograms<S>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(String, String, S)],
    histogram: impl Fn(&S) -> &Histogram,
) -> fmt::Result {
    let mut series = rows
        .iter()
        .map(|(service, message, s)| (service, message, histogram(s)))
        .filter(|(_, _, h)| h.counts.iter().any(|n| *n > 0))
        .peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let mut buckets = [(0.0, 0); BUCKETS.len() + 1];
    for (service, message, h) in series {
        for (i, bucket) in buckets.iter_mut().enumerate() {
            let bound = BUCKETS.get(i).map_or(f64::INFINITY, |b| b.as_secs_f64());
            *bucket = (bound, h.counts[i]);
        }
        let count = h.counts.iter().sum();
        let labels = [("service", service.as_str()), ("message", message.as_str())];
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum.as_secs_f64(), count, &buckets, None)?;
    }
    Ok(())
}

/// A counter of whole events (`u64`) or of seconds (`f64`).
fn counter<N: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The outbox's gauges, from the last refresh; nothing without an outbox or before the
/// first refresh.
#[cfg(feature = "outbox")]
fn outbox(encoder: &mut DescriptorEncoder, driver: &Driver) -> fmt::Result {
    let Some(stats) = *crate::sync::lock(&driver.metrics.outbox) else {
        return Ok(());
    };
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    gauge(
        encoder,
        "shoal_outbox_pending",
        "Outbox rows waiting to be delivered.",
        count(stats.pending),
    )?;
    gauge(
        encoder,
        "shoal_outbox_dead",
        "Outbox rows given up on (kept until pruned).",
        count(stats.dead),
    )?;
    let age = stats.oldest_pending.map_or(0.0, |age| age.as_secs_f64());
    let metric = ConstGauge::new(age);
    metric.encode(encoder.encode_descriptor(
        "shoal_outbox_oldest_pending_age_seconds",
        "Age of the oldest pending outbox row (0 when none waits): how far behind the relay is.",
        None,
        metric.metric_type(),
    )?)
}

/// How long one outbox query may take before a scrape goes on with the last counts.
#[cfg(feature = "outbox")]
const OUTBOX_QUERY_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Queries the outbox's counts on a blocking thread (the store's calls block: SQLite's lock,
/// PostgreSQL's own runtime) and keeps them for the collector. A query slower than
/// [`OUTBOX_QUERY_LIMIT`] is left to finish on its own; the last counts stay.
#[cfg(feature = "outbox")]
pub(crate) async fn refresh_outbox(driver: &Arc<Driver>) {
    let Some(store) = driver.outbox.get().cloned() else {
        return;
    };
    let query = tokio::task::spawn_blocking(move || store.stats());
    match tokio::time::timeout(OUTBOX_QUERY_LIMIT, query).await {
        Ok(Ok(Ok(stats))) => *crate::sync::lock(&driver.metrics.outbox) = Some(stats),
        Ok(Ok(Err(e))) => tracing::warn!("metrics: outbox counts not read: {e}"),
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("metrics: outbox counts not read in {OUTBOX_QUERY_LIMIT:?}")
        }
    }
}

/// Refreshes the outbox's counts every 10 s while the node runs (for collectors in the
/// service's own registry, whose encoding must not wait for the database). Started once.
#[cfg(feature = "outbox")]
pub(crate) fn refresh_outbox_every(driver: &Arc<Driver>) {
    use std::sync::atomic::Ordering;
    if driver.outbox.get().is_none() || driver.metrics.refreshing.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(driver);
    let stopping = driver.stopping.clone();
    driver.tasks.spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stopping.cancelled() => return,
            }
            let Some(driver) = weak.upgrade() else { return };
            refresh_outbox(&driver).await;
        }
    });
}
