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
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::time::timeout;

    use super::*;

    const LOCALHOST: &str = "127.0.0.1:0";
    const PROMPT: Duration = Duration::from_secs(5);

    fn transport() -> Arc<quinn::TransportConfig> {
        Arc::new(super::transport(Duration::from_millis(500), Duration::from_secs(2)).unwrap())
    }

    fn server(identity: &Identity, ca: &MeshCa) -> (quinn::Endpoint, SocketAddr) {
        let config = server_config(identity, ca, transport()).unwrap();
        let endpoint = quinn::Endpoint::server(config, LOCALHOST.parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        (endpoint, addr)
    }

    fn client_endpoint() -> quinn::Endpoint {
        quinn::Endpoint::client(LOCALHOST.parse().unwrap()).unwrap()
    }

    /// A client configuration that trusts `trusts` but presents `presents` (or nothing),
    /// bypassing the start-up check of [`client_config`]: what a foreign or broken node does.
    fn raw_client(trusts: &MeshCa, presents: Option<&Identity>) -> quinn::ClientConfig {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&version::TLS13])
            .unwrap()
            .with_root_certificates(roots(trusts).unwrap());
        let mut tls = match presents {
            Some(identity) => builder
                .with_client_auth_cert(identity.cert_chain(), identity.key_der())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![shoal_proto::ALPN.to_vec()];
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
    }

    /// Asserts that the server refuses the next incoming connection, promptly.
    async fn assert_server_refuses(server: &quinn::Endpoint) -> quinn::ConnectionError {
        let incoming = timeout(PROMPT, server.accept())
            .await
            .expect("no connection attempt arrived in time")
            .expect("endpoint closed");
        timeout(PROMPT, incoming)
            .await
            .expect("server handshake hung")
            .expect_err("server accepted a connection it should have refused")
    }

    /// Asserts that a client whose handshake may have looked fine is cut off at its first
    /// stream operation, promptly.
    async fn assert_client_cut_off(connecting: quinn::Connecting) {
        let outcome = timeout(PROMPT, async {
            let conn = connecting.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"hello").await?;
            send.finish()?;
            recv.read_to_end(64).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await
        .expect("client hung instead of failing");
        assert!(outcome.is_err(), "refused client could use the connection");
    }

    #[tokio::test]
    async fn same_ca_handshake_succeeds_and_both_sides_see_the_peer_service() {
        let ca = MeshCa::generate("test mesh").unwrap();
        let orders = ca.issue("orders").unwrap();
        let billing = ca.issue("billing").unwrap();
        let (server, addr) = server(&orders, &ca);
        let client = client_endpoint();
        let config = client_config(&billing, &ca, transport()).unwrap();

        let started = Instant::now();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let service = peer_service(&conn);
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(64).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
            service
        });
        let conn = timeout(
            PROMPT,
            client.connect_with(config, addr, SERVER_NAME).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        let handshake = started.elapsed();
        assert_eq!(peer_service(&conn).as_deref(), Some("orders"));

        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        let echoed = timeout(PROMPT, recv.read_to_end(64))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"ping");
        conn.close(0u32.into(), b"done");

        let server_saw = timeout(PROMPT, accept).await.unwrap().unwrap();
        assert_eq!(server_saw.as_deref(), Some("billing"));
        eprintln!("first handshake took {handshake:?}");
        client.wait_idle().await;
    }

    #[tokio::test]
    async fn client_with_a_certificate_from_another_ca_is_refused() {
        let ca = MeshCa::generate("test mesh").unwrap();
        let other = MeshCa::generate("foreign mesh").unwrap();
        let (server, addr) = server(&ca.issue("orders").unwrap(), &ca);
        let intruder = other.issue("billing").unwrap();

        // The node's own start-up check catches this misconfiguration.
        let err = client_config(&intruder, &ca, transport()).unwrap_err();
        assert!(matches!(err, Error::Identity(_)), "{err}");

        // A client that skips the check is refused by the server.
        let client = client_endpoint();
        let connecting = client
            .connect_with(raw_client(&ca, Some(&intruder)), addr, SERVER_NAME)
            .unwrap();
        let (server_err, ()) = tokio::join!(
            assert_server_refuses(&server),
            assert_client_cut_off(connecting)
        );
        eprintln!("server refused foreign client: {server_err}");
    }

    #[tokio::test]
    async fn server_with_a_certificate_from_another_ca_is_refused() {
        let ca = MeshCa::generate("test mesh").unwrap();
        let other = MeshCa::generate("foreign mesh").unwrap();
        let (server, addr) = server(&other.issue("orders").unwrap(), &other);
        let client = client_endpoint();
        let config = client_config(&ca.issue("billing").unwrap(), &ca, transport()).unwrap();

        let connecting = client.connect_with(config, addr, SERVER_NAME).unwrap();
        let (server_err, client_result) =
            tokio::join!(assert_server_refuses(&server), timeout(PROMPT, connecting));
        let client_err = client_result
            .expect("client handshake hung")
            .expect_err("client accepted a server from another CA");
        eprintln!("client refused foreign server: {client_err}; server saw: {server_err}");
    }

    #[tokio::test]
    async fn client_without_a_certificate_is_refused() {
        let ca = MeshCa::generate("test mesh").unwrap();
        let (server, addr) = server(&ca.issue("orders").unwrap(), &ca);
        let client = client_endpoint();
        let connecting = client
            .connect_with(raw_client(&ca, None), addr, SERVER_NAME)
            .unwrap();
        let (server_err, ()) = tokio::join!(
            assert_server_refuses(&server),
            assert_client_cut_off(connecting)
        );
        eprintln!("server refused anonymous client: {server_err}");
    }

    #[tokio::test]
    async fn identity_from_a_reloaded_ca_interoperates() {
        let ca = MeshCa::generate("test mesh").unwrap();
        let reloaded = MeshCa::from_pem_with_key(&ca.cert_pem(), &ca.key_pem().unwrap()).unwrap();
        let trust_only = MeshCa::from_pem(&ca.cert_pem()).unwrap();
        let server_id = ca.issue("orders").unwrap();
        let client_id = Identity::from_pem(
            &reloaded.issue("billing").unwrap().cert_pem(),
            &reloaded.issue("billing").unwrap().key_pem(),
        );
        // Cert and key of two different issuances do not match.
        assert!(matches!(client_id, Err(Error::Identity(_))));
        let issued = reloaded.issue("billing").unwrap();
        let client_id = Identity::from_pem(&issued.cert_pem(), &issued.key_pem()).unwrap();
        assert_eq!(client_id.service(), Some("billing"));

        let (server, addr) = server(&server_id, &trust_only);
        let client = client_endpoint();
        let config = client_config(&client_id, &trust_only, transport()).unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            peer_service(&conn)
        });
        let conn = timeout(
            PROMPT,
            client.connect_with(config, addr, SERVER_NAME).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(peer_service(&conn).as_deref(), Some("orders"));
        let server_saw = timeout(PROMPT, accept).await.unwrap().unwrap();
        assert_eq!(server_saw.as_deref(), Some("billing"));
    }

    #[test]
    fn an_idle_timeout_quic_cannot_express_is_a_config_error() {
        let err = super::transport(Duration::from_millis(500), Duration::MAX).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    mod files_and_names {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        use super::super::*;
        use super::transport;

        /// A fresh, unique folder under the system temp folder, removed on drop.
        struct TempDir(PathBuf);

        impl TempDir {
            fn new() -> Self {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let path = std::env::temp_dir().join(format!(
                    "shoal-identity-test-{}-{nanos}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir(&path).unwrap();
                Self(path)
            }
        }

        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }

        #[test]
        fn pem_files_round_trip() {
            let dir = TempDir::new();
            let ca = MeshCa::generate("round trip").unwrap();
            let ca_dir = dir.0.join("ca");
            ca.save(&ca_dir).unwrap();

            let loaded = MeshCa::load(&ca_dir).unwrap();
            assert!(loaded.can_issue());
            assert_eq!(loaded.cert_pem(), ca.cert_pem());
            assert_eq!(loaded.key_pem(), ca.key_pem());
            let trust_only = MeshCa::load_cert(ca_dir.join(MeshCa::CERT_FILE)).unwrap();
            assert!(!trust_only.can_issue());
            assert!(trust_only.key_pem().is_none());

            // Saving over an existing CA is refused and names the file.
            let err = ca.save(&ca_dir).unwrap_err();
            assert!(
                matches!(&err, Error::Io { path, .. } if path.starts_with(&ca_dir)),
                "{err}"
            );

            let identity = loaded.issue("orders").unwrap();
            let cert_path = dir.0.join("orders").join("node.pem");
            let key_path = dir.0.join("orders").join("node.key");
            identity.save(&cert_path, &key_path).unwrap();
            identity.save(&cert_path, &key_path).unwrap(); // overwriting is fine
            let back = Identity::load(&cert_path, &key_path).unwrap();
            assert_eq!(back.service(), Some("orders"));
            assert_eq!(back.cert_pem(), identity.cert_pem());
            assert_eq!(back.key_pem(), identity.key_pem());
            // The reloaded identity still works with the (trust-only) CA.
            server_config(&back, &trust_only, transport()).unwrap();
            client_config(&back, &trust_only, transport()).unwrap();

            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                for key in [ca_dir.join(MeshCa::KEY_FILE), key_path] {
                    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
                }
            }

            // A CA folder without ca.key loads as trust-only.
            std::fs::remove_file(ca_dir.join(MeshCa::KEY_FILE)).unwrap();
            let trust_only = MeshCa::load(&ca_dir).unwrap();
            let err = trust_only.issue("orders").unwrap_err();
            assert!(err.to_string().contains("without its private key"), "{err}");

            // Missing files are reported with their path.
            let missing = dir.0.join("nowhere");
            match MeshCa::load(&missing).unwrap_err() {
                Error::Io { path, .. } => assert_eq!(path, missing.join(MeshCa::CERT_FILE)),
                other => panic!("unexpected error {other}"),
            }
        }

        #[test]
        fn garbage_pem_gives_a_readable_identity_error() {
            let ca = MeshCa::generate("garbage").unwrap();
            let good = ca.issue("orders").unwrap();
            let good_cert = good.cert_pem();
            let cases = [
                ("not a pem at all", good.key_pem()),
                ("", good.key_pem()),
                (
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    good.key_pem(),
                ),
                (good_cert.as_str(), "garbage".to_owned()),
                (good_cert.as_str(), ca.issue("orders").unwrap().key_pem()),
            ];
            for (cert, key) in cases {
                match Identity::from_pem(cert, &key) {
                    Err(Error::Identity(msg)) => {
                        assert!(!msg.is_empty());
                        eprintln!("{msg}");
                    }
                    other => panic!("expected an identity error, got {other:?}"),
                }
            }
            assert!(matches!(
                MeshCa::from_pem("garbage"),
                Err(Error::Identity(_))
            ));
            // A node certificate is not a CA.
            let err = MeshCa::from_pem(&good.cert_pem()).unwrap_err();
            assert!(err.to_string().contains("not a CA"), "{err}");
            // A CA key that belongs to another CA is refused.
            let other = MeshCa::generate("other").unwrap();
            let err =
                MeshCa::from_pem_with_key(&ca.cert_pem(), &other.key_pem().unwrap()).unwrap_err();
            assert!(err.to_string().contains("does not belong"), "{err}");
        }

        #[test]
        fn service_names_are_validated() {
            let ca = MeshCa::generate("names").unwrap();
            for good in ["a", "orders", "order-service-2", &"x".repeat(63)] {
                assert_eq!(ca.issue(good).unwrap().service(), Some(good));
            }
            for bad in [
                "",
                "Orders",
                "or.ders",
                "or_ders",
                "-orders",
                "orders-",
                &"x".repeat(64),
            ] {
                match ca.issue(bad) {
                    Err(Error::Identity(msg)) => assert!(msg.contains("service name"), "{msg}"),
                    other => panic!("`{bad}` should be refused, got {other:?}"),
                }
            }
        }

        #[test]
        fn debug_never_prints_private_keys() {
            let ca = MeshCa::generate("debug").unwrap();
            let identity = ca.issue("orders").unwrap();
            let key_body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
            let ca_debug = format!("{ca:?}");
            let id_debug = format!("{identity:?}");
            assert!(
                !ca_debug.contains(&key_body(&ca.key_pem().unwrap())),
                "{ca_debug}"
            );
            assert!(
                !id_debug.contains(&key_body(&identity.key_pem())),
                "{id_debug}"
            );
            assert!(ca_debug.contains("debug"), "{ca_debug}");
            assert!(id_debug.contains("orders"), "{id_debug}");
        }

        #[test]
        fn issued_certificates_have_the_mesh_names() {
            let ca = MeshCa::generate("names").unwrap();
            let identity = ca.issue("orders").unwrap();
            let leaf = &identity.cert_chain()[0];
            let fields = identity::dns_names_for_tests(leaf);
            assert_eq!(fields, vec!["shoal.mesh", "orders.svc.shoal.mesh"]);
        }
    }
}
