//! [`ServiceDiagnosis`]: why a service has (or has no) reachable instance.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;

use shoal_discovery::{DiscoveryReport, Source};
use shoal_proto::NodeId;

use crate::PeerInfo;
use crate::sync::lock;

/// Most addresses whose last dial failure is remembered.
const MAX_DIAL_FAILURES: usize = 256;

/// The last failure to reach each address, so a diagnosis can say why an announced instance
/// is not connected. Cleared for an address when a connection to it succeeds.
#[derive(Debug, Default)]
pub(crate) struct DialFailures {
    last: Mutex<HashMap<SocketAddr, String>>,
}

impl DialFailures {
    pub(crate) fn record(&self, addr: SocketAddr, reason: &str) {
        let mut last = lock(&self.last);
        if last.len() >= MAX_DIAL_FAILURES && !last.contains_key(&addr) {
            // Bounded: forget an arbitrary old entry rather than grow.
            if let Some(old) = last.keys().next().copied() {
                last.remove(&old);
            }
        }
        last.insert(addr, reason.to_owned());
    }

    pub(crate) fn clear(&self, addr: SocketAddr) {
        lock(&self.last).remove(&addr);
    }

    pub(crate) fn get(&self, addr: &SocketAddr) -> Option<String> {
        lock(&self.last).get(addr).cloned()
    }
}

/// An instance a discovery source reported for the diagnosed service.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnnouncedInstance {
    /// Its node id, if the source knows it.
    pub node: Option<NodeId>,
    /// Where it said it listens.
    pub addrs: Vec<SocketAddr>,
    /// Which source reported it.
    pub source: Option<Source>,
    /// Whether this node is connected to it.
    pub connected: bool,
    /// The last failure to reach one of its addresses, if any (TLS refused, no answer, wrong
    /// protocol version).
    pub last_error: Option<String>,
}

/// What the node knows about one service: who is connected, who was announced, what failed.
/// Its `Display` form is a short report for humans; [`ServiceDiagnosis::verdict`] is one line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceDiagnosis {
    /// The service diagnosed.
    pub service: String,
    /// Its connected instances.
    pub connected: Vec<PeerInfo>,
    /// Its instances as discovery sources report them.
    pub announced: Vec<AnnouncedInstance>,
    /// Static peer addresses that failed and whose service is therefore unknown.
    pub failing_static_peers: Vec<(SocketAddr, String)>,
    /// Announcements the discovery sources refused (any service), newest last.
    pub refused_announcements: Vec<String>,
}

impl ServiceDiagnosis {
    pub(crate) fn build(
        service: &str,
        connected: Vec<PeerInfo>,
        reports: &[DiscoveryReport],
        static_peers: &[SocketAddr],
        failures: &DialFailures,
    ) -> Self {
        let mut announced = Vec::new();
        let mut refused = Vec::new();
        for report in reports {
            refused.extend(report.rejected.iter().cloned());
            for hint in report
                .peers
                .iter()
                .filter(|h| h.service.as_deref() == Some(service))
            {
                announced.push(AnnouncedInstance {
                    node: hint.node_id,
                    addrs: hint.addrs.clone(),
                    source: Some(hint.source),
                    connected: hint
                        .node_id
                        .is_some_and(|n| connected.iter().any(|p| p.node == n)),
                    last_error: hint.addrs.iter().find_map(|a| failures.get(a)),
                });
            }
        }
        let failing_static_peers = static_peers
            .iter()
            .filter_map(|a| failures.get(a).map(|reason| (*a, reason)))
            .collect();
        Self {
            service: service.to_owned(),
            connected,
            announced,
            failing_static_peers,
            refused_announcements: refused,
        }
    }

    /// One line: how many instances are connected, or the most likely reason there is none.
    pub fn verdict(&self) -> String {
        let service = &self.service;
        if !self.connected.is_empty() {
            return format!(
                "{} instance(s) of `{service}` connected",
                self.connected.len()
            );
        }
        if let Some(failed) = self.announced.iter().find(|a| a.last_error.is_some()) {
            let reason = failed.last_error.as_deref().unwrap_or_default();
            return format!("`{service}` is announced but unreachable: {reason}");
        }
        if !self.announced.is_empty() {
            return format!("`{service}` is announced; connecting");
        }
        if let Some((addr, reason)) = self.failing_static_peers.first() {
            return format!(
                "no instance of `{service}` connected; static peer {addr} fails: {reason}"
            );
        }
        if !self.refused_announcements.is_empty() {
            return format!(
                "no announcement of `{service}` accepted; {} refused (see refused_announcements)",
                self.refused_announcements.len()
            );
        }
        format!("no instance of `{service}` connected and no announcement of it seen")
    }
}

impl fmt::Display for ServiceDiagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.verdict())?;
        for p in &self.connected {
            writeln!(
                f,
                "  connected  {} at {} rtt {} µs",
                p.node,
                p.addr,
                p.rtt.as_micros()
            )?;
        }
        for a in self.announced.iter().filter(|a| !a.connected) {
            let node = a.node.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
            let error = a.last_error.as_deref().unwrap_or("not connected yet");
            writeln!(f, "  announced  {node} at {:?}: {error}", a.addrs)?;
        }
        for (addr, reason) in &self.failing_static_peers {
            writeln!(f, "  static     {addr}: {reason}")?;
        }
        for line in &self.refused_announcements {
            writeln!(f, "  refused    {line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shoal_discovery::PeerHint;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 99, 0, 2], port))
    }

    fn report_with(service: &str, port: u16) -> DiscoveryReport {
        let mut report = DiscoveryReport::default();
        report.peers.push(PeerHint {
            node_id: Some(NodeId::from_u128(7)),
            service: Some(service.into()),
            addrs: vec![addr(port)],
            source: Source::Mdns,
            subscriptions: None,
            multicast: None,
        });
        report
    }

    #[test]
    fn nothing_seen() {
        let d = ServiceDiagnosis::build("invoice", vec![], &[], &[], &DialFailures::default());
        assert_eq!(
            d.verdict(),
            "no instance of `invoice` connected and no announcement of it seen"
        );
    }

    #[test]
    fn announced_but_refused_names_the_tls_error() {
        let failures = DialFailures::default();
        failures.record(
            addr(7000),
            "TLS handshake with 10.99.0.2:7000 failed: UnknownIssuer",
        );
        let d = ServiceDiagnosis::build(
            "invoice",
            vec![],
            &[report_with("invoice", 7000)],
            &[],
            &failures,
        );
        assert!(
            d.verdict().contains("announced but unreachable"),
            "{}",
            d.verdict()
        );
        assert!(d.verdict().contains("UnknownIssuer"));
        assert!(
            d.to_string()
                .contains("announced  00000000000000000000000000000007")
        );
    }

    #[test]
    fn other_services_announcements_do_not_count() {
        let d = ServiceDiagnosis::build(
            "invoice",
            vec![],
            &[report_with("shipping", 7000)],
            &[],
            &DialFailures::default(),
        );
        assert!(d.announced.is_empty());
    }

    #[test]
    fn connected_instances_win_and_a_success_clears_the_failure() {
        let failures = DialFailures::default();
        failures.record(addr(7000), "no answer");
        failures.clear(addr(7000));
        let peer = PeerInfo {
            node: NodeId::from_u128(7),
            service: "invoice".into(),
            addr: addr(7000),
            rtt: Duration::from_micros(80),
            in_flight: 0,
        };
        let d = ServiceDiagnosis::build(
            "invoice",
            vec![peer],
            &[report_with("invoice", 7000)],
            &[],
            &failures,
        );
        assert_eq!(d.verdict(), "1 instance(s) of `invoice` connected");
        assert!(d.announced[0].connected && d.announced[0].last_error.is_none());
    }

    #[test]
    fn failing_static_peer_and_refused_announcements_are_reported() {
        let failures = DialFailures::default();
        failures.record(addr(1), "no answer from 10.99.0.2:1");
        let d = ServiceDiagnosis::build("invoice", vec![], &[], &[addr(1)], &failures);
        assert!(
            d.verdict().contains("static peer 10.99.0.2:1 fails"),
            "{}",
            d.verdict()
        );

        let mut refused = DiscoveryReport::default();
        refused
            .rejected
            .push("x._shoal._udp.local.: protocol version 9 not supported".into());
        let d =
            ServiceDiagnosis::build("invoice", vec![], &[refused], &[], &DialFailures::default());
        assert!(d.verdict().contains("1 refused"), "{}", d.verdict());
    }

    #[test]
    fn failure_memory_is_bounded() {
        let failures = DialFailures::default();
        for port in 0..1000 {
            failures.record(addr(port), "no answer");
        }
        assert!(lock(&failures.last).len() <= MAX_DIAL_FAILURES);
    }
}
