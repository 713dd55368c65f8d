//! The peer table: which connection stands for which node and service, who subscribes to
//! what, which groups are remembered after their last instance left, and the choice of the
//! connection the next attempt of a message goes to.
//!
//! This file holds the table and its changes (admitting and removing connections, departed
//! groups); what a delivery asks of it (the audiences of a topic, the live candidates for a
//! route, the choice among them) is in [`choice`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::{NodeId, SmolStr, Subscription};
use slotmap::SlotMap;

use super::action::ConnId;
use super::conn::Conn;
use super::directory::Directory;
use super::fanout::{Audience, DepartedGroups};

mod choice;

use choice::Audiences;

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

/// How the maps keyed by names hash: foldhash, seeded per process (names are this node's
/// topics, peers' certified services and the partition keys of this node's own messages,
/// looked up on every message).
pub(super) type NameHashing = foldhash::fast::RandomState;

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
    /// both sides apply the same rule, so they agree without talking. A connection on its way
    /// out (either side said goodbye) never wins: a peer redialling a node that closed their
    /// connection for being idle is admitted before the old one is gone. Node ids are not
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
            // A connection on its way out (the peer's goodbye, or this node's: the idle
            // sweep's) takes no more messages and does not keep a redial out.
            Some((_, existing)) if existing.takes_messages() && existing.dialer < dialer => {
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
        self.remember_departed(conns, &gone.subscriptions, now);
        self.bump();
        true
    }

    /// Remembers as departed each of `subs` (those of an instance going: its connection
    /// closing or saying goodbye, or its announcement withdrawn) that no live connection, one
    /// not saying goodbye, and no announcement holds any more: events for its group are held
    /// for a while. An instance whose announcement still advertises a subscription (its
    /// connection was closed for being idle, say) still holds it.
    pub(super) fn remember_departed<'a>(
        &mut self,
        conns: &SlotMap<ConnId, Conn>,
        subs: impl IntoIterator<Item = &'a Subscription>,
        now: Instant,
    ) {
        for sub in subs {
            let still_held = self
                .by_node
                .values()
                .filter_map(|c| conns.get(*c))
                .any(|c| !c.leaving && c.subscriptions.contains(sub))
                || self.directory.advertises(sub, None);
            if !still_held {
                self.departed.left(sub.clone(), now);
            }
        }
    }

    fn unlist(&mut self, service: &str, conn: ConnId) {
        if let Some(list) = self.by_service.get_mut(service) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.by_service.remove(service);
            }
        }
    }

    /// A copy for the departed `group` on `topic` is held until `until`: the group is
    /// remembered at least as long.
    pub(super) fn departed_held(&mut self, topic: &str, group: &str, until: Instant) {
        self.departed.hold_until(topic, group, until);
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
}
