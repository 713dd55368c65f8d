//! The group socket: one UDP socket per node, bound to the group address and port, joined on
//! one named interface.
//!
//! Each option and why:
//! - bound to the **group address** (not `0.0.0.0`): only datagrams sent to the group and port
//!   arrive, never unicast to the same port; `SO_REUSEADDR` lets several nodes on one host
//!   bind the same group and port (Linux gives each joined socket its own copy).
//! - **joined on the interface's index** (`IP_ADD_MEMBERSHIP` with `imr_ifindex`): the group
//!   is joined on that interface only, never on every interface.
//! - **`IP_MULTICAST_ALL` off** (Linux): without it, a socket bound to the group receives the
//!   group's datagrams from every interface where *any* socket of the host joined it; with it
//!   off, only from the memberships of this socket.
//! - **`IP_MULTICAST_IF`** = the interface's IPv4 address: datagrams leave there and nowhere
//!   else, whatever the routing table says about the group.
//! - **TTL 1**: never forwarded by a router; the group is a LAN's.
//! - **loopback off**: the node does not read its own datagrams back. Other nodes on the same
//!   host (or network namespace) do not receive them either: they stay on unicast QUIC.
//! - **non-blocking**, then handed to tokio.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::MulticastConfig;
use crate::error::{Error, MulticastProblem};

/// An open group socket (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct GroupSocket {
    socket: UdpSocket,
    group: SocketAddrV4,
    interface: Interface,
}

/// The interface a group socket is joined on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    /// Its name.
    pub(crate) name: String,
    /// Its index (`if_nametoindex`).
    pub(crate) index: u32,
    /// The IPv4 address datagrams leave from (its first).
    pub(crate) addr: Ipv4Addr,
}

impl GroupSocket {
    /// Opens the group socket `config` describes. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Multicast`]: the group is not multicast or the port is 0, the interface is
    /// unknown, has no IPv4 address or is a loopback interface, or a socket option was refused.
    pub(crate) fn open(config: &MulticastConfig) -> Result<Self, Error> {
        let fail = |problem| Error::Multicast {
            interface: config.interface.clone(),
            problem,
        };
        check_group(config).map_err(fail)?;
        let interface = resolve(&config.interface).map_err(fail)?;
        let group = config.group_addr();
        let socket = configure(group, &interface).map_err(fail)?;
        Ok(Self {
            socket,
            group,
            interface,
        })
    }

    /// The group address and port datagrams go to.
    pub(crate) fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// The interface the socket is joined on.
    pub(crate) fn interface(&self) -> &Interface {
        &self.interface
    }

    /// Sends one datagram to the group.
    pub(crate) async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
        self.socket.send_to(datagram, self.group).await
    }

    /// Receives one datagram sent to the group, and who sent it (an address on the LAN).
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, std::net::SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}

/// The group must be IPv4 multicast and the port fixed.
fn check_group(config: &MulticastConfig) -> Result<(), MulticastProblem> {
    if !config.group.is_multicast() {
        return Err(MulticastProblem::NotMulticast(config.group));
    }
    if config.port == 0 {
        return Err(MulticastProblem::PortZero);
    }
    Ok(())
}

/// Finds the interface named `name` in the calling thread's network namespace: its index and
/// its first IPv4 address.
fn resolve(name: &str) -> Result<Interface, MulticastProblem> {
    let all = if_addrs::get_if_addrs().map_err(MulticastProblem::ListInterfaces)?;
    let named: Vec<_> = all.into_iter().filter(|i| i.name == name).collect();
    if named.iter().any(if_addrs::Interface::is_loopback) {
        return Err(MulticastProblem::Loopback);
    }
    let index = named
        .iter()
        .find_map(|i| i.index)
        .or_else(|| index_of(name));
    // getifaddrs lists only interfaces with an address: an interface without any is found by
    // its index alone.
    let Some(index) = index else {
        return Err(MulticastProblem::UnknownInterface);
    };
    let addr = named
        .iter()
        .find_map(|i| match i.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .ok_or(MulticastProblem::NoIpv4)?;
    Ok(Interface {
        name: name.to_owned(),
        index,
        addr,
    })
}

/// The index of interface `name`, if it exists (`if_nametoindex`).
#[cfg(unix)]
pub(super) fn index_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that lives for the call; if_nametoindex only
    // reads it and returns 0 when there is no such interface.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Without `if_nametoindex`, an interface without addresses is not found.
#[cfg(not(unix))]
pub(super) fn index_of(_name: &str) -> Option<u32> {
    None
}

/// Creates, configures and binds the socket (see the [module docs](self) for each option).
fn configure(group: SocketAddrV4, interface: &Interface) -> Result<UdpSocket, MulticastProblem> {
    let step = |step: &'static str| move |source| MulticastProblem::Socket { step, source };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(step("create a UDP socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(step("set SO_REUSEADDR"))?;
    socket
        .bind(&group.into())
        .map_err(step("bind the group address and port"))?;
    socket
        .join_multicast_v4_n(group.ip(), &InterfaceIndexOrAddress::Index(interface.index))
        .map_err(step("join the group on the interface"))?;
    #[cfg(target_os = "linux")]
    socket
        .set_multicast_all_v4(false)
        .map_err(step("turn IP_MULTICAST_ALL off"))?;
    socket
        .set_multicast_if_v4(&interface.addr)
        .map_err(step("send from the interface (IP_MULTICAST_IF)"))?;
    socket
        .set_multicast_ttl_v4(1)
        .map_err(step("set the multicast TTL to 1"))?;
    socket
        .set_multicast_loop_v4(false)
        .map_err(step("turn multicast loopback off"))?;
    socket
        .set_nonblocking(true)
        .map_err(step("make the socket non-blocking"))?;
    UdpSocket::from_std(socket.into()).map_err(step("register the socket with tokio"))
}
