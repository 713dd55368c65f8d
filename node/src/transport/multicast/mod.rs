//! Multicast IO for publish/subscribe fan-out on a LAN (issue 14): the group socket and the
//! task that reads and writes it. Bytes in, bytes out: the protocol (sealing, numbering,
//! repairs, flow control) is the engine's (`engine::multicast`), and nothing here knows it.
//!
//! - [`MulticastConfig`]: which interface, group address and port.
//! - [`socket`]: [`GroupSocket::open`] resolves the interface and sets the socket up: bound to
//!   the group and port, joined on that one interface, TTL 1, loopback off, `IP_MULTICAST_ALL`
//!   off.
//! - [`link`]: [`GroupLink`](link::GroupLink), a task owning the socket: received datagrams
//!   go into a bounded channel (a full channel drops and counts), datagrams handed to it are
//!   sent to the group.
//!
//! The driver plugs them in (`runtime/multicast.rs`) when the node is built with
//! [`crate::NodeBuilder::multicast`].

pub(crate) mod link;
pub(crate) mod socket;
#[cfg(all(test, target_os = "linux"))]
mod tests;

use std::net::{Ipv4Addr, SocketAddrV4};

pub(crate) use socket::GroupSocket;

/// Where a node's multicast channel lives: a LAN interface by name, and a group address and
/// port shared by every node of the mesh on that LAN ([`crate::NodeBuilder::multicast`]; the
/// README's "Multicast fan-out" section explains what goes on the group).
///
/// ```no_run
/// # async fn run(identity: shoal::Identity, mesh_ca: shoal::MeshCa) -> Result<(), shoal::Error> {
/// use shoal::MulticastConfig;
///
/// let node = shoal::Node::builder("billing")
///     .listen("10.0.0.5:7000".parse().unwrap())
///     .identity(identity)
///     .trust(mesh_ca)
///     // Every node of the mesh on this LAN names the same group and port.
///     .multicast(MulticastConfig::new("eth1").group("239.255.83.72".parse().unwrap()).port(7451))
///     .start()
///     .await?; // Error::Multicast if eth1 is unknown, has no IPv4 address, is loopback, ...
/// # Ok(()) }
/// ```
///
/// The defaults (`239.255.83.72:7451`) are in the administratively scoped range
/// `239.255.0.0/16` (RFC 2365: for a site's own use, never routed out of it); the port is
/// outside Linux's ephemeral range, so no outgoing connection holds it. Datagrams go out with
/// TTL 1: they never cross a router.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MulticastConfig {
    interface: String,
    group: Ipv4Addr,
    port: u16,
}

impl MulticastConfig {
    /// The default group address.
    pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 83, 72);
    /// The default port.
    pub const DEFAULT_PORT: u16 = 7451;

    /// Multicast on the interface named `interface` (as `ip link` shows it, e.g. `eth1`), on
    /// the default group and port.
    pub fn new(interface: impl Into<String>) -> Self {
        Self {
            interface: interface.into(),
            group: Self::DEFAULT_GROUP,
            port: Self::DEFAULT_PORT,
        }
    }

    /// Uses the IPv4 multicast group `group` (checked when the socket opens).
    #[must_use]
    pub fn group(mut self, group: Ipv4Addr) -> Self {
        self.group = group;
        self
    }

    /// Uses UDP port `port` (checked when the socket opens: not 0).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The interface name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The group address and port datagrams are sent to.
    pub fn group_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.group, self.port)
    }
}
