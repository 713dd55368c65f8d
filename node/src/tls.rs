//! TLS and QUIC configuration: mutual TLS 1.3 in which both sides trust only the mesh CA.
//!
//! Every connection of a mesh is authenticated both ways. The listening side requires a
//! client certificate; both sides accept only certificates issued by a trusted
//! [`crate::MeshCa`] (no platform or WebPKI roots are ever loaded) and not revoked. The node's
//! certificate, its trusted CAs and its revocations live in a [`LiveTls`] that every handshake
//! reads, so they can change while the node runs. Clients dial with the server name
//! [`SERVER_NAME`], which every node certificate carries; which *service* the peer is comes
//! from its certificate's `<service>.svc.shoal.mesh` name ([`peer_certificate_info`]).
//!
//! The ring crypto provider is always passed explicitly, so nothing depends on a
//! process-wide default provider being installed.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::version;
use rustls_pki_types::CertificateDer;

use crate::error::Error;
use crate::identity::{self, CertificateInfo};
pub(crate) use live::LiveTls;

mod live;

/// The TLS server name clients dial with. Every node certificate carries it as a DNS name,
/// so any node of the mesh can serve any other.
pub(crate) const SERVER_NAME: &str = identity::MESH_DNS_NAME;

/// The QUIC transport settings for a node.
///
/// The defaults (see `NodeBuilder::liveness`) are a keep-alive every 250 ms and an idle timeout
/// of 1.5 s: a peer that dies without closing its connection (killed, unplugged) is noticed
/// within about 1.8 s, so its in-flight messages can be retried on another instance quickly. The
/// keep-alives stop a quiet but healthy connection from timing out. QUIC uses the smaller of the
/// two peers' idle timeouts.
///
/// With `multicast` on, the node also asks each peer to acknowledge its QUIC packets less
/// often (see [`UNACKNOWLEDGED_PACKETS`]).
pub(crate) fn transport(
    keep_alive: Duration,
    idle_timeout: Duration,
    multicast: bool,
) -> Result<quinn::TransportConfig, Error> {
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .map_err(|_| Error::Config(format!("idle timeout {idle_timeout:?} is too large")))?;
    let mut transport = quinn::TransportConfig::default();
    // quinn assumes 333 ms before it has measured a path (an Internet default); a mesh on a
    // LAN starts from 10 ms, so lost handshake packets are resent sooner and a half-open
    // connection to a vanished peer drains in tenths of a second rather than seconds.
    transport.initial_rtt(Duration::from_millis(10));
    transport
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(Some(idle));
    // Each side opens exactly one stream, unidirectional, for the connection's life (see
    // `transport::connection`). quinn keeps state for every stream the peer may open (100 of
    // each kind by default, about 8 KB per connection); allowing just the one also refuses a
    // peer that would open more.
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(1u32.into());
    if multicast {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(UNACKNOWLEDGED_PACKETS.into())
            // A gap in the packet numbers (a lost status) is acknowledged at once, as without
            // the extension, so the member resends it without waiting for a timer.
            .reordering_threshold(1u32.into());
        transport.ack_frequency_config(Some(ack));
    }
    Ok(transport)
}

/// How many of a multicast member's QUIC packets a peer may hold unacknowledged: it
/// acknowledges every tenth (QUIC's default: every second). Asked of every peer by the
/// acknowledgement frequency extension, which quinn speaks on both ends; the setting is the
/// asker's, so a peer without multicast acknowledges this node's packets that way too.
///
/// A member sends its publisher a status for about every datagram it handles, and each status
/// is a QUIC packet of its own; the publisher has nothing to send back but QUIC's
/// acknowledgements, which by default answered every second status of every member: at 16
/// members a sixth of the bytes on the publisher's link (benches/README.md). A lone packet is
/// still acknowledged within the peer's maximum delay (25 ms), and a gap in the packet numbers
/// at once (a reordering threshold of 1), so a lost status is resent as soon as before.
const UNACKNOWLEDGED_PACKETS: u32 = 9;

/// The QUIC configuration for accepting connections: presents the node's current certificate,
/// requires every client to present one that a trusted mesh CA issued and that is not revoked,
/// and speaks only [`shoal_proto::ALPN`].
///
/// Certificates and trust come from `live` at every handshake, so a reload
/// ([`LiveTls::reload`]) applies to the next handshake without touching live connections.
/// TLS session resumption is off: a resumed session would skip the certificate checks, so a
/// revoked or rotated certificate could come back through a session ticket.
pub(crate) fn server_config(
    live: &LiveTls,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(live.provider())
        .with_protocol_versions(&[&version::TLS13])
        .map_err(tls13_unavailable)?
        .with_client_cert_verifier(live.verifier())
        .with_cert_resolver(Arc::new(live.clone()));
    tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(unusable_for_quic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The QUIC configuration for dialling other nodes: trusts only the mesh CAs of `live`, refuses
/// revoked servers, presents the node's current certificate, and speaks only
/// [`shoal_proto::ALPN`]. Dial with [`SERVER_NAME`]. No session resumption (see
/// [`server_config`]).
pub(crate) fn client_config(
    live: &LiveTls,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, Error> {
    let mut tls = rustls::ClientConfig::builder_with_provider(live.provider())
        .with_protocol_versions(&[&version::TLS13])
        .map_err(tls13_unavailable)?
        .dangerous()
        .with_custom_certificate_verifier(live.verifier())
        .with_client_cert_resolver(Arc::new(live.clone()));
    tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let quic = QuicClientConfig::try_from(tls).map_err(unusable_for_quic)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

fn tls13_unavailable(e: rustls::Error) -> Error {
    Error::Config(format!("TLS 1.3 is unavailable: {e}"))
}

fn unusable_for_quic(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("TLS configuration unusable for QUIC: {e}"))
}

/// The peer's certificate (the first of its chain), once the handshake is complete.
fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.into_iter().next()
}

/// What the peer's certificate says (its service, serial, validity), once the handshake is
/// complete; `None` before, or if the certificate does not parse.
///
/// The certificate was verified against the mesh CA during the handshake, so its service is
/// the peer's authenticated service; a peer whose `Hello` claims another service is lying or
/// misconfigured. Parsing costs a few microseconds: the transport calls this once per
/// connection, at its handshake, and keeps the answer with the connection
/// (`ConnIo::peer_certificate`) for the certificate tasks.
pub(crate) fn peer_certificate_info(conn: &quinn::Connection) -> Option<CertificateInfo> {
    let cert = peer_certificate(conn)?;
    #[cfg(test)]
    parse_count::PARSED.with(|n| n.set(n.get() + 1));
    Some(identity::Parsed::new(&cert).ok()?.info)
}

/// Counts the peer certificates parsed on this thread, so a test on a current-thread runtime
/// can see how many its nodes parsed (other tests run on other threads).
#[cfg(test)]
pub(crate) mod parse_count {
    use std::cell::Cell;

    thread_local! {
        pub(super) static PARSED: Cell<usize> = const { Cell::new(0) };
    }

    /// Peer certificates parsed on this thread so far.
    pub(crate) fn parsed() -> usize {
        PARSED.with(Cell::get)
    }
}

/// The crypto provider every Shoal TLS configuration uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod ack_tests;
#[cfg(test)]
mod tests;
