//! What a node can tell about its peers and itself: round trips, live peers, waiting for
//! instances, diagnosis, discovery reports, events, counters and dead letters.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::dead_letter::DeadLetter;
use crate::diagnose::ServiceDiagnosis;
use crate::engine::Done;
use crate::runtime::op::OpFuture;
use crate::sync::lock;
use crate::{Error, Node, NodeEvent, NodeStats, PeerInfo};

impl Node {
    /// Round-trip time to one instance of `service`, measured with a protocol-level ping.
    pub async fn ping(&self, service: &str, timeout: Duration) -> Result<Duration, Error> {
        let driver = Arc::clone(self.driver());
        let measure = async {
            let mut changes = driver.peer_changes();
            let op = loop {
                // Connects to an announced instance if none is connected; asks again when
                // the directory allows, in case the dial failed.
                let again = driver.call(|engine, now| engine.want_service(service, now));
                let nonce = rand::random();
                if let Some(op) = driver.call(|engine, now| engine.ping(service, nonce, now)) {
                    break OpFuture::new(Arc::clone(&driver), op);
                }
                peers_change_or(&mut changes, again).await?;
            };
            match op.await? {
                Done::Pong(rtt) => Ok(rtt),
                other => Err(crate::node::unexpected(&other)),
            }
        };
        // No pong in time, or the connection closed first: either way, no answer.
        tokio::time::timeout(timeout, measure)
            .await
            .map_err(|_| Error::WaitTimedOut {
                waited_for: format!("a pong from an instance of `{service}`"),
                timeout,
            })?
    }

    /// The live peers, with their RTT and load.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let driver = self.driver();
        let mut peers: Vec<PeerInfo> = driver
            .read(|engine| engine.peers())
            .into_iter()
            .map(|p| PeerInfo {
                node: p.node,
                service: p.service,
                addr: p.addr,
                rtt: driver
                    .connection(p.conn)
                    .map_or(Duration::ZERO, |io| io.conn.rtt()),
                in_flight: p.in_flight,
            })
            .collect();
        peers.sort_by(|a, b| (&a.service, a.node).cmp(&(&b.service, b.node)));
        peers
    }

    /// Waits until at least `count` instances of `service` are connected, at most `timeout`.
    /// Instances discovery announced are connected to meanwhile (as a send would), and asked
    /// for again while they do not connect (a dial may have failed): 1 s after the first
    /// ask, backing off to once in 8 s.
    pub async fn wait_for_instances(
        &self,
        service: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), Error> {
        let driver = Arc::clone(self.driver());
        let fut = async {
            let mut changes = driver.peer_changes();
            loop {
                let again = driver.call(|engine, now| {
                    if engine.live_instances(service, now) >= count {
                        return Ok(());
                    }
                    Err(engine.want_service(service, now))
                });
                match again {
                    Ok(()) => return Ok(()),
                    Err(again) => peers_change_or(&mut changes, again).await?,
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::WaitTimedOut {
                waited_for: format!(
                    "{count} instance(s) of `{service}` ({} connected)",
                    driver.call(|engine, now| engine.live_instances(service, now))
                ),
                timeout,
            })?
    }

    /// Waits until `ready` holds, checking again on every change of the peers (up and down,
    /// subscriptions), at most `timeout`; then [`Error::WaitTimedOut`] with what `waited_for`
    /// says.
    pub(crate) async fn wait_until(
        &self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
        waited_for: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        let fut = async {
            let mut changes = self.driver().peer_changes();
            while !ready() {
                peers_change_or(&mut changes, None).await?;
            }
            Ok(())
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::WaitTimedOut {
                waited_for: waited_for(),
                timeout,
            })?
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
        let driver = self.driver();
        let connected = self
            .peers()
            .into_iter()
            .filter(|p| p.service == service)
            .collect();
        ServiceDiagnosis::build(
            service,
            connected,
            &self.discovery_reports(),
            &driver.static_peers,
            &driver.dial_failures,
        )
    }

    /// What each discovery source currently reports (static peers first, then sources added
    /// with [`crate::NodeBuilder::discovery`]).
    pub fn discovery_reports(&self) -> Vec<shoal_discovery::DiscoveryReport> {
        lock(&self.driver().discovery)
            .iter()
            .map(|s| s.report())
            .collect()
    }

    /// Subscribes to connection events (peers up and down, refused handshakes, protocol
    /// errors). Events are kept in a bounded buffer: a receiver that falls behind misses the
    /// oldest ones and is told so by `RecvError::Lagged`.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.driver().events()
    }

    /// Counters since start.
    pub fn stats(&self) -> NodeStats {
        node_stats(self.driver())
    }

    /// The most recent dead letters (bounded; see [`crate::NodeBuilder::dead_letter_capacity`]).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.driver().read(|engine| engine.dead_letters())
    }
}

/// Waits for the next change of the peers, or until `again` if that comes first: the instant
/// the announced instances a caller waits for may be asked for again
/// ([`crate::engine::Engine::want_service`]), so a dial that failed is followed by another
/// although nothing else changes. `again` is on the node's clock
/// ([`crate::runtime::Driver::now`]: tokio's).
async fn peers_change_or(
    changes: &mut watch::Receiver<u64>,
    again: Option<Instant>,
) -> Result<(), Error> {
    let ask_again = async {
        match again {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        changed = changes.changed() => changed.map_err(|_| Error::ShuttingDown),
        () = ask_again => Ok(()),
    }
}

/// The counters of the node `driver` runs: the engine's, and those the transport keeps.
pub(crate) fn node_stats(driver: &crate::runtime::Driver) -> NodeStats {
    let mut stats = driver.read(|engine| engine.stats());
    stats.handshake_failures = driver.handshake_failures.load(Ordering::Relaxed);
    stats.connections_refused = driver.accept_limits.refused();
    stats.addresses_penalised = driver.accept_limits.penalised();
    stats.busy_poll_time = driver.busy_poll_time();
    driver.multicast_stats(&mut stats);
    stats
}
