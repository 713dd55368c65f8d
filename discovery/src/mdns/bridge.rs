//! The event thread: forwards what the mdns-sd daemon reports (resolved and removed services,
//! daemon notes) to the [`State`] table and, when it says so, to the node's event channel.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{DaemonEvent, ScopedIp, ServiceDaemon, ServiceEvent};

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

/// The event thread: turns mdns-sd's events into [`crate::DiscoveryEvent`]s.
pub(super) struct Bridge {
    pub(super) daemon: ServiceDaemon,
    pub(super) browse: mdns_sd::Receiver<ServiceEvent>,
    pub(super) monitor: mdns_sd::Receiver<DaemonEvent>,
    pub(super) events: EventSender,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) stop: Arc<AtomicBool>,
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
