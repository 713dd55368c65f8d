//! The start-up query: one-shot mDNS queries (RFC 6762 §5.1) from an ephemeral port, so a node
//! that just started learns the instances already on the link at once, and again over its first
//! seconds, so it repairs what it lost.
//!
//! # Why mdns-sd's own browse is not enough at start
//!
//! A Multicast DNS responder must not multicast a record more than once per second (RFC 6762
//! §6), and mdns-sd keeps that rule. Nodes that start together announce themselves twice in
//! their first second, and a node that answered someone else's query a moment ago stays quiet
//! too: a new node's first browse query then goes unanswered and its second one, a second
//! later, gets the answer. Measured before this module: about 1.1 s from start to the first
//! send to a service that was already running (`discovery-timing`), and the same in the demo.
//!
//! A query sent from a port other than 5353 is a "legacy unicast" query (RFC 6762 §6.7): the
//! responders answer it at once, by unicast to the querier, with no rate limit (it reaches only
//! the asker, so it cannot flood the link). The answer carries PTR, SRV, TXT and address
//! records together, and goes through the same checks as what mdns-sd resolves
//! ([`record::check`]), after the addresses not on the asking interface's link are dropped
//! (`link.rs`), as the listener drops them.
//!
//! # Why the repeats are ours too
//!
//! When this thread runs, mdns-sd does not browse: Shoal's listener ([`super::listen`]) keeps
//! the table. mdns-sd's re-queries at 1, 3, 7, 15, ... s after start, multicast with a
//! known-answer list of one datagram per 30 instances and answered by multicast, cost a mesh
//! of 200 nodes on one link most of a CPU. The repeats here, at [`QUERY_AT`], cost one
//! datagram to the group and one unicast answer per instance, read by this node alone; after
//! the last one, the link's announcements (at start, on change and every
//! `MdnsConfig::reannounce`) keep every table current.
//!
//! Once an instance has answered on an interface, this node introduces itself to the group
//! there ([`super::introduce`]), so the instances need not wait for its multicast
//! announcements either.
//!
//! Bounded: one socket per selected IPv4 interface address; the queries at [`QUERY_AT`], plus
//! one [`REPEAT_AFTER`] the first if nothing answered it; answers read until [`LISTEN_FOR`]
//! after start, at most [`MAX_DATAGRAMS`] datagrams per socket; one introduction per
//! interface. IPv6-only links rely on mdns-sd's browse alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, RecordType};

use super::announce::selected_addrs;
use super::config::InterfaceSelector;
use super::introduce::Introduction;
use super::link::{self, Link, keep_on_link};
use super::listen::{DEFAULT_TTL, Table, scope_link_local};
use super::message::announcements;
use super::record::SERVICE_TYPE;
use super::state::{State, lock};
use crate::event::EventSender;

/// The mDNS port.
pub(super) const MDNS_PORT: u16 = 5353;
/// The mDNS group and port.
pub(super) const MDNS_GROUP: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), MDNS_PORT);
/// When the queries go out, counted from the start: at once, then two repeats that find what a
/// busy start lost (answers to an earlier query that did not fit in the socket's buffer, or
/// an instance whose announcements this node missed), spaced as mdns-sd's browse spaces its
/// first queries. Each repeat costs every instance on the link an answer: later losses are
/// repaired by the instances' own announcements (`MdnsConfig::reannounce`).
pub(super) const QUERY_AT: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];
/// An extra query goes out this long after the first, if nothing answered the first.
pub(super) const REPEAT_AFTER: Duration = Duration::from_millis(250);
/// Answers are read until this long after the first query.
pub(super) const LISTEN_FOR: Duration = Duration::from_secs(4);
/// At most this many datagrams are read per socket.
pub(super) const MAX_DATAGRAMS: usize = 4096;
/// How long one read waits before the stop flag and the clock are checked again, with one
/// socket (a read returns as soon as a datagram comes), and with several (read in turn).
const READ_POLL: Duration = Duration::from_millis(100);
const READ_POLL_SEVERAL: Duration = Duration::from_millis(20);

/// The start-up query's thread: queries, reads the answers and reports what they show.
pub(super) struct StartupQuery {
    pub(super) selected: Vec<InterfaceSelector>,
    pub(super) events: EventSender,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) stop: Arc<AtomicBool>,
    /// What this node tells each instance that answers (`None`: nothing).
    pub(super) introduction: Option<Introduction>,
    /// The listener's table, where it runs: answers join what the group said.
    pub(super) table: Option<Arc<Mutex<Table>>>,
}

/// One socket, bound to one selected interface's IPv4 address.
pub(super) struct Asker {
    interface: String,
    /// The interface's index: the scope of the link-local addresses answered on it.
    index: u32,
    socket: UdpSocket,
    /// The introduction sent from this interface, if this node announces an address on it.
    introduction: Option<Vec<u8>>,
    /// The interface's subnets: which answered addresses are on its link.
    link: Link,
}

impl StartupQuery {
    /// Runs the queries on `askers` (from [`StartupQuery::askers`], not empty) on a new
    /// thread named `shoal-mdns-query`, in the calling thread's network namespace (a new
    /// thread inherits it).
    pub(super) fn spawn(self, askers: Vec<Asker>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("shoal-mdns-query".into())
            .spawn(move || self.run(askers))
    }

    fn run(self, askers: Vec<Asker>) {
        let id = query_id();
        let query = match query_message(id) {
            Ok(query) => query,
            Err(e) => {
                lock(&self.state).note(format!("start-up query not built: {e}"));
                return;
            }
        };
        let poll = if askers.len() == 1 {
            READ_POLL
        } else {
            READ_POLL_SEVERAL
        };
        for asker in &askers {
            if let Err(e) = asker.socket.set_read_timeout(Some(poll)) {
                lock(&self.state).note(format!("start-up query on {}: {e}", asker.interface));
            }
        }
        let start = Instant::now();
        let mut next_query = 0;
        let mut repeated = false;
        let mut answered = false;
        let mut read = vec![0usize; askers.len()];
        let mut introduced = vec![false; askers.len()];
        let mut buf = vec![0u8; 9000];
        while !self.stop.load(Ordering::SeqCst) && !self.events.is_closed() {
            let elapsed = start.elapsed();
            if elapsed >= LISTEN_FOR {
                break;
            }
            let scheduled = QUERY_AT.get(next_query).is_some_and(|at| elapsed >= *at);
            let repeat = next_query == 1 && !answered && !repeated && elapsed >= REPEAT_AFTER;
            if scheduled || repeat {
                for asker in &askers {
                    if let Err(e) = asker.socket.send_to(&query, MDNS_GROUP) {
                        lock(&self.state)
                            .note(format!("start-up query on {}: {e}", asker.interface));
                    }
                }
                lock(&self.state).startup_queries_sent += 1;
                if scheduled {
                    next_query += 1;
                } else {
                    repeated = true;
                }
            }
            for ((asker, read), introduced) in askers
                .iter()
                .zip(read.iter_mut())
                .zip(introduced.iter_mut())
            {
                if *read >= MAX_DATAGRAMS {
                    continue;
                }
                // One read per socket per round: each socket's timeout bounds the round.
                let Ok((n, _from)) = asker.socket.recv_from(&mut buf) else {
                    continue;
                };
                *read += 1;
                if self.on_datagram(&buf[..n], id, &asker.interface, asker.index, &asker.link) {
                    answered = true;
                    if !*introduced {
                        *introduced = true;
                        self.introduce(asker);
                    }
                }
            }
        }
    }

    /// A socket per selected interface with an IPv4 address; failures become notes.
    pub(super) fn askers(&self) -> Vec<Asker> {
        let listed = selected_addrs(&self.selected).and_then(|list| Ok((list, link::links()?)));
        let (interfaces, links) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                lock(&self.state).note(format!("start-up query: interfaces not listed: {e}"));
                return Vec::new();
            }
        };
        let mut askers = Vec::new();
        for (interface, index, ip) in interfaces {
            let IpAddr::V4(ip) = ip else {
                continue;
            };
            match asker_socket(ip) {
                Ok(socket) => askers.push(Asker {
                    link: links.get(&interface).cloned().unwrap_or_default(),
                    interface,
                    index,
                    socket,
                    introduction: self.introduction.as_ref().and_then(|i| i.message(ip)),
                }),
                Err(e) => lock(&self.state).note(format!(
                    "start-up query: no socket on {interface} ({ip}): {e}"
                )),
            }
        }
        askers
    }

    /// Sends `asker`'s introduction to the mDNS group of its interface.
    fn introduce(&self, asker: &Asker) {
        let Some(introduction) = &asker.introduction else {
            return;
        };
        let sent = asker.socket.send_to(introduction, MDNS_GROUP);
        let mut state = lock(&self.state);
        match sent {
            Ok(_) => state.introductions_sent += 1,
            Err(e) => state.note(format!("introduction on {}: {e}", asker.interface)),
        }
    }

    /// Reports every valid instance an answer heard on `interface` (numbered `index`, whose
    /// link is `link`) shows; ignores anything that is not the answer to our query. Returns
    /// whether it was such an answer.
    fn on_datagram(
        &self,
        datagram: &[u8],
        id: u16,
        interface: &str,
        index: u32,
        link: &Link,
    ) -> bool {
        let Ok(message) = Message::from_vec(datagram) else {
            return false;
        };
        if message.metadata.message_type != MessageType::Response || message.metadata.id != id {
            return false;
        }
        let now = Instant::now();
        for mut announcement in announcements(&message) {
            scope_link_local(&mut announcement, index);
            announcement.via = vec![interface.to_owned()];
            let event = {
                // The table's lock first, as the listener takes them.
                let mut table = self.table.as_ref().map(|table| lock(table));
                let mut state = lock(&self.state);
                state.startup_query_answers += 1;
                if !keep_on_link(&mut announcement, link, &mut state, now) {
                    continue;
                }
                match &mut table {
                    Some(table) => {
                        table.resolve(&mut state, &mut announcement, DEFAULT_TTL, now, None)
                    }
                    None => state.on_resolved(&announcement, now),
                }
            };
            if let Some(event) = event {
                tracing::debug!(?event, "mdns: start-up query");
                // A closed receiver means the node is shutting down; the loop notices.
                let _ = self.events.send(event);
            }
        }
        true
    }
}

/// A UDP socket on `ip`, an ephemeral port, sending multicast out of that address's interface
/// with the IP TTL mDNS uses (255; 224.0.0.251 is link-local and never routed).
fn asker_socket(ip: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_multicast_if_v4(&ip)?;
    socket.set_multicast_ttl_v4(255)?;
    // Every instance answers at once; the kernel caps this at `net.core.rmem_max`.
    let _ = socket.set_recv_buffer_size(super::listen::RECV_BUFFER);
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    Ok(socket.into())
}

/// A query id that differs between nodes and starts (answers must echo it).
fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

/// The wire form of a PTR query for [`SERVICE_TYPE`] with id `id`.
fn query_message(id: u16) -> Result<Vec<u8>, String> {
    let name = Name::from_ascii(SERVICE_TYPE).map_err(|e| e.to_string())?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(name, RecordType::PTR));
    message.to_vec().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
