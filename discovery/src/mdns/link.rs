//! Which announced addresses are on the link an announcement was heard on.
//!
//! # Why
//!
//! Anyone on a link can announce an instance whose A/AAAA records point anywhere: at a server
//! off the link, or at another host that never announced. Nodes that dial what they hear would
//! then send their handshakes there (a reflection, or traffic steered where the announcer
//! chooses). An mDNS responder announces on each interface the addresses valid on that
//! interface (mdns-sd's `get_addrs_on_my_intf_v4`/`_v6`, with its `valid_ip_on_intf`: the
//! address and the interface's address agree under the interface's netmask), and Shoal's
//! introduction carries the address of the interface it goes out of. So an address not on the
//! link it was heard on is not one an honest Shoal node announced there.
//!
//! # The rule
//!
//! An IPv4 address is on the link if it lies in one of the interface's IPv4 subnets (address
//! and netmask); an IPv6 address if it is link-local (`fe80::/10`: it is given the interface's
//! scope) or lies in one of the interface's IPv6 prefixes. The others are dropped and recorded
//! as refused ([`RejectReason::OffLink`]); an announcement left with no address is refused as a
//! whole and not taken in (a peer it names that is known otherwise stays as it was).
//!
//! Pure apart from [`links`], which lists the interfaces of the calling thread's namespace.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::record::{Announcement, ReceivedAddr, RejectReason};
use super::state::State;

/// One subnet of an interface: an address of it and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Subnet {
    ip: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// The subnet of the interface address `ip` with `prefix` leading bits of network.
    pub(super) fn new(ip: IpAddr, prefix: u8) -> Self {
        Self { ip, prefix }
    }

    /// Whether `ip` lies in this subnet (same family, same network bits).
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(self.prefix)))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(self.prefix)))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The subnets of one interface, both address families.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Link {
    subnets: Vec<Subnet>,
}

impl Link {
    /// The link of an interface with these subnets.
    #[cfg(test)]
    pub(super) fn new(subnets: Vec<Subnet>) -> Self {
        Self { subnets }
    }

    /// Whether `ip`, announced on this link, is on it (see the module's doc).
    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        if let IpAddr::V6(v6) = ip
            && v6.segments()[0] & 0xffc0 == 0xfe80
        {
            return true;
        }
        self.subnets.iter().any(|subnet| subnet.contains(ip))
    }
}

/// The link of each interface of the calling thread's network namespace, by name.
pub(super) fn links() -> std::io::Result<HashMap<String, Link>> {
    Ok(links_of(if_addrs::get_if_addrs()?.into_iter().map(
        |interface| {
            let subnet = match &interface.addr {
                if_addrs::IfAddr::V4(v4) => Subnet::new(IpAddr::V4(v4.ip), v4.prefixlen),
                if_addrs::IfAddr::V6(v6) => Subnet::new(IpAddr::V6(v6.ip), v6.prefixlen),
            };
            (interface.name, subnet)
        },
    )))
}

/// The links of `interfaces` (each name with one of its subnets), by name. An IPv4 alias
/// address comes under its label (`eth0:1`), but it is on the device's link: every name of a
/// device (`eth0`, `eth0:1`) has the subnets of all of them.
fn links_of(interfaces: impl IntoIterator<Item = (String, Subnet)>) -> HashMap<String, Link> {
    let device = |name: &str| name.split(':').next().unwrap_or(name).to_owned();
    let mut devices: HashMap<String, Link> = HashMap::new();
    let mut names = Vec::new();
    for (name, subnet) in interfaces {
        devices
            .entry(device(&name))
            .or_default()
            .subnets
            .push(subnet);
        names.push(name);
    }
    names
        .into_iter()
        .map(|name| {
            let link = devices.get(&device(&name)).cloned().unwrap_or_default();
            (name, link)
        })
        .collect()
}

/// Drops the addresses of `announcement` (heard on its `via`) that are not on `link`,
/// recording them in `state` as refused ([`RejectReason::OffLink`]). Returns whether the
/// announcement may be taken in: false if it announced addresses and none is on the link
/// (it is then refused as a whole).
pub(super) fn keep_on_link(
    announcement: &mut Announcement,
    link: &Link,
    state: &mut State,
    now: Instant,
) -> bool {
    let (on, off): (Vec<ReceivedAddr>, Vec<ReceivedAddr>) = announcement
        .addrs
        .drain(..)
        .partition(|addr| link.contains(addr.ip));
    announcement.addrs = on;
    refuse_off_link(announcement, off, state, now)
}

/// Splits `addrs`, each with the interfaces it was heard on, into those on the link of one of
/// them (as `links` has them) and the others.
pub(super) fn on_links(
    addrs: Vec<(ReceivedAddr, Vec<String>)>,
    links: &HashMap<String, Link>,
) -> (Vec<ReceivedAddr>, Vec<ReceivedAddr>) {
    let (on, off): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|(addr, heard_on)| {
        heard_on
            .iter()
            .any(|name| links.get(name).is_some_and(|link| link.contains(addr.ip)))
    });
    let strip = |list: Vec<(ReceivedAddr, Vec<String>)>| list.into_iter().map(|(a, _)| a).collect();
    (strip(on), strip(off))
}

/// Records `off`, the addresses dropped from `announcement` (which keeps the others), in
/// `state` as refused ([`RejectReason::OffLink`]). Returns whether the announcement may be
/// taken in: false if `off` is all it announced.
pub(super) fn refuse_off_link(
    announcement: &Announcement,
    off: Vec<ReceivedAddr>,
    state: &mut State,
    now: Instant,
) -> bool {
    if off.is_empty() {
        return true;
    }
    let dropped = Announcement {
        addrs: off,
        ..announcement.clone()
    };
    state.reject(&dropped, RejectReason::OffLink, now);
    !announcement.addrs.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(subnets: &[(&str, u8)]) -> Link {
        Link::new(
            subnets
                .iter()
                .map(|(ip, prefix)| Subnet::new(ip.parse().expect("ip"), *prefix))
                .collect(),
        )
    }

    fn on(link: &Link, ip: &str) -> bool {
        link.contains(ip.parse().expect("ip"))
    }

    /// An alias address (listed under its label, `eth0:1`) is on its device's link: an
    /// announcement from its subnet heard on `eth0` is taken in, and the other way round.
    #[test]
    fn alias_addresses_are_on_their_devices_link() {
        let subnet = |ip: &str, prefix| Subnet::new(ip.parse().expect("ip"), prefix);
        let links = links_of([
            ("eth0".to_owned(), subnet("10.1.0.7", 24)),
            ("eth0:1".to_owned(), subnet("192.168.5.7", 24)),
            ("eth1".to_owned(), subnet("10.2.0.7", 24)),
        ]);
        for name in ["eth0", "eth0:1"] {
            assert!(on(&links[name], "192.168.5.9"), "{name}");
            assert!(on(&links[name], "10.1.0.9"), "{name}");
            assert!(!on(&links[name], "10.2.0.9"), "{name}: another device");
        }
        assert!(!on(&links["eth1"], "192.168.5.9"));
    }

    #[test]
    fn an_address_is_on_the_link_if_a_subnet_holds_it() {
        let lan = link(&[("10.1.0.7", 24), ("fd00:1::7", 64)]);
        assert!(on(&lan, "10.1.0.200"));
        assert!(on(&lan, "10.1.0.0"));
        assert!(!on(&lan, "10.1.1.5"), "the next /24");
        assert!(!on(&lan, "203.0.113.5"));
        assert!(!on(&lan, "127.0.0.1"));
        assert!(on(&lan, "fd00:1::1234"));
        assert!(!on(&lan, "fd00:2::1"));
        assert!(!on(&lan, "::1"));
        assert!(on(&lan, "fe80::99"), "link-local: always on its link");
        // The families do not mix: an IPv4-mapped address is not in the IPv4 subnet.
        assert!(!on(&lan, "::ffff:10.1.0.9"));
    }

    #[test]
    fn an_address_heard_on_several_interfaces_is_on_the_link_of_one() {
        let links = HashMap::from([
            ("lan0".to_owned(), link(&[("10.1.0.7", 24)])),
            ("lan1".to_owned(), link(&[("10.2.0.7", 24)])),
        ]);
        let addr = |ip: &str| ReceivedAddr {
            ip: ip.parse().expect("ip"),
            scope_id: 0,
        };
        let heard =
            |ip: &str, on: &[&str]| (addr(ip), on.iter().map(|s| (*s).to_owned()).collect());
        let (on, off) = on_links(
            vec![
                heard("10.2.0.5", &["lan0", "lan1"]),
                heard("10.2.0.6", &["lan0"]),
                heard("10.1.0.5", &["gone"]),
                heard("fe80::1", &["lan1"]),
            ],
            &links,
        );
        assert_eq!(on, vec![addr("10.2.0.5"), addr("fe80::1")]);
        assert_eq!(
            off,
            vec![addr("10.2.0.6"), addr("10.1.0.5")],
            "an unknown interface has no link"
        );
    }

    #[test]
    fn odd_prefixes_do_not_panic() {
        let host = link(&[("10.1.0.7", 32), ("fd00::7", 128)]);
        assert!(on(&host, "10.1.0.7") && !on(&host, "10.1.0.8"));
        assert!(on(&host, "fd00::7") && !on(&host, "fd00::8"));
        let everything = link(&[("10.1.0.7", 0), ("fd00::7", 0)]);
        assert!(on(&everything, "203.0.113.5") && on(&everything, "2001:db8::1"));
        let nonsense = link(&[("10.1.0.7", 200), ("fd00::7", 255)]);
        assert!(on(&nonsense, "10.1.0.7") && !on(&nonsense, "10.1.0.8"));
        assert!(
            !on(&link(&[]), "10.1.0.7"),
            "an interface without addresses"
        );
    }
}
