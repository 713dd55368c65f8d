//! Frames: the units that cross a Shoal connection.
//!
//! Each side of a connection opens one long-lived unidirectional QUIC stream and writes
//! length-prefixed frames on it ([`crate::codec`]). The first frame on every stream is a
//! [`Hello`]; after that any frame may follow in any order.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::id::{MessageId, NodeId};

/// The protocol version spoken by this crate. Also part of the ALPN string ([`ALPN`]).
pub const PROTOCOL_VERSION: u16 = 1;

/// The ALPN protocol name; a peer that speaks another version fails the TLS handshake.
pub const ALPN: &[u8] = b"shoal/1";

/// Everything that crosses a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Frame {
    /// First frame on a stream: who is speaking.
    Hello(Hello),
    /// A message for the receiving node's handlers.
    Deliver(Box<Envelope>),
    /// The listed messages were handled (or were duplicates of handled ones).
    Ack(Ack),
    /// A message was not handled.
    Nack(Nack),
    /// Liveness and round-trip probe; answered with [`Frame::Pong`] carrying the same nonce.
    Ping(u64),
    /// Answer to [`Frame::Ping`].
    Pong(u64),
    /// The sender is closing the connection on purpose.
    Goodbye(Goodbye),
    /// The sender wants events matching a topic pattern (publish/subscribe).
    Subscribe(Subscription),
    /// The sender no longer wants events matching a topic pattern.
    Unsubscribe(Subscription),
    /// An event for the receiver's subscriptions of one group (publish/subscribe).
    Publish(Box<Publish>),
    /// Several events on one topic for one group, handled in order and acked together.
    PublishBatch(Box<PublishBatch>),
}

/// The first frame a node writes on a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the sender speaks ([`PROTOCOL_VERSION`]).
    pub protocol_version: u16,
    /// The sender's node id, random per start.
    pub node_id: NodeId,
    /// The service the sender is an instance of.
    pub service: String,
    /// Addresses the sender accepts connections on.
    pub listen_addrs: Vec<SocketAddr>,
}

/// Acknowledgements, coalesced: one frame may acknowledge many messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Ids of the messages whose handlers finished successfully.
    pub ids: Vec<MessageId>,
}

/// A negative acknowledgement: the handler failed or the message was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The message that was not handled.
    pub id: MessageId,
    /// Whether the sender should try again (perhaps on another instance).
    pub retryable: bool,
    /// Human-readable reason, shown in dead letters.
    pub reason: String,
}

/// Sent before a node closes a connection on purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why the connection is closing, e.g. `shutdown`.
    pub reason: String,
}

/// A topic subscription, used by [`Frame::Subscribe`] and [`Frame::Unsubscribe`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subscription {
    /// The topic pattern, e.g. `orders.*`.
    pub pattern: String,
    /// The subscriber group; `None` means every subscribing instance gets its own copy.
    pub group: Option<String>,
}

/// One copy of a published event, addressed to one subscriber group on the receiving node.
///
/// A publisher sends one copy per target group (and one per ungrouped subscriber instance).
/// The copies differ only in `group`, which is encoded last, so [`crate::codec::PreparedEvent`]
/// encodes the envelope once for all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The event; its `name` is the topic.
    pub envelope: Envelope,
    /// Whether the receiver acknowledges it (reliable events) or not (best-effort).
    pub reliable: bool,
    /// The group this copy is for; `None` for the receiver's ungrouped subscriptions.
    /// Acks, nacks and deduplication use [`MessageId::delivery_key`] of this group.
    pub group: Option<String>,
}

/// Several events on one topic, for one subscriber group, in one frame: the receiver handles
/// them in order and acknowledges the batch once, under [`MessageId::delivery_key`] of `id`
/// and `group`. Each event is also deduplicated on its own, so a batch retried after a
/// failure part-way skips the events already handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishBatch {
    /// The batch's own id (not any event's): what the batch is acked and deduplicated under.
    pub id: MessageId,
    /// The events, all with the same `name` (the topic).
    pub envelopes: Vec<Envelope>,
    /// Whether the receiver acknowledges the batch.
    pub reliable: bool,
    /// The group this copy is for; `None` for the receiver's ungrouped subscriptions.
    pub group: Option<String>,
}
