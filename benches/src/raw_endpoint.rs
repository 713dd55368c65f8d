//! The raw quinn endpoints of the floors, on UDP sockets with the buffers a Shoal node asks
//! for by default ([`SOCKET_BUFFERS`], `shoal::NodeBuilder::socket_buffers`), so that a floor
//! does not lose bursts its Shoal row keeps: the kernel's default receive buffer (208 KiB)
//! dropped thousands of packets a minute in the throughput rows, each a loss quinn answers by
//! slowing down.

use std::net::UdpSocket;

use quinn::{Endpoint, EndpointConfig, ServerConfig};

use crate::LOOPBACK;
use crate::error::{BenchError, BenchResult};

/// Receive and send buffer of every floor's socket: Shoal's default.
pub const SOCKET_BUFFERS: usize = 4 * 1024 * 1024;

/// A server endpoint on `127.0.0.1`, any free port.
pub fn server(config: ServerConfig) -> BenchResult<Endpoint> {
    endpoint(Some(config))
}

/// A client endpoint on `127.0.0.1`, any free port.
pub fn client() -> BenchResult<Endpoint> {
    endpoint(None)
}

fn endpoint(server: Option<ServerConfig>) -> BenchResult<Endpoint> {
    let socket = UdpSocket::bind(LOOPBACK)?;
    let sock = socket2::SockRef::from(&socket);
    sock.set_recv_buffer_size(SOCKET_BUFFERS)?;
    sock.set_send_buffer_size(SOCKET_BUFFERS)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| BenchError::msg("a raw endpoint needs Tokio"))?;
    Ok(Endpoint::new(
        EndpointConfig::default(),
        server,
        socket,
        runtime,
    )?)
}
