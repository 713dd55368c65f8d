//! Handshakes between real QUIC endpoints: who is accepted, who is refused, and what each
//! side learns about the other.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Instant;

use tokio::time::timeout;

use rustls::RootCertStore;

use super::*;
use crate::identity::{CertSerial, Identity, MeshCa, Revocations};

mod live_changes;

/// A root store holding only `ca`.
fn roots(ca: &MeshCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    Arc::new(roots)
}

/// The service the peer's certificate names, as the handshake reads it.
fn peer_service(conn: &quinn::Connection) -> Option<String> {
    peer_certificate_info(conn).and_then(|info| info.service)
}

const LOCALHOST: &str = "127.0.0.1:0";
const PROMPT: Duration = Duration::from_secs(5);

/// A node's transport settings, plus the bidirectional streams these tests echo on (a node
/// allows none: its connections carry one unidirectional stream each way).
fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport =
        super::transport(Duration::from_millis(500), Duration::from_secs(2), false).unwrap();
    transport.max_concurrent_bidi_streams(16u32.into());
    Arc::new(transport)
}

/// The TLS material of a node that presents `identity` and trusts `ca`.
fn live(identity: &Identity, ca: &MeshCa) -> LiveTls {
    LiveTls::new(identity.clone(), vec![ca.clone()], Revocations::new()).unwrap()
}

fn server(identity: &Identity, ca: &MeshCa) -> (quinn::Endpoint, SocketAddr) {
    let config = server_config(&live(identity, ca), transport()).unwrap();
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
        .with_root_certificates(roots(trusts));
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
    let config = client_config(&live(&billing, &ca), transport()).unwrap();

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

    echo(&conn).await;
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
    let err = LiveTls::new(intruder.clone(), vec![ca.clone()], Revocations::new()).unwrap_err();
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
    let config = client_config(&live(&ca.issue("billing").unwrap(), &ca), transport()).unwrap();

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
    let config = client_config(&live(&client_id, &trust_only), transport()).unwrap();
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
    let err = super::transport(Duration::from_millis(500), Duration::MAX, false).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Sends `ping` on a new stream and expects it back.
async fn echo(conn: &quinn::Connection) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    let echoed = timeout(PROMPT, recv.read_to_end(64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"ping");
}
