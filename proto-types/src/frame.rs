//! Frames: the units that cross a Shoal connection.
//!
//! Each side of a connection opens one long-lived unidirectional QUIC stream and writes
//! length-prefixed frames on it ([`crate::codec`]). The first frame on every stream is a
//! [`Hello`]; after that any frame may follow in any order.
//!
//! # Messages travel in runs
//!
//! Every message (command, document, asynchronous reply, each subscriber group's copy of an
//! event) travels in a [`Messages`] frame: one [`Head`] with what a run of messages shares
//! (kind, name or topic, version, content type, partition key, return address, who it is
//! for, whether it is acknowledged) and the [`Item`]s that differ (id, attempt, timestamp,
//! headers, payload). A sender that has many messages queued for one connection writes them
//! in as few frames as their heads allow, so the shared part is encoded and decoded once.
//!
//! Each item gets the next **sequence number** of its stream: a frame's items are numbered
//! `first_seq`, `first_seq + 1`, .... Acknowledgements name sequence numbers in ranges
//! ([`Ack`]), so one small frame acknowledges any number of messages; a receiver acknowledges
//! a message on the connection it came on, and a sender that loses a connection retries what
//! was not acknowledged on another one, with new numbers (and the same message ids, which the
//! receiver's dedup window recognises).

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::envelope::{Envelope, MessageKind, ReturnAddress};
use crate::id::{GroupKey, MessageId, NodeId};
use crate::multicast::{ChannelDemote, ChannelHello, ChannelKey, ChannelNak, ChannelStatus};

pub(crate) mod item_wire;

/// The protocol version spoken by this crate. Also part of the ALPN string ([`ALPN`]).
///
/// Version 2 carries messages in runs numbered per stream ([`Messages`], [`Ack`]); version 1
/// nodes (one frame and one id-named ack per message) cannot talk to it. Version 3 carries a
/// message's partition key in its [`Item`] (in the [`Head`] only for an ordered batch, whose
/// events share one), so messages under different keys share a run. Version 4 lays an
/// [`Item`] out for a message without optional fields: its id in 16 bytes, its timestamp as
/// an offset from its id's time, one byte of flags for the optional fields (84 bytes for a
/// 64-byte event, 96 before; `frame/item_wire.rs`).
pub const PROTOCOL_VERSION: u16 = 4;

/// The ALPN protocol name; a peer that speaks another version fails the TLS handshake.
pub const ALPN: &[u8] = b"shoal/4";

/// Everything that crosses a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Frame {
    /// First frame on a stream: who is speaking.
    Hello(Hello),
    /// A run of messages that share a head, numbered from `first_seq`.
    Messages(Box<Messages>),
    /// The listed sequence numbers were handled (or were duplicates of handled messages).
    Ack(Ack),
    /// A message was not handled.
    Nack(Nack),
    /// The answer to a synchronous request (its `correlation_id` is the request's id); it also
    /// stands for the request's [`Frame::Ack`], which is not sent. Not numbered and not
    /// acknowledged: exactly one call waits for it.
    Reply(Box<Envelope>),
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
    // Multicast channels (see [`crate::multicast`]). Appended after every older variant, so
    // their numbers are new and a frame of an older kind encodes as it always did. Only a
    // node that says [`Frame::ChannelHello`] is sent the others.
    /// The sender publishes and subscribes on this LAN multicast group: a peer on the same
    /// group may be offered a channel. Sent after the hello, only by nodes with a group.
    ChannelHello(ChannelHello),
    /// A publisher's channel key for one epoch (publisher to subscriber).
    ChannelKey(ChannelKey),
    /// A subscriber's progress on a channel (subscriber to publisher).
    ChannelStatus(ChannelStatus),
    /// Datagrams a subscriber misses (subscriber to publisher).
    ChannelNak(ChannelNak),
    /// A repair for one subscriber: a sealed datagram as the publisher stored it (publisher to
    /// subscriber).
    ChannelRepair(Bytes),
    /// The subscriber's events come by unicast from now on (publisher to subscriber).
    ChannelDemote(ChannelDemote),
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

/// Who the messages of a run are for, on the receiving node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum To {
    /// The handler registered for the message's name (point-to-point).
    Handler,
    /// The receiver's subscriptions of this group (one group's copy of an event).
    Group(SmolStr),
    /// The receiver's subscriptions without a group (an every-instance copy of an event).
    Instance,
}

impl To {
    /// The group this copy is for, if it is a group's copy.
    pub fn group(&self) -> Option<&str> {
        match self {
            Self::Group(group) => Some(group),
            Self::Handler | Self::Instance => None,
        }
    }

    /// The key a message is acknowledged and deduplicated under on the receiver: its id for a
    /// point-to-point message or an every-instance copy, [`MessageId::delivery_key`] of the
    /// group for a group's copy (a node in two groups handles the event once for each).
    pub fn delivery_key(&self, id: MessageId) -> MessageId {
        id.delivery_key(self.group())
    }

    /// The group's part of [`To::delivery_key`], for the many messages of one run.
    pub fn group_key(&self) -> GroupKey {
        GroupKey::of(self.group())
    }
}

/// What the messages of a run share.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Head {
    /// Command, event, document or reply.
    pub kind: MessageKind,
    /// The message type (for events, the topic).
    pub name: SmolStr,
    /// Version of the message type's schema.
    pub version: u16,
    /// MIME type of the payloads; empty means unspecified bytes.
    pub content_type: SmolStr,
    /// The partition key every item shares: set only on an [`ordered`](Self::ordered) run (a
    /// batch, whose events share one key). The messages of an unordered run carry their keys
    /// in their items ([`Item::partition_key`]), so messages under different keys share a run.
    pub partition_key: Option<SmolStr>,
    /// Where replies go, for requests.
    pub reply_to: Option<ReturnAddress>,
    /// Who the messages are for.
    pub to: To,
    /// Whether the receiver acknowledges each message (`false`: best-effort events).
    pub reliable: bool,
    /// Whether the receiver handles the items one after the other, stopping at the first
    /// failure (a batch of events, which must be handled in order). Items of an unordered run
    /// are handled concurrently.
    pub ordered: bool,
}

impl Head {
    /// The head of `envelope`, for a run addressed `to`; with `envelope`'s partition key if
    /// the run is `ordered` (see [`Head::partition_key`]).
    pub fn of(envelope: &Envelope, to: To, reliable: bool, ordered: bool) -> Self {
        Self {
            kind: envelope.kind,
            name: envelope.name.clone(),
            version: envelope.version,
            content_type: envelope.content_type.clone(),
            partition_key: envelope.partition_key.clone().filter(|_| ordered),
            reply_to: envelope.reply_to.clone(),
            to,
            reliable,
            ordered,
        }
    }

    /// Whether `envelope` shares this head's fields (and so can travel in its run). An
    /// unordered head without a partition key fits a message under any key (the item carries
    /// it); an ordered one fits only messages under its own key, or without one if it has none.
    #[inline]
    pub fn fits(&self, envelope: &Envelope) -> bool {
        // Cheapest first. An empty content type (the usual one) is told by its length alone;
        // inlined, for the sender checks every message of a batch against its head.
        self.kind == envelope.kind
            && self.version == envelope.version
            && self.name == envelope.name
            && (self.content_type.is_empty() && envelope.content_type.is_empty()
                || self.content_type == envelope.content_type)
            && (self.partition_key == envelope.partition_key
                || !self.ordered && self.partition_key.is_none())
            && self.reply_to == envelope.reply_to
    }
}

/// What differs between the messages of a run.
///
/// Messages that share a head travel in one run. Each carries its own partition key unless the
/// head carries one for all. The events of one batch share their topic and key but may differ
/// in kind, version, content type or return address (an event published in two versions at
/// once, say): such an item carries its own in [`Item::differs`].
///
/// On the wire an item is laid out for its common case, a message with none of the optional
/// fields (its `Serialize` and `Deserialize` are written by hand for that; `frame/item_wire.rs`
/// describes the bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The message id; the same on every attempt.
    pub id: MessageId,
    /// 1 on the first delivery, then 2, 3, ... on redeliveries of the same id.
    pub attempt: u32,
    /// Unix time in milliseconds when the message was created.
    pub timestamp_ms: u64,
    /// For replies: the id of the request being answered.
    pub correlation_id: Option<MessageId>,
    /// Its partition key, when its head carries none ([`Head::partition_key`]). When both
    /// carry one, the item's is the message's.
    pub partition_key: Option<SmolStr>,
    /// Free-form string metadata, in the order they were set.
    pub headers: Vec<(String, String)>,
    /// The body, opaque to Shoal.
    pub payload: Bytes,
    /// The head's fields this message does not share, if any.
    pub differs: Option<Box<Differs>>,
}

/// The fields of a message that differ from its run's head (see [`Item`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Differs {
    /// Its kind.
    pub kind: MessageKind,
    /// Its schema version.
    pub version: u16,
    /// Its content type.
    pub content_type: SmolStr,
    /// Its return address.
    pub reply_to: Option<ReturnAddress>,
}

impl Item {
    /// The item part of `envelope`, which shares the head of its run (a head without a
    /// partition key: the item carries `envelope`'s).
    pub fn of(envelope: &Envelope) -> Self {
        Self {
            id: envelope.id,
            attempt: envelope.attempt,
            timestamp_ms: envelope.timestamp_ms,
            correlation_id: envelope.correlation_id,
            partition_key: envelope.partition_key.clone(),
            headers: envelope.headers.clone(),
            payload: envelope.payload.clone(),
            differs: None,
        }
    }

    /// The item part of `envelope` in a run under `head`: with its own kind, version, content
    /// type and return address where they differ from the head's, and its partition key
    /// unless the head carries it. Name and partition key (if the head has one) must be the
    /// head's.
    pub fn under(envelope: &Envelope, head: &Head) -> Self {
        let mut item = Self::of(envelope);
        if head.partition_key.is_some() {
            item.partition_key = None;
        }
        if !head.fits(envelope) {
            item.differs = Some(Box::new(Differs {
                kind: envelope.kind,
                version: envelope.version,
                content_type: envelope.content_type.clone(),
                reply_to: envelope.reply_to.clone(),
            }));
        }
        item
    }

    /// The whole message: this item under `head`.
    ///
    /// Inlined, so that a caller that boxes the envelope can build it in place.
    #[inline]
    pub fn into_envelope(self, head: &Head) -> Envelope {
        let Self {
            id,
            attempt,
            timestamp_ms,
            correlation_id,
            partition_key,
            headers,
            payload,
            differs,
        } = self;
        let mut envelope = Envelope {
            id,
            kind: head.kind,
            name: head.name.clone(),
            version: head.version,
            content_type: head.content_type.clone(),
            headers,
            correlation_id,
            reply_to: head.reply_to.clone(),
            partition_key: match partition_key {
                Some(key) => Some(key),
                None => head.partition_key.clone(),
            },
            attempt,
            timestamp_ms,
            payload,
        };
        if let Some(differs) = differs {
            envelope.differ(*differs);
        }
        envelope
    }
}

/// A run of messages sharing one head; item `i` has sequence number `first_seq + i`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    /// The sequence number of the first item.
    pub first_seq: u64,
    /// What the items share.
    pub head: Head,
    /// The messages.
    pub items: Vec<Item>,
}

impl Messages {
    /// The sequence numbers of the items.
    pub fn seqs(&self) -> SeqRange {
        SeqRange {
            start: self.first_seq,
            len: self.items.len() as u64,
        }
    }
}

/// Consecutive sequence numbers `start .. start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeqRange {
    /// The first number.
    pub start: u64,
    /// How many.
    pub len: u64,
}

impl SeqRange {
    /// The numbers in the range (empty if it would overflow).
    pub fn iter(self) -> impl Iterator<Item = u64> {
        let end = self.start.checked_add(self.len).unwrap_or(self.start);
        self.start..end
    }
}

/// Acknowledgements, in ranges of sequence numbers: one frame acknowledges any number of
/// messages received on this connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The handled sequence numbers.
    pub ranges: Vec<SeqRange>,
}

/// Why a message was not handled, so a sender (and its dead letters) can tell refusals apart
/// without reading text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NackCode {
    /// The handler returned an error (or panicked).
    HandlerFailed,
    /// The receiver has no handler for the message's name.
    NoHandler,
    /// The receiver has no subscription of the copy's group for its topic.
    NoSubscription,
    /// The receiver is shutting down.
    ShuttingDown,
    /// The message breaks one of the receiver's limits.
    LimitExceeded,
    /// The run's items or head are not valid (for example a batch larger than the receiver
    /// can track).
    Invalid,
    /// A request handled before whose reply is no longer kept: not run twice.
    ReplyNotKept,
    /// An earlier item of the same ordered run failed, so this one was not run.
    Skipped,
    /// The receiver's policy does not allow this sender to send this message.
    NotAuthorized,
}

/// A negative acknowledgement: the handler failed or the message was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The sequence number of the message that was not handled.
    pub seq: u64,
    /// Whether the sender should try again (perhaps on another instance).
    pub retryable: bool,
    /// Why, as a code.
    pub code: NackCode,
    /// Why, for people: shown in dead letters.
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
    pub group: Option<SmolStr>,
}
