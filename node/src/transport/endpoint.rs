//! The endpoint: accepting, dialling one address, and the handshake's outcome. Which
//! addresses to dial, and when, is [`super::dial`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shoal_proto::{Hello, NodeId, PROTOCOL_VERSION};

use super::connection::{self, CloseCode, ConnIo};
use super::handshake::{self, HandshakeError};
use crate::engine::{Admission, PeerHello};
use crate::runtime::Driver;
use crate::{NodeEvent, tls};

/// Accepts connections until the node stops.
pub(crate) async fn accept_loop(driver: Arc<Driver>) {
    loop {
        let incoming = tokio::select! {
            incoming = driver.endpoint.accept() => incoming,
            () = driver.stopping.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let driver2 = Arc::clone(&driver);
        driver.tasks.spawn(async move {
            let addr = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let _ = establish(&driver2, conn, false, false).await;
                }
                Err(e) => {
                    let reason = HandshakeError::Tls {
                        addr,
                        reason: e.to_string(),
                    };
                    handshake_failed(&driver2, addr, &reason);
                }
            }
        });
    }
}

/// Dials `addr` once and runs the Shoal handshake; returns the peer's node id. A `pinned`
/// connection is kept however idle (see [`super::dial`]).
pub(crate) async fn connect(
    driver: &Arc<Driver>,
    addr: SocketAddr,
    pinned: bool,
) -> Result<NodeId, HandshakeError> {
    let dial = |reason: String| HandshakeError::Dial { addr, reason };
    let connecting = driver
        .endpoint
        .connect(addr, tls::SERVER_NAME)
        .map_err(|e| dial(e.to_string()))?;
    let conn = match tokio::time::timeout(driver.config.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let reason = HandshakeError::Tls {
                addr,
                reason: e.to_string(),
            };
            return Err(handshake_failed(driver, addr, &reason));
        }
        Err(_) => {
            return Err(handshake_failed(
                driver,
                addr,
                &HandshakeError::NoAnswer(addr),
            ));
        }
    };
    establish(driver, conn, true, pinned).await
}

fn handshake_failed(driver: &Driver, addr: SocketAddr, reason: &HandshakeError) -> HandshakeError {
    // A peer list naming this node itself is normal (one shared list for every node).
    if *reason == HandshakeError::SelfConnection {
        return reason.clone();
    }
    driver.handshake_failures.fetch_add(1, Ordering::Relaxed);
    driver.dial_failures.record(addr, &reason.to_string());
    driver.emit(NodeEvent::HandshakeFailed {
        addr,
        reason: reason.to_string(),
    });
    reason.clone()
}

/// Exchanges hellos over a fresh TLS connection, has the engine admit the peer, and starts
/// the connection's reader and writer.
async fn establish(
    driver: &Arc<Driver>,
    conn: quinn::Connection,
    dialed: bool,
    pinned: bool,
) -> Result<NodeId, HandshakeError> {
    let addr = conn.remote_address();
    let ours = Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: driver.id,
        service: driver.service.clone(),
        listen_addrs: driver.endpoint.local_addr().into_iter().collect(),
    };
    let exchange = handshake::exchange(&conn, ours, driver.id, &driver.config.limits);
    let shaken = match tokio::time::timeout(driver.config.handshake_timeout, exchange).await {
        Ok(Ok(shaken)) => shaken,
        Ok(Err(reason)) => {
            conn.close(CloseCode::Protocol.into(), reason.to_string().as_bytes());
            return Err(handshake_failed(driver, addr, &reason));
        }
        Err(_) => {
            conn.close(CloseCode::Protocol.into(), b"hello timeout");
            return Err(handshake_failed(driver, addr, &HandshakeError::Timeout));
        }
    };
    let node = shaken.hello.node_id;
    let hello = PeerHello {
        node,
        service: shaken.hello.service,
        addr,
        listen_addrs: shaken.hello.listen_addrs,
        dialed,
        pinned,
    };
    let io = ConnIo::new(conn);
    let (id, admission) = driver.admit(hello, &io);
    if admission == Admission::Refused {
        io.conn
            .close(CloseCode::Duplicate.into(), b"duplicate connection");
        return Ok(node);
    }
    driver.dial_failures.clear(addr);
    let driver2 = Arc::clone(driver);
    driver.tasks.spawn(async move {
        connection::run(driver2, id, io, shaken.send, shaken.recv, shaken.rest).await;
    });
    Ok(node)
}
