//! Prometheus metrics (feature `metrics`): what a node did, per peer service and message, and
//! how long it took, for a Prometheus server to scrape.
//!
//! Two ways in, both opt-in:
//!
//! - [`crate::NodeBuilder::metrics`] with [`MetricsConfig::listen`] serves
//!   `http://ADDR/metrics` from the node itself (`shoal serve --metrics ADDR` does the same);
//!   [`Node::metrics_addr`] gives the bound address (port 0 picks a free one).
//! - [`Node::register_metrics`] adds the node's collector to a
//!   [`prometheus_client::registry::Registry`] the service already serves, so Shoal's metrics
//!   come out of the service's own `/metrics`.
//!
//! ```no_run
//! # async fn run(identity: shoal::Identity, ca: shoal::MeshCa) -> Result<(), shoal::Error> {
//! use shoal::{MetricsConfig, Node};
//!
//! let node = Node::builder("invoice")
//!     .identity(identity)
//!     .trust(ca)
//!     .metrics(MetricsConfig::listen("127.0.0.1:9464".parse().unwrap()))
//!     .start()
//!     .await?;
//! println!("metrics on http://{}/metrics", node.metrics_addr().unwrap());
//!
//! // Or into the service's own registry:
//! let mut registry = prometheus_client::registry::Registry::default();
//! node.register_metrics(&mut registry);
//! # Ok(()) }
//! ```
//!
//! **Cost.** Totals (connections, refusals, ...) and gauges are read from state the node keeps
//! anyway, at scrape time. The per-message series are recorded by the engine only once metrics
//! are on: one branch per event when off; when on, a comparison with the series used last (or
//! one hash of the service and message names), a few additions and, for acks and handler
//! runs, a histogram bucket. Labels are written at scrape time, never per message.
//!
//! The metric names, labels and buckets are listed in the README's Metrics section.

mod collect;
mod serve;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use prometheus_client::registry::Registry;

use crate::Node;
pub(crate) use serve::{bind, serve};

/// How a node exposes its metrics: see [`crate::NodeBuilder::metrics`].
///
/// Binding an address other than loopback makes the metrics (service and message names,
/// counts) readable by whoever can reach it: that choice is the caller's.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`; `None`: record only (see [`Node::register_metrics`]).
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Records metrics and serves them at `http://addr/metrics` (OpenMetrics text, which
    /// Prometheus scrapes as is). Port 0 picks a free port: see [`Node::metrics_addr`].
    pub fn listen(addr: SocketAddr) -> Self {
        Self { listen: Some(addr) }
    }

    /// Records metrics without serving them: add them to your own registry with
    /// [`Node::register_metrics`].
    pub fn record() -> Self {
        Self::default()
    }
}

/// The node's metrics state, kept by the driver.
#[derive(Debug, Default)]
pub(crate) struct Exporter {
    /// The address the endpoint was bound to.
    pub(crate) addr: OnceLock<SocketAddr>,
    /// The outbox's counts from the last refresh (queried on a blocking thread, never by the
    /// collector itself: see `collect::refresh_outbox`).
    #[cfg(feature = "outbox")]
    pub(crate) outbox: std::sync::Mutex<Option<crate::outbox::OutboxStats>>,
    /// Whether the periodic outbox refresh for [`Node::register_metrics`] runs.
    #[cfg(feature = "outbox")]
    pub(crate) refreshing: std::sync::atomic::AtomicBool,
}

impl Node {
    /// The address the metrics endpoint listens on, if [`crate::NodeBuilder::metrics`] asked
    /// for one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.driver().metrics.addr.get().copied()
    }

    /// Adds this node's metrics to `registry` (a registry the service serves itself), and
    /// turns on the per-message series if [`crate::NodeBuilder::metrics`] did not already.
    ///
    /// The collector holds the node weakly: once the node is dropped it reports nothing. With
    /// an outbox, its gauges come from a query made every 10 s on a blocking thread (the
    /// built-in endpoint queries at each scrape), so encoding the registry never waits for the
    /// database. Register once per registry: two registrations report every metric twice.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let driver = self.driver();
        driver.call(|engine, _| engine.enable_metrics());
        #[cfg(feature = "outbox")]
        collect::refresh_outbox_every(driver);
        registry.register_collector(Box::new(collect::NodeCollector::new(Arc::downgrade(
            driver,
        ))));
    }
}
