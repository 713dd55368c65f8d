//! The peer table: which connection stands for which node and service, who subscribes to
//! what, which groups are remembered after their last instance left, and the choice of the
//! connection the next attempt of a message goes to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::{NodeId, SmolStr, Subscription};
use slotmap::SlotMap;

use super::action::ConnId;
use super::conn::Conn;
use super::directory::Directory;
use super::fanout::{self, Audience, DepartedGroups};
use super::route::{self, Candidate};

/// Who a message goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The service, interned ([`Names`]): cloning it is a reference count, not an allocation.
    pub(crate) service: Arc<str>,
    /// A preferred instance (the requester, for asynchronous replies); any instance of
    /// `service` will do when it is gone.
    pub(crate) node: Option<NodeId>,
}

impl Target {
    pub(crate) fn service(service: Arc<str>) -> Self {
        Self {
            service,
            node: None,
        }
    }
}

/// Most names interned; past it the table starts over (names are only a cache).
const MAX_NAMES: usize = 4096;

/// Service names, interned: a send names its service as a `&str`, and every delivery keeps it
/// for its retries and dead letter; interning makes that a reference count.
#[derive(Debug, Default)]
pub(super) struct Names(std::collections::HashSet<Arc<str>>);

impl Names {
    pub(super) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return Arc::clone(known);
        }
        if self.0.len() >= MAX_NAMES {
            self.0.clear();
        }
        let name: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&name));
        name
    }
}

/// Where a delivery may go: one instance of a service, or one member of an event's audience.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Point-to-point: commands, documents, replies.
    Service(Target),
    /// One copy of an event on `topic`, for one audience (a group or an ungrouped instance).
    Audience { topic: SmolStr, audience: Audience },
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

/// How the maps keyed by names hash: foldhash, seeded per process (names are this node's
/// topics, peers' certified services and the partition keys of this node's own messages,
/// looked up on every message).
pub(super) type NameHashing = foldhash::fast::RandomState;

/// Most topics whose audiences are kept between changes of the peer table.
const MAX_CACHED_TOPICS: usize = 4096;

/// Whether a new connection stands for its node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It does; `displaced` lost the race and is being closed.
    Admitted { displaced: Option<ConnId> },
    /// Another connection to the same node wins; this one must be closed.
    Refused,
}

#[derive(Debug)]
pub(super) struct Peers {
    /// The connection that stands for each node (ordered, so choices and listings are the
    /// same in every run with the same inputs).
    by_node: BTreeMap<NodeId, ConnId>,
    /// The current connections of each service.
    by_service: HashMap<String, Vec<ConnId>, NameHashing>,
    departed: DepartedGroups,
    /// Each topic's audiences, looked up twice per publish: hashed with foldhash.
    audience_cache: HashMap<String, Audiences, NameHashing>,
    /// The instances discovery announced, connected or not (see [`super::directory`]): their
    /// advertised subscriptions count in audiences. Call [`Peers::bump`] after changing it.
    pub(super) directory: Directory,
}

impl Peers {
    pub(super) fn new(remember_groups: Duration) -> Self {
        Self {
            by_node: BTreeMap::new(),
            by_service: HashMap::default(),
            departed: DepartedGroups::new(remember_groups),
            audience_cache: HashMap::default(),
            directory: Directory::default(),
        }
    }

    /// Something about the peers changed.
    pub(super) fn bump(&mut self) {
        self.audience_cache.clear();
    }

    /// The least-loaded live connection of `nodes` (an audience's instances, as
    /// [`Peers::audiences`] lists them), one to an instance not in `tried` when there is one;
    /// ties taken by `turn`. What [`Peers::choose`] gives an unkeyed event's copy, for a
    /// caller that has the audience's instances at hand.
    pub(super) fn choose_among(
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

    /// Whether the connection standing for `node`, if there is one, is of the service the
    /// directory lists `node` under (true when either is missing).
    fn announced_as_certified(&self, conns: &SlotMap<ConnId, Conn>, node: NodeId) -> bool {
        let certified = self.current(node).and_then(|c| conns.get(c));
        match (certified, self.directory.get(node)) {
            (Some(c), Some(known)) => c.service == known.service,
            _ => true,
        }
    }

    /// The connection standing for `node` if it is of `service`: a node id is the peer's
    /// claim, its service is certified, so a delivery for an instance of `service` goes to
    /// no connection of another service claiming the instance's id.
    pub(super) fn current_of(
        &self,
        conns: &SlotMap<ConnId, Conn>,
        node: NodeId,
        service: &str,
    ) -> Option<ConnId> {
        self.current(node)
            .filter(|c| conns.get(*c).is_some_and(|c| c.service == service))
    }

    /// The connection standing for `node`.
    pub(super) fn current(&self, node: NodeId) -> Option<ConnId> {
        self.by_node.get(&node).copied()
    }

    /// The current connections.
    pub(super) fn all(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.by_node.values().copied()
    }

    /// Decides whether `conn` (just added to `conns`) stands for its node. When two nodes
    /// dialled each other at once, the connection dialled by the smaller node id survives;
    /// both sides apply the same rule, so they agree without talking. Node ids are not
    /// certified, services are: a connection claiming the id of a node known under another
    /// certified service (a connection to it, live or leaving, or an announcement a certified
    /// connection confirmed) is an impostor (or a collision): it is refused, and never takes
    /// the other connection's place or its subscriptions. An announcement alone decides
    /// nothing here: anyone on the link can send one.
    pub(super) fn admit(&mut self, conns: &mut SlotMap<ConnId, Conn>, conn: ConnId) -> Admission {
        let Some(new) = conns.get(conn) else {
            return Admission::Refused;
        };
        let (node, service, dialer) = (new.node, new.service.clone(), new.dialer);
        if self
            .directory
            .confirmed_service(node)
            .is_some_and(|confirmed| confirmed != service)
        {
            return Admission::Refused;
        }
        let displaced = match self
            .by_node
            .get(&node)
            .and_then(|c| Some((*c, conns.get(*c)?)))
        {
            Some((_, existing)) if existing.service != service => return Admission::Refused,
            Some((_, existing)) if !existing.leaving && existing.dialer < dialer => {
                return Admission::Refused;
            }
            // Same dialer twice (a redial racing a slow close): the newer one wins.
            Some((old, _)) => Some(old),
            None => None,
        };
        // The peer announces its subscriptions again on the new connection; until then the
        // new connection keeps those of the one it replaces, so no event misses the peer.
        if let Some((old, old_conn)) = displaced.and_then(|old| Some((old, conns.get_mut(old)?))) {
            old_conn.leaving = true;
            let (inherited, old_service) =
                (old_conn.subscriptions.clone(), old_conn.service.clone());
            if let Some(new) = conns.get_mut(conn) {
                new.subscriptions = inherited;
            }
            self.unlist(&old_service, old);
        }
        self.by_node.insert(node, conn);
        self.by_service.entry(service).or_default().push(conn);
        self.bump();
        Admission::Admitted { displaced }
    }

    /// Forgets `conn` (its connection ended); says whether it stood for its node. Groups
    /// whose last instance it was are remembered, so events for them are held.
    pub(super) fn remove(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        conn: ConnId,
        now: Instant,
    ) -> bool {
        let Some(gone) = conns.get(conn) else {
            return false;
        };
        if self.by_node.get(&gone.node) != Some(&conn) {
            return false;
        }
        self.by_node.remove(&gone.node);
        self.unlist(&gone.service, conn);
        for sub in &gone.subscriptions {
            // An instance whose announcement still advertises the subscription (its
            // connection was closed for being idle, say) still holds it.
            let still_held = self
                .by_node
                .values()
                .filter_map(|c| conns.get(*c))
                .any(|c| c.subscriptions.contains(sub))
                || self.directory.advertises(sub, None);
            if !still_held {
                self.departed.left(sub.clone(), now);
            }
        }
        self.bump();
        true
    }

    fn unlist(&mut self, service: &str, conn: ConnId) {
        if let Some(list) = self.by_service.get_mut(service) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.by_service.remove(service);
            }
        }
    }

    /// The last live or announced instance holding the grouped `sub` went: its events are
    /// held for a while.
    pub(super) fn departed_left(&mut self, sub: Subscription, now: Instant) {
        self.departed.left(sub, now);
    }

    /// A peer announced `sub`: it is no longer a departed group.
    pub(super) fn subscribed(&mut self, sub: &Subscription) {
        self.departed.forget(sub);
        self.bump();
    }

    /// Forgets the remembered group `sub`; says whether it was remembered.
    pub(super) fn forget_group(&mut self, sub: &Subscription) -> bool {
        let forgotten = self.departed.forget(sub);
        if forgotten {
            self.bump();
        }
        forgotten
    }

    #[cfg(any(test, feature = "outbox"))]
    /// Keeps the grouped `subs` that no live peer holds remembered until `until`. Says
    /// whether that changed the audiences (a group newly remembered, or one expired).
    pub(super) fn remember_groups(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        subs: Vec<Subscription>,
        until: Instant,
        now: Instant,
    ) -> bool {
        let mut changed = self.departed.expire(now);
        for sub in subs {
            let live = self
                .by_node
                .values()
                .filter_map(|c| conns.get(*c))
                .any(|c| c.subscriptions.contains(&sub));
            // Only a newly remembered group changes the audiences: keeping one longer wakes
            // nobody (the outbox relay calls this at every poll).
            if !live {
                changed |= self.departed.remember_until(sub, until);
            }
        }
        if changed {
            self.bump();
        }
        changed
    }

    /// How many live connections may take a delivery on `route`.
    pub(super) fn live_count(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        route: &Route,
        now: Instant,
    ) -> usize {
        self.candidates(conns, route, now).len()
    }

    /// The grouped subscriptions of the live peers.
    #[cfg(feature = "outbox")]
    pub(super) fn live_groups(&self, conns: &SlotMap<ConnId, Conn>) -> Vec<Subscription> {
        let mut subs: Vec<Subscription> = self
            .by_node
            .values()
            .filter_map(|c| conns.get(*c))
            .filter(|c| !c.leaving)
            .flat_map(|c| c.subscriptions.iter().cloned())
            .chain(
                self.directory
                    .advertised()
                    .filter(|(node, _)| self.announced_as_certified(conns, *node))
                    .flat_map(|(_, subs)| subs.iter().cloned()),
            )
            .filter(|s| s.group.is_some())
            .collect();
        subs.sort_by(|a, b| (&a.pattern, &a.group).cmp(&(&b.pattern, &b.group)));
        subs.dedup();
        subs
    }

    /// The audiences of an event on `topic`: every group and ungrouped instance subscribed
    /// among the live peers, each with its live instances, plus groups remembered after their
    /// last instance left (with none). Worked out once per change of the table.
    pub(super) fn audiences(
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
    pub(super) fn has_audience(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        topic: &str,
        audience: &Audience,
        now: Instant,
    ) -> bool {
        instances_of(&self.audiences(conns, topic, now), audience).is_some()
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
    pub(super) fn serves(
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

    /// Whether this node dialled a live connection to an instance of `service` (it uses the
    /// service: newly announced instances are connected to as well, to share the load).
    pub(super) fn uses_service(
        &self,
        conns: &SlotMap<ConnId, Conn>,
        service: &str,
        me: NodeId,
    ) -> bool {
        self.by_service.get(service).is_some_and(|list| {
            list.iter()
                .filter_map(|c| conns.get(*c))
                .any(|c| c.dialer == me && c.takes_messages())
        })
    }

    /// Whether a live instance for `route` that the message has not failed on exists.
    pub(super) fn has_untried(
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
    pub(super) fn choose(
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
        let node_of = |c: ConnId| conns.get(c).map(|c| c.node);
        let chosen = match key {
            Some(key) => {
                let nodes: Vec<NodeId> = live.iter().filter_map(|c| node_of(*c)).collect();
                route::choose_for_key(&nodes, tried, key)?
            }
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
