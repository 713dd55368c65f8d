//! The Shoal handshake over a fresh TLS connection: each side writes its hello first, then
//! reads the other's, so neither waits on the other. The hello must speak this protocol
//! version, come from another node, and claim the service its certificate names.

use bytes::BytesMut;
use shoal_proto::{Frame, Hello, Limits, NodeId, PROTOCOL_VERSION, codec};
use tokio::io::AsyncReadExt;

use crate::identity::CertificateInfo;
use crate::tls;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HandshakeError {
    /// The TLS handshake failed (a wrong certificate, a foreign CA, ...).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        addr: std::net::SocketAddr,
        reason: String,
    },
    /// Nobody answered in time.
    #[error("no answer from {0}")]
    NoAnswer(std::net::SocketAddr),
    /// The address could not be dialled.
    #[error("cannot dial {addr}: {reason}")]
    Dial {
        addr: std::net::SocketAddr,
        reason: String,
    },
    /// The stream broke, or the first frame was not a hello.
    #[error("{0}")]
    Stream(String),
    /// No hello in time.
    #[error("no hello in time")]
    Timeout,
    /// An incoming connection did not finish its TLS handshake in time.
    #[error("TLS handshake with {0} not finished in time")]
    TlsTimeout(std::net::SocketAddr),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol {peer}, this node {PROTOCOL_VERSION}")]
    Version { peer: u16 },
    /// The node dialled its own address (a peer list naming every node, itself included).
    #[error("connected to itself")]
    SelfConnection,
    /// The hello claims another service than the certificate names.
    #[error("peer claims service `{claimed}` but its certificate is for `{certified}`")]
    ServiceMismatch { claimed: String, certified: String },
    /// The certificate names no service.
    #[error("peer certificate names no service")]
    NoService,
}

/// A connection whose hellos were exchanged and checked.
pub(crate) struct Shaken {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
    pub(crate) hello: Hello,
    /// The service the peer's certificate names (its hello claims the same): the identity
    /// every authorization decision about this peer uses.
    pub(crate) service: String,
    /// What the peer's certificate says (service, serial, validity), parsed once here: the
    /// certificate tasks look at it for as long as the connection lives
    /// (`cert_lifecycle`), without parsing the certificate again.
    pub(crate) certificate: CertificateInfo,
    /// Bytes read after the hello.
    pub(crate) rest: BytesMut,
}

/// Exchanges hellos on `conn` and checks the peer's.
pub(crate) async fn exchange(
    conn: &quinn::Connection,
    ours: Hello,
    me: NodeId,
    limits: &Limits,
) -> Result<Shaken, HandshakeError> {
    let stream =
        |e: &dyn std::fmt::Display, what: &str| HandshakeError::Stream(format!("{what}: {e}"));
    let mut send = conn
        .open_uni()
        .await
        .map_err(|e| stream(&e, "open stream"))?;
    let mut buf = BytesMut::new();
    codec::encode(&Frame::Hello(ours), limits, &mut buf)
        .map_err(|e| HandshakeError::Stream(e.to_string()))?;
    send.write_all(&buf)
        .await
        .map_err(|e| stream(&e, "send hello"))?;
    let mut recv = conn
        .accept_uni()
        .await
        .map_err(|e| stream(&e, "accept stream"))?;
    let mut rest = BytesMut::with_capacity(4096);
    let hello = loop {
        match codec::decode(&mut rest, limits) {
            Ok(Some(Frame::Hello(hello))) => break hello,
            Ok(Some(other)) => {
                return Err(HandshakeError::Stream(format!(
                    "expected hello, got {other:?}"
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(HandshakeError::Stream(format!("bad hello: {e}"))),
        }
        match recv.read_buf(&mut rest).await {
            Ok(0) => return Err(HandshakeError::Stream("stream closed before hello".into())),
            Ok(_) => {}
            Err(e) => return Err(stream(&e, "read hello")),
        }
    };
    let (service, certificate) = check(conn, &hello, me)?;
    Ok(Shaken {
        send,
        recv,
        hello,
        service,
        certificate,
        rest,
    })
}

/// Checks a peer's hello: version, not ourselves, and the service its certificate names.
/// Returns that service and what the certificate says.
fn check(
    conn: &quinn::Connection,
    hello: &Hello,
    me: NodeId,
) -> Result<(String, CertificateInfo), HandshakeError> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            peer: hello.protocol_version,
        });
    }
    if hello.node_id == me {
        return Err(HandshakeError::SelfConnection);
    }
    let Some(info) = tls::peer_certificate_info(conn) else {
        return Err(HandshakeError::NoService);
    };
    match info.service.clone() {
        Some(certified) if certified == hello.service => Ok((certified, info)),
        Some(certified) => Err(HandshakeError::ServiceMismatch {
            claimed: hello.service.clone(),
            certified,
        }),
        None => Err(HandshakeError::NoService),
    }
}
