//! Which addresses to keep dialling, and what the directory holds, from the hints discovery
//! sources report.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use shoal_discovery::{DiscoveryEvent, PeerHint, Source};
use shoal_proto::NodeId;

use crate::engine::Discovered;

/// Who a hint speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HintKey {
    /// An announced instance, by node id and the source announcing it: a `Down` from one source
    /// leaves what another still announces.
    Node(NodeId, Source),
    /// A static peer address, which never goes away.
    Static(SocketAddr),
    /// An instance whose node is unknown (an SRV-only DNS-SD record), by its source and its
    /// addresses (sorted). Its source reports a change of addresses as `Down` then `Up`.
    Addrs(Source, Vec<SocketAddr>),
}

/// What to change after an event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DialChanges {
    /// Addresses that need a dialler now.
    pub(crate) start: Vec<SocketAddr>,
    /// Addresses no hint names any more: stop dialling them (a live connection stays up).
    pub(crate) stop: Vec<SocketAddr>,
}

/// The addresses each hint currently names. An address is dialled while any hint names it.
#[derive(Debug, Default)]
pub(crate) struct DialPlan {
    /// The usable addresses of each hint, and how many instances hold the key (more than one
    /// only for node-less instances at the very same addresses).
    named_by: HashMap<HintKey, (Vec<SocketAddr>, usize)>,
    dialling: HashSet<SocketAddr>,
}

impl DialPlan {
    /// Applies a discovery event; `usable` filters addresses this node can reach at all.
    pub(crate) fn apply(
        &mut self,
        event: DiscoveryEvent,
        usable: impl Fn(SocketAddr) -> bool,
    ) -> DialChanges {
        let (hint, up, new) = match event {
            DiscoveryEvent::Up(hint) => (hint, true, true),
            DiscoveryEvent::Updated(hint) => (hint, true, false),
            DiscoveryEvent::Down(hint) => (hint, false, false),
            _ => return DialChanges::default(),
        };
        let key = key_of(&hint);
        let addrs: Vec<SocketAddr> = if up {
            hint.addrs.into_iter().filter(|a| usable(*a)).collect()
        } else {
            Vec::new()
        };
        let counted = matches!(key, HintKey::Addrs(..));
        let before = match (&key, up) {
            // A static address is never taken back.
            (HintKey::Static(_), false) => return DialChanges::default(),
            // Another instance at the same addresses still stands.
            (HintKey::Addrs(..), false) if self.release(&key) => return DialChanges::default(),
            _ if addrs.is_empty() => self
                .named_by
                .remove(&key)
                .map(|(named, _)| named)
                .unwrap_or_default(),
            _ => {
                let holders = self.named_by.get(&key).map_or(0, |(_, n)| *n);
                let holders = if counted && new {
                    holders + 1
                } else {
                    holders.max(1)
                };
                self.named_by
                    .insert(key, (addrs.clone(), holders))
                    .map(|(named, _)| named)
                    .unwrap_or_default()
            }
        };
        let mut changes = DialChanges::default();
        for addr in addrs {
            if self.dialling.insert(addr) {
                changes.start.push(addr);
            }
        }
        for addr in before {
            if !self
                .named_by
                .values()
                .any(|(named, _)| named.contains(&addr))
                && self.dialling.remove(&addr)
            {
                changes.stop.push(addr);
            }
        }
        changes
    }

    /// One instance at `key`'s addresses went: whether another still holds the key.
    fn release(&mut self, key: &HintKey) -> bool {
        match self.named_by.get_mut(key) {
            Some((_, holders)) if *holders > 1 => {
                *holders -= 1;
                true
            }
            _ => false,
        }
    }
}

/// What each source announces of each instance: an instance leaves the directory only when no
/// source announces it any more.
#[derive(Debug, Default)]
pub(crate) struct Announcements {
    /// Per instance, what each source last announced, the latest last.
    by_node: HashMap<NodeId, Vec<Discovered>>,
}

/// What the directory should hold of an instance after an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Listing {
    /// This announcement (the latest of a source still announcing it).
    Discovered(Discovered),
    /// Nothing: no source announces it any more.
    Undiscovered,
}

impl Announcements {
    /// `known.source` announces `node` as `known`.
    pub(crate) fn up(&mut self, node: NodeId, known: Discovered) -> Listing {
        let sources = self.by_node.entry(node).or_default();
        sources.retain(|d| d.source != known.source);
        sources.push(known.clone());
        Listing::Discovered(known)
    }

    /// `source` no longer announces `node`.
    pub(crate) fn down(&mut self, node: NodeId, source: Source) -> Listing {
        let Some(sources) = self.by_node.get_mut(&node) else {
            return Listing::Undiscovered;
        };
        sources.retain(|d| d.source != source);
        match sources.last() {
            Some(latest) => Listing::Discovered(latest.clone()),
            None => {
                self.by_node.remove(&node);
                Listing::Undiscovered
            }
        }
    }
}

fn key_of(hint: &PeerHint) -> HintKey {
    match (hint.node_id, hint.source, hint.addrs.first()) {
        (Some(node), source, _) => HintKey::Node(node, source),
        (None, Source::Static, Some(addr)) => HintKey::Static(*addr),
        (None, source, _) => {
            let mut addrs = hint.addrs.clone();
            addrs.sort();
            HintKey::Addrs(source, addrs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 99, 0, 2], port))
    }

    fn mdns(node: u128, ports: &[u16]) -> PeerHint {
        PeerHint {
            node_id: Some(NodeId::from_u128(node)),
            service: Some("b".into()),
            addrs: ports.iter().map(|p| addr(*p)).collect(),
            source: Source::Mdns,
            subscriptions: None,
            multicast: None,
        }
    }

    fn all(_: SocketAddr) -> bool {
        true
    }

    #[test]
    fn a_departed_instance_is_no_longer_dialled() {
        let mut plan = DialPlan::default();
        assert_eq!(
            plan.apply(DiscoveryEvent::Up(mdns(1, &[7000])), all).start,
            [addr(7000)]
        );
        let down = plan.apply(DiscoveryEvent::Down(mdns(1, &[7000])), all);
        assert_eq!(
            down,
            DialChanges {
                start: vec![],
                stop: vec![addr(7000)]
            }
        );
    }

    #[test]
    fn a_moved_instance_is_dialled_at_its_new_address_only() {
        let mut plan = DialPlan::default();
        plan.apply(DiscoveryEvent::Up(mdns(1, &[7000])), all);
        let moved = plan.apply(DiscoveryEvent::Updated(mdns(1, &[7001])), all);
        assert_eq!(
            moved,
            DialChanges {
                start: vec![addr(7001)],
                stop: vec![addr(7000)]
            }
        );
    }

    #[test]
    fn an_address_named_by_another_hint_keeps_its_dialler() {
        let mut plan = DialPlan::default();
        let fixed = PeerHint {
            node_id: None,
            service: None,
            addrs: vec![addr(7000)],
            source: Source::Static,
            subscriptions: None,
            multicast: None,
        };
        plan.apply(DiscoveryEvent::Up(fixed.clone()), all);
        assert!(
            plan.apply(DiscoveryEvent::Up(mdns(1, &[7000])), all)
                .start
                .is_empty(),
            "already dialled"
        );
        assert_eq!(
            plan.apply(DiscoveryEvent::Down(mdns(1, &[7000])), all),
            DialChanges::default()
        );
        assert_eq!(
            plan.apply(DiscoveryEvent::Down(fixed), all),
            DialChanges::default(),
            "static stays"
        );
    }

    fn srv_only(ports: &[u16]) -> PeerHint {
        PeerHint {
            node_id: None,
            service: Some("billing".into()),
            addrs: ports.iter().map(|p| addr(*p)).collect(),
            source: Source::DnsSd,
            subscriptions: None,
            multicast: None,
        }
    }

    #[test]
    fn a_departed_instance_without_a_node_id_is_no_longer_dialled() {
        let mut plan = DialPlan::default();
        let pod = srv_only(&[7000]);
        assert_eq!(
            plan.apply(DiscoveryEvent::Up(pod.clone()), all).start,
            [addr(7000)]
        );
        assert_eq!(
            plan.apply(DiscoveryEvent::Down(pod), all).stop,
            [addr(7000)]
        );
    }

    #[test]
    fn an_instance_without_a_node_id_that_moves_is_dialled_at_its_new_address_only() {
        // Its source reports the move as Down (old) then Up (new), see `DiscoveryEvent::Updated`.
        let mut plan = DialPlan::default();
        plan.apply(DiscoveryEvent::Up(srv_only(&[7000])), all);
        let gone = plan.apply(DiscoveryEvent::Down(srv_only(&[7000])), all);
        let moved = plan.apply(DiscoveryEvent::Up(srv_only(&[7001])), all);
        assert_eq!(
            (gone.stop, moved.start),
            (vec![addr(7000)], vec![addr(7001)])
        );
    }

    #[test]
    fn two_instances_without_node_ids_at_the_same_address_are_dialled_until_both_go() {
        let mut plan = DialPlan::default();
        plan.apply(DiscoveryEvent::Up(srv_only(&[7000])), all);
        plan.apply(DiscoveryEvent::Up(srv_only(&[7000])), all);
        assert_eq!(
            plan.apply(DiscoveryEvent::Down(srv_only(&[7000])), all),
            DialChanges::default()
        );
        assert_eq!(
            plan.apply(DiscoveryEvent::Down(srv_only(&[7000])), all)
                .stop,
            [addr(7000)]
        );
    }

    #[test]
    fn an_instance_stays_dialled_while_any_source_announces_it() {
        let mut plan = DialPlan::default();
        let by_dns = PeerHint {
            source: Source::DnsSd,
            ..mdns(1, &[7000])
        };
        plan.apply(DiscoveryEvent::Up(mdns(1, &[7000])), all);
        plan.apply(DiscoveryEvent::Up(by_dns.clone()), all);
        assert_eq!(
            plan.apply(DiscoveryEvent::Down(mdns(1, &[7000])), all),
            DialChanges::default(),
            "DNS-SD still announces it"
        );
        assert_eq!(
            plan.apply(DiscoveryEvent::Down(by_dns), all).stop,
            [addr(7000)]
        );
    }

    #[test]
    fn an_instance_stays_listed_while_any_source_announces_it() {
        let node = NodeId::from_u128(1);
        let by = |source: Source, port: u16| Discovered {
            service: "billing".into(),
            addrs: vec![addr(port)],
            source,
            subscriptions: None,
            multicast: None,
        };
        let mut listed = Announcements::default();
        listed.up(node, by(Source::Mdns, 7000));
        listed.up(node, by(Source::DnsSd, 7001));
        assert_eq!(
            listed.down(node, Source::Mdns),
            Listing::Discovered(by(Source::DnsSd, 7001)),
            "DNS-SD still announces it"
        );
        assert_eq!(listed.down(node, Source::DnsSd), Listing::Undiscovered);
        assert_eq!(listed.down(node, Source::DnsSd), Listing::Undiscovered);
    }

    #[test]
    fn unusable_addresses_are_never_dialled() {
        let mut plan = DialPlan::default();
        let changes = plan.apply(DiscoveryEvent::Up(mdns(1, &[7000, 7001])), |a| {
            a.port() == 7001
        });
        assert_eq!(changes.start, [addr(7001)]);
    }
}
