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
//! A node asks the link with one-shot queries from an ephemeral port, which responders answer
//! at once by unicast, at start and again 1 and 3 s later (see `oneshot.rs` for why
//! mdns-sd's browse is not left to ask), and once an instance has answered, sends its own
//! records to the group (`introduce.rs`: peers need not wait for its multicast announcements,
//! which are lost or held back when many nodes start together). mdns-sd does not browse: it
//! announces, answers and says goodbye, and Shoal's listener (`listen.rs`) keeps the table of
//! what the link announces and reports arrivals, changes, goodbyes and expiries (see there for
//! why). [`MdnsConfig::startup_query`] turns this off (mdns-sd's browse then asks and keeps
//! the table, as it does where no selected interface has an IPv4 address).
//!
//! # Afterwards
//!
//! Every [`MdnsConfig::reannounce`] (60-80 s) a node announces its records again, unasked, so
//! no cache on the link reaches the point (80 % of the 120 s TTL mdns-sd gives addresses)
//! where every node would ask about it at once.
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
mod diagnostics;
mod ears;
mod introduce;
mod link;
mod listen;
mod message;
mod netif;
mod oneshot;
mod record;
mod state;
#[cfg(test)]
mod test_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};

use self::announce::AnnouncePlan;
use self::bridge::Bridge;
pub use self::config::{
    DEFAULT_INTERFACE_CHECK, DEFAULT_REANNOUNCE, InterfaceSelector, MdnsConfig,
};
pub use self::diagnostics::{Browser, MdnsDiagnostics};
use self::ears::{Ears, InterfaceWatch};
use self::introduce::Introduction;
use self::listen::{Listener, Table};
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

/// What is alive between `start` and `stop`.
struct Running {
    daemon: ServiceDaemon,
    plan: AnnouncePlan,
    /// What is announced now; the event thread announces it again every
    /// [`MdnsConfig::reannounce`].
    announced: Arc<Mutex<ServiceInfo>>,
    fullname: String,
    stop: Arc<AtomicBool>,
    bridge: JoinHandle<()>,
    /// The listener's group sockets and their threads (none with mdns-sd's browse); the
    /// event thread opens and closes sockets as interfaces come and go.
    ears: Arc<Mutex<Ears>>,
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
            startup_queries_sent: state.startup_queries_sent,
            reannouncements: state.reannouncements,
            browser: state.browser,
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
        let check_every = self.config.interface_check.map_or(0, |every| {
            u32::try_from(every.as_secs().max(1)).unwrap_or(u32::MAX)
        });
        daemon
            .set_ip_check_interval(check_every)
            .map_err(|e| start_err("interface check interval", e))?;
        let monitor = daemon.monitor().map_err(|e| start_err("monitor", e))?;

        let info = plan.service_info(local, &self.config)?;
        let fullname = info.get_fullname().to_owned();

        let stop = Arc::new(AtomicBool::new(false));
        let introduction = match Introduction::new(local, &plan) {
            Ok(introduction) => Some(introduction),
            Err(e) => {
                lock(&self.state).note(format!("no introduction: {e}"));
                None
            }
        };
        let mut startup_query = StartupQuery {
            selected: self.config.interfaces.clone(),
            events: events.clone(),
            state: Arc::clone(&self.state),
            stop: Arc::clone(&stop),
            introduction,
            table: None,
        };
        let askers = if self.config.startup_query {
            startup_query.askers()
        } else {
            Vec::new()
        };
        if self.config.startup_query && askers.is_empty() {
            lock(&self.state).note("start-up query: no selected IPv4 interface".into());
        }
        // Where the start-up query asks, Shoal's listener keeps the table and mdns-sd only
        // responds; elsewhere mdns-sd's browse asks and keeps it.
        let ears = if askers.is_empty() {
            Vec::new()
        } else {
            let wanted = listen::selected_ears(&self.config.interfaces, &self.state);
            listen::open_ears(wanted.unwrap_or_default(), &self.state)
        };
        // The start-up query runs on IPv4 only: IPv6 sockets alone do not make a table.
        let ears = if ears.iter().all(|ear| ear.key().v6) {
            Vec::new()
        } else {
            ears
        };
        let table = Arc::new(Mutex::new(Table::default()));
        let listener = Listener {
            events: events.clone(),
            state: Arc::clone(&self.state),
            stop: Arc::clone(&stop),
        };
        let ears = Arc::new(Mutex::new(Ears::start(listener, Arc::clone(&table), ears)));
        let stop_ears = || {
            stop.store(true, Ordering::SeqCst);
            lock(&ears).stop();
        };
        let browser = if lock(&ears).is_empty() {
            Browser::MdnsSd
        } else {
            // The start-up query's answers go into the listener's table too.
            startup_query.table = Some(table);
            Browser::Shoal
        };
        lock(&self.state).browser = Some(browser);
        let browse = match browser {
            // No listener thread runs: nothing to stop on this error.
            Browser::MdnsSd => Some(
                daemon
                    .browse(SERVICE_TYPE)
                    .map_err(|e| start_err("browse", e))?,
            ),
            Browser::Shoal => None,
        };
        let announced = Arc::new(Mutex::new(info.clone()));
        if let Err(e) = daemon.register(info) {
            stop_ears();
            return Err(start_err("register", e));
        }
        // Where the listener keeps the table, its sockets follow the interfaces.
        let watch = match (browser, self.config.interface_check) {
            (Browser::Shoal, Some(every)) => Some(InterfaceWatch {
                ears: Arc::clone(&ears),
                selected: self.config.interfaces.clone(),
                every,
                next: Instant::now() + every,
                events: events.clone(),
                stop: Arc::clone(&stop),
            }),
            _ => None,
        };

        let bridge = Bridge {
            daemon: daemon.clone(),
            browse,
            monitor,
            events,
            state: Arc::clone(&self.state),
            stop: Arc::clone(&stop),
            reannounce: self
                .config
                .reannounce
                .map(|every| bridge::Reannounce::new(every, Arc::clone(&announced))),
            watch,
        }
        .spawn()
        .inspect_err(|_| stop_ears())?;
        let startup_query = if askers.is_empty() {
            None
        } else {
            match startup_query.spawn(askers) {
                Ok(thread) => Some(thread),
                Err(e) => {
                    // Discovery still works without it, only slower at start.
                    lock(&self.state).note(format!("start-up query thread not started: {e}"));
                    None
                }
            }
        };
        tracing::debug!(instance = %fullname, port = plan.port, "mdns: started");
        Ok(Running {
            daemon: daemon.clone(),
            plan,
            announced,
            ears,
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
        *lock(&running.announced) = info.clone();
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
        let listener = lock(&running.ears).stop();
        // The daemon's shutdown disconnected the event thread's channel, the listener's reads
        // were just ended, and the start-up query's time out within 100 ms: all end at once.
        let join_deadline = Instant::now() + JOIN_WITHIN;
        join_until(running.bridge, join_deadline, "event thread");
        for thread in listener {
            join_until(thread, join_deadline, "listener thread");
        }
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
