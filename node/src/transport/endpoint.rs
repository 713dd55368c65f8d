//! The endpoint: accepting, dialling one address, and the handshake's outcome. Which
//! addresses to dial, and when, is [`super::dial`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shoal_proto::{Hello, NodeId, PROTOCOL_VERSION};

use super::connection::{self, CloseCode, ConnIo};
use super::handshake::{self, HandshakeError};
use super::limits::Slot;
use crate::engine::{Admission, PeerHello};
use crate::runtime::Driver;
use crate::{NodeEvent, tls};

/// Accepts connections until the node stops. Each incoming connection first passes the limits
/// against floods ([`super::limits`]), before any TLS work; one over a limit is refused.
pub(crate) async fn accept_loop(driver: Arc<Driver>) {
    loop {
        let incoming = tokio::select! {
            incoming = driver.endpoint.accept() => incoming,
            () = driver.stopping.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let addr = incoming.remote_address();
        let slot = match driver.accept_limits.admit(addr.ip(), Driver::now()) {
            Ok(slot) => slot,
            Err(refusal) => {
                incoming.refuse();
                driver.emit(NodeEvent::HandshakeFailed {
                    addr,
                    reason: refusal.to_string(),
                });
                continue;
            }
        };
        let driver2 = Arc::clone(&driver);
        driver.tasks.spawn(async move {
            let _ = accept(&driver2, incoming, slot).await;
        });
    }
}

/// Runs an incoming connection's TLS handshake and hello exchange, both within the handshake
/// timeout of its arrival: a client that stalls the handshake, or finishes TLS and then says
/// nothing, holds its `slot` no longer. The slot is given back when the connection ends.
async fn accept(
    driver: &Arc<Driver>,
    incoming: quinn::Incoming,
    slot: Slot,
) -> Result<NodeId, HandshakeError> {
    let addr = incoming.remote_address();
    let deadline = Driver::deadline_in(driver.config.handshake_timeout);
    let outcome = tokio::time::timeout_at(deadline, incoming).await;
    match &outcome {
        // This node refused the client's TLS (its certificate, or TLS itself): its address
        // gets no other handshake for a while (`super::penalty`). A client that gave up, or
        // timed out, is not penalised: that may be the network.
        Ok(Err(quinn::ConnectionError::TransportError(_))) => {
            driver.accept_limits.penalise(addr.ip(), Driver::now());
        }
        Ok(Ok(_)) => driver.accept_limits.forgive(addr.ip()),
        _ => {}
    }
    let conn = tls_outcome(driver, addr, outcome, HandshakeError::TlsTimeout(addr))?;
    establish_by(driver, conn, false, false, deadline, Some(slot)).await
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
    let outcome = tokio::time::timeout(driver.config.handshake_timeout, connecting).await;
    let conn = tls_outcome(driver, addr, outcome, HandshakeError::NoAnswer(addr))?;
    establish(driver, conn, true, pinned).await
}

/// The connection of a TLS handshake that finished in time, or its failure (counted and told):
/// TLS's own reason, or `late` when the time ran out.
fn tls_outcome(
    driver: &Driver,
    addr: SocketAddr,
    outcome: Result<Result<quinn::Connection, quinn::ConnectionError>, tokio::time::error::Elapsed>,
    late: HandshakeError,
) -> Result<quinn::Connection, HandshakeError> {
    let reason = match outcome {
        Ok(Ok(conn)) => return Ok(conn),
        Ok(Err(e)) => HandshakeError::Tls {
            addr,
            reason: e.to_string(),
        },
        Err(_) => late,
    };
    Err(handshake_failed(driver, addr, &reason))
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

/// Exchanges hellos over a fresh TLS connection (within the handshake timeout), has the
/// engine admit the peer, and starts the connection's reader and writer.
async fn establish(
    driver: &Arc<Driver>,
    conn: quinn::Connection,
    dialed: bool,
    pinned: bool,
) -> Result<NodeId, HandshakeError> {
    let deadline = Driver::deadline_in(driver.config.handshake_timeout);
    establish_by(driver, conn, dialed, pinned, deadline, None).await
}

/// [`establish`], with the hello due by `deadline`; an incoming connection's `slot` under the
/// limits is held until the connection ends.
async fn establish_by(
    driver: &Arc<Driver>,
    conn: quinn::Connection,
    dialed: bool,
    pinned: bool,
    deadline: tokio::time::Instant,
    slot: Option<Slot>,
) -> Result<NodeId, HandshakeError> {
    let addr = conn.remote_address();
    let ours = Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: driver.id,
        service: driver.service.clone(),
        listen_addrs: driver.endpoint.local_addr().into_iter().collect(),
    };
    let exchange = handshake::exchange(&conn, ours, driver.id, &driver.config.limits);
    let shaken = match tokio::time::timeout_at(deadline, exchange).await {
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
        // The certificate's service: what every authorization decision about the peer uses.
        service: shaken.service,
        addr,
        listen_addrs: shaken.hello.listen_addrs,
        dialed,
        pinned,
    };
    let io = ConnIo::new(conn, shaken.certificate, shaken.send);
    let (id, admission) = driver.admit(hello, &io);
    if admission == Admission::Refused {
        io.conn
            .close(CloseCode::Duplicate.into(), b"duplicate connection");
        return Ok(node);
    }
    driver.dial_failures.clear(addr);
    let driver2 = Arc::clone(driver);
    driver.tasks.spawn(async move {
        connection::run(driver2, id, io, shaken.recv, shaken.rest).await;
        drop(slot);
    });
    Ok(node)
}
