//! A packet capture for the tests: an `AF_PACKET` socket in a test's namespace sees every IPv4
//! frame its interfaces send or receive (as tcpdump would, without needing tcpdump), and
//! reports the UDP ones with the interface they passed.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use shoal_discovery::netns;

/// One UDP datagram seen on an interface.
#[derive(Debug)]
pub(super) struct Seen {
    /// The interface's index.
    pub(super) ifindex: u32,
    /// The IP header's TTL.
    pub(super) ttl: u8,
    /// Where it was going.
    pub(super) dst: SocketAddrV4,
    /// Its UDP payload.
    pub(super) payload: Vec<u8>,
}

/// An open capture (closed on drop).
pub(super) struct Capture(OwnedFd);

/// Opens a capture of every interface of namespace `ns`. Reads time out after 20 ms.
pub(super) fn open_in(ns: &str) -> io::Result<Capture> {
    netns::run_in(ns, || {
        // ETH_P_ALL (not ETH_P_IP): only such taps see outgoing frames too.
        let protocol = i32::from((libc::ETH_P_ALL as u16).to_be());
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: SO_RCVTIMEO reads a timeval of the given size, which lives for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Capture(fd))
    })?
}

impl Capture {
    /// Every UDP datagram seen until one with `payload` (included), or until `limit` passed.
    pub(super) fn until(&self, payload: &[u8], limit: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            let Some((ifindex, n)) = self.read(&mut buf) else {
                continue;
            };
            if let Some(datagram) = udp(ifindex, &buf[..n]) {
                let last = datagram.payload == payload;
                seen.push(datagram);
                if last {
                    break;
                }
            }
        }
        seen
    }

    /// One frame (from its IP header on) and the interface's index; `None` on a timeout.
    fn read(&self, buf: &mut [u8]) -> Option<(u32, usize)> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for writes of the lengths given, for the call.
        let n = unsafe {
            libc::recvfrom(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut from).cast(),
                &mut len,
            )
        };
        let n = usize::try_from(n).ok()?;
        Some((u32::try_from(from.sll_ifindex).ok()?, n))
    }
}

/// The UDP datagram in an IPv4 packet, if it is one.
fn udp(ifindex: u32, packet: &[u8]) -> Option<Seen> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != 17 {
        return None;
    }
    let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    let udp = packet.get(ihl..)?;
    let port = u16::from_be_bytes(udp.get(2..4)?.try_into().ok()?);
    Some(Seen {
        ifindex,
        ttl: *packet.get(8)?,
        dst: SocketAddrV4::new(Ipv4Addr::from(dst), port),
        payload: udp.get(8..)?.to_vec(),
    })
}
