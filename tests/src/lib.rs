//! Test support shared by the integration tests.
//!
//! - [`Mesh`]: one mesh CA and helpers to start nodes of a service with static peers.
//! - [`wait_instances`], [`next_event`]: bounded waits on a node.
//! - [`RawPeer`]: a bare QUIC client that presents a valid mesh certificate and speaks Shoal
//!   frames directly, so tests can put arbitrary bytes on the wire.
//! - [`UdpRelay`]: a loopback relay a test can cut, to lose a connection's packets.
//! - [`child`]: the test binary run again as a child process, to be killed with SIGKILL.
//! - [`postgres`]: the throwaway PostgreSQL cluster of the PostgreSQL outbox tests.
//!
//! Everything listens and dials on 127.0.0.1 only. Every wait is bounded.
#![allow(clippy::unwrap_used)]

pub mod child;
pub mod postgres;
mod udp_relay;
pub use udp_relay::UdpRelay;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shoal::{Identity, MeshCa, Message, MessageId, Node, NodeBuilder, NodeEvent};
use shoal_proto::{
    Envelope, Frame, Head, Hello, Item, Limits, Messages, NodeId, PROTOCOL_VERSION, To, codec,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

/// The bound on waits that should succeed promptly (connections, acks, events).
pub const WAIT: Duration = Duration::from_secs(10);

/// The TLS server name every node certificate carries and clients dial with.
pub const SERVER_NAME: &str = "shoal.mesh";

/// A loopback address with a free port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One mesh: a CA that issues every node's certificate.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The mesh CA (with its key, so it can issue).
    pub ca: MeshCa,
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new()
    }
}

impl Mesh {
    /// A fresh mesh with a newly generated CA.
    pub fn new() -> Self {
        Self {
            ca: MeshCa::generate("shoal test mesh").unwrap(),
        }
    }

    /// A certificate for `service` from this mesh's CA.
    pub fn identity(&self, service: &str) -> Identity {
        self.ca.issue(service).unwrap()
    }

    /// A builder for a node of `service` with an identity from this mesh, trusting it, and
    /// listening on 127.0.0.1 (the default).
    pub fn builder(&self, service: &str) -> NodeBuilder {
        Node::builder(service)
            .listen(loopback())
            .identity(self.identity(service))
            .trust(self.ca.clone())
    }

    /// Starts a node of `service` that dials the given static peers.
    pub async fn start(&self, service: &str, peers: &[SocketAddr]) -> Node {
        self.start_with(self.builder(service), peers).await
    }

    /// Starts a node from `builder` (see [`Mesh::builder`]) with the given static peers.
    pub async fn start_with(&self, builder: NodeBuilder, peers: &[SocketAddr]) -> Node {
        timeout(WAIT, builder.peers(peers.iter().copied()).start())
            .await
            .expect("node start hung")
            .expect("node failed to start")
    }
}

/// Receives `n` message ids from `seen` (at most [`WAIT`] in all), as handlers report what
/// they handled; panics on a repeat, or when fewer came.
pub async fn handled_once(
    seen: &mut mpsc::UnboundedReceiver<MessageId>,
    n: usize,
) -> HashSet<MessageId> {
    let mut ids = HashSet::new();
    timeout(WAIT, async {
        while ids.len() < n {
            let id = seen.recv().await.expect("the handler is alive");
            assert!(ids.insert(id), "{id} handled twice");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} handled in {WAIT:?}", ids.len()));
    ids
}

/// Waits until `node` sees at least `count` live instances of `service`; panics after
/// [`WAIT`].
pub async fn wait_instances(node: &Node, service: &str, count: usize) {
    node.wait_for_instances(service, count, WAIT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} did not see {count} instance(s) of `{service}`: {e}; peers: {:?}",
                node.service(),
                node.peers()
            )
        });
}

/// Waits (at most `within`) for the next event on `events` that `pred` accepts, skipping
/// others. Panics on timeout; a lagged receiver keeps reading.
pub async fn next_event(
    events: &mut broadcast::Receiver<NodeEvent>,
    within: Duration,
    mut pred: impl FnMut(&NodeEvent) -> bool,
) -> NodeEvent {
    let fut = async {
        loop {
            match events.recv().await {
                Ok(event) if pred(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    timeout(within, fut)
        .await
        .expect("the expected node event did not come in time")
}

/// Waits (at most [`WAIT`]) until `pred` holds for `node`, checking again after each of its
/// events (peers up and down, subscriptions announced and withdrawn). Panics on timeout.
pub async fn until(node: &Node, what: &str, mut pred: impl FnMut(&Node) -> bool) {
    let mut events = node.events();
    let fut = async {
        while !pred(node) {
            if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
                panic!("event channel closed while waiting until {what}");
            }
        }
    };
    if timeout(WAIT, fut).await.is_err() {
        panic!("not within {WAIT:?}: {what}");
    }
}

/// How many live instances each audience of `topic` has, as `node` knows them.
pub fn audience_sizes(node: &Node, topic: &str) -> Vec<usize> {
    node.subscribers(topic)
        .iter()
        .map(|(_, n)| n.len())
        .collect()
}

/// A node id nobody else uses (random, from a fresh message id).
pub fn fresh_node_id() -> NodeId {
    NodeId::from_u128(Message::command("x", "").id().as_u128())
}

/// A run of one message (`env`) to its handler, numbered `seq`, as a node would send it.
pub fn deliver(seq: u64, env: &Envelope) -> Frame {
    Frame::Messages(Box::new(Messages {
        first_seq: seq,
        head: Head::of(env, To::Handler, true, false),
        items: vec![Item::of(env)],
    }))
}

/// One group's copy (`None`: an every-instance copy) of the event `env`, numbered `seq`.
pub fn publish(seq: u64, env: &Envelope, group: Option<&str>, reliable: bool) -> Frame {
    let to = group.map_or(To::Instance, |g| To::Group(g.into()));
    Frame::Messages(Box::new(Messages {
        first_seq: seq,
        head: Head::of(env, to, reliable, false),
        items: vec![Item::of(env)],
    }))
}

/// Whether `frame` acknowledges message `seq`.
pub fn acks(frame: &Frame, seq: u64) -> bool {
    matches!(frame, Frame::Ack(ack) if ack.ranges.iter().any(|r| r.iter().any(|s| s == seq)))
}

/// Whether `frame` refuses message `seq`.
pub fn nacks(frame: &Frame, seq: u64) -> bool {
    matches!(frame, Frame::Nack(nack) if nack.seq == seq)
}

/// A valid delivery envelope for `name` with a fresh id, as a node would send it (attempt 1).
pub fn envelope(name: &str, payload: &'static [u8]) -> Envelope {
    let mut env = Message::command(name, payload).envelope().clone();
    env.attempt = 1;
    env
}

/// A rustls/quinn client configuration that trusts `ca` and presents `identity` (or no client
/// certificate at all), speaking Shoal's ALPN. Built directly from PEM, bypassing the node's
/// own start-up checks, so tests can act as a foreign or broken client.
pub fn client_config(ca: &MeshCa, identity: Option<&Identity>) -> quinn::ClientConfig {
    client_config_with_alpn(ca, identity, shoal_proto::ALPN)
}

/// [`client_config`] offering the ALPN protocol `alpn` instead of Shoal's.
pub fn client_config_with_alpn(
    ca: &MeshCa,
    identity: Option<&Identity>,
    alpn: &[u8],
) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some(identity) => {
            let cert_pem = identity.cert_pem();
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem().as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    config.transport_config(Arc::new(transport));
    config
}

/// A client-only QUIC endpoint on 127.0.0.1.
pub fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client(loopback()).unwrap()
}

/// A hand-driven Shoal connection: a QUIC connection with a valid mesh certificate, on which
/// the test writes whatever bytes it likes and reads the node's frames.
#[derive(Debug)]
pub struct RawPeer {
    /// The client endpoint (kept alive with the connection).
    pub endpoint: quinn::Endpoint,
    /// The QUIC connection to the node.
    pub conn: quinn::Connection,
    /// The node id this client announced.
    pub node_id: NodeId,
    /// The node's hello.
    pub server_hello: Hello,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    limits: Limits,
}

impl RawPeer {
    /// Connects to the node at `addr` with a certificate for `service` from `mesh`, and
    /// exchanges hellos (announcing `service`).
    pub async fn connect(mesh: &Mesh, service: &str, addr: SocketAddr) -> Self {
        let identity = mesh.identity(service);
        Self::connect_as(&mesh.ca, &identity, service, addr)
            .await
            .unwrap()
    }

    /// Connects presenting `identity`, announcing `service` in the hello (which may differ
    /// from the certificate's). Returns an error text if any step fails; bounded by [`WAIT`].
    pub async fn connect_as(
        ca: &MeshCa,
        identity: &Identity,
        service: &str,
        addr: SocketAddr,
    ) -> Result<Self, String> {
        let endpoint = client_endpoint();
        let connecting = endpoint
            .connect_with(client_config(ca, Some(identity)), addr, SERVER_NAME)
            .map_err(|e| format!("connect: {e}"))?;
        let node_id = fresh_node_id();
        let limits = Limits::default();
        let steps = async {
            let conn = connecting.await.map_err(|e| format!("handshake: {e}"))?;
            let mut send = conn.open_uni().await.map_err(|e| format!("open: {e}"))?;
            let hello = Frame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                node_id,
                service: service.to_owned(),
                listen_addrs: Vec::new(),
            });
            let mut out = BytesMut::new();
            codec::encode(&hello, &limits, &mut out).map_err(|e| e.to_string())?;
            send.write_all(&out)
                .await
                .map_err(|e| format!("write hello: {e}"))?;
            let recv = conn
                .accept_uni()
                .await
                .map_err(|e| format!("accept stream: {e}"))?;
            Ok::<_, String>((conn, send, recv))
        };
        let (conn, send, recv) = timeout(WAIT, steps)
            .await
            .map_err(|_| "connection steps timed out".to_owned())??;
        let mut peer = Self {
            endpoint,
            conn,
            node_id,
            server_hello: Hello {
                protocol_version: 0,
                node_id: NodeId::from_u128(0),
                service: String::new(),
                listen_addrs: Vec::new(),
            },
            send,
            recv,
            buf: BytesMut::new(),
            limits,
        };
        match peer.next_frame(WAIT).await? {
            Frame::Hello(hello) => peer.server_hello = hello,
            other => return Err(format!("expected a hello, got {other:?}")),
        }
        Ok(peer)
    }

    /// Encodes `frame` under default limits and writes it.
    pub async fn send_frame(&mut self, frame: &Frame) {
        let limits = self.limits.clone();
        self.send_frame_with(frame, &limits).await;
    }

    /// Encodes `frame` under `limits` (say, more generous than the node's) and writes it.
    pub async fn send_frame_with(&mut self, frame: &Frame, limits: &Limits) {
        let mut out = BytesMut::new();
        codec::encode(frame, limits, &mut out).unwrap();
        self.send_raw(&out).await;
    }

    /// Writes raw bytes on this client's stream.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.send.write_all(bytes))
            .await
            .expect("write hung")
            .expect("write failed");
    }

    /// Writes raw bytes; returns whether the write went through (the node may have closed).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        matches!(timeout(WAIT, self.send.write_all(bytes)).await, Ok(Ok(())))
    }

    /// The next frame from the node, at most `within`. Errors if the stream ends, the
    /// connection fails, the bytes do not decode, or time runs out.
    pub async fn next_frame(&mut self, within: Duration) -> Result<Frame, String> {
        let fut = async {
            loop {
                match codec::decode(&mut self.buf, &self.limits) {
                    Ok(Some(frame)) => return Ok(frame),
                    Ok(None) => {}
                    Err(e) => return Err(format!("undecodable frame from the node: {e}")),
                }
                match self.recv.read_buf(&mut self.buf).await {
                    Ok(0) => return Err("the node finished its stream".to_owned()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read failed: {e}")),
                }
            }
        };
        timeout(within, fut)
            .await
            .unwrap_or_else(|_| Err(format!("no frame within {within:?}")))
    }

    /// Reads frames (at most `max_frames`, within `within`) until `pred` accepts one, which is
    /// returned; panics otherwise. Skipped frames are returned too, in order.
    pub async fn read_until(
        &mut self,
        within: Duration,
        max_frames: usize,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> (Frame, Vec<Frame>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut skipped = Vec::new();
        for _ in 0..max_frames {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .next_frame(left)
                .await
                .unwrap_or_else(|e| panic!("{e}; frames so far: {skipped:?}"));
            if pred(&frame) {
                return (frame, skipped);
            }
            skipped.push(frame);
        }
        panic!("no matching frame among {max_frames}: {skipped:?}");
    }

    /// Waits (at most `within`) until the node closes the connection and returns why.
    pub async fn closed(&self, within: Duration) -> quinn::ConnectionError {
        timeout(within, self.conn.closed())
            .await
            .expect("the node did not close the connection in time")
    }
}
