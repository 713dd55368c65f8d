//! What a node can tell about its peers and itself: round trips, live peers, waiting for
//! instances, diagnosis, discovery reports, events, counters and dead letters.

use std::time::Duration;

use tokio::sync::broadcast;

use crate::dead_letter::DeadLetter;
use crate::diagnose::ServiceDiagnosis;
use crate::registry::{Route, Target};
use crate::sync::lock;
use crate::{Error, Node, NodeEvent, NodeStats, PeerInfo};

impl Node {
    /// Round-trip time to one instance of `service`, measured with a protocol-level ping.
    pub async fn ping(&self, service: &str, timeout: Duration) -> Result<Duration, Error> {
        let shared = self.shared();
        let deadline = tokio::time::Instant::now() + timeout;
        let find = async {
            let mut changes = shared.registry.watch();
            loop {
                let route = Route::Service(Target::service(service));
                if let Some(peer) = shared.registry.choose(&route, &[], None) {
                    return Ok::<_, Error>(peer);
                }
                changes.changed().await.map_err(|_| Error::ShuttingDown)?;
            }
        };
        let peer = tokio::time::timeout_at(deadline, find)
            .await
            .map_err(|_| Error::Timeout(timeout))??;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // No pong in time, or the connection closed first: either way, no answer.
        peer.ping(left).await.map_err(|_| Error::Timeout(timeout))
    }

    /// The live peers, with their RTT and load.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .shared()
            .registry
            .all()
            .into_iter()
            .map(|p| PeerInfo {
                node: p.node,
                service: p.service.clone(),
                addr: p.addr,
                rtt: p.conn.rtt(),
                in_flight: p.in_flight(),
            })
            .collect();
        peers.sort_by(|a, b| (&a.service, a.node).cmp(&(&b.service, b.node)));
        peers
    }

    /// Waits until at least `count` instances of `service` are connected, at most `timeout`.
    pub async fn wait_for_instances(
        &self,
        service: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), Error> {
        let registry = &self.shared().registry;
        self.wait_until(timeout, || {
            let all = registry.all();
            let live = all
                .iter()
                .filter(|p| p.service == service && !p.is_leaving());
            live.count() >= count
        })
        .await
    }

    /// Waits until `ready` holds, checking again on every change of the peer table (peers up
    /// and down, subscriptions), at most `timeout`.
    pub(crate) async fn wait_until(
        &self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let fut = async {
            let mut changes = self.shared().registry.watch();
            while !ready() {
                changes.changed().await.map_err(|_| Error::ShuttingDown)?;
            }
            Ok(())
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    /// Says why `service` has, or has no, reachable instance: the connected instances, the
    /// instances discovery announced and the last error reaching each (TLS refused, no answer,
    /// wrong protocol version), failing static peers, and announcements discovery refused.
    ///
    /// ```no_run
    /// # fn show(node: &shoal::Node) {
    /// let diagnosis = node.diagnose("invoice");
    /// println!("{diagnosis}"); // e.g. "`invoice` is announced but unreachable: TLS handshake ... failed"
    /// # }
    /// ```
    pub fn diagnose(&self, service: &str) -> ServiceDiagnosis {
        let shared = self.shared();
        let connected = self
            .peers()
            .into_iter()
            .filter(|p| p.service == service)
            .collect();
        ServiceDiagnosis::build(
            service,
            connected,
            &self.discovery_reports(),
            &shared.static_peers,
            &shared.dial_failures,
        )
    }

    /// What each discovery source currently reports (static peers first, then sources added
    /// with [`crate::NodeBuilder::discovery`]).
    pub fn discovery_reports(&self) -> Vec<shoal_discovery::DiscoveryReport> {
        lock(&self.shared().discovery)
            .iter()
            .map(|s| s.report())
            .collect()
    }

    /// Subscribes to connection events (peers up and down, refused handshakes, protocol
    /// errors). Events are kept in a bounded buffer: a receiver that falls behind misses the
    /// oldest ones and is told so by `RecvError::Lagged`.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared().events.subscribe()
    }

    /// Counters since start.
    pub fn stats(&self) -> NodeStats {
        self.shared().counters.snapshot()
    }

    /// The most recent dead letters (bounded; see [`crate::NodeBuilder::dead_letter_capacity`]).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared().dead_letters.snapshot()
    }
}
