//! The endpoint: accepting, dialling, the handshake's outcome, and keeping the addresses
//! discovery names dialled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_discovery::DiscoveryEvent;
use shoal_proto::{Hello, NodeId, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::{self, CloseCode, ConnIo};
use super::dial_plan::DialPlan;
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
    let deadline = tokio::time::Instant::now() + driver.config.handshake_timeout;
    let outcome = tokio::time::timeout_at(deadline, incoming).await;
    let conn = tls_outcome(driver, addr, outcome, HandshakeError::TlsTimeout(addr))?;
    establish_by(driver, conn, false, deadline, Some(slot)).await
}

/// Dials `addr` once and runs the Shoal handshake; returns the peer's node id.
pub(crate) async fn connect(
    driver: &Arc<Driver>,
    addr: SocketAddr,
) -> Result<NodeId, HandshakeError> {
    let dial = |reason: String| HandshakeError::Dial { addr, reason };
    let connecting = driver
        .endpoint
        .connect(addr, tls::SERVER_NAME)
        .map_err(|e| dial(e.to_string()))?;
    let outcome = tokio::time::timeout(driver.config.handshake_timeout, connecting).await;
    let conn = tls_outcome(driver, addr, outcome, HandshakeError::NoAnswer(addr))?;
    establish(driver, conn, true).await
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
) -> Result<NodeId, HandshakeError> {
    let deadline = tokio::time::Instant::now() + driver.config.handshake_timeout;
    establish_by(driver, conn, dialed, deadline, None).await
}

/// [`establish`], with the hello due by `deadline`; an incoming connection's `slot` under the
/// limits is held until the connection ends.
async fn establish_by(
    driver: &Arc<Driver>,
    conn: quinn::Connection,
    dialed: bool,
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
        drop(slot);
    });
    Ok(node)
}

/// Turns discovery hints into connections: one dialler per address, stopped when no hint
/// names the address any more (see [`DialPlan`]).
pub(crate) async fn follow_discovery(
    driver: Arc<Driver>,
    mut events: mpsc::UnboundedReceiver<DiscoveryEvent>,
) {
    let mut plan = DialPlan::default();
    let mut diallers: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    let local = driver.endpoint.local_addr().ok();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = driver.stopping.cancelled() => return,
        };
        let Some(event) = event else { return };
        if let DiscoveryEvent::Up(hint) | DiscoveryEvent::Updated(hint) = &event
            && hint.node_id == Some(driver.id)
        {
            continue;
        }
        let usable = |addr: SocketAddr| match local.and_then(|local| unreachable_from(local, addr))
        {
            Some(reason) => {
                driver.dial_failures.record(addr, &reason);
                false
            }
            None => true,
        };
        let changes = plan.apply(event, usable);
        for addr in changes.stop {
            if let Some(token) = diallers.remove(&addr) {
                token.cancel();
            }
        }
        for addr in changes.start {
            let token = driver.stopping.child_token();
            diallers.insert(addr, token.clone());
            let driver2 = Arc::clone(&driver);
            driver
                .tasks
                .spawn(async move { keep_dialled(driver2, addr, token).await });
        }
    }
}

/// Why a socket bound to `local` cannot send to `remote`, if it cannot: a loopback-bound node
/// cannot reach a LAN address, and an IPv4 socket cannot reach IPv6 (the kernel refuses).
fn unreachable_from(local: SocketAddr, remote: SocketAddr) -> Option<String> {
    let dual_stack = local.ip().is_unspecified() && local.is_ipv6();
    if local.is_ipv4() != remote.is_ipv4() && !dual_stack {
        return Some(format!(
            "{remote} is not reachable from this node's socket {local} (other address family)"
        ));
    }
    if local.ip().is_loopback() && !remote.ip().is_loopback() {
        return Some(format!(
            "{remote} is not reachable from this node's loopback socket {local}: listen on a LAN address or 0.0.0.0"
        ));
    }
    None
}

/// Keeps a connection to whoever listens on `addr`: dials, waits while connected, and redials
/// with backoff (100 ms doubling to 2 s) after a failure, until `stop` (the node stops, or no
/// hint names the address any more). Stopping does not close a live connection.
async fn keep_dialled(driver: Arc<Driver>, addr: SocketAddr, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut known: Option<NodeId> = None;
    let mut changes = driver.peer_changes();
    while !stop.is_cancelled() {
        let connected = known
            .filter(|n| driver.is_connected(*n))
            .or_else(|| driver.listening_on(addr));
        if let Some(node) = connected {
            known = Some(node);
            tokio::select! {
                _ = changes.changed() => continue,
                () = stop.cancelled() => return,
            }
        }
        let connected = tokio::select! {
            connected = connect(&driver, addr) => connected,
            () = stop.cancelled() => return,
        };
        match connected {
            Ok(node) => {
                known = Some(node);
                backoff = Duration::from_millis(100);
            }
            // A peer list naming this node.
            Err(HandshakeError::SelfConnection) => return,
            Err(reason) => {
                tracing::debug!(%addr, %reason, "dial failed; retrying in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl Driver {
    /// Whether a live connection stands for `node`.
    pub(crate) fn is_connected(&self, node: NodeId) -> bool {
        self.read(|engine| engine.peers().iter().any(|p| p.node == node))
    }

    /// The node listening on `addr` among the live peers (a static address needs no dialling).
    pub(crate) fn listening_on(&self, addr: SocketAddr) -> Option<NodeId> {
        self.read(|engine| {
            engine
                .peers()
                .into_iter()
                .find(|p| {
                    p.addr == addr
                        || p.listen_addrs.iter().any(|l| {
                            // A node bound to 0.0.0.0:P (or [::]:P) listens on every address at P.
                            *l == addr || (l.ip().is_unspecified() && l.port() == addr.port())
                        })
                })
                .map(|p| p.node)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable_from;

    #[test]
    fn a_socket_only_dials_what_it_can_reach() {
        let p = |s: &str| s.parse().expect("address");
        assert!(unreachable_from(p("127.0.0.1:1"), p("127.0.0.1:2")).is_none());
        assert!(unreachable_from(p("0.0.0.0:1"), p("10.99.0.2:7000")).is_none());
        assert!(unreachable_from(p("10.99.0.1:1"), p("10.99.0.2:7000")).is_none());
        assert!(unreachable_from(p("[::]:1"), p("10.99.0.2:7000")).is_none());
        let loopback = unreachable_from(p("127.0.0.1:1"), p("10.99.0.2:7000"));
        assert!(loopback.is_some_and(|r| r.contains("loopback")));
        assert!(unreachable_from(p("0.0.0.0:1"), p("[fe80::1]:7000")).is_some());
    }
}
