//! Eclipse Zenoh 1.10.2, peer mode, measured beside Shoal in the same process and run.
//!
//! # Variants
//!
//! Every row name starts with one of [`VARIANTS`]:
//! * `zenoh-tcp` — TCP link, Zenoh's defaults otherwise (QoS on, adaptive batching).
//! * `zenoh-tcp-ll` — TCP with `transport/unicast/lowlatency=true` and
//!   `transport/unicast/qos/enabled=false` (low latency needs QoS off), Zenoh's recommended
//!   configuration for latency. The low-latency transport does not fragment, so messages
//!   must fit one 65,535-byte batch, and it is not meant for throughput.
//! * `zenoh-quic`, `zenoh-quic-ll` — the same over QUIC, with **mutual** TLS like Shoal and
//!   the raw quinn floor: a fresh rcgen CA ([`crate::certs`]), the listener presents the
//!   `server` leaf, the connector the `client` leaf, `enable_mtls=true`; the PEMs are passed
//!   inline (`*_base64` keys), so no file is written.
//!
//! # Method
//!
//! * `zenoh-request` ([`request`]): put/subscriber ping-pong exactly like Zenoh's
//!   `z_ping`/`z_pong` examples (Zenoh's latency method; its queryables are not its
//!   fastest request path): ping puts on one key with `express(true)` and
//!   `CongestionControl::Block`, pong's subscriber callback puts the sample back on another
//!   key, ping's subscriber receives it.
//! * `zenoh-publish` ([`publish`]): one-way publish → subscriber latency to 1 and 8
//!   subscriber sessions, measured as [`crate::pubsub`] measures Shoal (shared clock, stamp
//!   in the payload, closed loop on an untimed ack from every subscriber).
//! * `zenoh-throughput` ([`throughput`]): one publisher putting as fast as it can
//!   (`CongestionControl::Block`, i.e. reliable and never dropping, no express so that
//!   Zenoh batches), one subscriber counting what **arrives** in its callback.
//!
//! # Threads and runtimes
//!
//! Zenoh runs its own process-wide tokio runtimes (`app`, `acc`, `tx`, `net` with one worker
//! thread each, `rx` with two) shared by every session of the process, and its blocking
//! calls (`block_in_place`) **panic inside a tokio `current_thread` runtime** — which is what
//! the harness gives each side ([`crate::runtime`]); with the low-latency transport even a
//! `put` does. So each side's Zenoh work runs on a plain OS thread started from the side's
//! thread (it inherits the side's CPU pinning) with Zenoh's synchronous API
//! ([`::zenoh::Wait`]), as `z_ping`/`z_pong` do; the harness's runtime thread only waits for
//! it. Zenoh's own runtime threads are started once per process from an unpinned thread
//! (`start_zenoh_runtime`) so they float over all CPUs instead of inheriting one side's
//! pin. Callbacks (pong, subscribers) run on Zenoh's `rx` threads.
//!
//! # Nothing leaves the machine
//!
//! Every session: `mode=peer`, `scouting/multicast/enabled=false` (no multicast socket, no
//! group joined), `scouting/gossip/enabled=false`, `adminspace/enabled=false`, listen and
//! connect endpoints explicit `tcp/127.0.0.1:P` / `quic/127.0.0.1:P`, connecting sockets bound
//! to 127.0.0.1 too (`#bind=127.0.0.1:0`; Zenoh's QUIC client would bind `0.0.0.0`), and
//! connecting sessions listen on nothing (`listen/endpoints=[]`; Zenoh's peer default would
//! be `tcp/[::]:0`).
//! Only the TCP and QUIC links are compiled in. Listening ports are picked by binding port 0
//! on 127.0.0.1 and releasing it just before Zenoh binds it.

pub mod publish;
pub mod request;
mod threads;
pub mod throughput;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use ::zenoh::handlers::FifoChannelHandler;
use ::zenoh::pubsub::{Publisher, Subscriber};
use ::zenoh::sample::Sample;
use ::zenoh::{Config, Session, Wait};
use base64::Engine as _;

pub(crate) use self::threads::{close_all, on_plain_thread, run_ready, serve, start_zenoh_runtime};
use crate::certs;
use crate::error::{BenchError, BenchResult};

/// Zenoh version measured (pinned in `benches/Cargo.toml`).
pub const VERSION: &str = "1.10.2";

/// Configuration shared by every scenario's `setup` line.
macro_rules! common_setup {
    () => {
        "zenoh 1.10.2 peer mode, multicast and gossip scouting off, explicit 127.0.0.1 \
         endpoints; tcp = defaults (QoS on, batching), ll = transport/unicast/lowlatency=true \
         + qos off; quic = mutual TLS (rcgen CA); sync API (zenoh::Wait) on plain threads \
         pinned per --placement (zenoh panics in tokio current_thread runtimes), zenoh's own \
         runtime pool (app/acc/tx/net 1 thread, rx 2) shared by both sides, unpinned"
    };
}

/// `setup` of `zenoh-request`.
pub const REQUEST_SETUP: &str = concat!(
    common_setup!(),
    "; put/subscriber ping-pong as z_ping/z_pong: express(true), CongestionControl::Block, \
     pong replies from its subscriber callback"
);
/// `setup` of `zenoh-publish`.
pub const PUBLISH_SETUP: &str = concat!(
    common_setup!(),
    "; one session per subscriber, publisher express(true) + CongestionControl::Block, \
     each subscriber callback records then acks (ack not timed)"
);
/// `setup` of `zenoh-throughput`.
pub const THROUGHPUT_SETUP: &str = concat!(
    common_setup!(),
    "; tcp and quic without lowlatency (it cannot fragment 64 KiB and is not for \
     throughput), reliable CongestionControl::Block, no express (batching), counted in the \
     subscriber callback"
);

/// Which Zenoh link a variant uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// `tcp/127.0.0.1:P`.
    Tcp,
    /// `quic/127.0.0.1:P`, mutual TLS.
    Quic,
}

impl Link {
    /// Endpoint scheme, e.g. `"tcp"`.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
        }
    }

    /// The endpoint to listen on `port` of 127.0.0.1, e.g. `tcp/127.0.0.1:7447`.
    pub fn endpoint(self, port: u16) -> String {
        format!("{}/127.0.0.1:{port}", self.scheme())
    }

    /// The endpoint to connect to `port` of 127.0.0.1 **from** 127.0.0.1, e.g.
    /// `quic/127.0.0.1:7447#bind=127.0.0.1:0` (without `bind`, Zenoh's QUIC client socket is
    /// bound to `0.0.0.0`).
    pub fn connect_endpoint(self, port: u16) -> String {
        format!("{}#bind=127.0.0.1:0", self.endpoint(port))
    }
}

/// One Zenoh configuration measured: a link and whether the low-latency transport is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Row name prefix, e.g. `"zenoh-tcp-ll"`.
    pub name: &'static str,
    /// The link.
    pub link: Link,
    /// `transport/unicast/lowlatency=true` and `qos/enabled=false` when set.
    pub low_latency: bool,
}

/// `zenoh-tcp`: TCP, Zenoh's default transport.
pub const TCP: Variant = Variant {
    name: "zenoh-tcp",
    link: Link::Tcp,
    low_latency: false,
};
/// `zenoh-tcp-ll`: TCP, low-latency transport, QoS off.
pub const TCP_LL: Variant = Variant {
    name: "zenoh-tcp-ll",
    link: Link::Tcp,
    low_latency: true,
};
/// `zenoh-quic`: QUIC with mutual TLS, Zenoh's default transport.
pub const QUIC: Variant = Variant {
    name: "zenoh-quic",
    link: Link::Quic,
    low_latency: false,
};
/// `zenoh-quic-ll`: QUIC with mutual TLS, low-latency transport, QoS off.
pub const QUIC_LL: Variant = Variant {
    name: "zenoh-quic-ll",
    link: Link::Quic,
    low_latency: true,
};
/// Every variant, in row order.
pub const VARIANTS: [Variant; 4] = [TCP, TCP_LL, QUIC, QUIC_LL];

/// What a session does on the network: listen on one port, or connect to some (and listen
/// on nothing).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role<'a> {
    /// Listen on this 127.0.0.1 port.
    Listen(u16),
    /// Connect to these 127.0.0.1 ports.
    Connect(&'a [u16]),
}

/// The PEMs of one run's throw-away PKI, base64-encoded as Zenoh's `*_base64` TLS keys
/// expect.
pub(crate) struct Tls {
    ca: String,
    listen_cert: String,
    listen_key: String,
    connect_cert: String,
    connect_key: String,
}

impl Tls {
    /// A fresh CA with a `server` leaf (for listeners) and a `client` leaf (for connectors).
    pub(crate) fn generate() -> BenchResult<Self> {
        let pki = certs::generate_pki()?;
        let b64 = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
        Ok(Self {
            ca: b64(pki.ca.cert_pem()),
            listen_cert: b64(pki.server.cert_pem()),
            listen_key: b64(pki.server.key_pem()),
            connect_cert: b64(pki.client.cert_pem()),
            connect_key: b64(pki.client.key_pem()),
        })
    }
}

impl Variant {
    /// The session configuration of this variant for `role` (`tls` is used by QUIC only).
    pub(crate) fn config(&self, role: Role<'_>, tls: &Tls) -> BenchResult<Config> {
        let quote = |s: &str| format!("\"{s}\"");
        let (listen, connect) = match role {
            Role::Listen(port) => (vec![self.link.endpoint(port)], Vec::new()),
            Role::Connect(ports) => (
                Vec::new(),
                ports
                    .iter()
                    .map(|&p| self.link.connect_endpoint(p))
                    .collect(),
            ),
        };
        let list = |endpoints: Vec<String>| {
            let quoted: Vec<String> = endpoints.iter().map(|e| quote(e)).collect();
            format!("[{}]", quoted.join(","))
        };
        let (listen, connect) = (list(listen), list(connect));
        let mut settings: Vec<(&str, String)> = vec![
            ("mode", quote("peer")),
            ("scouting/multicast/enabled", "false".into()),
            ("scouting/gossip/enabled", "false".into()),
            ("adminspace/enabled", "false".into()),
            ("timestamping/enabled", "false".into()),
            ("listen/endpoints", listen),
            ("connect/endpoints", connect),
            // One attempt, and a failed connect fails `open` instead of retrying forever.
            ("connect/timeout_ms", "0".into()),
            ("connect/exit_on_failure", "true".into()),
            ("transport/unicast/lowlatency", self.low_latency.to_string()),
            (
                "transport/unicast/qos/enabled",
                (!self.low_latency).to_string(),
            ),
        ];
        if self.link == Link::Quic {
            settings.extend([
                (
                    "transport/link/tls/root_ca_certificate_base64",
                    quote(&tls.ca),
                ),
                (
                    "transport/link/tls/listen_certificate_base64",
                    quote(&tls.listen_cert),
                ),
                (
                    "transport/link/tls/listen_private_key_base64",
                    quote(&tls.listen_key),
                ),
                ("transport/link/tls/enable_mtls", "true".into()),
                (
                    "transport/link/tls/connect_certificate_base64",
                    quote(&tls.connect_cert),
                ),
                (
                    "transport/link/tls/connect_private_key_base64",
                    quote(&tls.connect_key),
                ),
            ]);
        }
        let mut config = Config::default();
        for (key, value) in &settings {
            config
                .insert_json5(key, value)
                .map_err(zenoh_err(format!("zenoh config {key}")))?;
        }
        Ok(config)
    }
}

/// Maps a Zenoh error (a boxed `dyn Error`, which is not itself an `Error`) to a
/// [`BenchError`] saying what failed.
pub(crate) fn zenoh_err(what: impl std::fmt::Display) -> impl FnOnce(::zenoh::Error) -> BenchError {
    move |e| BenchError::msg(format!("{what}: {e}"))
}

/// Opens a session, as a clear error if Zenoh refuses (bad configuration, port taken,
/// peer unreachable).
pub(crate) fn open(config: Config) -> BenchResult<Session> {
    ::zenoh::open(config)
        .wait()
        .map_err(zenoh_err("zenoh failed to open session"))
}

/// `n` distinct free ports on 127.0.0.1 for `link` (TCP or UDP): all bound at once on port
/// 0, then released for Zenoh to bind.
pub(crate) fn free_ports(link: Link, n: usize) -> BenchResult<Vec<u16>> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    match link {
        Link::Tcp => {
            let held = (0..n)
                .map(|_| TcpListener::bind(any))
                .collect::<Result<Vec<_>, _>>()?;
            held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
        }
        Link::Quic => {
            let held = (0..n)
                .map(|_| UdpSocket::bind(any))
                .collect::<Result<Vec<_>, _>>()?;
            held.iter().map(|s| Ok(s.local_addr()?.port())).collect()
        }
    }
}

/// How long setting up sessions and routes may take.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a handshake message is repeated until it gets through.
pub(crate) const RETRY_PERIOD: Duration = Duration::from_millis(50);
/// How long one measured message may wait for its reply or acks before the run fails.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A subscriber delivering into Zenoh's default FIFO channel.
pub(crate) type Inbox = Subscriber<FifoChannelHandler<Sample>>;

/// First 8 bytes of a sample as the little-endian id the request and ack messages carry.
pub(crate) fn sample_id(sample: &Sample) -> Option<u64> {
    let bytes = sample.payload().to_bytes();
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Waits until `inbox` delivered `n` samples carrying `id`, skipping samples with other ids
/// (stale handshake replies). `Ok(false)` if `until` passed first.
pub(crate) fn await_ids(inbox: &Inbox, id: u64, n: usize, until: Instant) -> BenchResult<bool> {
    let mut got = 0;
    while got < n {
        match inbox
            .recv_deadline(until)
            .map_err(zenoh_err("zenoh receive"))?
        {
            Some(sample) if sample_id(&sample) == Some(id) => got += 1,
            Some(_) => {}
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Ids of handshake messages count down from here; measured messages count up from 0.
const HANDSHAKE_ID: u64 = u64::MAX;

/// Repeats a handshake message (`len` bytes, id in the first 8) through `publisher` until
/// `n` replies to one of them arrive in `inbox`: then routes are known both ways (a put to a
/// key nobody is known to subscribe to yet is silently dropped, so the first measured
/// message must not go out before this).
pub(crate) fn handshake(
    publisher: &Publisher<'_>,
    inbox: &Inbox,
    n: usize,
    len: usize,
) -> BenchResult<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut round = 0u64;
    while Instant::now() < deadline {
        let id = HANDSHAKE_ID - round;
        publisher
            .put(id_message(id, len))
            .wait()
            .map_err(zenoh_err("zenoh handshake put"))?;
        if await_ids(inbox, id, n, Instant::now() + RETRY_PERIOD)? {
            return Ok(());
        }
        round += 1;
    }
    Err(BenchError::msg(format!(
        "zenoh: no {n} replies to a handshake within {SETUP_TIMEOUT:?}"
    )))
}

/// A message of `len` bytes (at least 8) starting with `id`.
pub(crate) fn id_message(id: u64, len: usize) -> Vec<u8> {
    let mut message = vec![0xA5; len.max(8)];
    message[..8].copy_from_slice(&id.to_le_bytes());
    message
}

#[cfg(test)]
mod tests;
