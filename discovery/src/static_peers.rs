//! Static peer lists: for networks where multicast is not allowed.

use std::net::SocketAddr;

use crate::event::{
    Discovery, DiscoveryError, DiscoveryEvent, DiscoveryReport, EventSender, LocalNode, PeerHint,
    Source,
};

/// A fixed list of peer addresses. Each address is reported once as [`DiscoveryEvent::Up`];
/// the node keeps dialling it (with backoff) while it is unreachable, so peers may start in any
/// order.
#[derive(Clone, Debug, Default)]
pub struct StaticDiscovery {
    addrs: Vec<SocketAddr>,
}

impl StaticDiscovery {
    /// A source that reports `addrs`.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            addrs: addrs.into_iter().collect(),
        }
    }

    /// The configured addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Discovery for StaticDiscovery {
    fn start(&mut self, local: &LocalNode, events: EventSender) -> Result<(), DiscoveryError> {
        for addr in &self.addrs {
            if local.addrs.contains(addr) {
                continue; // a shared peer list may name this node itself
            }
            let hint = PeerHint {
                node_id: None,
                service: None,
                addrs: vec![*addr],
                source: Source::Static,
                subscriptions: None,
                multicast: None,
            };
            // A closed receiver means the node is shutting down: nothing to report to.
            let _ = events.send(DiscoveryEvent::Up(hint));
        }
        Ok(())
    }

    fn report(&self) -> DiscoveryReport {
        let peers = self
            .addrs
            .iter()
            .map(|addr| PeerHint {
                node_id: None,
                service: None,
                addrs: vec![*addr],
                source: Source::Static,
                subscriptions: None,
                multicast: None,
            })
            .collect();
        DiscoveryReport {
            source: Some(Source::Static),
            peers,
            ..DiscoveryReport::default()
        }
    }
}
