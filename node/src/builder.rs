//! [`NodeBuilder`]: configuration with documented defaults, then `start`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_discovery::Discovery;
use shoal_proto::Limits;

use crate::config::Config;
use crate::policy::Policy;
#[cfg(doc)]
use crate::{Error, Node};
use crate::{Identity, MeshCa, RetryPolicy, Revocations};

mod connections;
mod start;

/// Configures and starts a [`Node`]. Every setting has a default suited to services on one
/// LAN; only the identity and the trusted mesh CA are required.
///
/// ```no_run
/// # async fn run(identity: shoal::Identity, mesh_ca: shoal::MeshCa) -> Result<(), shoal::Error> {
/// let node = shoal::Node::builder("invoice")
///     .listen("127.0.0.1:7000".parse().unwrap())
///     .identity(identity)
///     .trust(mesh_ca)
///     .peer("127.0.0.1:7001".parse().unwrap())
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub struct NodeBuilder {
    service: String,
    listen: SocketAddr,
    identity: Option<Identity>,
    trust: Vec<MeshCa>,
    revocations: Revocations,
    peers: Vec<SocketAddr>,
    discovery: Vec<Box<dyn Discovery>>,
    config: Config,
    #[cfg(feature = "outbox")]
    outbox: Option<(
        Arc<dyn crate::outbox::OutboxStore>,
        crate::outbox::RelayOptions,
    )>,
    /// Set by `shoal::testing::TestMesh::builder`: the mesh's fault plan and idle watch.
    #[cfg(feature = "testing")]
    test_hooks: Option<Arc<crate::testing::NodeHooks>>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::MetricsConfig>,
    multicast: Option<crate::MulticastConfig>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("service", &self.service)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("discovery_sources", &self.discovery.len())
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Default interval of QUIC keep-alives (see [`NodeBuilder::liveness`]).
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_millis(250);
    /// Default idle timeout after which a silent peer is dropped (see [`NodeBuilder::liveness`]).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
    /// Default time a connection has for its TLS handshake and hello (see
    /// [`NodeBuilder::handshake_timeout`]).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default cap on incoming connections at once (see [`NodeBuilder::max_connections`]).
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    /// Default cap on incoming connections at once from one IP address (see
    /// [`NodeBuilder::max_connections`]).
    pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
    /// Default rate of new incoming handshakes, per second (see
    /// [`NodeBuilder::handshake_rate`]).
    pub const DEFAULT_HANDSHAKE_RATE: u32 = 100;
    /// Default burst of new incoming handshakes (see [`NodeBuilder::handshake_rate`]).
    pub const DEFAULT_HANDSHAKE_BURST: u32 = 200;
    /// Default time an address whose TLS handshake was refused is refused before TLS (see
    /// [`NodeBuilder::handshake_penalty`]).
    pub const DEFAULT_HANDSHAKE_PENALTY: Duration = Duration::from_secs(5);
    /// Default number of addresses the penalty box holds at most (see
    /// [`NodeBuilder::handshake_penalty`]).
    pub const DEFAULT_HANDSHAKE_PENALTY_CAPACITY: usize = 4096;
    /// Default number of refused TLS handshakes from one address within a second that put
    /// it in the penalty box (see [`NodeBuilder::handshake_penalty_after`]).
    pub const DEFAULT_HANDSHAKE_PENALTY_AFTER: u32 = 10;
    /// Default cap on the bytes waiting to be written to one peer (see
    /// [`NodeBuilder::max_queued_bytes`]).
    pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;
    /// Default cap on the messages of background publishes and sends on their way at once (see
    /// [`NodeBuilder::max_background_publishes`]).
    pub const DEFAULT_MAX_BACKGROUND_PUBLISHES: usize = 4_096;
    /// Default cap on the payload bytes of background messages on their way at once (see
    /// [`NodeBuilder::max_background_bytes`]).
    pub const DEFAULT_MAX_BACKGROUND_BYTES: usize = 64 << 20;

    pub(crate) fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity: None,
            trust: Vec::new(),
            revocations: Revocations::new(),
            peers: Vec::new(),
            discovery: Vec::new(),
            config: Config::default(),
            #[cfg(feature = "outbox")]
            outbox: None,
            #[cfg(feature = "testing")]
            test_hooks: None,
            #[cfg(feature = "metrics")]
            metrics: None,
            multicast: None,
        }
    }

    /// Attaches a test mesh's hooks (`shoal::testing`).
    #[cfg(feature = "testing")]
    pub(crate) fn test_hooks(mut self, hooks: Arc<crate::testing::NodeHooks>) -> Self {
        self.test_hooks = Some(hooks);
        self
    }

    /// The UDP address to accept QUIC connections on. Default `127.0.0.1:0` (loopback, a free
    /// port): a node reachable from other hosts must name a LAN address explicitly.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// This node's certificate and key, issued by the mesh CA for this node's service.
    /// Required.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The mesh CA: only peers with a certificate it signed can connect, in either direction.
    /// Required.
    ///
    /// Repeat to trust several CAs side by side, as during a CA rollover: a peer is accepted
    /// if any of them issued its certificate. [`Node::reload_tls`] changes the set later.
    pub fn trust(mut self, ca: MeshCa) -> Self {
        self.trust.push(ca);
        self
    }

    /// The revoked certificates this node refuses. Default: none. Keep a clone of the handle
    /// (or use [`Node::revocations`]) to revoke more while the node runs: new handshakes with
    /// a revoked certificate are refused at once, and live connections of a revoked peer are
    /// closed within a second.
    pub fn revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = revocations;
        self
    }

    /// How long before this node's certificate expires it starts warning: a warning in the
    /// log and a [`crate::NodeEvent::CertificateExpiring`], repeated daily and after every
    /// reload, until a new certificate is loaded. Default: 30 days, or a third of the
    /// certificate's lifetime if that is shorter (so a one-day certificate warns 8 hours
    /// ahead). [`Node::certificate`] tells the expiry at any time.
    pub fn warn_before_expiry(mut self, ahead: Duration) -> Self {
        self.config.warn_before_expiry = Some(ahead);
        self
    }

    /// The authorization policy: who may send what to which service, publish which topics,
    /// subscribe to which patterns ([`crate::policy`]). Default: [`Policy::allow_all`].
    ///
    /// Enforced where things arrive, with the service the peer's certificate proves: a
    /// command, request, document or asynchronous reply the policy refuses is nacked "not
    /// authorized" for good before any handler runs (its sender dead-letters it with that
    /// reason), as is an event from a publisher that may not publish its topic; a peer's
    /// forbidden subscription is not added, so it gets no events. This node's own forbidden
    /// `publish` and `subscribe` fail at once with [`Error::NotAuthorized`]. Every refusal
    /// is counted in [`crate::NodeStats`] and raised as [`crate::NodeEvent::NotAuthorized`].
    /// Give every node the same policy: each enforces the rules about what reaches it.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = Arc::new(policy);
        self
    }

    /// A static peer address, dialled at start and redialled whenever the connection drops.
    /// Repeat for several peers; both ends may list each other.
    pub fn peer(mut self, addr: SocketAddr) -> Self {
        self.peers.push(addr);
        self
    }

    /// Several static peer addresses at once.
    pub fn peers(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.peers.extend(addrs);
        self
    }

    /// Adds a discovery source (for example mDNS). Sources run side by side with the static
    /// peers.
    pub fn discovery(mut self, source: impl Discovery) -> Self {
        self.discovery.push(Box::new(source));
        self
    }

    /// How sends are retried and when they are dead-lettered ([`RetryPolicy`] documents the
    /// defaults). [`NodeBuilder::start`] refuses a policy with `max_attempts` 0, or a zero
    /// `ack_timeout` or `deadline`, with [`Error::Config`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// The dedup window: how many message ids, and for how long, this node remembers to drop
    /// redeliveries. Default 100,000 ids for 10 minutes (about 20 bytes per id: 2 MB when full).
    pub fn dedup_window(mut self, capacity: usize, max_age: Duration) -> Self {
        self.config.dedup_capacity = capacity;
        self.config.dedup_max_age = max_age;
        self
    }

    /// How many bytes of replies to recent requests this node keeps, so a request retried
    /// with the same id (its reply was lost with a connection, say) gets the reply again
    /// without its handler running twice. Replies are kept as long as the dedup window
    /// remembers ids. A retry whose reply is no longer kept is refused with a clear reason
    /// rather than acknowledged without an answer. Default 16 MiB; 0 keeps none.
    pub fn reply_cache(mut self, max_bytes: usize) -> Self {
        self.config.reply_cache_size = max_bytes;
        self
    }

    /// Busy polling: after each message this node reads, writes or sends (and each handler
    /// that finishes), its runtime keeps looking for network input for up to `window`
    /// instead of letting its thread sleep; every new message extends it. `Duration::ZERO`
    /// turns busy polling off altogether, the default polling under load included
    /// ([`NodeBuilder::busy_poll_under_load`]).
    ///
    /// A sleeping thread is woken when a packet arrives, and on a machine with idle cores
    /// (a virtual machine above all) that wake-up is most of a round trip on a LAN. A polling
    /// thread reads the packet as soon as it is there: round trips several times shorter
    /// (README, "Busy polling", has the figures).
    ///
    /// The cost is CPU: while it polls, the thread that runs the node's tasks is busy all the
    /// time (one core, on a current-thread runtime), also when nothing arrives. Choose a window
    /// a little longer than the usual gap between messages, on a core the service can spare,
    /// and leave another for everything else: when no core is idle, whatever else wakes up
    /// takes its time from the polling thread and messages wait behind it (README, "Busy
    /// polling", has a case where the p99 got worse). An idle node costs nothing. Both ends
    /// of a hop have to poll for it to be quick. [`crate::NodeStats::busy_poll_time`] (and
    /// the metric `shoal_busy_poll_seconds_total`) says how long it polled.
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.config.busy_poll = crate::runtime::BusyPolling::Always(window);
        self
    }

    /// Busy polling under load only (the default, with a window of 20 µs): as
    /// [`NodeBuilder::busy_poll`], but polling starts only after a frame this node read held
    /// two or more messages or a write took two or more. Messages travel together when calls
    /// wait for each other, so a node sending or receiving one message at a time does not
    /// poll, and a loaded one polls through the short gaps between its batches instead of
    /// sleeping in each. Once started, it goes on while any activity follows within the
    /// window. Events carried by a multicast channel do not start it. `Duration::ZERO` turns
    /// busy polling off.
    ///
    /// Why by default: on a virtual machine, a thread that sleeps lets its virtual CPU halt,
    /// and on a busy host a halted CPU is given to another guest and comes back late; under
    /// load that happened between every two batches. A loaded thread seldom waits, so the
    /// polling costs little CPU per message, and a node whose load stops polls for one
    /// window after its last activity (README, "Busy polling", has the figures).
    pub fn busy_poll_under_load(mut self, window: Duration) -> Self {
        self.config.busy_poll = crate::runtime::BusyPolling::UnderLoad(window);
        self
    }

    /// The receive and send buffer to ask the kernel for on the node's UDP socket, which
    /// every peer's packets arrive on. Default 4 MiB: a burst waits there while the node's
    /// thread is busy, where the kernel's default (208 KiB on Linux) drops it, and QUIC,
    /// resending, takes each loss as congestion and slows down. The kernel grants at most
    /// `net.core.rmem_max` / `wmem_max` (logged at start when it granted less); `0` keeps
    /// the kernel's defaults.
    pub fn socket_buffers(mut self, bytes: usize) -> Self {
        self.config.socket_buffers = bytes;
        self
    }

    /// Most unacknowledged messages to one peer; further sends wait (or fail fast).
    /// Default 4096; at least 1 ([`NodeBuilder::start`] refuses 0: nothing could be sent).
    /// A window smaller than what a busy sender keeps in flight makes the two sides take
    /// turns (the receiver handles and acks a window's worth while the sender waits, then the
    /// other way round) instead of working side by side.
    pub fn max_in_flight_per_peer(mut self, max: usize) -> Self {
        self.config.max_in_flight_per_peer = max;
        self
    }

    /// Most events of background publishes ([`crate::PublishOptions::background`]) and
    /// commands of background sends ([`Node::send_background`]) on their way at once, a batch
    /// counting each of its events, and messages staged to go together included. Each is held
    /// until acknowledged (by every audience, for an event) or dead-lettered, so a receiver
    /// that is slow, or a group waiting for an instance, makes them pile up; past this many,
    /// the call fails at once with [`crate::Error::Backlog`] and keeps nothing, rather than
    /// holding messages without bound. A plain `publish` or `send`, which resolves on the
    /// acks, paces itself instead.
    ///
    /// Default 4,096, the window of one peer ([`NodeBuilder::max_in_flight_per_peer`]):
    /// beyond what the windows take, background messages only wait in the node's memory, and
    /// the more it holds the slower each goes (its working set leaves the CPU's caches; one
    /// loop of background sends made a median 2.13 M msgs/s holding 4,096, 1.61 M holding
    /// 65,536). A producer refused awaits [`Node::wait_for_background_room`]. At least 1
    /// ([`NodeBuilder::start`] refuses 0: a node that wants no background publishes simply
    /// makes none).
    pub fn max_background_publishes(mut self, max: usize) -> Self {
        self.config.max_background_publishes = max;
        self
    }

    /// Most payload bytes of background events and commands (see
    /// [`NodeBuilder::max_background_publishes`]) on their way at once, staged ones included;
    /// past this, the call fails at once with [`crate::Error::Backlog`] and keeps nothing. A
    /// message larger than this is taken when the node holds no other. Default 64 MiB; at
    /// least 1 ([`NodeBuilder::start`] refuses 0). Counting messages alone, 65,536 events of
    /// 64 KiB (the cap's earlier default) held 4 GiB.
    pub fn max_background_bytes(mut self, max: usize) -> Self {
        self.config.max_background_bytes = max;
        self
    }

    /// Most handlers running at once for the deliveries of one peer connection. Past that the
    /// node stops reading that peer's stream and QUIC flow control slows that peer only; other
    /// peers, and the acks on every connection, keep flowing. Default 1024; at least 1
    /// ([`NodeBuilder::start`] refuses 0: no handler could ever run).
    pub fn max_concurrent_handlers(mut self, max: usize) -> Self {
        self.config.max_concurrent_handlers = max;
        self
    }

    /// Wire limits (frame size, header count, name lengths, reason lengths, hello addresses),
    /// enforced on send and receive.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// How many dead letters [`Node::dead_letters`] keeps. Default 1000.
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.config.dead_letter_capacity = capacity;
        self
    }

    /// How long [`Node::shutdown`] waits for running handlers. Default 5 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// How long a published event's copy for a subscriber group with no live instance is
    /// held, waiting for one to appear, before it is dead-lettered. Default 30 s; a publish
    /// may override it ([`crate::PublishOptions::hold_for`]). `Duration::MAX` holds copies
    /// until an instance appears (or the node stops). The group stays remembered while
    /// copies are held for it, even past [`NodeBuilder::remember_groups_for`], and a held
    /// copy's retry deadline ([`RetryPolicy::deadline`]) counts from the end of its wait, so
    /// it gets its retries once an instance is back.
    pub fn hold_events_for(mut self, hold: Duration) -> Self {
        self.config.event_hold = hold;
        self
    }

    /// How long a subscriber group whose last instance left (crashed, or shut down) still
    /// counts as an audience of its topics, so events published meanwhile are held for it
    /// rather than reaching nobody. Default 10 minutes; zero forgets groups at once,
    /// `Duration::MAX` remembers them as long as the node runs. A group for which copies are
    /// still held ([`NodeBuilder::hold_events_for`], [`crate::PublishOptions::hold_for`]) is
    /// remembered at least until their hold ends. A group that unsubscribes on purpose is
    /// forgotten at once.
    pub fn remember_groups_for(mut self, remember: Duration) -> Self {
        self.config.remember_groups = remember;
        self
    }

    /// Turns on Prometheus metrics (feature `metrics`): counts and latencies per service and
    /// message, connections, subscriptions, the outbox's backlog. With
    /// [`crate::MetricsConfig::listen`] the node serves them at `http://ADDR/metrics`
    /// ([`Node::metrics_addr`] gives the bound address); with [`crate::MetricsConfig::record`]
    /// it only records them, for [`Node::register_metrics`]. Off by default: then the engine
    /// records nothing per message. See [`crate::metrics`].
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, config: crate::MetricsConfig) -> Self {
        self.metrics = Some(config);
        self
    }

    /// Delivers the messages of `store`'s outbox: a relay in the node reads pending rows in
    /// order, sends or publishes each through the normal delivery path, and removes it once
    /// acknowledged (dead-lettered rows stay, marked dead). It wakes at once after
    /// [`crate::outbox::SqliteOutbox::commit`] and also checks every `options.poll` for rows written
    /// by other processes or left by a crash. [`NodeBuilder::start`] refuses a zero
    /// `options.poll` with [`Error::Config`].
    #[cfg(feature = "outbox")]
    pub fn outbox(
        mut self,
        store: Arc<dyn crate::outbox::OutboxStore>,
        options: crate::outbox::RelayOptions,
    ) -> Self {
        self.outbox = Some((store, options));
        self
    }

    /// Fans published events out by multicast on a LAN interface (off by default: nothing is
    /// sent to or read from a multicast group without this call). Each event goes out once,
    /// sealed with AES-256-GCM under a key handed to each subscriber over its mutual-TLS
    /// connection, however many subscribers on the LAN get it; lost datagrams are repaired,
    /// and publish receipts, groups and exactly-once handling stay as with unicast. What cannot
    /// go on the group (best-effort events, ordered batches, subscribers on the same host,
    /// subscribers multicast does not reach) goes by unicast, as without it. Give every node
    /// of the mesh on that LAN the same group and port; see the README's "Multicast fan-out".
    /// Discovery advertises the group (TXT `mc`, listed by [`Node::discovered`]), and an
    /// announced instance on another group is warned about once in the log.
    ///
    /// [`NodeBuilder::start`] fails with [`Error::Multicast`] when the group socket cannot be
    /// opened (an unknown or loopback interface, no IPv4 address, not a multicast group).
    pub fn multicast(mut self, config: crate::MulticastConfig) -> Self {
        self.multicast = Some(config);
        self
    }
}
