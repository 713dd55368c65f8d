//! Connections: accepting, dialling, the Shoal handshake, and keeping static peers dialled.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use shoal_discovery::DiscoveryEvent;
use shoal_proto::{Frame, Hello, NodeId, PROTOCOL_VERSION, codec};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::dial_plan::DialPlan;
use crate::node::Shared;
use crate::peer::{Peer, PeerParams};
use crate::registry::Inserted;
use crate::stats::Counters;
use crate::{NodeEvent, tls};

/// Application close codes, visible to the peer with a reason string.
pub(crate) const CLOSE_SHUTDOWN: quinn::VarInt = quinn::VarInt::from_u32(0);
pub(crate) const CLOSE_PROTOCOL: quinn::VarInt = quinn::VarInt::from_u32(1);
pub(crate) const CLOSE_DUPLICATE: quinn::VarInt = quinn::VarInt::from_u32(2);
pub(crate) const CLOSE_KILLED: quinn::VarInt = quinn::VarInt::from_u32(3);

/// Why a handshake failed when a node dialled its own address.
const SELF_CONNECTION: &str = "connected to itself";

/// Accepts connections until the node stops.
pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            _ = shared.stopping.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let shared2 = Arc::clone(&shared);
        shared.tasks.spawn(async move {
            let addr = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let _ = establish(&shared2, conn, false).await;
                }
                Err(e) => {
                    handshake_failed(&shared2, addr, format!("TLS handshake failed: {e}"));
                }
            }
        });
    }
}

/// Dials `addr` once and runs the Shoal handshake.
pub(crate) async fn connect(shared: &Arc<Shared>, addr: SocketAddr) -> Result<Arc<Peer>, String> {
    let connecting = shared
        .endpoint
        .connect(addr, tls::SERVER_NAME)
        .map_err(|e| format!("cannot dial {addr}: {e}"))?;
    let conn = match tokio::time::timeout(shared.config.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            return Err(handshake_failed(
                shared,
                addr,
                format!("TLS handshake with {addr} failed: {e}"),
            ));
        }
        Err(_) => {
            return Err(handshake_failed(
                shared,
                addr,
                format!("no answer from {addr}"),
            ));
        }
    };
    establish(shared, conn, true).await
}

fn handshake_failed(shared: &Shared, addr: SocketAddr, reason: String) -> String {
    // A peer list naming this node itself is normal (one shared list for every node).
    if reason == SELF_CONNECTION {
        return reason;
    }
    Counters::bump(&shared.counters.handshake_failures);
    shared.dial_failures.record(addr, &reason);
    shared.emit(NodeEvent::HandshakeFailed {
        addr,
        reason: reason.clone(),
    });
    reason
}

/// Exchanges hellos over a fresh TLS connection, registers the peer and starts its reader.
/// Both sides write their hello first and then read the other's, so neither waits on the other.
async fn establish(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    dialed: bool,
) -> Result<Arc<Peer>, String> {
    let addr = conn.remote_address();
    let exchange = async {
        let mut send = conn
            .open_uni()
            .await
            .map_err(|e| format!("open stream: {e}"))?;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: shared.id,
            service: shared.service.clone(),
            listen_addrs: shared.endpoint.local_addr().into_iter().collect(),
        };
        let mut buf = BytesMut::new();
        codec::encode(&Frame::Hello(hello), &shared.config.limits, &mut buf)
            .map_err(|e| e.to_string())?;
        send.write_all(&buf)
            .await
            .map_err(|e| format!("send hello: {e}"))?;
        let mut recv = conn
            .accept_uni()
            .await
            .map_err(|e| format!("accept stream: {e}"))?;
        let mut buf = BytesMut::with_capacity(4096);
        let hello = loop {
            match codec::decode(&mut buf, &shared.config.limits) {
                Ok(Some(Frame::Hello(hello))) => break hello,
                Ok(Some(other)) => return Err(format!("expected hello, got {other:?}")),
                Ok(None) => {}
                Err(e) => return Err(format!("bad hello: {e}")),
            }
            match recv.read_buf(&mut buf).await {
                Ok(0) => return Err("stream closed before hello".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read hello: {e}")),
            }
        };
        Ok((send, recv, hello, buf))
    };
    let result = tokio::time::timeout(shared.config.handshake_timeout, exchange).await;
    let (send, recv, hello, buf) = match result {
        Ok(Ok(parts)) => parts,
        Ok(Err(reason)) => {
            conn.close(CLOSE_PROTOCOL, reason.as_bytes());
            return Err(handshake_failed(shared, addr, reason));
        }
        Err(_) => {
            conn.close(CLOSE_PROTOCOL, b"hello timeout");
            return Err(handshake_failed(shared, addr, "no hello in time".into()));
        }
    };
    if let Err(reason) = check_hello(shared, &conn, &hello) {
        conn.close(CLOSE_PROTOCOL, reason.as_bytes());
        return Err(handshake_failed(shared, addr, reason));
    }

    let peer = Peer::new(
        conn,
        send,
        PeerParams {
            node: hello.node_id,
            service: hello.service,
            listen_addrs: hello.listen_addrs,
            dialer: if dialed { shared.id } else { hello.node_id },
            max_in_flight: shared.config.max_in_flight_per_peer,
            max_handlers: shared.config.max_concurrent_handlers,
            queue_len: shared.config.write_queue_len,
            limits: shared.config.limits.clone(),
        },
    );
    match shared.registry.insert(Arc::clone(&peer)) {
        Inserted::Rejected => {
            peer.conn.close(CLOSE_DUPLICATE, b"duplicate connection");
            return Ok(peer);
        }
        Inserted::Kept { displaced } => {
            if let Some(old) = displaced {
                old.conn.close(CLOSE_DUPLICATE, b"duplicate connection");
            }
        }
    }
    Counters::bump(&shared.counters.connections);
    shared.dial_failures.clear(addr);
    shared.emit(NodeEvent::PeerUp {
        node: peer.node,
        service: peer.service.clone(),
        addr,
    });
    let shared2 = Arc::clone(shared);
    let peer2 = Arc::clone(&peer);
    shared
        .tasks
        .spawn(async move { run_peer(shared2, peer2, recv, buf).await });
    Ok(peer)
}

fn check_hello(shared: &Shared, conn: &quinn::Connection, hello: &Hello) -> Result<(), String> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "peer speaks protocol {}, this node {PROTOCOL_VERSION}",
            hello.protocol_version
        ));
    }
    if hello.node_id == shared.id {
        return Err(SELF_CONNECTION.into());
    }
    match tls::peer_service(conn) {
        Some(certified) if certified == hello.service => Ok(()),
        Some(certified) => Err(format!(
            "peer claims service `{}` but its certificate is for `{certified}`",
            hello.service
        )),
        None => Err("peer certificate names no service".into()),
    }
}

/// Reads from a peer until the connection ends, then forgets it and fails what waited on it.
async fn run_peer(shared: Arc<Shared>, peer: Arc<Peer>, recv: quinn::RecvStream, buf: BytesMut) {
    // Tell the new peer this node's subscriptions, without holding up reading from it.
    let (shared2, peer2) = (Arc::clone(&shared), Arc::clone(&peer));
    shared
        .tasks
        .spawn(async move { crate::subscribe::announce_to(&shared2, &peer2).await });
    let reason = tokio::select! {
        // Frames already received (acks above all) are read before a close is acted on.
        biased;
        reason = crate::inbound::read_loop(&shared, &peer, recv, buf) => reason,
        closed = peer.conn.closed() => closed.to_string(),
    };
    // A connection that lost a duplicate race (closed by us, or by the peer with
    // CLOSE_DUPLICATE) was never the peer's lasting connection: the peer is up on the other.
    // Read before our own close below, which would overwrite the reason.
    let duplicate = matches!(
        peer.conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close)) if close.error_code == CLOSE_DUPLICATE
    );
    // Whatever ended the read loop (a protocol error, the peer finishing its stream after a
    // goodbye), the connection is of no further use.
    let code = if reason.starts_with("protocol error") {
        CLOSE_PROTOCOL
    } else {
        CLOSE_SHUTDOWN
    };
    peer.conn.close(code, reason.as_bytes());
    let closed = peer.conn.closed().await.to_string();
    let was_current = shared.registry.remove(&peer);
    peer.fail_all(&closed);
    if was_current && !duplicate {
        shared.emit(NodeEvent::PeerDown {
            node: peer.node,
            service: peer.service.clone(),
            reason,
        });
    }
}

/// Turns discovery hints into connections: one dialler per address, stopped when no hint
/// names the address any more (see [`DialPlan`]).
pub(crate) async fn follow_discovery(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<DiscoveryEvent>,
) {
    let mut plan = DialPlan::default();
    let mut diallers: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    let local = shared.endpoint.local_addr().ok();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shared.stopping.cancelled() => return,
        };
        let Some(event) = event else { return };
        if let DiscoveryEvent::Up(hint) | DiscoveryEvent::Updated(hint) = &event
            && hint.node_id == Some(shared.id)
        {
            continue;
        }
        let usable = |addr: SocketAddr| match local.and_then(|local| unreachable_from(local, addr))
        {
            Some(reason) => {
                shared.dial_failures.record(addr, &reason);
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
            let token = shared.stopping.child_token();
            diallers.insert(addr, token.clone());
            let shared2 = Arc::clone(&shared);
            shared
                .tasks
                .spawn(async move { keep_dialled(shared2, addr, token).await });
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
async fn keep_dialled(shared: Arc<Shared>, addr: SocketAddr, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut known: Option<NodeId> = None;
    let mut changes = shared.registry.watch();
    while !stop.is_cancelled() {
        let connected = known
            .filter(|n| shared.registry.contains(*n))
            .or_else(|| shared.registry.listens_on(addr));
        if let Some(node) = connected {
            known = Some(node);
            tokio::select! {
                _ = changes.changed() => continue,
                _ = stop.cancelled() => return,
            }
        }
        let connected = tokio::select! {
            connected = connect(&shared, addr) => connected,
            _ = stop.cancelled() => return,
        };
        match connected {
            Ok(peer) => {
                known = Some(peer.node);
                backoff = Duration::from_millis(100);
            }
            Err(reason) if reason == SELF_CONNECTION => return, // a peer list naming this node
            Err(reason) => {
                tracing::debug!(%addr, %reason, "dial failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
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
