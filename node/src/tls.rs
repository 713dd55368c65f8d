//! TLS and QUIC configuration: mutual TLS 1.3 in which both sides trust only the mesh CA.
//!
//! Every connection of a mesh is authenticated both ways. The listening side requires a
//! client certificate; both sides accept only certificates issued by the [`MeshCa`] (no
//! platform or WebPKI roots are ever loaded). Clients dial with the server name
//! [`SERVER_NAME`], which every node certificate carries; which *service* the peer is comes
//! from its certificate's `<service>.svc.shoal.mesh` name ([`peer_service`]).
//!
//! The ring crypto provider is always passed explicitly, so nothing depends on a
//! process-wide default provider being installed.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, version};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::Error;
use crate::identity::{self, Identity, MeshCa};

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
pub(crate) fn transport(
    keep_alive: Duration,
    idle_timeout: Duration,
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
    Ok(transport)
}

/// The QUIC configuration for accepting connections: presents `identity`, requires every
/// client to present a certificate issued by `ca`, and speaks only [`shoal_proto::ALPN`].
///
/// Fails with [`Error::Identity`] if `identity` is not a valid server certificate under `ca`
/// (issued by another CA, expired, not for `shoal.mesh`, key mismatch), so a misconfigured
/// node fails at start-up instead of at every handshake.
pub(crate) fn server_config(
    identity: &Identity,
    ca: &MeshCa,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, Error> {
    let trust = MeshTrust::new(ca)?;
    check_own_certificate(identity, |leaf, rest, now| {
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| {
            rustls::Error::General(format!("invalid server name {SERVER_NAME}: {e}"))
        })?;
        trust
            .servers
            .verify_server_cert(leaf, rest, &name, &[], now)
            .map(drop)
    })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(trust.provider)
        .with_protocol_versions(&[&version::TLS13])
        .map_err(tls13_unavailable)?
        .with_client_cert_verifier(trust.clients)
        .with_single_cert(identity.cert_chain(), identity.key_der())
        .map_err(unusable_identity)?;
    tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(unusable_for_quic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The QUIC configuration for dialling other nodes: trusts only `ca`, presents `identity`
/// as client certificate, and speaks only [`shoal_proto::ALPN`]. Dial with [`SERVER_NAME`].
///
/// Fails with [`Error::Identity`] if `identity` is not a valid client certificate under `ca`.
pub(crate) fn client_config(
    identity: &Identity,
    ca: &MeshCa,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, Error> {
    let trust = MeshTrust::new(ca)?;
    check_own_certificate(identity, |leaf, rest, now| {
        trust.clients.verify_client_cert(leaf, rest, now).map(drop)
    })?;
    let mut tls = rustls::ClientConfig::builder_with_provider(trust.provider)
        .with_protocol_versions(&[&version::TLS13])
        .map_err(tls13_unavailable)?
        .with_webpki_verifier(trust.servers)
        .with_client_auth_cert(identity.cert_chain(), identity.key_der())
        .map_err(unusable_identity)?;
    tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(unusable_for_quic)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The verifiers of a mesh: certificates count only if the mesh CA issued them, whichever side
/// presents them. Also used to check this node's own certificate before it is offered.
struct MeshTrust {
    provider: Arc<CryptoProvider>,
    servers: Arc<WebPkiServerVerifier>,
    clients: Arc<dyn ClientCertVerifier>,
}

impl MeshTrust {
    fn new(ca: &MeshCa) -> Result<Self, Error> {
        let provider = provider();
        let roots = roots(ca)?;
        let unusable_ca =
            |e| Error::Identity(format!("the mesh CA cannot verify certificates: {e}"));
        let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| unusable_ca(e.to_string()))?;
        let clients = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| unusable_ca(e.to_string()))?;
        Ok(Self {
            provider,
            servers,
            clients,
        })
    }
}

fn tls13_unavailable(e: rustls::Error) -> Error {
    Error::Config(format!("TLS 1.3 is unavailable: {e}"))
}

fn unusable_identity(e: rustls::Error) -> Error {
    Error::Identity(format!("the node certificate or key is unusable: {e}"))
}

fn unusable_for_quic(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("TLS configuration unusable for QUIC: {e}"))
}

/// The service the peer's certificate was issued for (its `<service>.svc.shoal.mesh` name).
///
/// The certificate was verified against the mesh CA during the handshake, so this is the
/// peer's authenticated service; a peer whose `Hello` claims another service is lying or
/// misconfigured. `None` if the handshake is not complete or the certificate names no service.
pub(crate) fn peer_service(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    identity::service_of_cert(certs.first()?)
}

/// The crypto provider every Shoal TLS configuration uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding only the mesh CA.
fn roots(ca: &MeshCa) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).map_err(|e| {
        Error::Identity(format!(
            "the mesh CA certificate cannot be used as a trust anchor: {e}"
        ))
    })?;
    Ok(Arc::new(roots))
}

/// Runs `verify` on this node's own certificate chain, turning a failure into a clear error.
fn check_own_certificate(
    identity: &Identity,
    verify: impl FnOnce(
        &CertificateDer<'_>,
        &[CertificateDer<'_>],
        UnixTime,
    ) -> Result<(), rustls::Error>,
) -> Result<(), Error> {
    let chain = identity.cert_chain();
    let Some((leaf, rest)) = chain.split_first() else {
        return Err(Error::Identity(
            "the node certificate chain is empty".into(),
        ));
    };
    verify(leaf, rest, UnixTime::now()).map_err(|e| {
        Error::Identity(format!(
            "this node's certificate is not accepted by the mesh CA ({e}); was it issued by \
             another CA, or has it expired?"
        ))
    })
}

#[cfg(test)]
mod tests;
