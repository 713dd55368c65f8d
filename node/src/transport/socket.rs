//! The node's UDP socket: bound, with receive and send buffers sized for bursts.
//!
//! Every QUIC packet of every peer arrives on this one socket. The kernel's default buffer
//! (208 KiB on Linux) holds about a hundred full packets: a burst from a few peers, or a few
//! milliseconds in which the node's thread does not read (a handler running, the thread
//! descheduled), fills it, and the kernel drops what comes next. QUIC resends those packets,
//! but it also takes each loss as congestion and sends slower for a while, so a dropped burst
//! costs throughput and tail latency well after it. Other QUIC stacks size their buffers for
//! this as well (quic-go asks for 7 MiB). The kernel caps what an unprivileged process gets
//! (`net.core.rmem_max` and `net.core.wmem_max`); a smaller grant is logged at start. Test:
//! `tests/tests/flood_limits.rs`.

use std::net::{SocketAddr, UdpSocket};

use crate::Error;

/// Binds the node's socket on `listen` and asks for `buffers` bytes of receive and send
/// buffer (the kernel may grant less; `0` keeps its defaults).
pub(crate) fn bind(listen: SocketAddr, buffers: usize) -> Result<UdpSocket, Error> {
    let socket = UdpSocket::bind(listen).map_err(|source| Error::Bind {
        addr: listen,
        source,
    })?;
    if buffers > 0 {
        let sock = socket2::SockRef::from(&socket);
        // Best effort: a kernel that refuses leaves the defaults, which still work.
        let _ = sock.set_recv_buffer_size(buffers);
        let _ = sock.set_send_buffer_size(buffers);
        // Linux reports twice what it reserves for the data, so a full grant reads as more.
        if let Ok(granted) = sock.recv_buffer_size()
            && granted < buffers
        {
            tracing::info!(
                asked = buffers,
                granted,
                "the kernel granted a smaller UDP receive buffer than asked; raise \
                 net.core.rmem_max to let bursts wait instead of being dropped"
            );
        }
    }
    Ok(socket)
}
