//! Connections where they are used: announced instances enter the directory, deliveries that
//! find no live connection for their route ask the driver to connect
//! ([`Action::Connect`]), and connections this node dialled close once idle.
//!
//! - **Connecting on first use.** A send, request or publish whose route has no live
//!   connection waits for an instance, as it always did; if discovery announced instances for
//!   the route, the engine asks for connections to them (all of a service's announced
//!   instances, so the load is shared and a failure has somewhere to go). A new instance of a
//!   service this node already talks to is connected to as soon as it is announced. While a
//!   delivery waits, it asks again (a dial may have failed): 1 s after the first ask, then
//!   backing off to once in 8 s per instance while the asks bring no connection. One timer
//!   per instance asks for every delivery waiting for it ([`super::reask`]).
//! - **Closing when idle.** Only the node that dialled a connection closes it for being idle:
//!   it alone knows why it opened it (a static peer is kept, a connection made for a delivery
//!   is not), and one side deciding avoids both closing at once. A connection is idle when
//!   nothing was sent or received on it, and nothing is in flight, queued or handled for it,
//!   for [`Config::close_idle_after`](crate::config::Config): it then says goodbye like a
//!   node that shuts down. The peer sends what it has not had answered to another instance,
//!   and this node refuses what arrives after its goodbye (`Engine::on_messages`): a message
//!   that crossed the goodbye is neither lost nor handled twice.

use std::time::{Duration, Instant};

use shoal_proto::NodeId;

use super::directory::{Discovered, group_to_warn_of};
use super::fanout::Audience;
use super::peers::Route;
use super::reask::Asked;
use super::retry::later;
use super::{Action, Engine, Timer, topic};
use crate::NodeEvent;

/// A discovered instance as [`Engine::discovered_instances`] lists it.
#[derive(Clone, Debug)]
pub(crate) struct DiscoveredSummary {
    pub(crate) node: NodeId,
    pub(crate) known: Discovered,
    /// Whether a live connection stands for it.
    pub(crate) connected: bool,
}

/// The state of idle closing: whether the sweep's timer is set.
#[derive(Debug, Default)]
pub(crate) struct IdleSweep {
    armed: bool,
}

impl<H: Clone> Engine<H> {
    /// Discovery announced `node` (or changed its announcement). Deliveries waiting for an
    /// instance look again when its subscriptions count in new audiences, and a new instance
    /// of a service this node uses is connected to at once. An instance that advertises
    /// another multicast group than this node's is warned about, once
    /// ([`group_to_warn_of`]).
    pub(crate) fn discovered(&mut self, node: NodeId, mut known: Discovered, now: Instant) {
        if node == self.id {
            return;
        }
        // Advertised subscriptions the policy refuses the announced service are dropped
        // (authz.rs), as a refused `Subscribe` is.
        let refused = match known.subscriptions.as_mut() {
            Some(subs) => self.drop_refused_advertised(&known.service, subs),
            None => Vec::new(),
        };
        let service = known.service.clone();
        let addrs = known.addrs.clone();
        let before = self.peers.directory.get(node).map(|d| d.multicast);
        if let Some((ours, theirs)) =
            group_to_warn_of(self.config.multicast_group(), before, known.multicast)
        {
            tracing::warn!(
                %node,
                %service,
                %ours,
                %theirs,
                "multicast: instance {node} of `{service}` advertises group {theirs}, this node \
                 is on {ours}: events between them go by unicast (give every node on one LAN \
                 the same group and port)"
            );
        }
        let change = self.peers.directory.upsert(node, known);
        if change.new || change.audiences {
            self.tell_refused_advertised(node, refused);
        }
        if change.new {
            self.emit(NodeEvent::Discovered {
                node,
                service: service.clone(),
                addrs,
            });
        }
        if change.audiences {
            for sub in self
                .peers
                .directory
                .get(node)
                .and_then(|d| d.subscriptions.clone())
                .unwrap_or_default()
            {
                self.peers.subscribed(&sub);
            }
            self.peers.bump();
        }
        if change.new && self.peers.uses_service(&self.conns, &service, self.id) {
            self.ask(node, now);
        }
        if change.new || change.audiences {
            self.peers_changed(now);
        }
    }

    /// Discovery no longer announces `node` (a goodbye, an expired or removed record). A live
    /// connection to it stays: the connection, not the announcement, says whether it lives.
    pub(crate) fn undiscovered(&mut self, node: NodeId, now: Instant) {
        let Some(gone) = self.peers.directory.remove(node) else {
            return;
        };
        // Groups no live or announced instance holds any more are remembered as departed,
        // as when the last connection of a group goes.
        self.peers
            .remember_departed(&self.conns, gone.subscriptions.iter().flatten(), now);
        self.peers.bump();
        self.emit(NodeEvent::Vanished {
            node,
            service: gone.service,
        });
        self.peers_changed(now);
    }

    /// The announced instances, with whether each is connected.
    pub(crate) fn discovered_instances(&self) -> Vec<DiscoveredSummary> {
        self.peers
            .directory
            .iter()
            .map(|(node, known)| DiscoveredSummary {
                node,
                known: known.clone(),
                connected: self.peers.current(node).is_some(),
            })
            .collect()
    }

    /// This node's subscriptions, each pattern and group once (for its announcement).
    pub(crate) fn local_subscriptions(&self) -> Vec<shoal_proto::Subscription> {
        self.inbound.local.distinct_subscriptions()
    }

    /// A delivery on `route` found no live connection: asks for connections to the announced
    /// instances that can take it. Returns those that are not connected, each with when it
    /// may be asked for again: a delivery still waiting waits for them
    /// ([`Engine::wait_for_asks`]), and each is asked for again then, so a dial that failed is
    /// followed by another.
    pub(super) fn connect_for(&mut self, route: &Route, now: Instant) -> Asked {
        let mut asked = Asked::new();
        let mut ask = |engine: &mut Self, node: NodeId| {
            if let Some(at) = engine.ask(node, now) {
                asked.push((node, at));
            }
        };
        match route {
            Route::Service(target) => {
                if let Some(node) = target.node
                    && self.peers.directory.get(node).is_some()
                {
                    ask(self, node);
                }
                for node in self.peers.directory.instances(&target.service).to_vec() {
                    // (Asked for above already.)
                    if Some(node) != target.node {
                        ask(self, node);
                    }
                }
            }
            Route::Audience {
                audience: Audience::Instance(node),
                ..
            } => ask(self, *node),
            Route::Audience {
                topic,
                audience: Audience::Group(group),
            } => {
                let members: Vec<NodeId> = self
                    .peers
                    .directory
                    .advertised()
                    .filter(|(_, subs)| {
                        subs.iter().any(|s| {
                            s.group.as_deref() == Some(group.as_str())
                                && topic::matches(&s.pattern, topic)
                        })
                    })
                    .map(|(n, _)| n)
                    .collect();
                for node in members {
                    ask(self, node);
                }
            }
        }
        asked
    }

    /// Asks for connections to every announced instance of `service` that is not connected
    /// (a caller waits for one, or pings one). Returns the earliest instant one of them may be
    /// asked for again (`None`: none is announced, or all are connected): the caller, still
    /// waiting, calls again then, so a dial that failed is followed by another.
    pub(crate) fn want_service(&mut self, service: &str, now: Instant) -> Option<Instant> {
        let instances = self.peers.directory.instances(service).to_vec();
        instances
            .into_iter()
            .fold(None, |again, node| earliest(again, self.ask(node, now)))
    }

    /// Whether a connection that takes new messages stands for `node` (one saying goodbye,
    /// closing for being idle say, does not count: a delivery needs another).
    pub(crate) fn takes_messages_to(&self, node: NodeId) -> bool {
        self.peers
            .current(node)
            .and_then(|c| self.conns.get(c))
            .is_some_and(super::conn::Conn::takes_messages)
    }

    /// Asks the driver to connect to `node`, unless it is connected or the wait after the last
    /// ask is not over (see [`super::directory::ASK_AGAIN`]; it grows while asks bring no
    /// connection). Returns when `node` may be asked for again (`None`: it is this node, is
    /// connected or is not announced).
    pub(super) fn ask(&mut self, node: NodeId, now: Instant) -> Option<Instant> {
        if node == self.id || self.takes_messages_to(node) {
            return None;
        }
        #[cfg(test)]
        {
            self.reasks.asks += 1;
        }
        if let Some(addrs) = self.peers.directory.ask(node, now) {
            self.actions.push_back(Action::Connect { node, addrs });
        }
        self.peers.directory.next_ask(node)
    }

    /// A connection this node dialled came up: the idle sweep runs while there are such
    /// connections (unless idle connections are kept).
    pub(super) fn arm_idle_sweep(&mut self, now: Instant) {
        let Some(after) = self.config.close_idle_after else {
            return;
        };
        if self.idle.armed {
            return;
        }
        self.idle.armed = true;
        self.set_timer(later(now, sweep_every(after)), Timer::IdleSweep);
    }

    /// Closes the connections this node dialled (and does not keep) that were idle for
    /// [`Config::close_idle_after`](crate::config::Config); sets the next sweep while any are
    /// left.
    pub(super) fn sweep_idle(&mut self, now: Instant) {
        self.idle.armed = false;
        let Some(after) = self.config.close_idle_after else {
            return;
        };
        let mut closing = Vec::new();
        let mut watched = false;
        for (id, c) in &mut self.conns {
            if c.dialer != self.id || c.usage.pinned || !c.takes_messages() {
                continue;
            }
            watched = true;
            let busy = c.window.pending() > 0
                || c.running > 0
                || !c.waiting_room.is_empty()
                || !c.backlog.is_empty()
                || c.queued_bytes() > 0;
            if c.usage.idle_for(c.peek_seq(), busy, now) >= after {
                closing.push(id);
            }
        }
        for conn in closing {
            tracing::debug!(node = %self.id, "closing a connection idle for {after:?}");
            if let Some(c) = self.conns.get_mut(conn) {
                c.usage.closed_idle = true;
                if c.say_goodbye("idle") {
                    self.transmit(conn);
                }
            }
            // No new delivery goes to a connection saying goodbye.
            self.peers.bump();
        }
        if watched {
            self.idle.armed = true;
            self.set_timer(later(now, sweep_every(after)), Timer::IdleSweep);
        }
    }
}

/// The earlier of two instants, either maybe missing.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How often idle connections are looked for: a connection closes between `after` and a
/// quarter more.
fn sweep_every(after: Duration) -> Duration {
    (after / 4).max(Duration::from_millis(50))
}
