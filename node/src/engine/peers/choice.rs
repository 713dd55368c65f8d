//! Choosing where a delivery goes: the audiences of an event's topic, the live connections
//! that may take a delivery on a route, and the one the next attempt goes to.
//!
//! The peer table ([`super::Peers`]) says who is connected and what they subscribe to; this
//! is what a delivery asks of it. The audiences of a topic are worked out once per change of
//! the table and kept, unless a remembered group is among them ([`Peers::audiences`]); the
//! choice itself (least-loaded, rendezvous for a key) is the plain arithmetic of
//! [`super::super::route`].

use std::sync::Arc;
use std::time::Instant;

use shoal_proto::NodeId;
use slotmap::SlotMap;

use super::super::action::ConnId;
use super::super::conn::Conn;
use super::super::fanout::{self, Audience};
use super::super::route::{self, Candidate};
use super::{Peers, Route, Target};

/// The least-loaded live connection among `ids` (ties taken in turn), one to an instance not
/// in `tried` when there is one ([`route::least_loaded`]).
fn pick(
    conns: &SlotMap<ConnId, Conn>,
    ids: impl Iterator<Item = ConnId> + Clone,
    tried: &[NodeId],
    turn: usize,
) -> Option<ConnId> {
    let live = ids.filter_map(|id| {
        let c = conns.get(id).filter(|c| c.takes_messages())?;
        Some((id, c.window.pending(), !tried.contains(&c.node)))
    });
    route::least_loaded(live, turn)
}

/// The audiences of events on one topic, each with its live instances, in the order of
/// [`Audience`] (collected from a `BTreeMap`): [`instances_of`] finds one by binary search.
pub(crate) type Audiences = Arc<Vec<(Audience, Vec<NodeId>)>>;

/// The instances of `audience` among `audiences` (sorted, see [`Audiences`]); `None` when it is
/// not an audience. Every copy of an event looks up its own audience: a scan would cost each
/// event a number of comparisons that grows with the square of its audiences.
fn instances_of<'a>(
    audiences: &'a [(Audience, Vec<NodeId>)],
    audience: &Audience,
) -> Option<&'a [NodeId]> {
    let at = audiences.binary_search_by(|(a, _)| a.cmp(audience)).ok()?;
    Some(&audiences[at].1)
}

/// Most topics whose audiences are kept between changes of the peer table.
const MAX_CACHED_TOPICS: usize = 4096;

/// The nodes of the connections `live`.
fn nodes_of(conns: &SlotMap<ConnId, Conn>, live: &[ConnId]) -> Vec<NodeId> {
    live.iter()
        .filter_map(|c| conns.get(*c).map(|c| c.node))
        .collect()
}

impl Peers {
    /// The least-loaded live connection of `nodes` (an audience's instances, as
    /// [`Peers::audiences`] lists them), one to an instance not in `tried` when there is one;
    /// ties taken by `turn`. What [`Peers::choose`] gives an unkeyed event's copy, for a
    /// caller that has the audience's instances at hand.
    pub(in crate::engine) fn choose_among(
        &self,
        conns: &SlotMap<ConnId, Conn>,
        nodes: &[NodeId],
        tried: &[NodeId],
        turn: usize,
    ) -> Option<ConnId> {
        pick(
            conns,
            nodes.iter().filter_map(|n| self.current(*n)),
            tried,
            turn,
        )
    }

    /// How many live connections may take a delivery on `route`.
    pub(in crate::engine) fn live_count(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        route: &Route,
        now: Instant,
    ) -> usize {
        self.candidates(conns, route, now).len()
    }

    /// The audiences of an event on `topic`: every group and ungrouped instance subscribed
    /// among the live peers, each with its live instances, plus groups remembered after their
    /// last instance left (with none). Worked out once per change of the table.
    pub(in crate::engine) fn audiences(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        topic: &str,
        now: Instant,
    ) -> Audiences {
        if let Some(cached) = self.audience_cache.get(topic) {
            return Arc::clone(cached);
        }
        let live = self
            .by_node
            .values()
            .filter_map(|c| conns.get(*c))
            .filter(|c| !c.leaving)
            .map(|c| (c.node, c.subscriptions.as_slice()));
        // Instances discovery announced count with the subscriptions they advertise, connected
        // or not: a delivery to one that is not connected asks for a connection and waits.
        // What they advertise was checked against the policy under the service announced
        // (`Engine::discovered`), which nothing certifies: a connected instance counts with
        // it only while its connection's certified service is that service.
        let announced = self
            .directory
            .advertised()
            .filter(|(node, _)| self.announced_as_certified(conns, *node));
        let mut audiences = fanout::audiences(topic, live.chain(announced));
        let departed = self.departed.matching(topic, now);
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

    /// Whether `audience` is still an audience of `topic`.
    pub(in crate::engine) fn has_audience(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        topic: &str,
        audience: &Audience,
        now: Instant,
    ) -> bool {
        instances_of(&self.audiences(conns, topic, now), audience).is_some()
    }

    /// The nodes among which a keyed delivery on `route` goes to its key's owner
    /// ([`route::choose_for_key`]), as [`Peers::choose`] weighs them; empty when fewer than
    /// two are live (the one there is takes every key).
    pub(in crate::engine) fn key_owners(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        route: &Route,
        now: Instant,
    ) -> Vec<NodeId> {
        let live = self.candidates(conns, route, now);
        if live.len() <= 1 {
            return Vec::new();
        }
        nodes_of(conns, &live)
    }

    /// The live connections that may take a delivery on `route`.
    fn candidates(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        route: &Route,
        now: Instant,
    ) -> Vec<ConnId> {
        let live = |c: &ConnId| conns.get(*c).is_some_and(Conn::takes_messages);
        match route {
            Route::Service(target) => {
                let mut out: Vec<ConnId> = self
                    .by_service
                    .get(&*target.service)
                    .map(|list| list.iter().copied().filter(live).collect())
                    .unwrap_or_default();
                if let Some(preferred) = target
                    .node
                    .and_then(|n| self.current_of(conns, n, &target.service))
                    && live(&preferred)
                    && !out.contains(&preferred)
                {
                    out.push(preferred);
                }
                out
            }
            Route::Audience { topic, audience } => {
                let audiences = self.audiences(conns, topic, now);
                let Some(nodes) = instances_of(&audiences, audience) else {
                    return Vec::new();
                };
                nodes
                    .iter()
                    .filter_map(|n| self.current(*n))
                    .filter(live)
                    .collect()
            }
        }
    }

    /// Whether `conn` may take a delivery on `route` (live or not): it is of the route's
    /// service, or its node is one of the audience's instances. For a delivery resumed on
    /// the connection now standing for the node it was in flight to: another service's
    /// connection claiming the node's id gets nothing.
    pub(in crate::engine) fn serves(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        route: &Route,
        conn: ConnId,
        now: Instant,
    ) -> bool {
        let Some(c) = conns.get(conn) else {
            return false;
        };
        match route {
            Route::Service(target) => c.service == *target.service,
            Route::Audience { topic, audience } => {
                let node = c.node;
                let audiences = self.audiences(conns, topic, now);
                instances_of(&audiences, audience).is_some_and(|nodes| nodes.contains(&node))
            }
        }
    }

    /// Whether a live instance for `route` that the message has not failed on exists.
    pub(in crate::engine) fn has_untried(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        route: &Route,
        tried: &[NodeId],
        now: Instant,
    ) -> bool {
        self.candidates(conns, route, now)
            .iter()
            .filter_map(|c| conns.get(*c))
            .any(|c| !tried.contains(&c.node))
    }

    /// Picks the connection for the next attempt on `route`: the preferred node of a reply if
    /// it lives and was not tried, the rendezvous owner of `key` if there is one
    /// ([`route::choose_for_key`]), the least busy instance otherwise ([`route::choose`],
    /// ties broken by `turn`).
    pub(in crate::engine) fn choose(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        route: &Route,
        tried: &[NodeId],
        key: Option<&str>,
        turn: usize,
        now: Instant,
    ) -> Option<ConnId> {
        if let Route::Service(Target {
            node: Some(node),
            service,
        }) = route
            && !tried.contains(node)
            && let Some(preferred) = self.current_of(conns, *node, service)
            && conns.get(preferred).is_some_and(Conn::takes_messages)
        {
            return Some(preferred);
        }
        if let (Route::Service(target), None) = (route, key) {
            // The usual case, without collecting the candidates.
            let list = self.by_service.get(&*target.service)?;
            return pick(conns, list.iter().copied(), tried, turn);
        }
        if let (Route::Audience { topic, audience }, None) = (route, key) {
            // An event's copy, the same way (every publish comes here).
            let audiences = self.audiences(conns, topic, now);
            let nodes = instances_of(&audiences, audience)?;
            return self.choose_among(conns, nodes, tried, turn);
        }
        let live = self.candidates(conns, route, now);
        if live.len() <= 1 {
            return live.first().copied();
        }
        let chosen = match key {
            Some(key) => route::choose_for_key(&nodes_of(conns, &live), tried, key)?,
            None => {
                let candidates: Vec<Candidate> = live
                    .iter()
                    .filter_map(|c| conns.get(*c))
                    .map(|c| Candidate {
                        node: c.node,
                        in_flight: c.window.pending(),
                    })
                    .collect();
                route::choose(&candidates, tried, turn)?
            }
        };
        self.current(chosen)
    }
}
