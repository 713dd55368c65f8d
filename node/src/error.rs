//! The one error type of the `shoal` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::dead_letter::DeadLetter;

/// Everything that can go wrong in a Shoal node, from start-up to a single send.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given an unusable configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A certificate, key or CA is unusable (unparseable PEM, wrong key type, expired, ...).
    #[error("invalid identity: {0}")]
    Identity(String),
    /// An authorization policy is malformed (see [`crate::policy`]): an unknown field, a bad
    /// service name or pattern. The message names the place.
    #[error("invalid policy: {0}")]
    Policy(String),
    /// The authorization policy does not allow this node's call: publishing this topic, or
    /// subscribing to this pattern (see [`crate::policy`]). Nothing was sent. A message a
    /// peer refuses as not authorized ends as [`Error::DeadLettered`] instead, with the
    /// peer's reason.
    #[error("{0}")]
    NotAuthorized(Box<crate::policy::Denial>),
    /// A file could not be read or written.
    #[error("could not access {path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The QUIC endpoint could not bind its listen address.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A discovery source could not start.
    #[error(transparent)]
    Discovery(#[from] shoal_discovery::DiscoveryError),
    /// The message breaks a wire limit (too large, too many headers, name too long).
    #[error("message refused before sending: {0}")]
    Encode(#[from] shoal_proto::EncodeError),
    /// Every attempt failed or the deadline passed; the message was recorded as a dead letter.
    #[error("{0}")]
    DeadLettered(Box<DeadLetter>),
    /// A request got no reply in time: its message reached an instance (or was on its way
    /// to one) but no reply came within the request's timeout. A request whose message could
    /// not be delivered by then (no instance connected, or refused by every instance tried)
    /// ends with [`Error::DeadLettered`] and the reason instead.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A wait ended at its timeout before what it waited for happened:
    /// [`crate::Node::wait_for_subscribers`], [`crate::Node::wait_for_instances`] or
    /// [`crate::Node::ping`].
    #[error("gave up after {timeout:?} waiting for {waited_for}")]
    WaitTimedOut {
        /// What was waited for, and how far it got (e.g. "1 instance of `billing` (0
        /// connected)").
        waited_for: String,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// `send` or `request` named no service (an empty service name). Nothing was sent. A
    /// service name longer than [`crate::Limits::max_name_len`] is refused with
    /// [`Error::Encode`], as a message name is.
    #[error("no service to send to: the service name is empty")]
    EmptyServiceName,
    /// The in-flight limit is reached and the caller asked to fail fast instead of waiting.
    #[error("too many messages in flight to `{service}` (fail-fast)")]
    Busy {
        /// The service the message was for.
        service: String,
    },
    /// A background publish or send ([`crate::Node::send_background`]) was refused: the node
    /// holds as many background messages as it may
    /// ([`crate::NodeBuilder::max_background_publishes`],
    /// [`crate::NodeBuilder::max_background_bytes`]). Nothing was kept; try again once some
    /// were delivered ([`crate::Node::wait_for_background_room`] waits for that), or await a
    /// receipt (a plain `publish` or `send`) to pace the sender.
    #[error(
        "the node holds as many background messages as it may ({limit}): try later, or await a receipt"
    )]
    Backlog {
        /// The cap that was reached.
        limit: BacklogLimit,
    },
    /// A topic, subscription pattern or group name is malformed (see [`crate::Node::publish`]
    /// and [`crate::SubscribeOptions`] for the rules).
    #[error("invalid topic or pattern: {0}")]
    Topic(String),
    /// A published event's audience (a subscriber group, or an every-instance subscriber)
    /// unsubscribed or left for good while its copy was on the way: the copy was dropped and
    /// counted in [`crate::NodeStats::events_dropped`]. `publish` reports such copies in
    /// [`crate::PublishReceipt::dropped`], not as an error.
    #[error("{0} no longer subscribes; its copy was dropped")]
    AudienceGone(String),
    /// A batch of events cannot be published as one (empty, or mixed topics or keys).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A request was made with the id of one still waiting for its reply (a cloned
    /// [`crate::Message`]): the one reply could answer only one of them. Nothing was sent;
    /// create a new `Message` for a new request.
    #[error("request {0} is already waiting for its reply; create a new Message for a new request")]
    DuplicateRequest(shoal_proto::MessageId),
    /// The outbox's store failed (see [`crate::outbox::OutboxError`]).
    #[cfg(feature = "outbox")]
    #[error("outbox: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    /// A typed message does not fit the service's contract (not declared, or declared with
    /// another reply), or the contract itself is inconsistent (see
    /// [`crate::contract::ServiceContract::validate`]).
    #[cfg(feature = "contracts")]
    #[error("contract: {0}")]
    Contract(String),
    /// A typed payload could not be encoded, or a typed reply could not be decoded.
    #[cfg(feature = "contracts")]
    #[error("payload of {message}: {reason}")]
    Payload {
        /// The message type and version, and the codec.
        message: String,
        /// What the codec said.
        reason: String,
    },
    /// An AsyncAPI document could not be read or is not AsyncAPI 3.x (see
    /// [`crate::contract::diff`]).
    #[cfg(feature = "contracts")]
    #[error("{document}: {reason}")]
    Spec {
        /// Which document (its file name, or `old` / `new`).
        document: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An expectation of a test mesh failed (`shoal::testing`): what was expected, what went
    /// wrong, and every message the probe saw.
    #[cfg(feature = "testing")]
    #[error("{0}")]
    Expectation(Box<crate::testing::ExpectationFailed>),
    /// Messages or examples do not fit a service's contract (`shoal::testing`): each one and
    /// why, one per line.
    #[cfg(feature = "testing")]
    #[error("contract conformance: {0}")]
    Conformance(String),
    /// The multicast group socket could not be opened on the named interface (publish/subscribe
    /// fan-out on a LAN, issue 14): the interface is unknown, has no IPv4 address or is the
    /// loopback interface, the group is not a multicast address, or the operating system
    /// refused a socket option. Returned by [`crate::NodeBuilder::start`] when the node was
    /// built with [`crate::NodeBuilder::multicast`].
    #[error("multicast on interface `{interface}`: {problem}")]
    Multicast {
        /// The interface name asked for.
        interface: String,
        /// What is wrong.
        problem: MulticastProblem,
    },
    /// Shoal got into a state it does not expect: a bug. Please report it with the message.
    #[error("internal error: {0}")]
    Internal(String),
    /// The node is shutting down and takes no new work.
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl Error {
    /// The same error for another caller: several callers whose events travelled as one
    /// operation (`engine/send/each.rs`) each hear of a failure of the whole. Those an
    /// operation can end with are copied as they are; any other (none is expected there)
    /// keeps its text in [`Error::Internal`].
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::ShuttingDown => Self::ShuttingDown,
            Self::DeadLettered(letter) => Self::DeadLettered(letter.clone()),
            Self::Timeout(after) => Self::Timeout(*after),
            Self::Busy { service } => Self::Busy {
                service: service.clone(),
            },
            Self::AudienceGone(audience) => Self::AudienceGone(audience.clone()),
            Self::NotAuthorized(denial) => Self::NotAuthorized(denial.clone()),
            Self::Topic(reason) => Self::Topic(reason.clone()),
            Self::Backlog { limit } => Self::Backlog { limit: *limit },
            other => Self::Internal(other.to_string()),
        }
    }
}

/// The cap on background messages a node holds that refused one (see [`Error::Backlog`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BacklogLimit {
    /// So many messages ([`crate::NodeBuilder::max_background_publishes`]).
    #[error("{0} messages, NodeBuilder::max_background_publishes")]
    Events(usize),
    /// So many payload bytes ([`crate::NodeBuilder::max_background_bytes`]).
    #[error("{0} payload bytes, NodeBuilder::max_background_bytes")]
    Bytes(usize),
}

/// Why a multicast group socket could not be opened (see [`Error::Multicast`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MulticastProblem {
    /// No interface of that name exists (in this network namespace).
    #[error("no such interface")]
    UnknownInterface,
    /// The interface exists but has no IPv4 address: multicast groups are IPv4 for now, and
    /// the interface's address chooses where datagrams leave.
    #[error("the interface has no IPv4 address")]
    NoIpv4,
    /// The interface is a loopback interface: multicast fan-out is for a LAN (and loopback
    /// delivery is switched off on the group socket, so nothing would arrive).
    #[error("the interface is a loopback interface; name a LAN interface")]
    Loopback,
    /// The group is not an IPv4 multicast address (224.0.0.0/4). `239.255.0.0/16` is the
    /// administratively scoped range meant for a site's own use.
    #[error("{0} is not an IPv4 multicast address (224.0.0.0/4; e.g. 239.255.x.y)")]
    NotMulticast(std::net::Ipv4Addr),
    /// Port 0 names no group: every member must use the same, fixed port.
    #[error("the group port must not be 0")]
    PortZero,
    /// The interfaces could not be listed.
    #[error("could not list the interfaces: {0}")]
    ListInterfaces(std::io::Error),
    /// The operating system refused a step of setting up the socket (`step` says which).
    #[error("could not {step}: {source}")]
    Socket {
        /// The step that failed, e.g. "join the group".
        step: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
}
