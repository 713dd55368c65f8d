//! The message envelope: everything a receiver learns about one message.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::id::{MessageId, NodeId};

/// What a message asks of its receiver (the body kinds of enterprise messaging).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageKind {
    /// "Do this": handled by exactly one instance of the receiving service.
    Command,
    /// "This happened": fanned out to subscribers.
    Event,
    /// "Here is data": handled like a command, but asks for nothing to be done.
    Document,
    /// The answer to a request; carries the request's id as its correlation id.
    Reply,
}

/// Where the reply to a request should go.
///
/// A synchronous `request` names its own node and leaves `channel` empty, so the reply
/// resolves the waiting call. An asynchronous request names a channel that a reply handler is
/// registered on; `node` is then a preference, and any instance of `service` may take the
/// reply if that node is gone.
///
/// Both names are [`SmolStr`]s, like every name of a message: a short one (up to 23 bytes)
/// is kept inline, so a request's return address allocates nothing when it is made, copied
/// or decoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReturnAddress {
    /// The service the reply is sent to.
    pub service: SmolStr,
    /// The instance that asked, if the reply should go back to it.
    pub node: Option<NodeId>,
    /// The message name the reply is sent under; empty for a synchronous request.
    pub channel: SmolStr,
}

/// One message as it travels between nodes.
///
/// The header fields are plain data: the node fills in ids, timestamps and attempt numbers,
/// and limits on sizes are enforced by the codec ([`crate::Limits`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique, time-ordered id; stays the same across retries so receivers can drop duplicates.
    pub id: MessageId,
    /// Command, event, document or reply.
    pub kind: MessageKind,
    /// The message type (for events, the topic), e.g. `create-invoice` or `order.created`.
    pub name: SmolStr,
    /// Version of the message type's schema, so readers can tolerate change.
    pub version: u16,
    /// MIME type of the payload, e.g. `application/json`; empty means unspecified bytes.
    /// Inline when short, like names: setting one allocates nothing, and an empty one points
    /// into itself (an empty `String` points to address 1, and glibc's AVX-512 `memcmp`
    /// paid for a fault-suppressed masked load there on every run lookup: 3-4 % of a
    /// publisher's CPU time).
    pub content_type: SmolStr,
    /// Free-form string metadata (tracing ids, tenant, ...), in the order they were set.
    pub headers: Vec<(String, String)>,
    /// For replies: the id of the request being answered.
    pub correlation_id: Option<MessageId>,
    /// For requests: where the reply goes.
    pub reply_to: Option<ReturnAddress>,
    /// Messages with the same key are handled in order by one instance.
    pub partition_key: Option<SmolStr>,
    /// 1 on the first delivery, then 2, 3, ... on redeliveries of the same id.
    pub attempt: u32,
    /// Unix time in milliseconds when the message was created.
    pub timestamp_ms: u64,
    /// The body, opaque to Shoal.
    pub payload: Bytes,
}

impl Envelope {
    /// Takes the fields of `differs` (a message that does not share its run's head's).
    #[cold]
    pub(crate) fn differ(&mut self, differs: crate::Differs) {
        self.kind = differs.kind;
        self.version = differs.version;
        self.content_type = differs.content_type;
        self.reply_to = differs.reply_to;
    }

    /// An envelope with the given identity and body, schema version 1, and no content type,
    /// headers, correlation id, return address or partition key; attempt 0 (the sender sets
    /// it per delivery).
    pub fn new(
        id: MessageId,
        kind: MessageKind,
        name: impl Into<SmolStr>,
        timestamp_ms: u64,
        payload: Bytes,
    ) -> Self {
        Self {
            id,
            kind,
            name: name.into(),
            version: 1,
            content_type: SmolStr::default(),
            headers: Vec::new(),
            correlation_id: None,
            reply_to: None,
            partition_key: None,
            attempt: 0,
            timestamp_ms,
            payload,
        }
    }
}
