//! The event thread: forwards what the mdns-sd daemon reports (resolved and removed services,
//! daemon notes) to the [`State`] table and, when it says so, to the node's event channel;
//! announces this node's records again every [`MdnsConfig::reannounce`]; and keeps the
//! listener's sockets in step with the interfaces ([`InterfaceWatch`]).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{DaemonEvent, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};

#[cfg(doc)]
use super::MdnsConfig;
use super::ears::InterfaceWatch;
use super::link::{links, on_links, refuse_off_link};
use super::record::{self, Announcement, ReceivedAddr, SERVICE_TYPE};
use super::state::{State, lock};
use crate::event::{DiscoveryError, EventSender};

/// How long the event thread waits for a daemon event before checking whether the node is
/// gone and reading the daemon's notes. Stopping does not wait for it: the daemon's shutdown
/// disconnects the channel, which wakes the thread at once. Long, because an idle node should
/// not wake up for nothing: at 50 ms this thread was most of an idle node's wake-ups (20 a
/// second, 4,000 a second in a mesh of 200).
const BRIDGE_POLL: Duration = Duration::from_secs(1);

/// How often the event thread may re-subscribe after the daemon dropped its subscription
/// (which mdns-sd does when the subscriber falls 1000 events behind).
const MAX_RESUBSCRIBES: u32 = 100;

/// When and what the event thread announces again.
pub(super) struct Reannounce {
    every: Duration,
    announced: Arc<Mutex<ServiceInfo>>,
    next: Instant,
    /// Announcements the daemon will report that this thread asked for (not noted).
    unreported: u32,
}

impl Reannounce {
    /// Every `every` (at a random point of each interval's last quarter), `announced`.
    pub(super) fn new(every: Duration, announced: Arc<Mutex<ServiceInfo>>) -> Self {
        Self {
            every,
            announced,
            next: Instant::now() + Self::jittered(every),
            unreported: 0,
        }
    }

    /// A random duration between 3/4 of `every` and `every`: nodes started together do not
    /// announce together.
    fn jittered(every: Duration) -> Duration {
        let mut random = RandomState::new().build_hasher();
        random.write_u128(Instant::now().elapsed().as_nanos());
        let fraction = (random.finish() >> 11) as f64 / (1u64 << 53) as f64;
        every.mul_f64(0.75 + 0.25 * fraction)
    }
}

/// The event thread: turns mdns-sd's events into [`crate::DiscoveryEvent`]s.
pub(super) struct Bridge {
    pub(super) daemon: ServiceDaemon,
    /// mdns-sd's browse, when it keeps the table (`None`: Shoal's listener does).
    pub(super) browse: Option<mdns_sd::Receiver<ServiceEvent>>,
    pub(super) monitor: mdns_sd::Receiver<DaemonEvent>,
    pub(super) events: EventSender,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) reannounce: Option<Reannounce>,
    /// The listener's sockets, kept in step with the interfaces (where it keeps the table).
    pub(super) watch: Option<InterfaceWatch>,
}

impl Bridge {
    /// Runs [`Bridge::run`] on a new thread named `shoal-mdns`.
    pub(super) fn spawn(self) -> Result<JoinHandle<()>, DiscoveryError> {
        std::thread::Builder::new()
            .name("shoal-mdns".into())
            .spawn(move || self.run())
            .map_err(|e| DiscoveryError::Start(format!("mDNS event thread: {e}")))
    }

    /// Forwards events until `stop` is set or the event channel closes; re-subscribes (a
    /// bounded number of times) if the daemon drops the browse subscription.
    fn run(mut self) {
        let mut resubscribes = 0;
        while !self.stop.load(Ordering::SeqCst) && !self.events.is_closed() {
            let disconnected = match &self.browse {
                Some(browse) => match browse.recv_timeout(BRIDGE_POLL) {
                    Ok(event) => {
                        self.on_service_event(event);
                        false
                    }
                    Err(mdns_sd::RecvTimeoutError::Timeout) => false,
                    Err(mdns_sd::RecvTimeoutError::Disconnected) => true,
                },
                None => match self.monitor.recv_timeout(BRIDGE_POLL) {
                    Ok(event) => {
                        self.on_daemon_event(event);
                        false
                    }
                    Err(mdns_sd::RecvTimeoutError::Timeout) => false,
                    // The daemon shut down.
                    Err(mdns_sd::RecvTimeoutError::Disconnected) => break,
                },
            };
            if disconnected {
                // Either the daemon is shutting down (stop) or it dropped our subscription.
                if self.stop.load(Ordering::SeqCst) || resubscribes >= MAX_RESUBSCRIBES {
                    break;
                }
                match self.daemon.browse(SERVICE_TYPE) {
                    Ok(browse) => {
                        resubscribes += 1;
                        self.browse = Some(browse);
                        lock(&self.state)
                            .note("browse subscription dropped by the daemon; resubscribed".into());
                    }
                    Err(_) => break,
                }
            }
            while let Ok(event) = self.monitor.try_recv() {
                self.on_daemon_event(event);
            }
            self.reannounce_if_due();
            if let Some(watch) = &mut self.watch {
                watch.tick(Instant::now());
            }
        }
    }

    /// Registers the announced records again once their time has come: mdns-sd multicasts
    /// them (twice, a second apart), which refreshes every cache on the link.
    fn reannounce_if_due(&mut self) {
        let Some(reannounce) = &mut self.reannounce else {
            return;
        };
        let now = Instant::now();
        if now < reannounce.next {
            return;
        }
        reannounce.next = now + Reannounce::jittered(reannounce.every);
        let info = lock(&reannounce.announced).clone();
        match self.daemon.register(info) {
            Ok(()) => {
                reannounce.unreported += 1;
                lock(&self.state).reannouncements += 1;
            }
            Err(e) => lock(&self.state).note(format!("announcing again: {e}")),
        }
    }

    fn on_service_event(&self, event: ServiceEvent) {
        let forward = match event {
            ServiceEvent::ServiceResolved(resolved) => {
                let (mut announcement, heard) = announcement(&resolved);
                // mdns-sd keeps every address it hears, wherever it points: only those on
                // the link of an interface they were heard on are taken in (`link.rs`).
                let links = links().unwrap_or_else(|e| {
                    lock(&self.state).note(format!("interfaces not listed: {e}"));
                    Default::default()
                });
                let (on, off) = on_links(heard, &links);
                announcement.addrs = on;
                let mut state = lock(&self.state);
                let now = Instant::now();
                if refuse_off_link(&announcement, off, &mut state, now) {
                    state.on_resolved(&announcement, now)
                } else {
                    None
                }
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

    fn on_daemon_event(&mut self, event: DaemonEvent) {
        if let (DaemonEvent::Announce(..), Some(reannounce)) = (&event, &mut self.reannounce)
            && reannounce.unreported > 0
        {
            // Ours, every interval: counted in `reannouncements`, not worth a note each.
            reannounce.unreported -= 1;
            return;
        }
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

/// Copies what the checks need out of mdns-sd's resolved service, its addresses left out:
/// they come apart, each with the interfaces it was heard on.
fn announcement(
    resolved: &mdns_sd::ResolvedService,
) -> (Announcement, Vec<(ReceivedAddr, Vec<String>)>) {
    let mut via = Vec::new();
    let mut addrs = Vec::new();
    for scoped in resolved.get_addresses() {
        let (ip, scope_id, heard_on) = match scoped {
            ScopedIp::V4(v4) => {
                let on: Vec<String> = v4.interface_ids().iter().map(|i| i.name.clone()).collect();
                (IpAddr::V4(*v4.addr()), 0, on)
            }
            ScopedIp::V6(v6) => {
                let on = vec![v6.scope_id().name.clone()];
                (IpAddr::V6(*v6.addr()), v6.scope_id().index, on)
            }
            other => (other.to_ip_addr(), 0, Vec::new()),
        };
        via.extend(heard_on.iter().cloned());
        addrs.push((ReceivedAddr { ip, scope_id }, heard_on));
    }
    via.sort();
    via.dedup();
    let announcement = Announcement {
        fullname: resolved.get_fullname().to_owned(),
        port: resolved.get_port(),
        addrs: Vec::new(),
        txt: resolved
            .get_properties()
            .iter()
            .map(|p| (p.key().to_owned(), p.val().map(<[u8]>::to_vec)))
            .collect(),
        via,
    };
    (announcement, addrs)
}
