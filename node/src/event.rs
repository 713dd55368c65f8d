//! [`NodeEvent`]: what happens to a node's connections, for logs, diagnostics and tests.

use std::net::SocketAddr;

use shoal_proto::NodeId;

/// Something that happened to the node's peers and their subscriptions. Read them with
/// [`crate::Node::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A peer completed the TLS and Shoal handshakes and can take messages.
    PeerUp {
        /// The peer's node id.
        node: NodeId,
        /// The service it is an instance of.
        service: String,
        /// Its address as seen from here.
        addr: SocketAddr,
    },
    /// A peer's connection ended.
    PeerDown {
        /// The peer's node id.
        node: NodeId,
        /// The service it was an instance of.
        service: String,
        /// Why: a goodbye, a timeout, a protocol error.
        reason: String,
    },
    /// A peer announced a subscription: events on matching topics now go to it (for its group).
    Subscribed {
        /// The peer's node id.
        node: NodeId,
        /// The topic pattern.
        pattern: String,
        /// The group, or `None` for an every-instance subscription.
        group: Option<String>,
    },
    /// A peer withdrew a subscription.
    Unsubscribed {
        /// The peer's node id.
        node: NodeId,
        /// The topic pattern.
        pattern: String,
        /// The group, or `None` for an every-instance subscription.
        group: Option<String>,
    },
    /// A discovery source announced an instance this node did not know. Discovering an
    /// instance is not connecting to it: a connection follows when something is sent to it
    /// ([`NodeEvent::PeerUp`]).
    Discovered {
        /// The instance's node id.
        node: NodeId,
        /// The service it is an instance of.
        service: String,
        /// Where its announcement says it listens.
        addrs: Vec<SocketAddr>,
    },
    /// Discovery no longer announces an instance (it said goodbye, or its record expired or
    /// was removed). A live connection to it stays up until it ends by itself.
    Vanished {
        /// The instance's node id.
        node: NodeId,
        /// The service it was an instance of.
        service: String,
    },
    /// A connection was refused or failed before the peer was known: wrong certificate, wrong
    /// protocol version, nobody listening.
    HandshakeFailed {
        /// The remote address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// A peer sent something that is not valid Shoal; its connection was closed or the frame
    /// refused.
    ProtocolError {
        /// The remote address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The authorization policy refused something (see [`crate::policy`]): a peer's
    /// command, request or document (nacked "not authorized" for good, so its sender
    /// dead-letters it), an event a peer published (nacked likewise), a peer's subscription
    /// (not added: it gets no events), or this node's own publish or subscribe (the call
    /// failed with [`crate::Error::NotAuthorized`]). One event per refused run of messages;
    /// [`crate::NodeStats`] counts every message.
    NotAuthorized {
        /// The peer whose message or subscription was refused; `None` for this node's own
        /// call.
        peer: Option<NodeId>,
        /// What was refused and which rule refused it; its `Display` is the reason sent back.
        denial: crate::policy::Denial,
    },
    /// A peer has multicast on (see [`crate::NodeBuilder::multicast`]) with another group or
    /// port than this node: events between the two go by unicast. Every node of one LAN
    /// should name the same group; nodes on different LANs may well differ. Raised once per
    /// connection (so again after a reconnect), on both sides.
    MulticastGroupDiffers {
        /// The peer's node id.
        node: NodeId,
        /// The service it is an instance of.
        service: String,
        /// The peer's group address and port.
        theirs: SocketAddr,
        /// This node's.
        ours: SocketAddr,
    },
    /// This node publishes by multicast, and one of the subscribers on its group was moved to
    /// unicast: it gets by unicast every event it had not reported and every later one, until
    /// it reconnects. Nothing is lost; it just costs a copy per event again. Counted in
    /// [`crate::NodeStats::multicast_demotions`].
    MulticastFallback {
        /// The subscriber's node id.
        node: NodeId,
        /// The service it is an instance of (empty if its connection is already gone).
        service: String,
        /// Why it was moved.
        reason: FallbackReason,
    },
    // --- certificate lifecycle (certs branch, cert_lifecycle.rs) ---
    /// This node's own certificate expires soon (or has expired): load a new one with
    /// [`crate::Node::reload_identity`]. Raised when the warning period starts
    /// ([`crate::NodeBuilder::warn_before_expiry`]), then daily and after every reload.
    CertificateExpiring {
        /// The certificate's serial.
        serial: crate::CertSerial,
        /// When it expires.
        not_after: std::time::SystemTime,
        /// How long it is still valid; zero once it has expired.
        remaining: std::time::Duration,
    },
}

/// Why a subscriber was moved from the multicast channel to unicast
/// ([`NodeEvent::MulticastFallback`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackReason {
    /// It reported nothing for a while (about 400 ms): its process or its connection is
    /// stuck.
    Silent,
    /// It kept reporting, but the datagrams did not reach it for about 300 ms: multicast is
    /// blocked on its way (a switch, a firewall, another subnet, the wrong interface).
    NotReached,
    /// It held the publisher back at the channel's window for about 300 ms: it handles
    /// events more slowly than they are published.
    Lagging,
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Silent => "it reported nothing",
            Self::NotReached => "the datagrams did not reach it",
            Self::Lagging => "it held the publisher back",
        })
    }
}
