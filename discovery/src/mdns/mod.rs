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
//! # At start
//!
//! Besides mdns-sd's browse, a node asks the link once with one-shot queries from an ephemeral
//! port, which responders answer at once by unicast (see `oneshot.rs` for why the browse alone
//! takes about a second there), and sends each instance that answered its own records by
//! unicast (`introduce.rs`: peers need not wait for its multicast announcements, which are
//! lost or held back when many nodes start together); [`MdnsConfig::startup_query`] turns
//! both off.
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

mod announce;
mod bridge;
mod config;
mod introduce;
mod netif;
mod oneshot;
mod record;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon};

use self::announce::AnnouncePlan;
use self::bridge::Bridge;
pub use self::config::{InterfaceSelector, MdnsConfig};
use self::introduce::Introduction;
use self::oneshot::StartupQuery;
use self::record::Me;
pub use self::record::{
    MAX_ADDRS_PER_INSTANCE, MAX_SERVICE_NAME_LEN, RejectReason, SERVICE_TYPE, TXT_NODE_ID,
    TXT_PROTOCOL_VERSION, TXT_SERVICE,
};
pub(crate) use self::record::{parse_node_id, valid_service_name};
pub use self::state::{MAX_REJECTED_RECORDS, MAX_TRACKED_INSTANCES, RejectedRecord, SeenInstance};
use self::state::{State, lock};
use crate::event::{Discovery, DiscoveryError, DiscoveryReport, EventSender, LocalNode, Source};

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
    /// How many instance descriptions the start-up query's answers carried (see
    /// [`MdnsConfig::startup_query`]); repeats included.
    pub startup_query_answers: u64,
    /// How many instances that answered the start-up query were sent this node's records by
    /// unicast at once, so they need not wait for its multicast announcements.
    pub introductions_sent: u64,
}

/// What is alive between `start` and `stop`.
struct Running {
    daemon: ServiceDaemon,
    plan: AnnouncePlan,
    fullname: String,
    stop: Arc<AtomicBool>,
    bridge: JoinHandle<()>,
    startup_query: Option<JoinHandle<()>>,
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
            startup_query_answers: state.startup_query_answers,
            introductions_sent: state.introductions_sent,
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
        match self.configure(&daemon, local, plan, events) {
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
        plan: AnnouncePlan,
        events: EventSender,
    ) -> Result<Running, DiscoveryError> {
        let start_err =
            |what: &str, e: mdns_sd::Error| DiscoveryError::Start(format!("mDNS {what}: {e}"));

        daemon
            .disable_interface(IfKind::All)
            .map_err(|e| start_err("disable interfaces", e))?;
        daemon
            .enable_interface(IfKind::Predicate(announce::daemon_interfaces(
                self.config.interfaces.clone(),
            )))
            .map_err(|e| start_err("enable interfaces", e))?;
        let monitor = daemon.monitor().map_err(|e| start_err("monitor", e))?;

        let info = plan.service_info(local, &self.config)?;
        let fullname = info.get_fullname().to_owned();

        let browse = daemon
            .browse(SERVICE_TYPE)
            .map_err(|e| start_err("browse", e))?;
        daemon
            .register(info)
            .map_err(|e| start_err("register", e))?;

        let stop = Arc::new(AtomicBool::new(false));
        let introduction = match Introduction::new(local, &plan) {
            Ok(introduction) => Some(introduction),
            Err(e) => {
                lock(&self.state).note(format!("no introduction: {e}"));
                None
            }
        };
        let startup_query = StartupQuery {
            selected: self.config.interfaces.clone(),
            events: events.clone(),
            state: Arc::clone(&self.state),
            stop: Arc::clone(&stop),
            introduction,
        };
        let bridge = Bridge {
            daemon: daemon.clone(),
            browse,
            monitor,
            events,
            state: Arc::clone(&self.state),
            stop: Arc::clone(&stop),
        }
        .spawn()?;
        let startup_query = if self.config.startup_query {
            match startup_query.spawn() {
                Ok(thread) => Some(thread),
                Err(e) => {
                    // Discovery still works without it, only slower at start.
                    lock(&self.state).note(format!("start-up query thread not started: {e}"));
                    None
                }
            }
        } else {
            None
        };
        tracing::debug!(instance = %fullname, port = plan.port, "mdns: started");
        Ok(Running {
            daemon: daemon.clone(),
            plan,
            fullname,
            stop,
            bridge,
            startup_query,
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

    /// Announces `local` again with its new TXT entries (its subscriptions): mdns-sd replaces
    /// the registered records and sends the new ones, so browsers resolve the instance again.
    fn update(&mut self, local: &LocalNode) {
        let Some(running) = &self.running else {
            return;
        };
        let info = match running.plan.service_info(local, &self.config) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("mdns: cannot update the announcement: {e}");
                return;
            }
        };
        if let Err(e) = running.daemon.register(info) {
            tracing::warn!("mdns: cannot update the announcement: {e}");
        }
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
        // The daemon's shutdown disconnected the event thread's channel, and the start-up
        // query's reads time out within 20 ms: both end at once.
        let join_deadline = Instant::now() + JOIN_WITHIN;
        join_until(running.bridge, join_deadline, "event thread");
        if let Some(thread) = running.startup_query {
            join_until(thread, join_deadline, "start-up query thread");
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

/// How long `stop` waits for the source's threads to end once the daemon is shut down.
const JOIN_WITHIN: Duration = Duration::from_millis(500);

/// Joins `thread` if it ends by `deadline`; otherwise leaves it detached and says so.
fn join_until(thread: JoinHandle<()>, deadline: Instant, what: &str) {
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if thread.is_finished() {
        let _ = thread.join();
    } else {
        tracing::warn!("mdns: {what} did not stop in time; leaving it detached");
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
