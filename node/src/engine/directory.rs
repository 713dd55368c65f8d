//! What discovery knows: the instances its sources announced, whether or not this node is
//! connected to them.
//!
//! Discovering an instance is not connecting to it. The directory keeps each announced
//! instance (by node id) with its service, where to dial it and, when its announcement says,
//! what it subscribes to. The engine connects on first use: a delivery with no live connection
//! for its route asks for connections to the instances the directory names for it
//! ([`super::Action::Connect`]); an event's audiences count the subscriptions instances
//! advertise in their announcements, so a publisher learns every subscriber group without a
//! connection to every node.
//!
//! An announcement may also advertise the instance's multicast group. It decides nothing here
//! (peers settle whether they share a group over their connection, `ChannelHello`); it is
//! listed, and an instance on another group than this node's is warned about once
//! ([`group_to_warn_of`]), since events between the two go by unicast.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use shoal_discovery::Source;
use shoal_proto::{NodeId, Subscription};

/// How long after asking the driver for a connection to an instance the engine may ask again
/// (the dial failed, or the connection went since), the first time: every ask the instance
/// does not answer with a connection doubles the wait, up to [`ASK_AGAIN_MAX`].
pub(super) const ASK_AGAIN: Duration = Duration::from_secs(1);

/// The longest wait between two asks for a connection to an instance that does not connect:
/// an instance that is down for good is dialled for once in this long while deliveries wait
/// for it.
pub(super) const ASK_AGAIN_MAX: Duration = Duration::from_secs(8);

/// An instance a discovery source announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Discovered {
    /// The service it is an instance of.
    pub(crate) service: String,
    /// Where to dial it.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Which kind of source announced it.
    pub(crate) source: Source,
    /// The subscriptions its announcement advertises; `None` when it does not say (an older
    /// node, or more than fits in the announcement): such an instance is connected to at once,
    /// so its subscriptions are learned over the connection.
    pub(crate) subscriptions: Option<Vec<Subscription>>,
    /// The multicast group its announcement advertises; `None` when it does not say.
    pub(crate) multicast: Option<SocketAddrV4>,
}

/// A directory entry: the announcement, when a connection to it was last asked for, how
/// many asks in a row it has not answered with a connection, and whether a connection's
/// certificate confirmed its service.
#[derive(Debug)]
struct Entry {
    known: Discovered,
    asked: Option<Instant>,
    unanswered: u32,
    /// A connection for this node was admitted whose certified service is the announced one.
    /// Nothing certifies an announcement (anyone on the link can send one), so the announced
    /// service alone decides no admission; a confirmed one does: a later connection claiming
    /// this node's id for another service is an impostor. Cleared when the announced service
    /// changes.
    confirmed: bool,
}

impl Entry {
    /// The earliest instant a connection may be asked for again.
    fn next_ask(&self) -> Option<Instant> {
        self.asked.map(|at| at + ask_again(self.unanswered))
    }
}

/// How long to wait before asking again after `unanswered` asks in a row that brought no
/// connection: [`ASK_AGAIN`], doubling, at most [`ASK_AGAIN_MAX`].
fn ask_again(unanswered: u32) -> Duration {
    let doublings = unanswered.saturating_sub(1).min(16);
    (ASK_AGAIN * 2u32.pow(doublings)).min(ASK_AGAIN_MAX)
}

/// What changed with an announcement.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Change {
    /// The instance was not known before.
    pub(super) new: bool,
    /// Its advertised subscriptions (or its service) changed: audiences change.
    pub(super) audiences: bool,
}

/// The announced instances. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Directory {
    /// Ordered, so listings and the order of connection requests repeat from run to run.
    nodes: BTreeMap<NodeId, Entry>,
    by_service: HashMap<String, Vec<NodeId>>,
}

impl Directory {
    /// Records (or updates) `node`'s announcement.
    pub(super) fn upsert(&mut self, node: NodeId, known: Discovered) -> Change {
        match self.nodes.get_mut(&node) {
            Some(entry) => {
                let audiences = entry.known.subscriptions != known.subscriptions
                    || entry.known.service != known.service;
                if entry.known.service != known.service {
                    entry.confirmed = false;
                    let old = std::mem::replace(&mut entry.known.service, known.service.clone());
                    unlist(&mut self.by_service, &old, node);
                    self.by_service
                        .entry(known.service.clone())
                        .or_default()
                        .push(node);
                }
                entry.known = known;
                Change {
                    new: false,
                    audiences,
                }
            }
            None => {
                let audiences = known.subscriptions.as_ref().is_some_and(|s| !s.is_empty());
                self.by_service
                    .entry(known.service.clone())
                    .or_default()
                    .push(node);
                self.nodes.insert(
                    node,
                    Entry {
                        known,
                        asked: None,
                        unanswered: 0,
                        confirmed: false,
                    },
                );
                Change {
                    new: true,
                    audiences,
                }
            }
        }
    }

    /// Forgets `node`; returns what was known of it.
    pub(super) fn remove(&mut self, node: NodeId) -> Option<Discovered> {
        let entry = self.nodes.remove(&node)?;
        unlist(&mut self.by_service, &entry.known.service, node);
        Some(entry.known)
    }

    /// What is known of `node`.
    pub(super) fn get(&self, node: NodeId) -> Option<&Discovered> {
        self.nodes.get(&node).map(|e| &e.known)
    }

    /// Every announced instance.
    pub(super) fn iter(&self) -> impl Iterator<Item = (NodeId, &Discovered)> + '_ {
        self.nodes.iter().map(|(n, e)| (*n, &e.known))
    }

    /// The announced instances of `service`.
    pub(super) fn instances(&self, service: &str) -> &[NodeId] {
        self.by_service.get(service).map_or(&[], Vec::as_slice)
    }

    /// The instances that advertise their subscriptions, with them (for audiences).
    pub(super) fn advertised(&self) -> impl Iterator<Item = (NodeId, &[Subscription])> + '_ {
        self.nodes
            .iter()
            .filter_map(|(n, e)| Some((*n, e.known.subscriptions.as_deref()?)))
    }

    /// Whether an announced instance other than `except` advertises `sub`.
    pub(super) fn advertises(&self, sub: &Subscription, except: Option<NodeId>) -> bool {
        self.advertised()
            .any(|(n, subs)| Some(n) != except && subs.contains(sub))
    }

    /// Whether a connection to `node` may be asked for now: it is announced, and the wait
    /// after the last ask is over ([`ASK_AGAIN`], doubling with every ask not answered by a
    /// connection, at most [`ASK_AGAIN_MAX`]). Notes the request. An instance nobody asked
    /// for in twice its wait starts over from [`ASK_AGAIN`]: no delivery waited for it
    /// meanwhile (a waiting one asks as soon as it may).
    pub(super) fn ask(&mut self, node: NodeId, now: Instant) -> Option<Vec<SocketAddr>> {
        let entry = self.nodes.get_mut(&node)?;
        if let Some(at) = entry.asked {
            let since = now.saturating_duration_since(at);
            let wait = ask_again(entry.unanswered);
            if since < wait {
                return None;
            }
            if since >= 2 * wait {
                entry.unanswered = 0;
            }
        }
        entry.asked = Some(now);
        entry.unanswered = entry.unanswered.saturating_add(1);
        Some(entry.known.addrs.clone())
    }

    /// When a connection to `node` may be asked for again (`None`: at once, or it is not
    /// announced).
    pub(super) fn next_ask(&self, node: NodeId) -> Option<Instant> {
        self.nodes.get(&node).and_then(Entry::next_ask)
    }

    /// `node` is connected, by a connection certified as `service`: the next time it is
    /// needed after the connection goes, it may be asked for at once, and the wait starts over
    /// from [`ASK_AGAIN`]. If `service` is the announced one, the announcement is confirmed.
    pub(super) fn connected(&mut self, node: NodeId, service: &str) {
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.asked = None;
            entry.unanswered = 0;
            entry.confirmed |= entry.known.service == service;
        }
    }

    /// The service a certified connection confirmed for `node`'s announcement, if one did.
    pub(super) fn confirmed_service(&self, node: NodeId) -> Option<&str> {
        self.nodes
            .get(&node)
            .filter(|e| e.confirmed)
            .map(|e| e.known.service.as_str())
    }
}

/// Whether an announcement calls for a warning that the instance is on another multicast
/// group: `ours` is this node's group (`None`: multicast off here), `theirs` the one the
/// announcement advertises (`None`: it says none), `before` what the instance advertised when
/// it was last announced (`None`: it is new to the directory). Returns `(ours, theirs)` when
/// the groups differ and the instance is new or advertised something else before, so a
/// warning comes once per instance, not with every announcement repeating it (again only if
/// it vanishes and comes back, or moves to yet another group). An instance that advertises no
/// group (multicast off there, or an older node) is not warned about.
pub(super) fn group_to_warn_of(
    ours: Option<SocketAddrV4>,
    before: Option<Option<SocketAddrV4>>,
    theirs: Option<SocketAddrV4>,
) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let (ours, theirs) = (ours?, theirs?);
    (ours != theirs && before != Some(Some(theirs))).then_some((ours, theirs))
}

fn unlist(by_service: &mut HashMap<String, Vec<NodeId>>, service: &str, node: NodeId) {
    if let Some(list) = by_service.get_mut(service) {
        list.retain(|n| *n != node);
        if list.is_empty() {
            by_service.remove(service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(pattern: &str, group: &str) -> Subscription {
        Subscription {
            pattern: pattern.into(),
            group: Some(group.into()),
        }
    }

    fn known(service: &str, subs: Option<Vec<Subscription>>) -> Discovered {
        Discovered {
            service: service.into(),
            addrs: vec![SocketAddr::from(([10, 99, 0, 2], 7000))],
            source: Source::Mdns,
            subscriptions: subs,
            multicast: None,
        }
    }

    #[test]
    fn announcements_are_listed_by_service_and_changes_are_told() {
        let mut dir = Directory::default();
        let (a, b) = (NodeId::from_u128(1), NodeId::from_u128(2));
        let change = dir.upsert(a, known("billing", Some(vec![sub("orders.*", "billing")])));
        assert_eq!(
            change,
            Change {
                new: true,
                audiences: true
            }
        );
        assert_eq!(
            dir.upsert(b, known("billing", None)),
            Change {
                new: true,
                audiences: false
            }
        );
        assert_eq!(dir.instances("billing"), [a, b]);
        assert!(dir.advertises(&sub("orders.*", "billing"), None));
        assert!(!dir.advertises(&sub("orders.*", "billing"), Some(a)));
        assert_eq!(dir.advertised().count(), 1, "b does not say");

        // The same announcement again changes nothing; new subscriptions change audiences.
        let again = dir.upsert(a, known("billing", Some(vec![sub("orders.*", "billing")])));
        assert_eq!(again, Change::default());
        let more = dir.upsert(a, known("billing", Some(vec![])));
        assert!(more.audiences && !more.new);

        // A moved service is listed under its new name only.
        dir.upsert(b, known("audit", None));
        assert_eq!(dir.instances("billing"), [a]);
        assert_eq!(dir.instances("audit"), [b]);

        assert!(dir.remove(a).is_some());
        assert!(dir.instances("billing").is_empty());
        assert_eq!(dir.iter().count(), 1);
    }

    #[test]
    fn only_a_certified_connection_of_the_announced_service_confirms_an_announcement() {
        let mut dir = Directory::default();
        let a = NodeId::from_u128(1);
        dir.upsert(a, known("billing", None));
        assert_eq!(dir.confirmed_service(a), None, "an announcement alone");
        dir.connected(a, "spy");
        assert_eq!(
            dir.confirmed_service(a),
            None,
            "another service's connection"
        );
        dir.connected(a, "billing");
        assert_eq!(dir.confirmed_service(a), Some("billing"));
        dir.upsert(a, known("billing", Some(vec![])));
        assert_eq!(
            dir.confirmed_service(a),
            Some("billing"),
            "kept through updates"
        );
        dir.upsert(a, known("spy", None));
        assert_eq!(
            dir.confirmed_service(a),
            None,
            "cleared when the service changes"
        );
    }

    #[test]
    fn a_connection_is_asked_for_at_most_once_a_second_until_connected() {
        let mut dir = Directory::default();
        let a = NodeId::from_u128(1);
        let t0 = Instant::now();
        assert!(dir.ask(a, t0).is_none(), "not announced");
        dir.upsert(a, known("billing", None));
        assert!(dir.ask(a, t0).is_some());
        assert_eq!(dir.next_ask(a), Some(t0 + ASK_AGAIN));
        assert!(dir.ask(a, t0 + Duration::from_millis(500)).is_none());
        assert!(dir.ask(a, t0 + ASK_AGAIN).is_some());
        dir.connected(a, "billing");
        assert_eq!(dir.next_ask(a), None);
        assert!(dir.ask(a, t0 + ASK_AGAIN).is_some(), "asked again at once");
    }

    #[test]
    fn asks_that_bring_no_connection_back_off_to_once_in_eight_seconds() {
        let mut dir = Directory::default();
        let a = NodeId::from_u128(1);
        dir.upsert(a, known("billing", None));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Asked as soon as allowed, never connected: 1 s, 2 s, 4 s, then 8 s apart.
        let mut at = t0;
        let mut gaps = Vec::new();
        for _ in 0..7 {
            assert!(dir.ask(a, at).is_some());
            let next = dir.next_ask(a).expect("asked");
            assert!(dir.ask(a, next - Duration::from_millis(1)).is_none());
            gaps.push(next - at);
            at = next;
        }
        assert_eq!(gaps, [s(1), s(2), s(4), s(8), s(8), s(8), s(8)]);
        // Nobody asked for twice the wait: the next need starts over from a second.
        let later = at + s(16);
        assert!(dir.ask(a, later).is_some());
        assert_eq!(dir.next_ask(a), Some(later + ASK_AGAIN));
        // A connection starts it over too.
        assert!(dir.ask(a, later + s(1)).is_some());
        assert_eq!(dir.next_ask(a), Some(later + s(3)));
        dir.connected(a, "billing");
        assert!(dir.ask(a, later + s(2)).is_some());
        assert_eq!(dir.next_ask(a), Some(later + s(3)));
    }

    #[test]
    fn an_instance_on_another_group_is_warned_about_once() {
        let group = |text: &str| Some(text.parse::<SocketAddrV4>().expect("group"));
        let (ours, other, third) = (
            group("239.255.83.72:7451"),
            group("239.255.83.72:7500"),
            group("239.1.1.1:7451"),
        );
        let warns = |before, theirs| group_to_warn_of(ours, before, theirs);
        let both = |theirs: Option<SocketAddrV4>| ours.zip(theirs);

        // A new instance: on another group (port or address), warned; on ours, or saying
        // none, not.
        assert_eq!(warns(None, other), both(other), "another port");
        assert_eq!(warns(None, third), both(third), "another address");
        assert_eq!(warns(None, ours), None, "the same group");
        assert_eq!(
            warns(None, None),
            None,
            "multicast off there, or an older node"
        );

        // The same announcement again: no second warning.
        assert_eq!(warns(Some(other), other), None);
        // What changes: to another group, from ours or from none, warned again.
        assert_eq!(warns(Some(other), third), both(third));
        assert_eq!(warns(Some(ours), other), both(other));
        assert_eq!(warns(Some(None), other), both(other));
        // Back to ours, or to none: nothing to say.
        assert_eq!(warns(Some(other), ours), None);
        assert_eq!(warns(Some(other), None), None);

        // Multicast off here: never.
        for (before, theirs) in [(None, other), (Some(ours), other), (Some(None), third)] {
            assert_eq!(group_to_warn_of(None, before, theirs), None);
        }
    }
}
