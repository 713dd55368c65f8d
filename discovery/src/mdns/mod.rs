//! mDNS/DNS-SD discovery: announce this node as `<node id>._shoal._udp.local.` and browse
//! for the others, on the interfaces the configuration names and no others.
//!
//! # What goes on the wire
//!
//! * Service type [`SERVICE_TYPE`] (`_shoal._udp.local.`), instance name = the node id as 32
//!   lowercase hex digits, host name `<node id>.local.`.
//! * SRV port = the node's QUIC port (the port of the first [`LocalNode::addrs`] entry).
//! * A/AAAA = the addresses of the selected interfaces (when the node listens on an
//!   unspecified address such as `0.0.0.0:7000`, restricted to that address family), or the
//!   node's specific listen addresses that sit on a selected interface.
//! * TXT: `svc` = service name, `id` = node id, `pv` = [`shoal_proto::PROTOCOL_VERSION`].
//!   Nothing secret: anyone on the link can read it.
//!
//! # What comes out
//!
//! [`DiscoveryEvent::Up`](crate::DiscoveryEvent::Up) when a valid peer resolves, [`DiscoveryEvent::Updated`](crate::DiscoveryEvent::Updated) when a known
//! peer's addresses or service change, [`DiscoveryEvent::Down`](crate::DiscoveryEvent::Down) when it says goodbye, expires,
//! or starts announcing something invalid. Every hint has `node_id` and `service` set and
//! [`Source::Mdns`]. Announcements that fail the checks (wrong TXT, bad or mismatched id,
//! unknown protocol version, our own id, no usable address, ...) are never forwarded; they are
//! listed in [`MdnsDiscovery::diagnostics`]. Hints are still untrusted: the node's TLS
//! handshake proves who is really there.

mod record;
mod state;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{
    DaemonEvent, IfKind, IfPredicate, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo,
};

use self::record::{Announcement, Me, ReceivedAddr};
pub use self::record::{
    MAX_ADDRS_PER_INSTANCE, MAX_SERVICE_NAME_LEN, RejectReason, SERVICE_TYPE, TXT_NODE_ID,
    TXT_PROTOCOL_VERSION, TXT_SERVICE,
};
use self::state::State;
pub use self::state::{MAX_REJECTED_RECORDS, MAX_TRACKED_INSTANCES, RejectedRecord, SeenInstance};
use crate::event::{Discovery, DiscoveryError, DiscoveryReport, EventSender, LocalNode, Source};
use crate::root_netns::in_root_netns;

/// How long the event thread waits for a daemon event before checking whether it should stop.
const BRIDGE_POLL: Duration = Duration::from_millis(50);

/// How often the event thread may re-subscribe after the daemon dropped its subscription
/// (which mdns-sd does when the subscriber falls 1000 events behind).
const MAX_RESUBSCRIBES: u32 = 100;

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
    fn matches(&self, ifname: &str, ip: IpAddr, multicast_flag: impl FnOnce() -> bool) -> bool {
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
/// Defaults: no name probing, root network namespace refused, `stop` waits at most 2 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsConfig {
    interfaces: Vec<InterfaceSelector>,
    probe: bool,
    allow_root_netns: bool,
    stop_timeout: Duration,
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
    fn netns_gate(&self) -> Result<(), DiscoveryError> {
        if in_root_netns() && !self.allow_root_netns {
            return Err(DiscoveryError::Start(
                "refusing to start mDNS in the root network namespace (see MdnsConfig::allow_root_netns)".into(),
            ));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), DiscoveryError> {
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

/// A snapshot of what [`MdnsDiscovery`] has seen, for logs and status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MdnsDiagnostics {
    /// Whether the source is started and not stopped.
    pub running: bool,
    /// The configured interface selection.
    pub interfaces: Vec<InterfaceSelector>,
    /// This node's own DNS-SD full name, once started.
    pub local_instance: Option<String>,
    /// Whether this node's own announcement has come back to it (multicast works on at least
    /// one selected interface).
    pub own_announcement_seen: bool,
    /// The peers currently up, sorted by node id.
    pub peers: Vec<SeenInstance>,
    /// Recently rejected announcements, oldest first, at most [`MAX_REJECTED_RECORDS`].
    pub rejected: Vec<RejectedRecord>,
    /// How many announcements were rejected since start (repeats included).
    pub rejected_total: u64,
    /// Recent notes from the mDNS daemon (errors, address changes, announcements), oldest first.
    pub notes: Vec<String>,
}

/// What is alive between `start` and `stop`.
struct Running {
    daemon: ServiceDaemon,
    fullname: String,
    stop: Arc<AtomicBool>,
    bridge: JoinHandle<()>,
}

/// Discovery over mDNS/DNS-SD (RFC 6762/6763), built on the `mdns-sd` crate. See the
/// [module documentation](self) for what is announced and reported, and [`MdnsConfig`] for the
/// options.
///
/// Dropping a started source stops it (with goodbyes).
pub struct MdnsDiscovery {
    config: MdnsConfig,
    state: Arc<Mutex<State>>,
    local_instance: Option<String>,
    running: Option<Running>,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("config", &self.config)
            .field("local_instance", &self.local_instance)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl MdnsDiscovery {
    /// An unstarted source. Nothing touches the network before [`Discovery::start`].
    pub fn new(config: MdnsConfig) -> Self {
        let me = Me {
            node_id: shoal_proto::NodeId::from_u128(0),
            service: String::new(),
            port: 0,
        };
        Self {
            config,
            state: Arc::new(Mutex::new(State::new(me))),
            local_instance: None,
            running: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MdnsConfig {
        &self.config
    }

    /// What the source has seen so far. Cheap; does not touch the network.
    pub fn diagnostics(&self) -> MdnsDiagnostics {
        let state = lock(&self.state);
        MdnsDiagnostics {
            running: self.running.is_some(),
            interfaces: self.config.interfaces.clone(),
            local_instance: self.local_instance.clone(),
            own_announcement_seen: state.own_announcement_seen,
            peers: state.peers(),
            rejected: state.rejected(),
            rejected_total: state.rejected_total,
            notes: state.notes.iter().cloned().collect(),
        }
    }

    fn start_inner(
        &mut self,
        local: &LocalNode,
        events: EventSender,
    ) -> Result<(), DiscoveryError> {
        // First, before anything else can go wrong or be reordered.
        self.config.netns_gate()?;
        if self.running.is_some() {
            return Err(DiscoveryError::Config(
                "mDNS discovery is already started".into(),
            ));
        }
        self.config.check()?;
        let plan = AnnouncePlan::new(local)?;

        let me = Me {
            node_id: local.node_id,
            service: local.service.clone(),
            port: plan.port,
        };
        *lock(&self.state) = State::new(me);

        // mdns-sd's daemon thread (spawned here, so in this thread's network namespace) joins
        // the multicast group on every interface it sees before the commands below run; they
        // are processed in order, before anything is announced or queried.
        let daemon =
            ServiceDaemon::new().map_err(|e| DiscoveryError::Start(format!("mDNS daemon: {e}")))?;
        match self.configure(&daemon, local, &plan, events) {
            Ok(running) => {
                self.local_instance = Some(running.fullname.clone());
                self.running = Some(running);
                Ok(())
            }
            Err(e) => {
                if let Ok(status) = daemon.shutdown() {
                    let _ = status.recv_timeout(self.config.stop_timeout);
                }
                Err(e)
            }
        }
    }

    fn configure(
        &self,
        daemon: &ServiceDaemon,
        local: &LocalNode,
        plan: &AnnouncePlan,
        events: EventSender,
    ) -> Result<Running, DiscoveryError> {
        let start_err =
            |what: &str, e: mdns_sd::Error| DiscoveryError::Start(format!("mDNS {what}: {e}"));

        let selected = self.config.interfaces.clone();
        let daemon_filter = IfPredicate::new(move |intf| {
            let (name, ip) = (intf.name.as_str(), intf.ip());
            selected
                .iter()
                .any(|s| s.matches(name, ip, || multicast_flag(name)))
        });
        daemon
            .disable_interface(IfKind::All)
            .map_err(|e| start_err("disable interfaces", e))?;
        daemon
            .enable_interface(IfKind::Predicate(daemon_filter))
            .map_err(|e| start_err("enable interfaces", e))?;
        let monitor = daemon.monitor().map_err(|e| start_err("monitor", e))?;

        let id = local.node_id.to_string();
        let txt = record::txt_entries(local);
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &id,
            &format!("{id}.local."),
            &plan.explicit[..],
            plan.port,
            &txt[..],
        )
        .map_err(|e| DiscoveryError::Config(format!("mDNS service info: {e}")))?;
        info.set_requires_probe(self.config.probe);
        if plan.auto_v4 || plan.auto_v6 {
            let selected = self.config.interfaces.clone();
            let (v4, v6) = (plan.auto_v4, plan.auto_v6);
            info.set_interfaces(vec![IfKind::Predicate(IfPredicate::new(move |intf| {
                let (name, ip) = (intf.name.as_str(), intf.ip());
                (if ip.is_ipv4() { v4 } else { v6 })
                    && selected
                        .iter()
                        .any(|s| s.matches(name, ip, || multicast_flag(name)))
            }))]);
            info = info.enable_addr_auto();
        }
        let fullname = info.get_fullname().to_owned();

        let browse = daemon
            .browse(SERVICE_TYPE)
            .map_err(|e| start_err("browse", e))?;
        daemon
            .register(info)
            .map_err(|e| start_err("register", e))?;

        let stop = Arc::new(AtomicBool::new(false));
        let bridge = Bridge {
            daemon: daemon.clone(),
            browse,
            monitor,
            events,
            state: Arc::clone(&self.state),
            stop: Arc::clone(&stop),
        };
        let bridge = std::thread::Builder::new()
            .name("shoal-mdns".into())
            .spawn(move || bridge.run())
            .map_err(|e| DiscoveryError::Start(format!("mDNS event thread: {e}")))?;
        tracing::debug!(instance = %fullname, port = plan.port, "mdns: started");
        Ok(Running {
            daemon: daemon.clone(),
            fullname,
            stop,
            bridge,
        })
    }
}

impl Discovery for MdnsDiscovery {
    /// Starts the mDNS daemon on the selected interfaces, announces `local` and browses for
    /// peers.
    ///
    /// # Errors
    ///
    /// [`DiscoveryError::Config`] for an empty interface list, an interface name that does not
    /// exist, a `local` without addresses, with port 0 or with an invalid service name, or if
    /// already started. [`DiscoveryError::Start`] in the root network namespace unless
    /// allowed, or if the daemon cannot start.
    fn start(&mut self, local: &LocalNode, events: EventSender) -> Result<(), DiscoveryError> {
        self.start_inner(local, events)
    }

    /// Says goodbye (TTL-0 records, sent twice), shuts the daemon down and joins the event
    /// thread, waiting at most about [`MdnsConfig::stop_timeout`] in total. Idempotent.
    fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let deadline = Instant::now() + self.config.stop_timeout;
        let left = || deadline.saturating_duration_since(Instant::now());

        if let Ok(status) = running.daemon.unregister(&running.fullname) {
            let _ = status.recv_timeout(left());
            // mdns-sd repeats the goodbye 120 ms later; shutting down earlier would cancel it.
            wait_for_goodbye_repeat(&running.daemon, deadline);
        }
        if let Ok(status) = running.daemon.shutdown() {
            let _ = status.recv_timeout(left());
        }
        running.stop.store(true, Ordering::SeqCst);
        // The event thread notices within BRIDGE_POLL.
        let join_deadline = Instant::now() + BRIDGE_POLL * 10;
        while !running.bridge.is_finished() && Instant::now() < join_deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if running.bridge.is_finished() {
            let _ = running.bridge.join();
        } else {
            tracing::warn!("mdns: event thread did not stop in time; leaving it detached");
        }
        tracing::debug!(instance = %running.fullname, "mdns: stopped");
    }

    fn report(&self) -> DiscoveryReport {
        let d = self.diagnostics();
        let rejected = d
            .rejected
            .iter()
            .map(|r| {
                format!(
                    "{}: {} (x{}, via {})",
                    r.instance,
                    r.reason,
                    r.count,
                    r.via.join(",")
                )
            })
            .collect();
        DiscoveryReport {
            source: Some(Source::Mdns),
            running: d.running,
            peers: d.peers.iter().map(state::hint).collect(),
            rejected,
            rejected_total: d.rejected_total,
            notes: d.notes,
        }
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls the daemon's metrics until the repeated goodbye went out, at most until `deadline`
/// and at most 300 ms.
fn wait_for_goodbye_repeat(daemon: &ServiceDaemon, deadline: Instant) {
    let deadline = deadline.min(Instant::now() + Duration::from_millis(300));
    for _ in 0..30 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let Ok(metrics) = daemon.get_metrics() else {
            return;
        };
        let Ok(metrics) = metrics.recv_timeout(left) else {
            return;
        };
        if metrics.get("unregister-resend").is_some_and(|n| *n > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10).min(left));
    }
}

/// What to put in our SRV/A/AAAA records, derived from the node's listen addresses.
#[derive(Debug)]
struct AnnouncePlan {
    port: u16,
    /// Specific listen addresses (announced if they sit on a selected interface).
    explicit: Vec<IpAddr>,
    /// Listening on `0.0.0.0`: announce the IPv4 addresses of the selected interfaces.
    auto_v4: bool,
    /// Listening on `[::]`: announce all addresses of the selected interfaces (Linux `[::]`
    /// sockets are dual-stack by default).
    auto_v6: bool,
}

impl AnnouncePlan {
    fn new(local: &LocalNode) -> Result<Self, DiscoveryError> {
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
}

/// The event thread: turns mdns-sd's events into [`crate::DiscoveryEvent`]s.
struct Bridge {
    daemon: ServiceDaemon,
    browse: mdns_sd::Receiver<ServiceEvent>,
    monitor: mdns_sd::Receiver<DaemonEvent>,
    events: EventSender,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Bridge {
    fn run(mut self) {
        let mut resubscribes = 0;
        while !self.stop.load(Ordering::SeqCst) && !self.events.is_closed() {
            match self.browse.recv_timeout(BRIDGE_POLL) {
                Ok(event) => self.on_service_event(event),
                Err(mdns_sd::RecvTimeoutError::Timeout) => {}
                Err(mdns_sd::RecvTimeoutError::Disconnected) => {
                    // Either the daemon is shutting down (stop) or it dropped our subscription.
                    if self.stop.load(Ordering::SeqCst) || resubscribes >= MAX_RESUBSCRIBES {
                        break;
                    }
                    match self.daemon.browse(SERVICE_TYPE) {
                        Ok(browse) => {
                            resubscribes += 1;
                            self.browse = browse;
                            lock(&self.state).note(
                                "browse subscription dropped by the daemon; resubscribed".into(),
                            );
                        }
                        Err(_) => break,
                    }
                }
            }
            while let Ok(event) = self.monitor.try_recv() {
                self.on_daemon_event(event);
            }
        }
    }

    fn on_service_event(&self, event: ServiceEvent) {
        let forward = match event {
            ServiceEvent::ServiceResolved(resolved) => {
                let announcement = announcement(&resolved);
                lock(&self.state).on_resolved(&announcement, Instant::now())
            }
            ServiceEvent::ServiceRemoved(_, fullname) => lock(&self.state).on_removed(&fullname),
            _ => None,
        };
        if let Some(event) = forward {
            tracing::debug!(?event, "mdns: event");
            // A closed receiver means the node is shutting down; the loop notices.
            let _ = self.events.send(event);
        }
    }

    fn on_daemon_event(&self, event: DaemonEvent) {
        let note = match event {
            DaemonEvent::Error(e) => format!("daemon error: {e}"),
            DaemonEvent::IpAdd(ip) => format!("address added: {ip}"),
            DaemonEvent::IpDel(ip) => format!("address removed: {ip}"),
            DaemonEvent::Announce(name, on) => {
                format!("announced {} on {}", record::printable_name(&name), on)
            }
            DaemonEvent::NameChange(change) => format!("name change: {change:?}"),
            other => format!("{other:?}"),
        };
        tracing::debug!(%note, "mdns: daemon");
        lock(&self.state).note(note);
    }
}

/// Copies what the checks need out of mdns-sd's resolved service.
fn announcement(resolved: &mdns_sd::ResolvedService) -> Announcement {
    let mut via = Vec::new();
    let mut addrs = Vec::new();
    for scoped in resolved.get_addresses() {
        let (ip, scope_id) = match scoped {
            ScopedIp::V4(v4) => {
                via.extend(v4.interface_ids().iter().map(|i| i.name.clone()));
                (IpAddr::V4(*v4.addr()), 0)
            }
            ScopedIp::V6(v6) => {
                via.push(v6.scope_id().name.clone());
                (IpAddr::V6(*v6.addr()), v6.scope_id().index)
            }
            other => (other.to_ip_addr(), 0),
        };
        addrs.push(ReceivedAddr { ip, scope_id });
    }
    via.sort();
    via.dedup();
    Announcement {
        fullname: resolved.get_fullname().to_owned(),
        port: resolved.get_port(),
        addrs,
        txt: resolved
            .get_properties()
            .iter()
            .map(|p| (p.key().to_owned(), p.val().map(<[u8]>::to_vec)))
            .collect(),
        via,
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether an interface with this name exists (cannot be checked here: assume it does).
#[cfg(not(unix))]
fn interface_exists(_name: &str) -> bool {
    true
}

/// Whether the interface `name` has the multicast flag (cannot be checked here: assume so).
#[cfg(not(unix))]
fn multicast_flag(_name: &str) -> bool {
    true
}

/// Whether an interface with this name exists in the calling thread's network namespace.
#[cfg(unix)]
fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Whether the interface `name` has the `IFF_MULTICAST` flag, looked up in the calling
/// thread's network namespace (mdns-sd calls the predicates on its daemon thread).
#[cfg(unix)]
fn multicast_flag(name: &str) -> bool {
    let mut ifaddrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head to the pointer we pass; on success we own the list
    // and free it below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifaddrs) } != 0 {
        return false;
    }
    let mut found = false;
    let mut cursor = ifaddrs;
    // The list is finite; the bound only guards against a corrupted one.
    for _ in 0..100_000 {
        if cursor.is_null() {
            break;
        }
        // SAFETY: `cursor` is a non-null node of the list getifaddrs returned, not freed yet.
        let entry = unsafe { &*cursor };
        if !entry.ifa_name.is_null() {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let entry_name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            if entry_name.to_bytes() == name.as_bytes()
                && entry.ifa_flags & libc::IFF_MULTICAST as u32 != 0
            {
                found = true;
                break;
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `ifaddrs` is the list getifaddrs returned; it is freed exactly once.
    unsafe { libc::freeifaddrs(ifaddrs) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::NodeId;

    fn local(addrs: &[&str]) -> LocalNode {
        LocalNode {
            node_id: NodeId::from_u128(7),
            service: "invoice".into(),
            addrs: addrs.iter().map(|a| a.parse().expect("addr")).collect(),
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
