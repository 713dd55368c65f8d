//! How an [`MdnsDiscovery`] is configured: which interfaces it runs on and its options.

use std::net::IpAddr;
use std::time::Duration;

use super::MdnsDiscovery;
use super::netif::interface_exists;
#[cfg(doc)]
use crate::event::Discovery;
use crate::event::DiscoveryError;
use crate::root_netns::in_root_netns;

/// The default of [`MdnsConfig::reannounce`].
pub const DEFAULT_REANNOUNCE: Duration = Duration::from_secs(80);
/// The default of [`MdnsConfig::interface_check`].
pub const DEFAULT_INTERFACE_CHECK: Duration = Duration::from_secs(30);
/// The shortest interval [`MdnsConfig::reannounce`] takes.
const MIN_REANNOUNCE: Duration = Duration::from_secs(2);

/// Which interfaces mDNS runs on. A node lists one or more; an interface is used if any entry
/// matches it. There is deliberately no "default": see [`MdnsConfig::new`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InterfaceSelector {
    /// The interface with this name, for example `"eth1"`. [`Discovery::start`] fails if no
    /// interface has this name at that time.
    Name(String),
    /// Loopback interfaces only (`127.0.0.0/8`, `::1`): nodes on this host find each other and
    /// nothing leaves the machine. The loopback interface must allow multicast
    /// (`ip link set lo multicast on` on Linux).
    LoopbackOnly,
    /// Every interface that is up, has the `MULTICAST` flag and is not point-to-point,
    /// loopback included only if it has that flag.
    AllMulticast,
}

impl InterfaceSelector {
    /// Shorthand for [`InterfaceSelector::Name`].
    pub fn name(name: impl Into<String>) -> Self {
        Self::Name(name.into())
    }

    /// Whether an interface with these properties is selected by this entry.
    pub(super) fn matches(
        &self,
        ifname: &str,
        ip: IpAddr,
        multicast_flag: impl FnOnce() -> bool,
    ) -> bool {
        match self {
            Self::Name(name) => name == ifname,
            Self::LoopbackOnly => ip.is_loopback(),
            Self::AllMulticast => multicast_flag(),
        }
    }
}

/// How to run [`MdnsDiscovery`]. Builder-style:
///
/// ```
/// use shoal_discovery::{InterfaceSelector, MdnsConfig};
///
/// let mdns = MdnsConfig::new([InterfaceSelector::name("eth1"), InterfaceSelector::LoopbackOnly])
///     .probe(false) // the default: instance names are random node ids
///     .build();
/// # drop(mdns); // not started: building does not touch the network
/// ```
///
/// Defaults: no name probing, the start-up query on, records announced again every 80 s (at a
/// random point of the last quarter of each interval), interface addresses looked at every
/// 30 s, root network namespace refused, `stop` waits at most 2 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsConfig {
    pub(super) interfaces: Vec<InterfaceSelector>,
    pub(super) probe: bool,
    pub(super) startup_query: bool,
    pub(super) reannounce: Option<Duration>,
    pub(super) interface_check: Option<Duration>,
    pub(super) allow_root_netns: bool,
    pub(super) stop_timeout: Duration,
}

impl MdnsConfig {
    /// A configuration using exactly the interfaces `interfaces` selects.
    ///
    /// The list is required and must not be empty ([`Discovery::start`] fails otherwise): mDNS
    /// should never silently run on every interface of a machine. Use
    /// [`InterfaceSelector::AllMulticast`] to ask for that explicitly.
    pub fn new(interfaces: impl IntoIterator<Item = InterfaceSelector>) -> Self {
        Self {
            interfaces: interfaces.into_iter().collect(),
            probe: false,
            startup_query: true,
            reannounce: Some(DEFAULT_REANNOUNCE),
            interface_check: Some(DEFAULT_INTERFACE_CHECK),
            allow_root_netns: false,
            stop_timeout: Duration::from_secs(2),
        }
    }

    /// Whether to probe for name conflicts before announcing (RFC 6762 §8.1). Default `false`.
    ///
    /// Probing costs about 750 ms before a new node becomes visible and protects names that
    /// may collide; Shoal's instance names are random 128-bit node ids, so they do not. With
    /// probing on, a hostile responder could also force a rename of this node's records.
    pub fn probe(mut self, probe: bool) -> Self {
        self.probe = probe;
        self
    }

    /// Whether this node asks the link itself, with one-shot queries from an ephemeral port
    /// (RFC 6762 §5.1) that responders answer at once by unicast, instead of leaving the
    /// asking to mdns-sd's browse. Default `true`.
    ///
    /// With it, a node sends a query per selected IPv4 interface address at start (a second
    /// one 250 ms later if nobody answered) and again 1 and 3 s after start, which repairs
    /// what a burst of nodes starting together lost; answers pass the same checks as every
    /// announcement. mdns-sd then does not browse: Shoal's own listener keeps the table of the
    /// link from the mDNS group's datagrams (announcements, goodbyes, TTLs) and sends nothing.
    /// mdns-sd's browse is what a mesh of hundreds cannot afford on one link: it re-queries
    /// on every node at 1, 3, 7, 15, ... s after its start, each query with a known-answer
    /// list of one datagram per 30 instances, answered by multicast, and its daemon goes over
    /// its whole cache each time it wakes. Where no selected interface has an IPv4 address,
    /// mdns-sd's browse asks and keeps the table as usual.
    ///
    /// Once an instance has answered on an interface, this node also sends its own records to
    /// the group there at once (an "introduction"), so the link does not depend on its
    /// multicast announcements alone, which are lost or held back when many nodes start
    /// together.
    ///
    /// Off, a node learns the instances already running from mdns-sd's browse alone, whose
    /// first query often goes unanswered: a responder multicasts a record at most once a
    /// second, and nodes that start together all announce in that second (about a second
    /// before the first send to a running service, instead of milliseconds).
    pub fn startup_query(mut self, on: bool) -> Self {
        self.startup_query = on;
        self
    }

    /// How often this node announces its records again, unasked (`None`: never after the
    /// announcements at start and on change). Default 80 s; each announcement goes at a
    /// random point of the last quarter of its interval, so nodes started together spread out.
    ///
    /// mdns-sd gives a node's address and SRV records a TTL of 120 s, and each node that
    /// cached them asks for them again at 80 % of that: without a fresh announcement, every
    /// node of the link asks about every other node every 96 s, all at the same moment (they
    /// cached the records from the same datagram), which in a mesh of 200 was about 330
    /// datagrams a second on the link. An announcement every 60-80 s keeps every cache fresh
    /// with one datagram (sent twice) per node, and also repairs, within one interval, a cache
    /// that lost this node's announcement at start. Below 2 s is raised to 2 s: mdns-sd sends
    /// each announcement twice, a second apart.
    pub fn reannounce(mut self, every: Option<Duration>) -> Self {
        self.reannounce = every.map(|every| every.max(MIN_REANNOUNCE));
        self
    }

    /// How often the selected interfaces' addresses are looked at (`None`: never): mdns-sd
    /// announces a new or changed one, and Shoal's listener opens a group socket on an
    /// interface selected since the last look (an address that came after start, an
    /// interface made anew), asks that link with a start-up query, and closes the socket of
    /// an interface no longer selected. Default 30 s (mdns-sd's own default is 5 s). Whole
    /// seconds, at least 1.
    ///
    /// Each look lists every interface of the host: at 5 s it was a tenth of the whole idle
    /// cost of a mesh of 200 nodes on one host.
    pub fn interface_check(mut self, every: Option<Duration>) -> Self {
        self.interface_check = every;
        self
    }

    /// Whether [`Discovery::start`] may run mDNS in the root network namespace. Default
    /// `false`: `start` fails with [`DiscoveryError::Start`] there.
    ///
    /// mdns-sd joins the mDNS multicast group on every interface of the namespace before the
    /// interface selection takes effect, so a daemon in the root namespace of a development or
    /// CI machine touches its real network. Tests run the source inside network namespaces
    /// (see the `netns` feature); a deployed node sets this to `true` (from its own
    /// configuration) to run on a real host. See [`in_root_netns`].
    pub fn allow_root_netns(mut self, allow: bool) -> Self {
        self.allow_root_netns = allow;
        self
    }

    /// The longest [`Discovery::stop`] waits for the goodbyes and the daemon shutdown.
    /// Default 2 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The interface selection.
    pub fn interfaces(&self) -> &[InterfaceSelector] {
        &self.interfaces
    }

    /// Whether name probing is on.
    pub fn probe_enabled(&self) -> bool {
        self.probe
    }

    /// Whether the start-up query is on.
    pub fn startup_query_enabled(&self) -> bool {
        self.startup_query
    }

    /// How often the records are announced again, if at all.
    pub fn reannounce_interval(&self) -> Option<Duration> {
        self.reannounce
    }

    /// How often the interfaces' addresses are looked at, if at all.
    pub fn interface_check_interval(&self) -> Option<Duration> {
        self.interface_check
    }

    /// Whether the root network namespace is allowed.
    pub fn root_netns_allowed(&self) -> bool {
        self.allow_root_netns
    }

    /// An (unstarted) source with this configuration.
    pub fn build(self) -> MdnsDiscovery {
        MdnsDiscovery::new(self)
    }

    /// Refuses the root network namespace unless allowed. Checked for the calling thread,
    /// which is the thread that will create the daemon.
    pub(super) fn netns_gate(&self) -> Result<(), DiscoveryError> {
        if in_root_netns() && !self.allow_root_netns {
            return Err(DiscoveryError::Start(
                "refusing to start mDNS in the root network namespace (see MdnsConfig::allow_root_netns)".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn check(&self) -> Result<(), DiscoveryError> {
        if self.interfaces.is_empty() {
            return Err(DiscoveryError::Config(
                "mDNS needs at least one interface selector (use AllMulticast to mean every interface)".into(),
            ));
        }
        for selector in &self.interfaces {
            if let InterfaceSelector::Name(name) = selector
                && !interface_exists(name)
            {
                return Err(DiscoveryError::Config(format!(
                    "mDNS: no interface named {name:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_requires_interfaces_that_exist() {
        assert!(matches!(
            MdnsConfig::new([]).check(),
            Err(DiscoveryError::Config(_))
        ));
        let missing = MdnsConfig::new([InterfaceSelector::name("shoal-no-such-if0")]);
        assert!(matches!(missing.check(), Err(DiscoveryError::Config(_))));
        assert!(
            MdnsConfig::new([InterfaceSelector::name("lo")])
                .check()
                .is_ok()
        );
        assert!(
            MdnsConfig::new([InterfaceSelector::LoopbackOnly])
                .check()
                .is_ok()
        );
    }

    #[test]
    fn defaults() {
        let config = MdnsConfig::new([InterfaceSelector::LoopbackOnly]);
        assert!(!config.probe_enabled());
        assert!(!config.root_netns_allowed());
        assert!(config.startup_query_enabled());
        assert_eq!(config.reannounce_interval(), Some(DEFAULT_REANNOUNCE));
        let fast = config.clone().reannounce(Some(Duration::from_millis(10)));
        assert_eq!(fast.reannounce_interval(), Some(MIN_REANNOUNCE));
        assert_eq!(config.clone().reannounce(None).reannounce_interval(), None);
        assert_eq!(
            config.interface_check_interval(),
            Some(DEFAULT_INTERFACE_CHECK)
        );
        assert_eq!(config.interfaces(), &[InterfaceSelector::LoopbackOnly]);
    }

    #[test]
    fn selectors_match() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let lan: IpAddr = "10.99.0.1".parse().expect("ip");
        assert!(InterfaceSelector::name("lan0").matches("lan0", lan, || false));
        assert!(!InterfaceSelector::name("lan0").matches("lan1", lan, || true));
        assert!(InterfaceSelector::LoopbackOnly.matches("lo", lo, || false));
        assert!(!InterfaceSelector::LoopbackOnly.matches("lan0", lan, || true));
        assert!(InterfaceSelector::AllMulticast.matches("lan0", lan, || true));
        assert!(!InterfaceSelector::AllMulticast.matches("lan0", lan, || false));
    }

    /// The gate `start` passes first. Tested directly: no test calls `start` in the root
    /// namespace, so a regression here cannot make a test touch the real network.
    #[test]
    fn root_namespace_is_refused_by_default() {
        let config = MdnsConfig::new([InterfaceSelector::LoopbackOnly]);
        if in_root_netns() {
            assert!(matches!(config.netns_gate(), Err(DiscoveryError::Start(_))));
        } else {
            assert!(config.netns_gate().is_ok());
        }
        assert!(config.allow_root_netns(true).netns_gate().is_ok());
    }
}
