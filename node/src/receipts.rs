//! What a call ends with: proof of delivery, and what the node tells about its peers.

use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::{MessageId, NodeId};

/// Proof that a message was handled: returned by [`crate::Node::send`] once the receiver acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The message's id.
    pub id: MessageId,
    /// The instance whose handler finished it.
    pub node: NodeId,
    /// Delivery attempts it took (1 if the first one succeeded).
    pub attempts: u32,
}

/// What became of a published event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The event's message id.
    pub id: MessageId,
    /// One entry per audience: acknowledged (reliable) or queued (best-effort). Empty for a
    /// background publish, which returns before any copy is sent.
    pub deliveries: Vec<EventDelivery>,
    /// Copies that were dropped, named by audience: best-effort copies that found their
    /// subscriber's queue full or no live instance, and reliable copies whose audience
    /// unsubscribed while they were on the way ([`crate::Error::AudienceGone`]).
    pub dropped: Vec<String>,
}

/// One audience's copy of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventDelivery {
    /// The subscriber group, or `None` for an ungrouped subscriber instance.
    pub group: Option<String>,
    /// The instance that took the copy.
    pub node: NodeId,
    /// Delivery attempts (1 when the first one was acked; 1 for best-effort copies).
    pub attempts: u32,
}

/// A live peer, as listed by [`crate::Node::peers`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's node id.
    pub node: NodeId,
    /// The service it is an instance of.
    pub service: String,
    /// Its address as seen from here.
    pub addr: SocketAddr,
    /// QUIC's smoothed round-trip estimate.
    pub rtt: Duration,
    /// Messages sent to it and not yet acknowledged.
    pub in_flight: usize,
}
