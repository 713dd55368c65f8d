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
//! - **batched** with quinn's UDP layer (`quinn-udp`, as QUIC's own sockets are): several
//!   datagrams read per system call (`recvmmsg`, and GRO, which hands datagrams the kernel
//!   kept together as one buffer split by `stride`), and runs of equal-sized datagrams sent in
//!   one call that the kernel (or the NIC) cuts into datagrams on the way out (GSO).
//!   Fragments stay allowed (quinn-udp forbids them for QUIC; see `allow_fragments`): a
//!   datagram larger than the interface's MTU goes as fragments, one by one, as before.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::MulticastConfig;
use crate::error::{Error, MulticastProblem};

/// Buffers one read fills at most: what `recvmmsg` takes in one call.
const RECV_BATCH: usize = if quinn_udp::BATCH_SIZE < 8 {
    quinn_udp::BATCH_SIZE
} else {
    8
};
/// One receive buffer: the largest UDP payload over IPv4 (65535 − 20 − 8), which is also the
/// most GRO joins into one, so no datagram is ever cut.
const RECV_SLOT: usize = 65_507;
/// The most bytes one segmented send carries (UDP's 16-bit length bounds it).
const MAX_SEGMENTED: usize = 65_000;

/// An open group socket (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct GroupSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Cleared when a segmented send failed where sending one by one worked (datagrams larger
    /// than the MTU): from then on, one by one.
    segmenting: AtomicBool,
    group: SocketAddrV4,
    interface: Interface,
}

/// The buffers [`GroupSocket::recv_batch`] reads into, kept across reads.
pub(crate) struct RecvBuffers {
    storage: Vec<u8>,
    meta: [RecvMeta; RECV_BATCH],
}

impl RecvBuffers {
    pub(crate) fn new() -> Self {
        Self {
            storage: vec![0; RECV_SLOT * RECV_BATCH],
            meta: [RecvMeta::default(); RECV_BATCH],
        }
    }
}

/// What one [`GroupSocket::send_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Datagrams the kernel took.
    pub(crate) sent: u64,
    /// Datagrams refused (counted, not retried: the channel repairs what was lost).
    pub(crate) failed: u64,
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
        let step = |step| move |source| fail(MulticastProblem::Socket { step, source });
        let state = UdpSocketState::new((&socket).into())
            .map_err(step("prepare batched reads and segmented sends"))?;
        #[cfg(target_os = "linux")]
        allow_fragments(&socket).map_err(step("allow fragments (IP_MTU_DISCOVER)"))?;
        Ok(Self {
            socket,
            state,
            segmenting: AtomicBool::new(true),
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
    #[cfg(test)]
    pub(crate) async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
        self.socket.send_to(datagram, self.group).await
    }

    /// Receives one datagram sent to the group, and who sent it (an address on the LAN).
    #[cfg(test)]
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }

    /// Sends `datagrams` to the group, in order: each run of equal-sized datagrams (the last
    /// of a run may be shorter) in one system call where the kernel segments (GSO), one call
    /// per datagram where it does not. `scratch` holds a run's bytes end to end.
    pub(crate) async fn send_batch(&self, datagrams: &[Bytes], scratch: &mut Vec<u8>) -> Sent {
        let mut done = Sent::default();
        let mut rest = datagrams;
        while !rest.is_empty() {
            let segments = if self.segmenting.load(Ordering::Relaxed) {
                self.state.max_gso_segments()
            } else {
                1
            };
            let (run, later) = rest.split_at(segment_run(rest, segments));
            rest = later;
            let ok = if let [one] = run {
                self.send_one(one, None).await
            } else {
                scratch.clear();
                for d in run {
                    scratch.extend_from_slice(d);
                }
                let ok = self.send_one(scratch, Some(run[0].len())).await;
                if !ok {
                    // The kernel refused to segment (no GSO here, or datagrams larger than the
                    // MTU, which only go as fragments): one by one, and from now on if that
                    // works.
                    let before = done.sent;
                    for d in run {
                        if self.send_one(d, None).await {
                            done.sent += 1;
                        } else {
                            done.failed += 1;
                        }
                    }
                    if done.sent - before == run.len() as u64 {
                        self.segmenting.store(false, Ordering::Relaxed);
                    }
                    continue;
                }
                ok
            };
            if ok {
                done.sent += run.len() as u64;
            } else {
                done.failed += run.len() as u64;
            }
        }
        done
    }

    /// One send: `contents` cut every `segment` bytes, or whole. False (logged) on failure.
    async fn send_one(&self, contents: &[u8], segment: Option<usize>) -> bool {
        let transmit = Transmit {
            destination: SocketAddr::V4(self.group),
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        let result = self
            .socket
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &transmit)
            })
            .await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, group = %self.group, bytes = contents.len(), "multicast: send failed");
        }
        result.is_ok()
    }

    /// Waits for datagrams sent to the group, then reads what is there (several per system
    /// call) and hands each to `each` with who sent it (an address on the LAN).
    pub(crate) async fn recv_batch(
        &self,
        buffers: &mut RecvBuffers,
        mut each: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<()> {
        let RecvBuffers { storage, meta } = buffers;
        let mut slices: Vec<IoSliceMut<'_>> =
            storage.chunks_mut(RECV_SLOT).map(IoSliceMut::new).collect();
        let count = self
            .socket
            .async_io(Interest::READABLE, || {
                self.state.recv((&self.socket).into(), &mut slices, meta)
            })
            .await?;
        for (slice, m) in slices.iter().zip(meta.iter()).take(count) {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            for datagram in slice[..m.len].chunks(stride.max(1)) {
                each(m.addr, datagram);
            }
        }
        Ok(())
    }
}

/// quinn-udp forbids fragmentation (QUIC sizes its packets to the path); the group socket
/// goes back to the kernel's default (`IP_PMTUDISC_WANT`): a datagram larger than the
/// interface's MTU is fragmented, as before batching, rather than refused.
#[cfg(target_os = "linux")]
fn allow_fragments(socket: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;

    let value: libc::c_int = libc::IP_PMTUDISC_WANT;
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).map_err(io::Error::other)?;
    // SAFETY: the descriptor is the open socket's, and the option value points at a c_int
    // that lives across the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How many of `datagrams`, from the first, one segmented send can carry: those of the
/// first's size, then at most one shorter, within `max_segments` and [`MAX_SEGMENTED`] bytes.
pub(super) fn segment_run(datagrams: &[Bytes], max_segments: usize) -> usize {
    let Some(first) = datagrams.first() else {
        return 0;
    };
    let size = first.len();
    let mut bytes = 0;
    let mut run = 0;
    for d in datagrams.iter().take(max_segments.max(1)) {
        if d.len() > size || d.is_empty() || bytes + d.len() > MAX_SEGMENTED {
            break;
        }
        bytes += d.len();
        run += 1;
        if d.len() < size {
            break; // only the last segment may be shorter
        }
    }
    run.max(1)
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
