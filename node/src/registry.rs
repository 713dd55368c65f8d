//! The live instances this node is connected to, by node id and by service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use shoal_proto::NodeId;
use tokio::sync::watch;

use crate::core::route::{self, Candidate};
use crate::peer::Peer;
use crate::sync::lock;

/// Who a message goes to.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) service: String,
    /// A preferred instance (the requester, for asynchronous replies); any instance of
    /// `service` will do when it is gone.
    pub(crate) node: Option<NodeId>,
}

impl Target {
    pub(crate) fn service(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            node: None,
        }
    }
}

/// Result of adding a connection for a node that may already have one.
pub(crate) enum Inserted {
    /// The new connection is the peer's connection; `displaced` lost the race, if any.
    Kept { displaced: Option<Arc<Peer>> },
    /// An existing connection wins; the new one must be closed.
    Rejected,
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<NodeId, Arc<Peer>>,
    turn: usize,
}

/// Shared table of live peers; every change bumps a watch channel so waiting senders wake.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    /// A receiver that wakes on every change.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Adds a connection. When both nodes dialled each other at once, the connection dialled by
    /// the smaller node id survives; both sides apply the same rule, so they agree without talking.
    pub(crate) fn insert(&self, peer: Arc<Peer>) -> Inserted {
        let mut inner = lock(&self.inner);
        let displaced = match inner.peers.get(&peer.node) {
            // Node ids are not certified, services are: a connection claiming a live node's
            // id for another service is an impostor (or a collision) and cannot take its place.
            Some(existing) if existing.service != peer.service && !existing.is_leaving() => {
                return Inserted::Rejected;
            }
            Some(existing) if !existing.is_leaving() && existing.dialer <= peer.dialer => {
                if existing.dialer == peer.dialer {
                    // Same dialer twice (a redial racing a slow close): the newer one wins.
                    inner.peers.insert(peer.node, peer)
                } else {
                    return Inserted::Rejected;
                }
            }
            _ => inner.peers.insert(peer.node, peer),
        };
        drop(inner);
        self.bump();
        Inserted::Kept { displaced }
    }

    /// Removes `peer` if it is still the registered connection for its node; says whether it was.
    pub(crate) fn remove(&self, peer: &Arc<Peer>) -> bool {
        let mut inner = lock(&self.inner);
        if inner
            .peers
            .get(&peer.node)
            .is_some_and(|p| Arc::ptr_eq(p, peer))
        {
            inner.peers.remove(&peer.node);
            drop(inner);
            self.bump();
            return true;
        }
        false
    }

    /// Marks a peer as leaving (it said goodbye): no new messages go to it.
    pub(crate) fn leaving(&self, peer: &Peer) {
        peer.mark_leaving();
        self.bump();
    }

    pub(crate) fn get(&self, node: NodeId) -> Option<Arc<Peer>> {
        lock(&self.inner).peers.get(&node).cloned()
    }

    pub(crate) fn contains(&self, node: NodeId) -> bool {
        lock(&self.inner).peers.contains_key(&node)
    }

    /// Whether a live peer listens on `addr` (so a static address needs no dialling).
    pub(crate) fn listens_on(&self, addr: SocketAddr) -> Option<NodeId> {
        lock(&self.inner)
            .peers
            .values()
            .find(|p| {
                p.addr == addr
                    || p.listen_addrs.iter().any(|l| {
                        // A node bound to 0.0.0.0:P (or [::]:P) listens on every address at P.
                        *l == addr || (l.ip().is_unspecified() && l.port() == addr.port())
                    })
            })
            .map(|p| p.node)
    }

    pub(crate) fn all(&self) -> Vec<Arc<Peer>> {
        lock(&self.inner).peers.values().cloned().collect()
    }

    /// Whether a live instance for `target` that this message has not failed on exists: the
    /// next attempt can go there at once instead of waiting out a backoff.
    pub(crate) fn has_untried(&self, target: &Target, tried: &[NodeId]) -> bool {
        let inner = lock(&self.inner);
        inner.peers.values().any(|p| {
            !p.is_leaving()
                && !tried.contains(&p.node)
                && (p.service == target.service || target.node == Some(p.node))
        })
    }

    /// Picks the peer for the next attempt at `target` (see [`route::choose`]).
    pub(crate) fn choose(&self, target: &Target, tried: &[NodeId]) -> Option<Arc<Peer>> {
        let mut inner = lock(&self.inner);
        if let Some(node) = target.node {
            let preferred = inner.peers.get(&node).filter(|p| !p.is_leaving());
            if let Some(p) = preferred.filter(|_| !tried.contains(&node)) {
                return Some(Arc::clone(p));
            }
        }
        let candidates: Vec<Candidate> = inner
            .peers
            .values()
            .filter(|p| p.service == target.service && !p.is_leaving())
            .map(|p| Candidate {
                node: p.node,
                in_flight: p.in_flight(),
            })
            .collect();
        inner.turn = inner.turn.wrapping_add(1);
        let chosen = route::choose(&candidates, tried, inner.turn)?;
        inner.peers.get(&chosen).cloned()
    }
}
