//! What this node announces: the SRV/A/AAAA/TXT content of our own [`ServiceInfo`], derived
//! from the node's listen addresses, and the interfaces it goes out on.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, IfPredicate, ServiceInfo};

use super::config::{InterfaceSelector, MdnsConfig};
use super::netif::multicast_flag;
use super::record::{self, MAX_SERVICE_NAME_LEN, SERVICE_TYPE};
use crate::event::{DiscoveryError, LocalNode};

/// What to put in our SRV/A/AAAA records, derived from the node's listen addresses.
#[derive(Clone, Debug)]
pub(super) struct AnnouncePlan {
    pub(super) port: u16,
    /// Specific listen addresses (announced if they sit on a selected interface).
    explicit: Vec<IpAddr>,
    /// Listening on `0.0.0.0`: announce the IPv4 addresses of the selected interfaces.
    auto_v4: bool,
    /// Listening on `[::]`: announce all addresses of the selected interfaces (Linux `[::]`
    /// sockets are dual-stack by default).
    auto_v6: bool,
}

impl AnnouncePlan {
    /// Plans the announcement of `local`: the port of its first listen address, and which
    /// addresses on that port to announce.
    pub(super) fn new(local: &LocalNode) -> Result<Self, DiscoveryError> {
        if !record::valid_service_name(&local.service) {
            return Err(DiscoveryError::Config(format!(
                "mDNS: service name must be 1..={MAX_SERVICE_NAME_LEN} bytes without control characters"
            )));
        }
        let Some(first) = local.addrs.first() else {
            return Err(DiscoveryError::Config(
                "mDNS: the local node has no address to announce".into(),
            ));
        };
        let port = first.port();
        if port == 0 {
            return Err(DiscoveryError::Config(
                "mDNS: cannot announce port 0".into(),
            ));
        }
        if local.addrs.iter().any(|a| a.port() != port) {
            tracing::warn!(
                port,
                "mdns: listen addresses use several ports; announcing only the first"
            );
        }
        let on_port = || {
            local
                .addrs
                .iter()
                .filter(|a| a.port() == port)
                .map(SocketAddr::ip)
        };
        let explicit = on_port().filter(|ip| !ip.is_unspecified()).collect();
        let auto_v6 = on_port().any(|ip| ip == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let auto_v4 =
            auto_v6 || on_port().any(|ip| ip == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Ok(Self {
            port,
            explicit,
            auto_v4,
            auto_v6,
        })
    }

    /// Whether `ip`, an address of a selected interface, is announced.
    pub(super) fn announces(&self, ip: IpAddr) -> bool {
        (if ip.is_ipv4() {
            self.auto_v4
        } else {
            self.auto_v6
        }) || self.explicit.contains(&ip)
    }

    /// Our own service: instance and host named after the node id, the planned port and
    /// addresses, the TXT entries of [`record::txt_entries`]. Addresses found automatically
    /// are restricted to the interfaces `config` selects and to the planned address families.
    pub(super) fn service_info(
        &self,
        local: &LocalNode,
        config: &MdnsConfig,
    ) -> Result<ServiceInfo, DiscoveryError> {
        let id = local.node_id.to_string();
        let txt = record::txt_entries(local);
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &id,
            &format!("{id}.local."),
            &self.explicit[..],
            self.port,
            &txt[..],
        )
        .map_err(|e| DiscoveryError::Config(format!("mDNS service info: {e}")))?;
        info.set_requires_probe(config.probe);
        if self.auto_v4 || self.auto_v6 {
            let selected = config.interfaces.clone();
            let (v4, v6) = (self.auto_v4, self.auto_v6);
            info.set_interfaces(vec![IfKind::Predicate(IfPredicate::new(move |intf| {
                let (name, ip) = (intf.name.as_str(), intf.ip());
                (if ip.is_ipv4() { v4 } else { v6 }) && is_selected(&selected, name, ip)
            }))]);
            info = info.enable_addr_auto();
        }
        Ok(info)
    }
}

/// The daemon's interface filter: the interfaces any of `selected` matches.
pub(super) fn daemon_interfaces(selected: Vec<InterfaceSelector>) -> IfPredicate {
    IfPredicate::new(move |intf| {
        let (name, ip) = (intf.name.as_str(), intf.ip());
        is_selected(&selected, name, ip)
    })
}

/// The selected interfaces' addresses: (interface name, index, address), one entry per
/// address, in the calling thread's network namespace.
pub(super) fn selected_addrs(
    selected: &[InterfaceSelector],
) -> std::io::Result<Vec<(String, u32, IpAddr)>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .filter(|interface| is_selected(selected, &interface.name, interface.ip()))
        .map(|interface| {
            let ip = interface.ip();
            (interface.name, interface.index.unwrap_or(0), ip)
        })
        .collect())
}

/// Whether any of `selected` matches the interface `name` with address `ip`.
pub(super) fn is_selected(selected: &[InterfaceSelector], name: &str, ip: IpAddr) -> bool {
    selected
        .iter()
        .any(|s| s.matches(name, ip, || multicast_flag(name)))
}

#[cfg(test)]
mod tests {
    use shoal_proto::NodeId;

    use super::*;

    fn local(addrs: &[&str]) -> LocalNode {
        LocalNode {
            node_id: NodeId::from_u128(7),
            service: "invoice".into(),
            addrs: addrs.iter().map(|a| a.parse().expect("addr")).collect(),
            subscriptions: Vec::new(),
            multicast: None,
        }
    }

    #[test]
    fn announce_plan_follows_the_listen_addresses() {
        let plan = AnnouncePlan::new(&local(&["0.0.0.0:7000"])).expect("plan");
        assert_eq!(
            (plan.port, plan.auto_v4, plan.auto_v6, plan.explicit.len()),
            (7000, true, false, 0)
        );

        let plan = AnnouncePlan::new(&local(&["[::]:7000"])).expect("plan");
        assert!(plan.auto_v4 && plan.auto_v6);

        let plan = AnnouncePlan::new(&local(&["10.99.0.1:7000", "0.0.0.0:7001"])).expect("plan");
        assert_eq!(
            plan.explicit,
            vec!["10.99.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert!(!plan.auto_v4, "other ports are not announced");

        assert!(AnnouncePlan::new(&local(&[])).is_err());
        assert!(AnnouncePlan::new(&local(&["0.0.0.0:0"])).is_err());
        let mut bad = local(&["0.0.0.0:7000"]);
        bad.service = "a\nb".into();
        assert!(AnnouncePlan::new(&bad).is_err());
    }
}
