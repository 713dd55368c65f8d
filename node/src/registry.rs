//! The live instances this node is connected to, by node id and by service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use shoal_proto::NodeId;
use tokio::sync::watch;

use std::time::Instant;

use crate::core::fanout::{self, Audience, DepartedGroups};
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

/// Where a delivery may go: one instance of a service, or one member of an event's audience.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// Point-to-point: commands, documents, replies.
    Service(Target),
    /// One copy of an event on `topic`, for one audience (a group or an ungrouped instance).
    Audience { topic: String, audience: Audience },
}

impl Route {
    /// Who the delivery is for, as dead letters and logs name it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Service(target) => format!("service `{}`", target.service),
            Self::Audience { topic, audience } => format!("{audience} on topic `{topic}`"),
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

/// The audiences of events on one topic, each with its live instances.
pub(crate) type Audiences = Arc<Vec<(Audience, Vec<NodeId>)>>;

/// Most topics whose audiences are kept between changes of the peer table.
const MAX_CACHED_TOPICS: usize = 4096;

#[derive(Debug)]
struct Inner {
    peers: HashMap<NodeId, Arc<Peer>>,
    departed: DepartedGroups,
    /// Audiences by topic, worked out once per change of the peer table (cleared by `bump`),
    /// so publishing does not match every peer's patterns for every event.
    audience_cache: HashMap<String, Audiences>,
}

impl Inner {
    fn audiences(&mut self, topic: &str) -> Audiences {
        if let Some(cached) = self.audience_cache.get(topic) {
            return Arc::clone(cached);
        }
        let subs: Vec<(NodeId, Vec<shoal_proto::Subscription>)> = self
            .peers
            .values()
            .filter(|p| !p.is_leaving())
            .map(|p| (p.node, p.subscriptions()))
            .collect();
        let mut audiences = fanout::audiences(topic, subs.iter().map(|(n, s)| (*n, s.as_slice())));
        let departed = self.departed.matching(topic, Instant::now());
        let remembered = !departed.is_empty();
        for group in departed {
            audiences.entry(Audience::Group(group)).or_default();
        }
        let audiences: Audiences = Arc::new(audiences.into_iter().collect());
        // Remembered groups expire with time, not with a change: such answers are not kept.
        if !remembered {
            if self.audience_cache.len() >= MAX_CACHED_TOPICS {
                self.audience_cache.clear();
            }
            self.audience_cache
                .insert(topic.to_owned(), Arc::clone(&audiences));
        }
        audiences
    }

    /// The live peers (not leaving) that may take a delivery on `route`.
    fn candidates(&mut self, route: &Route) -> Vec<Arc<Peer>> {
        match route {
            Route::Service(target) => self
                .peers
                .values()
                .filter(|p| {
                    !p.is_leaving() && (p.service == target.service || target.node == Some(p.node))
                })
                .cloned()
                .collect(),
            Route::Audience { topic, audience } => {
                let audiences = self.audiences(topic);
                let Some((_, nodes)) = audiences.iter().find(|(a, _)| a == audience) else {
                    return Vec::new();
                };
                nodes
                    .iter()
                    .filter_map(|n| self.peers.get(n))
                    .filter(|p| !p.is_leaving())
                    .cloned()
                    .collect()
            }
        }
    }
}

/// Shared table of live peers; every change bumps a watch channel so waiting senders wake.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Registry {
    /// A registry that remembers a departed subscriber group for `remember_groups`.
    pub(crate) fn new(remember_groups: std::time::Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                peers: HashMap::new(),
                departed: DepartedGroups::new(remember_groups),
                audience_cache: HashMap::new(),
            }),
            changed: watch::channel(0).0,
        }
    }

    /// A receiver that wakes on every change.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes everyone watching: something about the peers changed.
    pub(crate) fn bump(&self) {
        lock(&self.inner).audience_cache.clear();
        self.changed.send_modify(|v| *v += 1);
    }

    /// Adds a connection. When both nodes dialled each other at once, the connection dialled by
    /// the smaller node id survives; both sides apply the same rule, so they agree without talking.
    pub(crate) fn insert(&self, peer: Arc<Peer>) -> Inserted {
        let mut inner = lock(&self.inner);
        let new = Arc::clone(&peer);
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
        // The peer announces its subscriptions again on the new connection; until then the
        // new connection keeps those of the one it replaces, so no event misses the peer.
        if let Some(old) = &displaced {
            for sub in old.subscriptions() {
                let _ = new.subscribe(sub);
            }
        }
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
            // Groups whose last instance this was are remembered, so events for them are held.
            let now = Instant::now();
            for sub in peer.subscriptions() {
                let still_held = inner
                    .peers
                    .values()
                    .any(|p| p.with_subscriptions(|subs| subs.contains(&sub)));
                if !still_held {
                    inner.departed.left(sub, now);
                }
            }
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

    /// Whether a live instance for `route` that this message has not failed on exists: the
    /// next attempt can go there at once instead of waiting out a backoff.
    pub(crate) fn has_untried(&self, route: &Route, tried: &[NodeId]) -> bool {
        let mut inner = lock(&self.inner);
        inner
            .candidates(route)
            .iter()
            .any(|p| !tried.contains(&p.node))
    }

    /// Picks the peer for the next attempt on `route`: the preferred node of a reply if it
    /// lives, the rendezvous owner of `key` if there is one ([`route::choose_for_key`]), the
    /// least busy instance otherwise ([`route::choose`]).
    pub(crate) fn choose(
        &self,
        route: &Route,
        tried: &[NodeId],
        key: Option<&str>,
    ) -> Option<Arc<Peer>> {
        let mut inner = lock(&self.inner);
        if let Route::Service(Target {
            node: Some(node), ..
        }) = route
        {
            let preferred = inner.peers.get(node).filter(|p| !p.is_leaving());
            if let Some(p) = preferred.filter(|_| !tried.contains(node)) {
                return Some(Arc::clone(p));
            }
        }
        let live = inner.candidates(route);
        drop(inner);
        let chosen = match key {
            Some(key) => {
                let nodes: Vec<NodeId> = live.iter().map(|p| p.node).collect();
                route::choose_for_key(&nodes, tried, key)?
            }
            None if live.len() == 1 => live[0].node,
            None => {
                let candidates: Vec<Candidate> = live
                    .iter()
                    .map(|p| Candidate {
                        node: p.node,
                        in_flight: p.in_flight(),
                    })
                    .collect();
                // Ties are broken at random: a counter shared by all routes would send every
                // second copy of a two-group publish to the same instance.
                route::choose(&candidates, tried, rand::random::<u32>() as usize)?
            }
        };
        live.into_iter().find(|p| p.node == chosen)
    }

    /// The audiences of an event on `topic`: every group and ungrouped instance subscribed
    /// among the live peers, each with its live instances, plus groups remembered after their
    /// last instance left (with none).
    pub(crate) fn audiences(&self, topic: &str) -> Audiences {
        lock(&self.inner).audiences(topic)
    }

    /// Whether `audience` is still an audience of `topic`: subscribed on a live peer, or a
    /// group remembered after its last instance left.
    pub(crate) fn has_audience(&self, topic: &str, audience: &Audience) -> bool {
        self.audiences(topic).iter().any(|(a, _)| a == audience)
    }

    /// The grouped subscriptions of the live peers.
    #[cfg(feature = "outbox")]
    pub(crate) fn live_groups(&self) -> Vec<shoal_proto::Subscription> {
        let inner = lock(&self.inner);
        let mut subs: Vec<shoal_proto::Subscription> = inner
            .peers
            .values()
            .filter(|p| !p.is_leaving())
            .flat_map(|p| p.subscriptions())
            .filter(|s| s.group.is_some())
            .collect();
        subs.sort_by(|a, b| (&a.pattern, &a.group).cmp(&(&b.pattern, &b.group)));
        subs.dedup();
        subs
    }

    /// Keeps the grouped `subs` that no live peer holds as audiences until `until`, so events
    /// published meanwhile are held for them (the outbox relay's memory of groups it has
    /// seen, across restarts).
    #[cfg(feature = "outbox")]
    pub(crate) fn remember_groups(&self, subs: Vec<shoal_proto::Subscription>, until: Instant) {
        let mut inner = lock(&self.inner);
        // Groups that expired wake the copies held for them (they end as dropped).
        let mut changed = inner.departed.expire(Instant::now());
        for sub in subs {
            let live = inner
                .peers
                .values()
                .any(|p| p.with_subscriptions(|held| held.contains(&sub)));
            // Only a newly remembered group changes the audiences: keeping one longer wakes
            // nobody (this runs at every poll of the relay).
            if !live {
                changed |= inner.departed.remember_until(sub, until);
            }
        }
        drop(inner);
        if changed {
            self.bump();
        }
    }

    /// Forgets the grouped `sub` remembered while it has no live instance: the copies held for
    /// it wake and end as dropped. Says whether it was remembered.
    pub(crate) fn forget_group(&self, sub: &shoal_proto::Subscription) -> bool {
        let forgotten = lock(&self.inner).departed.forget(sub);
        if forgotten {
            self.bump();
        }
        forgotten
    }

    /// A peer announced `sub`: it is no longer a departed group, and waiting publishers wake.
    /// Says whether it is new.
    pub(crate) fn subscribed(
        &self,
        peer: &Peer,
        sub: shoal_proto::Subscription,
    ) -> Result<bool, String> {
        let mut inner = lock(&self.inner);
        inner.departed.forget(&sub);
        let new = peer.subscribe(sub)?;
        drop(inner);
        if new {
            self.bump();
        }
        Ok(new)
    }

    /// A peer withdrew `sub` on purpose: events no longer go to it for this subscription.
    /// Says whether it had it.
    pub(crate) fn unsubscribed(&self, peer: &Peer, sub: &shoal_proto::Subscription) -> bool {
        let had = peer.unsubscribe(sub);
        if had {
            self.bump();
        }
        had
    }
}
