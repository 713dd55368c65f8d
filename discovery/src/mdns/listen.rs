//! The listener: Shoal's own table of what the link announces for [`SERVICE_TYPE`](super::record::SERVICE_TYPE), kept from
//! the mDNS group's datagrams, in place of mdns-sd's browse.
//!
//! # Why not mdns-sd's browse
//!
//! mdns-sd's daemon goes over its whole cache of a browsed type, allocating as it goes, each
//! time it wakes: for every datagram on the link, and again for the refresh and expiry timers
//! that each cached record sets. In a mesh of 200 nodes on one link each daemon caches 200
//! instances, and measured at rest (`scripts/mesh-scale.sh`, 2 datagrams per node per minute)
//! those scans took 70 to 110 % of a core for the whole mesh. mdns-sd also asks again for a
//! cached record at 80 % of its TTL, on every node at the same moment (they cached it from the
//! same datagram), without the duplicate-question suppression of RFC 6762 §7.3.
//!
//! Here each datagram costs one parse: an announcement updates its instance in the
//! [`State`] table and pushes its expiry back, a goodbye (TTL 0) removes it, and the table is
//! looked over only when the earliest expiry has passed. An instance's last announcement
//! repeated word for word is not parsed at all ([`Table`] says when a repeat may be skipped).
//! Only instances the [`State`] reports are kept, each for at most `table::MAX_TTL`. No query is sent from here: the
//! start-up query asks (`oneshot.rs`), and every node announces its records again before
//! their TTL runs out (`MdnsConfig::reannounce`). mdns-sd still does the responder's part:
//! announcing, answering, goodbyes and probing.
//!
//! # Sockets
//!
//! One per selected interface and address family, bound to the group and port (224.0.0.251:5353
//! or [ff02::fb]:5353, beside mdns-sd's sockets: all set `SO_REUSEADDR`/`SO_REUSEPORT`, and a
//! multicast datagram goes to every socket bound to it), joined on that interface only, with
//! `IP_MULTICAST_ALL` off: it hears the group on its own interface and nothing else, and never
//! a unicast datagram, which stay mdns-sd's. mdns-sd announces a node's IPv4 addresses to the
//! IPv4 group and its IPv6 addresses to the IPv6 group, so the table keeps each family's
//! addresses as last heard (until their TTL) and reports both. The listener runs where the
//! start-up query does, on links with IPv4; IPv6-only links use mdns-sd's browse. The sockets
//! follow the interfaces as they change (`ears.rs`).
//!
//! # Addresses off the link
//!
//! Each socket knows the subnets of its interface (its [`Link`], kept current at every
//! interface check): of what a datagram announces, only the addresses on that link are taken
//! in, and an announcement with none left is refused (`link.rs` says why and how).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType};

use super::announce::selected_addrs;
use super::config::InterfaceSelector;
use super::link::{self, Link, keep_on_link};
use super::message::{announcements, said};
use super::oneshot::{MDNS_GROUP, MDNS_PORT};
use super::record::Announcement;
use super::state::{State, lock};
use crate::event::EventSender;

/// The IPv6 mDNS group (the IPv4 one and the port are the start-up query's).
const MDNS_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// The receive buffer asked for each group socket (and each start-up query socket, which
/// gets an answer from every instance at once).
pub(super) const RECV_BUFFER: usize = 4 << 20;
/// How long a read waits before the stop flag and the expiries are checked again. Stopping
/// does not wait for it: [`Listener::wake`] ends the reads at once.
const READ_POLL: Duration = Duration::from_secs(2);
/// The TTL assumed for an instance whose SRV record is not in the datagram that announced it,
/// and for one the start-up query's answer describes (those carry at most 10 s, RFC 6762
/// §6.7, which would have the instance expire long before its next announcement).
pub(super) const DEFAULT_TTL: Duration = Duration::from_secs(120);

/// The link of a group socket's interface, as the last interface check found it.
pub(super) type SharedLink = Arc<Mutex<Arc<Link>>>;

/// One group socket, on one selected interface.
pub(super) struct Ear {
    interface: String,
    /// The interface index: the scope of the link-local IPv6 addresses heard here.
    index: u32,
    /// Whether this socket hears the IPv6 group.
    v6: bool,
    socket: UdpSocket,
    /// The interface's subnets: which announced addresses are on its link.
    link: SharedLink,
}

impl Ear {
    /// A socket hearing the IPv4 mDNS group on the interface `interface` (index `index`),
    /// whose IPv4 address is `ip`.
    fn open_v4(interface: String, index: u32, ip: Ipv4Addr) -> io::Result<Self> {
        let socket = group_socket(socket2::Domain::IPV4)?;
        #[cfg(target_os = "linux")]
        socket.set_multicast_all_v4(false)?;
        socket.bind(&SocketAddr::V4(MDNS_GROUP).into())?;
        // By index: the membership stays if the interface's address changes.
        let on = socket2::InterfaceIndexOrAddress::Index(index);
        if index == 0 || socket.join_multicast_v4_n(MDNS_GROUP.ip(), &on).is_err() {
            socket.join_multicast_v4(MDNS_GROUP.ip(), &ip)?;
        }
        Ok(Self {
            interface,
            index,
            v6: false,
            socket: socket.into(),
            link: SharedLink::default(),
        })
    }

    /// A socket hearing the IPv6 mDNS group on the interface `interface` (index `index`).
    fn open_v6(interface: String, index: u32) -> io::Result<Self> {
        let socket = group_socket(socket2::Domain::IPV6)?;
        socket.set_only_v6(true)?;
        #[cfg(target_os = "linux")]
        socket.set_multicast_all_v6(false)?;
        let group = SocketAddrV6::new(MDNS_GROUP_V6, MDNS_PORT, 0, index);
        socket.bind(&SocketAddr::V6(group).into())?;
        socket.join_multicast_v6(&MDNS_GROUP_V6, index)?;
        Ok(Self {
            interface,
            index,
            v6: true,
            socket: socket.into(),
            link: SharedLink::default(),
        })
    }
}

/// What tells one group socket from another: the interface (its name and index, which changes
/// when the interface is made anew) and the address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EarKey {
    pub(super) interface: String,
    index: u32,
    pub(super) v6: bool,
}

impl Ear {
    pub(super) fn key(&self) -> EarKey {
        EarKey {
            interface: self.interface.clone(),
            index: self.index,
            v6: self.v6,
        }
    }
}

/// A group socket wanted: its key, an address of its interface, and the interface's link.
pub(super) struct Wanted {
    pub(super) key: EarKey,
    ip: IpAddr,
    pub(super) link: Link,
}

/// The group sockets `selected` selects now, one per interface and address family, with an
/// address of the interface and its link (`None` if the interfaces cannot be listed: said in
/// a note).
pub(super) fn selected_ears(
    selected: &[InterfaceSelector],
    state: &Mutex<State>,
) -> Option<Vec<Wanted>> {
    let listed = selected_addrs(selected).and_then(|list| Ok((list, link::links()?)));
    let (interfaces, links) = match listed {
        Ok(listed) => listed,
        Err(e) => {
            lock(state).note(format!("listener: interfaces not listed: {e}"));
            return None;
        }
    };
    let mut ears: Vec<Wanted> = Vec::new();
    for (interface, index, ip) in interfaces {
        let link = links.get(&interface).cloned().unwrap_or_default();
        let key = EarKey {
            interface,
            index,
            v6: ip.is_ipv6(),
        };
        if !ears.iter().any(|wanted| wanted.key == key) {
            ears.push(Wanted { key, ip, link });
        }
    }
    Some(ears)
}

/// Opens the group sockets of `wanted` (from [`selected_ears`]); failures become notes.
pub(super) fn open_ears(wanted: Vec<Wanted>, state: &Mutex<State>) -> Vec<Ear> {
    let mut ears = Vec::new();
    for Wanted { key, ip, link } in wanted {
        let ear = match ip {
            IpAddr::V4(ip) => Ear::open_v4(key.interface.clone(), key.index, ip),
            IpAddr::V6(_) => Ear::open_v6(key.interface.clone(), key.index),
        };
        match ear {
            Ok(ear) => {
                *lock(&ear.link) = Arc::new(link);
                ears.push(ear);
            }
            Err(e) => lock(state).note(format!(
                "listener: no group socket on {} ({ip}): {e}",
                key.interface
            )),
        }
    }
    ears
}

/// A UDP socket of `domain` that may share the mDNS port with mdns-sd's.
fn group_socket(domain: socket2::Domain) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Many nodes starting together announce in the same second; the kernel caps this at
    // `net.core.rmem_max` (and a failure only leaves the default).
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    Ok(socket)
}

/// A group socket being read: its thread, and what stops it.
pub(super) struct OpenEar {
    pub(super) key: EarKey,
    /// A handle on the thread's socket, to end its read.
    socket: UdpSocket,
    /// Its interface's link, which the interface checks keep current.
    pub(super) link: SharedLink,
    /// Set when this socket's interface is no longer selected (the listener goes on).
    closed: Arc<AtomicBool>,
    pub(super) thread: JoinHandle<()>,
}

impl OpenEar {
    /// Ends the read the thread waits in, so it sees the stop flag or its `closed` at once:
    /// shutting a socket's reading down wakes its reader, connected or not (Linux).
    pub(super) fn wake(&self) {
        let _ = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Read);
    }

    /// Stops this socket's thread (its interface went); it ends by itself, at once.
    pub(super) fn close(self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake();
    }
}

/// The listener: a thread per [`Ear`], sharing one [`Table`] of what they heard (with the
/// start-up query).
pub(super) struct Listener {
    pub(super) events: EventSender,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Listener {
    /// Runs a thread named `shoal-mdns-listen` that reads `ear` into `table`, in the calling
    /// thread's network namespace (a new thread inherits it).
    pub(super) fn spawn(
        self: &Arc<Self>,
        ear: Ear,
        table: &Arc<Mutex<Table>>,
    ) -> io::Result<OpenEar> {
        let socket = ear.socket.try_clone()?;
        ear.socket.set_read_timeout(Some(READ_POLL))?;
        let key = ear.key();
        let link = Arc::clone(&ear.link);
        let closed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (listener, table, closed) =
                (Arc::clone(self), Arc::clone(table), Arc::clone(&closed));
            std::thread::Builder::new()
                .name("shoal-mdns-listen".into())
                .spawn(move || listener.run(&ear, &closed, &table))?
        };
        Ok(OpenEar {
            key,
            socket,
            link,
            closed,
            thread,
        })
    }

    fn run(&self, ear: &Ear, closed: &AtomicBool, table: &Mutex<Table>) {
        let mut buf = vec![0u8; 9000];
        while !self.stop.load(Ordering::SeqCst)
            && !closed.load(Ordering::SeqCst)
            && !self.events.is_closed()
        {
            if let Ok((n, _from)) = ear.socket.recv_from(&mut buf)
                && n > 0
            {
                self.on_datagram(&buf[..n], ear, &mut lock(table), Instant::now());
            }
            let expired = lock(table).take_expired(Instant::now());
            for fullname in expired {
                self.forward(lock(&self.state).on_removed(&fullname));
            }
        }
    }

    /// Takes in what one datagram from the group says about instances of [`SERVICE_TYPE`](super::record::SERVICE_TYPE):
    /// goodbyes, then announcements. Queries and anything unreadable are ignored.
    fn on_datagram(&self, datagram: &[u8], ear: &Ear, table: &mut Table, now: Instant) {
        // Most of the group's traffic is queries: the QR bit (the header's third byte) tells,
        // before anything is parsed.
        if datagram.get(2).is_none_or(|flags| flags & 0x80 == 0) {
            return;
        }
        // An announcement repeated word for word (every node's, every minute) only moves the
        // expiry on: no parse, no checks, as long as it is still what its instance last said
        // (`table.rs` says when) and the link it was checked against has not changed.
        let link = Arc::clone(&lock(&ear.link));
        let fingerprint = table.fingerprint(datagram, ear.index, &link);
        if let Some(key) = table.repeat(fingerprint, now)
            && lock(&self.state).touch(&key, now)
        {
            return;
        }
        let Ok(message) = Message::from_vec(datagram) else {
            return;
        };
        if message.metadata.message_type != MessageType::Response {
            return;
        }
        let said = said(&message);
        for fullname in &said.goodbyes {
            table.forget(fullname);
            self.forward(lock(&self.state).on_removed(fullname));
        }
        let announcements = announcements(&message);
        let only_one = announcements.len() == 1 && said.goodbyes.is_empty();
        for mut announcement in announcements {
            let key = announcement.fullname.to_ascii_lowercase();
            if said.goodbyes.contains(&key) {
                continue;
            }
            let ttl = said.ttls.get(&key).copied().unwrap_or(DEFAULT_TTL);
            scope_link_local(&mut announcement, ear.index);
            announcement.via = vec![ear.interface.clone()];
            if !keep_on_link(&mut announcement, &link, &mut lock(&self.state), now) {
                continue;
            }
            let fingerprint = only_one.then_some(fingerprint);
            let event = table.resolve(
                &mut lock(&self.state),
                &mut announcement,
                ttl,
                now,
                fingerprint,
            );
            self.forward(event);
        }
    }

    fn forward(&self, event: Option<crate::DiscoveryEvent>) {
        if let Some(event) = event {
            tracing::debug!(?event, "mdns: heard");
            // A closed receiver means the node is shutting down; the loop notices.
            let _ = self.events.send(event);
        }
    }
}

/// Gives the link-local IPv6 addresses of `announcement` the scope of the interface they
/// were heard on (a datagram on a link carries the addresses valid on that link).
pub(super) fn scope_link_local(announcement: &mut Announcement, index: u32) {
    for addr in &mut announcement.addrs {
        if let IpAddr::V6(ip) = addr.ip
            && ip.segments()[0] & 0xffc0 == 0xfe80
            && addr.scope_id == 0
        {
            addr.scope_id = index;
        }
    }
}

mod table;
#[cfg(test)]
mod tests;

pub(super) use table::Table;
