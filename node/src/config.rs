//! Tunables of a node, with their defaults and what they are for.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::Limits;

use crate::policy::Policy;
use crate::{Error, NodeBuilder, RetryPolicy};

/// Everything a [`crate::NodeBuilder`] can tune besides identity and addresses.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) retry: RetryPolicy,
    pub(crate) dedup_capacity: usize,
    pub(crate) dedup_max_age: Duration,
    pub(crate) reply_cache_size: usize,
    pub(crate) max_in_flight_per_peer: usize,
    pub(crate) max_concurrent_handlers: usize,
    /// Messages of background publishes and sends on their way at once (staged ones
    /// included); one more is refused ([`crate::Error::Backlog`]).
    pub(crate) max_background_publishes: usize,
    /// Payload bytes of those messages (staged ones included); one more is refused
    /// ([`crate::Error::Backlog`]), unless none is held.
    pub(crate) max_background_bytes: usize,
    /// Best-effort copies are dropped when this many items already wait to be written.
    pub(crate) write_queue_len: usize,
    /// A connection with more bytes waiting to be written is closed: its peer is not reading.
    pub(crate) max_queued_bytes: usize,
    pub(crate) limits: Limits,
    pub(crate) dead_letter_capacity: usize,
    /// An incoming connection must finish its TLS handshake and its hello within this time of
    /// arriving; a dialled one must answer within it, then send its hello within it.
    pub(crate) handshake_timeout: Duration,
    /// Limits against floods on the accepting side (`transport/limits.rs`).
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_address: usize,
    pub(crate) handshake_rate: u32,
    pub(crate) handshake_burst: u32,
    /// An address whose TLS handshake this node refused is refused before TLS for this long
    /// (`transport/penalty.rs`); the box holds at most `handshake_penalty_capacity` addresses.
    pub(crate) handshake_penalty: Duration,
    pub(crate) handshake_penalty_capacity: usize,
    /// Refused TLS handshakes from one address within a second that put it in the box.
    pub(crate) handshake_penalty_after: u32,
    pub(crate) shutdown_grace: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) idle_timeout: Duration,
    /// Connections this node dialled close after this long unused (`None`: never).
    pub(crate) close_idle_after: Option<Duration>,
    /// Dial every announced instance at once and keep the connection (the full mesh of
    /// before), rather than on first use.
    pub(crate) connect_on_discovery: bool,
    pub(crate) event_hold: Duration,
    pub(crate) remember_groups: Duration,
    /// How long before the node's certificate expires it warns; `None`: the default (30 days,
    /// or a third of the certificate's lifetime if shorter).
    pub(crate) warn_before_expiry: Option<Duration>,
    /// Who may send, publish and subscribe what (`NodeBuilder::policy`).
    pub(crate) policy: Arc<Policy>,
    /// The LAN multicast group this node sends and receives events on, and how its channel
    /// behaves (`None`: every event by unicast). See `engine/multicast_link.rs`.
    pub(crate) multicast: Option<crate::engine::MulticastSetup>,
    /// When the runtime thread polls for input after activity, and how long
    /// (`runtime/busy_poll.rs`).
    pub(crate) busy_poll: crate::runtime::BusyPolling,
    /// Receive and send buffer asked of the kernel for the node's UDP socket
    /// (`transport/socket.rs`); zero: the kernel's defaults.
    pub(crate) socket_buffers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            dedup_capacity: 100_000,
            dedup_max_age: Duration::from_secs(600),
            reply_cache_size: 16 << 20,
            max_in_flight_per_peer: 4096,
            max_concurrent_handlers: 1024,
            max_background_publishes: NodeBuilder::DEFAULT_MAX_BACKGROUND_PUBLISHES,
            max_background_bytes: NodeBuilder::DEFAULT_MAX_BACKGROUND_BYTES,
            write_queue_len: 4096,
            max_queued_bytes: NodeBuilder::DEFAULT_MAX_QUEUED_BYTES,
            limits: Limits::default(),
            dead_letter_capacity: 1000,
            handshake_timeout: NodeBuilder::DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: NodeBuilder::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: NodeBuilder::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            handshake_rate: NodeBuilder::DEFAULT_HANDSHAKE_RATE,
            handshake_burst: NodeBuilder::DEFAULT_HANDSHAKE_BURST,
            handshake_penalty: NodeBuilder::DEFAULT_HANDSHAKE_PENALTY,
            handshake_penalty_capacity: NodeBuilder::DEFAULT_HANDSHAKE_PENALTY_CAPACITY,
            handshake_penalty_after: NodeBuilder::DEFAULT_HANDSHAKE_PENALTY_AFTER,
            shutdown_grace: Duration::from_secs(5),
            keep_alive: Duration::from_millis(250),
            idle_timeout: Duration::from_millis(1500),
            close_idle_after: Some(Duration::from_secs(30)),
            connect_on_discovery: false,
            event_hold: Duration::from_secs(30),
            remember_groups: Duration::from_secs(600),
            warn_before_expiry: None,
            policy: Arc::new(Policy::allow_all()),
            multicast: None,
            busy_poll: crate::runtime::BusyPolling::DEFAULT,
            socket_buffers: 4 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Refuses the values no node can work with, naming the builder method to fix:
    /// [`NodeBuilder::start`] calls this before it binds or starts anything.
    ///
    /// Durations that are only "long" are not refused: `Duration::MAX` means "forever"
    /// wherever it is accepted, and every instant computed from one saturates
    /// (`engine::retry::later`).
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let refuse = |why: String| Err(Error::Config(why));
        self.retry.check("NodeBuilder::retry_policy")?;
        if self.handshake_timeout.is_zero() {
            return refuse("the handshake timeout must be above zero".into());
        }
        let (keep_alive, idle) = (self.keep_alive, self.idle_timeout);
        if keep_alive.is_zero() || idle.is_zero() {
            return refuse(format!(
                "NodeBuilder::liveness({keep_alive:?}, {idle:?}): the keep-alive interval and \
                 the idle timeout must both be above zero"
            ));
        }
        if keep_alive >= idle {
            return refuse(format!(
                "NodeBuilder::liveness({keep_alive:?}, {idle:?}): the keep-alive interval must \
                 be shorter than the idle timeout, or quiet but healthy connections time out"
            ));
        }
        let zeros = [
            (self.max_queued_bytes, "NodeBuilder::max_queued_bytes"),
            (
                self.max_in_flight_per_peer,
                "NodeBuilder::max_in_flight_per_peer",
            ),
            (
                self.max_concurrent_handlers,
                "NodeBuilder::max_concurrent_handlers",
            ),
            (
                self.max_background_publishes,
                "NodeBuilder::max_background_publishes",
            ),
            (
                self.max_background_bytes,
                "NodeBuilder::max_background_bytes",
            ),
        ];
        if let Some((_, method)) = zeros.iter().find(|(value, _)| *value == 0) {
            return refuse(format!("{method}(0): must be at least 1"));
        }
        if self.close_idle_after == Some(Duration::ZERO) {
            return refuse(
                "NodeBuilder::close_idle_after(Some(0)): must be above zero; None keeps idle \
                 connections"
                    .into(),
            );
        }
        Ok(())
    }

    /// The multicast group and port this node is on, as discovery advertises it (TXT `mc`)
    /// and as announced instances' groups are compared with; `None` with multicast off.
    pub(crate) fn multicast_group(&self) -> Option<SocketAddrV4> {
        match self.multicast.as_ref()?.group {
            SocketAddr::V4(group) => Some(group),
            SocketAddr::V6(_) => None,
        }
    }
}
