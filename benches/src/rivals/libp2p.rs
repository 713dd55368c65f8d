//! rust-libp2p, the rival a user picks for a peer-to-peer mesh with libp2p's identities:
//! `request-response` over QUIC, measured beside Shoal in the same run.
//!
//! # Set-up (the same for every scenario)
//!
//! * **Versions**: `libp2p` 0.56 (`libp2p-quic` 0.13 on quinn 0.11 with rustls/ring,
//!   `libp2p-request-response` 0.29, `libp2p-swarm` 0.47), the release every published figure
//!   was measured with; 0.57 is not measured yet.
//! * **Transport**: QUIC v1 only. Each side listens on `/ip4/127.0.0.1/udp/0/quic-v1`; the
//!   client listens too *before* dialling, so that libp2p-quic dials from that loopback
//!   socket instead of binding a fresh `0.0.0.0` one. The client dials the server's listen
//!   address explicitly (peer id and address handed over in-process): no mDNS, Kademlia,
//!   identify, autonat, relay, upnp or DNS is compiled in. TLS 1.3 with libp2p-tls
//!   certificates made from a fresh ed25519 identity per side (libp2p's own mutual
//!   authentication, in place of the harness's PKI). QUIC settings are libp2p-quic's
//!   defaults (path MTU discovery on, 10 s idle timeout, 5 s keep-alive).
//! * **Protocol**: [`PROTOCOL`], one new QUIC stream per request (that is how
//!   request-response works), the client writes the request and finishes the stream, the
//!   server answers on it. Frames are [`RawBytesCodec`]: `u32` big-endian length + raw
//!   bytes, no serialisation format.
//! * **Low latency**: the swarm's substream upgrade protocol is overridden to
//!   multistream-select `V1Lazy`, which the rust-libp2p maintainers recommend for
//!   request-style protocols: with a single protocol the dialer sends its protocol proposal
//!   together with the request instead of waiting one round trip for the confirmation
//!   (the wire format is plain `V1`).
//! * **Runtime**: each swarm is polled on the harness's side threads
//!   ([`crate::runtime::run_pair`]: one tokio `current_thread` runtime per side);
//!   libp2p's tokio executor spawns the connection tasks onto that same runtime.
//!
//! # Scenarios
//!
//! * `libp2p-request` (row [`REQUEST_NAME`]): closed-loop round trip, one request of
//!   `--payload` bytes echoed back by the server's event loop
//!   (`Behaviour::send_response` with the request bytes); a round trip ends when the
//!   client's swarm yields the matching `Message::Response`. The connection is set up
//!   before timing starts.
//! * `libp2p-throughput` (rows `libp2p-p2p-<payload>` for each of [`PAYLOADS`]): point-to-
//!   point throughput. The client keeps [`IN_FLIGHT`] requests of `<payload>` bytes
//!   outstanding, sending a new one for every response; the server answers each with an
//!   empty response (so the bytes flow one way, like `quinn-batch-<payload>`, the row it is
//!   compared with). Counted: responses received by the client in the
//!   [`Schedule`] window, i.e. requests the server handled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use libp2p::core::upgrade::Version;
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, Event, Message, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder};
use tokio::time::Instant;

mod codec;

pub use codec::RawBytesCodec;

use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::measure::{RoundTrip, measure};
use crate::report::LatencyReport;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::throughput::{Schedule, ThroughputReport};

/// Scenario and row name of the closed-loop request/response round trip.
pub const REQUEST_NAME: &str = "libp2p-request";
/// Scenario name of the point-to-point throughput rows (`libp2p-p2p-<payload>`).
pub const THROUGHPUT_NAME: &str = "libp2p-throughput";

/// Configuration shared by both scenarios, printed with their results.
pub const SETUP: &str = "rust-libp2p 0.56 (libp2p-quic 0.13 on quinn 0.11, \
    request-response 0.29): QUIC v1 only, /ip4/127.0.0.1/udp/0/quic-v1 dialled explicitly, \
    libp2p-tls with ed25519 peer ids, one QUIC stream per request, multistream-select \
    V1Lazy (0-RTT protocol negotiation, maintainers' low-latency advice), u32-length-prefixed \
    raw-bytes codec, libp2p-quic defaults otherwise; each swarm polled on the harness's \
    current_thread runtimes (tokio executor)";

/// The request-response protocol name both sides speak.
pub const PROTOCOL: &str = "/shoal-bench/echo/1";

/// Payload sizes of the throughput rows (`--payload` does not apply to them).
pub const PAYLOADS: [usize; 3] = [64, 1024, 65536];

/// Requests the throughput client keeps outstanding. Below request-response's per-connection
/// stream limit (set to twice this, see [`MAX_STREAMS`]) and the swarm's 128 inbound streams
/// negotiating at once, past which libp2p drops new streams.
pub const IN_FLIGHT: usize = 64;

/// request-response's `max_concurrent_streams` (inbound + outbound per connection; default
/// 100). Requests beyond it fail, so it is kept well above [`IN_FLIGHT`].
pub const MAX_STREAMS: usize = 2 * IN_FLIGHT;

/// Largest frame [`RawBytesCodec`] accepts (bounds its buffer).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Every side listens here: loopback, any free UDP port, QUIC v1.
const LISTEN: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

/// Swarm events one side handles while setting up (listen, dial) before giving up.
const MAX_SETUP_EVENTS: u32 = 256;
/// Swarm events the client handles per round trip before giving up on it.
const MAX_EVENTS_PER_REQUEST: u32 = 256;
/// Upper bound on the events any event loop handles in one run (time bounds it first).
const MAX_EVENTS: u64 = 1_000_000_000;
/// How long the client waits for its connection to close cleanly at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The swarm of either side: request-response with [`RawBytesCodec`] as the only behaviour.
type BenchSwarm = Swarm<request_response::Behaviour<RawBytesCodec>>;

/// What the server hands the client: who to dial and where.
#[derive(Debug, Clone)]
struct Server {
    peer: PeerId,
    address: Multiaddr,
}

/// What the server answers a request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The request's own bytes (round-trip scenario).
    Echo,
    /// An empty response (throughput: an acknowledgement, payload flows one way).
    Empty,
}

/// A swarm with a fresh ed25519 identity, QUIC as its only transport, request-response on
/// [`PROTOCOL`] as its only behaviour, `V1Lazy` stream negotiation, and connections kept
/// open for the whole run.
fn new_swarm(config: &BenchConfig) -> BenchResult<BenchSwarm> {
    let behaviour = request_response::Behaviour::with_codec(
        RawBytesCodec,
        [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default().with_max_concurrent_streams(MAX_STREAMS),
    );
    let idle = config.run_timeout;
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_key| behaviour)?
        .with_swarm_config(|swarm| {
            swarm
                .with_substream_upgrade_protocol_override(Version::V1Lazy)
                .with_idle_connection_timeout(idle)
        })
        .build())
}

/// The swarm's next event; its event stream never ends while the swarm lives, so `None` is
/// an error.
async fn next_event(swarm: &mut BenchSwarm) -> BenchResult<SwarmEvent<Event<Bytes, Bytes>>> {
    swarm
        .next()
        .await
        .ok_or_else(|| BenchError::msg("libp2p swarm stopped producing events"))
}

/// Listens on [`LISTEN`] and returns the address libp2p reports once the socket is bound.
async fn listen(swarm: &mut BenchSwarm, deadline: Instant) -> BenchResult<Multiaddr> {
    let addr: Multiaddr = LISTEN.parse()?;
    swarm
        .listen_on(addr)
        .map_err(|e| BenchError::from(e).context("libp2p failed to listen on QUIC"))?;
    let wait = async {
        for _ in 0..MAX_SETUP_EVENTS {
            match next_event(swarm).await? {
                SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(BenchError::from(error).context("libp2p listener failed"));
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(BenchError::msg(format!(
                        "libp2p listener closed before it was bound: {reason:?}"
                    )));
                }
                _ => {}
            }
        }
        Err(BenchError::msg("libp2p listener reported no address"))
    };
    tokio::time::timeout_at(deadline, wait)
        .await
        .map_err(|_| BenchError::msg("libp2p listener not bound before the time limit"))?
}

/// Dials `server` at its announced address and waits for the connection.
async fn connect(swarm: &mut BenchSwarm, server: &Server) -> BenchResult<()> {
    let opts = DialOpts::peer_id(server.peer)
        .addresses(vec![server.address.clone()])
        .build();
    swarm
        .dial(opts)
        .map_err(|e| BenchError::from(e).context("libp2p dial"))?;
    for _ in 0..MAX_SETUP_EVENTS {
        match next_event(swarm).await? {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server.peer => {
                return Ok(());
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(BenchError::from(error).context("libp2p failed to connect"));
            }
            _ => {}
        }
    }
    Err(BenchError::msg("libp2p connection not established"))
}

/// Closes the connection and waits (bounded) until libp2p reports it closed, so the
/// server sees a clean end.
async fn disconnect(swarm: &mut BenchSwarm, peer: PeerId) {
    if swarm.disconnect_peer_id(peer).is_err() {
        return; // Not connected any more.
    }
    let closed = async {
        for _ in 0..MAX_SETUP_EVENTS {
            match swarm.next().await {
                Some(SwarmEvent::ConnectionClosed { .. }) | None => return,
                Some(_) => {}
            }
        }
    };
    // The outcome does not matter: the run is over either way.
    let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
}

/// The server side: listens, announces itself, then answers every request as `reply` says
/// until the client side is done.
async fn serve(
    announce: Announce<Server>,
    shutdown: Shutdown,
    config: BenchConfig,
    reply: Reply,
) -> BenchResult<()> {
    let mut swarm = new_swarm(&config)?;
    let address = listen(&mut swarm, shutdown.deadline()).await?;
    announce.send(Server {
        peer: *swarm.local_peer_id(),
        address,
    })?;
    shutdown
        .run_until(async {
            for _ in 0..MAX_EVENTS {
                if let SwarmEvent::Behaviour(Event::Message {
                    message:
                        Message::Request {
                            request, channel, ..
                        },
                    ..
                }) = next_event(&mut swarm).await?
                {
                    let response = match reply {
                        Reply::Echo => request,
                        Reply::Empty => Bytes::new(),
                    };
                    // Fails only if the request's stream is already gone (client closed or
                    // timed out); the client reports that as its own failure.
                    let _ = swarm.behaviour_mut().send_response(channel, response);
                }
            }
            Ok(())
        })
        .await
}

/// A new client swarm bound to loopback (so its dial reuses that socket) and connected to
/// `server`.
async fn client_swarm(server: &Server, config: &BenchConfig) -> BenchResult<BenchSwarm> {
    let mut swarm = new_swarm(config)?;
    let deadline = Instant::now() + config.run_timeout;
    listen(&mut swarm, deadline).await?;
    connect(&mut swarm, server).await?;
    Ok(swarm)
}

/// Waits for the response to request `id`; any failure of a request or the connection is
/// an error (request-response over QUIC is reliable: nothing is retried).
async fn response_to(swarm: &mut BenchSwarm, id: OutboundRequestId) -> BenchResult<Bytes> {
    for _ in 0..MAX_EVENTS_PER_REQUEST {
        match next_event(swarm).await? {
            SwarmEvent::Behaviour(Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) if request_id == id => return Ok(response),
            event => check_client_event(event)?,
        }
    }
    Err(BenchError::msg(format!(
        "no response to request {id} after {MAX_EVENTS_PER_REQUEST} swarm events"
    )))
}

/// Turns a client-side failure event into an error; other events are fine to skip.
fn check_client_event(event: SwarmEvent<Event<Bytes, Bytes>>) -> BenchResult<()> {
    match event {
        SwarmEvent::Behaviour(Event::OutboundFailure {
            request_id, error, ..
        }) => Err(BenchError::from(error).context(format!("libp2p request {request_id}"))),
        SwarmEvent::ConnectionClosed { cause, .. } => Err(BenchError::msg(format!(
            "libp2p connection closed during the run: {cause:?}"
        ))),
        _ => Ok(()),
    }
}

/// Runs one `libp2p-request` run.
pub fn run_request(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let config = *config;
    if config.payload > MAX_FRAME {
        return Err(BenchError::msg(format!(
            "{REQUEST_NAME}: payload above {MAX_FRAME} bytes"
        )));
    }
    let report = run_pair(
        REQUEST_NAME,
        &config,
        move |announce, shutdown| serve(announce, shutdown, config, Reply::Echo),
        move |server| request_client(server, config),
    )?;
    Ok(vec![report])
}

async fn request_client(server: Server, config: BenchConfig) -> BenchResult<LatencyReport> {
    let mut swarm = client_swarm(&server, &config).await?;
    let payload = Bytes::from(vec![0xA5u8; config.payload]);
    let report = measure(REQUEST_NAME, &config, async |_attempt| {
        let id = swarm
            .behaviour_mut()
            .send_request(&server.peer, payload.clone());
        let reply = response_to(&mut swarm, id).await?;
        if reply.len() != payload.len() {
            return Err(BenchError::msg(format!(
                "{REQUEST_NAME}: echo of {} bytes for a request of {}",
                reply.len(),
                payload.len()
            )));
        }
        Ok(RoundTrip::Done)
    })
    .await;
    disconnect(&mut swarm, server.peer).await;
    report
}

/// Name of the throughput row for `payload`.
pub fn throughput_name(payload: usize) -> String {
    format!("libp2p-p2p-{payload}")
}

/// Runs one `libp2p-throughput` run: a row per payload of [`PAYLOADS`], each compared with
/// `quinn-batch-<payload>`.
pub fn run_throughput(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    let config = *config;
    let mut rows = Vec::new();
    for payload in PAYLOADS {
        let name = throughput_name(payload);
        let window = run_pair(
            &name,
            &config,
            move |announce, shutdown| serve(announce, shutdown, config, Reply::Empty),
            move |server| throughput_client(server, config, payload),
        )?;
        rows.push(
            ThroughputReport::new(name, payload, window)
                .compared_with(format!("quinn-batch-{payload}")),
        );
    }
    Ok(rows)
}

async fn throughput_client(
    server: Server,
    config: BenchConfig,
    payload: usize,
) -> BenchResult<crate::throughput::Window> {
    let mut swarm = client_swarm(&server, &config).await?;
    let body = Bytes::from(vec![0xA5u8; payload]);
    let received = AtomicU64::new(0);
    let schedule = Schedule::starting_now(config.duration);
    let drive = async {
        for _ in 0..IN_FLIGHT {
            swarm
                .behaviour_mut()
                .send_request(&server.peer, body.clone());
        }
        let mut in_flight = IN_FLIGHT;
        for _ in 0..MAX_EVENTS {
            if in_flight == 0 {
                return Ok(());
            }
            match next_event(&mut swarm).await? {
                SwarmEvent::Behaviour(Event::Message {
                    message: Message::Response { .. },
                    ..
                }) => {
                    received.fetch_add(1, Ordering::Relaxed);
                    in_flight -= 1;
                    if !schedule.over() {
                        swarm
                            .behaviour_mut()
                            .send_request(&server.peer, body.clone());
                        in_flight += 1;
                    }
                }
                event => check_client_event(event)?,
            }
        }
        Err(BenchError::msg("throughput client hit its event bound"))
    };
    let (driven, window) = tokio::join!(drive, schedule.sample(&received));
    disconnect(&mut swarm, server.peer).await;
    driven?;
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_scenario_counts_every_round_trip() {
        let rows = run_request(&BenchConfig::quick()).expect("libp2p-request runs");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, REQUEST_NAME);
        assert_eq!(rows[0].count, 300);
        assert!(rows[0].p50 > 0 && rows[0].p50 <= rows[0].max);
        let big = BenchConfig {
            payload: 100_000,
            count: 20,
            warmup: 2,
            ..BenchConfig::quick()
        };
        assert_eq!(run_request(&big).expect("large payload")[0].count, 20);
    }

    #[test]
    fn throughput_scenario_has_a_row_per_payload() {
        let rows = run_throughput(&BenchConfig::quick()).expect("libp2p-throughput runs");
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["libp2p-p2p-64", "libp2p-p2p-1024", "libp2p-p2p-65536"]
        );
        for (row, payload) in rows.iter().zip(PAYLOADS) {
            assert!(row.messages > 0, "{}", row.name);
            assert_eq!(row.payload, payload);
            assert_eq!(
                row.baseline.as_deref(),
                Some(format!("quinn-batch-{payload}").as_str())
            );
        }
    }
}
