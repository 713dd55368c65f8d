//! Which addresses to keep dialling, from the hints discovery sources report.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use shoal_discovery::{DiscoveryEvent, PeerHint};
use shoal_proto::NodeId;

/// Who a hint speaks for: an announced instance (by node id), or a bare address (static
/// peers, which never go away).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HintKey {
    Node(NodeId),
    Static(SocketAddr),
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
    named_by: HashMap<HintKey, Vec<SocketAddr>>,
    dialling: HashSet<SocketAddr>,
}

impl DialPlan {
    /// Applies a discovery event; `usable` filters addresses this node can reach at all.
    pub(crate) fn apply(
        &mut self,
        event: DiscoveryEvent,
        usable: impl Fn(SocketAddr) -> bool,
    ) -> DialChanges {
        let (hint, up) = match event {
            DiscoveryEvent::Up(hint) | DiscoveryEvent::Updated(hint) => (hint, true),
            DiscoveryEvent::Down(hint) => (hint, false),
            _ => return DialChanges::default(),
        };
        let key = key_of(&hint);
        let addrs: Vec<SocketAddr> = if up {
            hint.addrs.into_iter().filter(|a| usable(*a)).collect()
        } else {
            Vec::new()
        };
        let before = match (&key, up) {
            // A static address is never taken back.
            (HintKey::Static(_), false) => return DialChanges::default(),
            _ if addrs.is_empty() => self.named_by.remove(&key).unwrap_or_default(),
            _ => self.named_by.insert(key, addrs.clone()).unwrap_or_default(),
        };
        let mut changes = DialChanges::default();
        for addr in addrs {
            if self.dialling.insert(addr) {
                changes.start.push(addr);
            }
        }
        for addr in before {
            if !self.named_by.values().any(|named| named.contains(&addr))
                && self.dialling.remove(&addr)
            {
                changes.stop.push(addr);
            }
        }
        changes
    }
}

fn key_of(hint: &PeerHint) -> HintKey {
    match (hint.node_id, hint.addrs.first()) {
        (Some(node), _) => HintKey::Node(node),
        (None, Some(addr)) => HintKey::Static(*addr),
        (None, None) => HintKey::Node(NodeId::from_u128(0)),
    }
}

#[cfg(test)]
mod tests {
    use shoal_discovery::Source;

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

    #[test]
    fn unusable_addresses_are_never_dialled() {
        let mut plan = DialPlan::default();
        let changes = plan.apply(DiscoveryEvent::Up(mdns(1, &[7000, 7001])), |a| {
            a.port() == 7001
        });
        assert_eq!(changes.start, [addr(7001)]);
    }
}
