//! What the engine asks of its driver, and the handles it gives out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::{Head, Item, NodeId};
use smallvec::SmallVec;

use crate::handler::HandlerError;
use crate::{Message, NodeEvent, PublishReceipt, Receipt};

slotmap::new_key_type! {
    /// A connection the engine knows of. Never reused, so a stale id names nothing.
    pub(crate) struct ConnId;
    /// A user's call (a send, request, publish or ping) or an internal one (an asynchronous
    /// reply, a background publish), from the call until its result is taken.
    pub(crate) struct OpId;
    /// One run of handlers for one received message (or, for an ordered run, for its
    /// messages one after the other).
    pub(crate) struct TaskId;
}

/// Something the engine needs done. The driver takes actions with
/// [`super::Engine::poll_action`] after every call into the engine.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "actions live in a queue for moments; boxing a handler run would cost an allocation per message"
)]
pub(crate) enum Action<H> {
    /// Frames wait to be written on this connection: call [`super::Engine::poll_transmit`].
    Transmit(ConnId),
    /// Run these handlers, one after the other, on this message, and report with
    /// [`super::Engine::handler_done`].
    Run(Run<H>),
    /// An operation ended: its result is ready with [`super::Engine::take_result`].
    Complete(OpId),
    /// One request of an operation made of separate calls' requests (`send/each_request.rs`)
    /// was answered, or failed: its caller hears now, while the others still wait. The
    /// operation's own [`Action::Complete`] follows once none waits.
    Answered {
        /// The operation.
        op: OpId,
        /// The request's place in the operation.
        index: u32,
        /// Its reply, or why it has none.
        result: Result<Message, crate::Error>,
    },
    /// Background messages were staged (`send/staged.rs`): call
    /// [`super::Engine::send_staged`] once the work ready now is done and their producer
    /// paused (not at once: the messages sent meanwhile join them).
    SendStaged,
    /// A producer waiting for room in the backlog of background messages may go on
    /// ([`super::Engine::background_room`]): wake whoever waits
    /// ([`crate::Node::wait_for_background_room`]).
    BackgroundRoom,
    /// Send this datagram to the multicast group (`Config::multicast`): one sealed datagram
    /// of the node's channel, for every subscriber on the LAN at once.
    Multicast(
        #[cfg_attr(
            not(test),
            allow(dead_code, reason = "the runtime glue (DESIGN-NOTES) carries it")
        )]
        bytes::Bytes,
    ),
    /// Close this connection, after writing what is queued on it when `flush` says so.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why; the transport turns it into a close code.
        reason: CloseReason,
        /// Write what is queued first (acks, a goodbye).
        flush: bool,
    },
    /// Stop reading this connection: its handlers are all busy.
    PauseReading(ConnId),
    /// Read this connection again.
    ResumeReading(ConnId),
    /// Something users can watch happened ([`crate::Node::events`]).
    Event(NodeEvent),
    /// The peers, or what they subscribe to, changed: whoever waits for an instance or a
    /// subscriber looks again.
    PeersChanged,
    /// Connect to `node`, announced by discovery at `addrs`: a delivery needs it and no
    /// connection stands for it. The connection comes back through
    /// [`super::Engine::connection_up`] like any other. Nothing reports a failed dial: while
    /// deliveries still wait for `node`, the engine asks again, 1 s after the first ask, then
    /// doubling the wait up to 8 s while its asks bring no connection (`directory.rs`).
    Connect {
        /// The instance.
        node: NodeId,
        /// Where its announcement says it listens.
        addrs: Vec<SocketAddr>,
    },
}

/// Handlers to run on one message.
#[derive(Debug)]
pub(crate) struct Run<H> {
    /// Report the outcome under this id.
    pub(crate) task: TaskId,
    /// Run in order; the message is handled when all succeeded.
    pub(crate) handlers: SmallVec<[H; 1]>,
    /// The message.
    pub(crate) message: Message,
    /// The messages that follow it in a run, handed over together so the driver runs them
    /// one after the other in one trip (`receive.rs`), each outcome reported in turn. In an
    /// ordered run each waits for the one before to succeed: after a failure the driver runs
    /// none of the rest (the engine refuses them). In an unordered run a failure stops
    /// nothing, and from the first handler that has to wait the driver runs none of the rest
    /// but hands them back ([`crate::engine::Engine::spread`]). Usually none.
    pub(crate) more: Option<Box<Following>>,
}

/// The messages of a run handed over after a [`Run`]'s first: its items, in order, with
/// their run's head. Each becomes a [`Message`] only when its turn comes
/// ([`Following::message`]), so one envelope at a time is alive, not a run's worth.
#[derive(Debug)]
pub(crate) struct Following {
    head: Arc<Head>,
    items: VecDeque<Item>,
    ordered: bool,
}

impl Following {
    /// `items` of the run with `head`, `ordered` or not.
    pub(crate) fn new(head: Arc<Head>, items: VecDeque<Item>, ordered: bool) -> Self {
        Self {
            head,
            items,
            ordered,
        }
    }

    /// Whether each message waits for the one before it to succeed (see [`Run::more`]).
    pub(crate) fn ordered(&self) -> bool {
        self.ordered
    }

    /// Whether every message was taken.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The messages not taken yet.
    pub(super) fn into_items(self) -> VecDeque<Item> {
        self.items
    }

    /// The next message, if any is left. Inlined, as [`Item::into_envelope`] is, so the
    /// envelope can be built in its box.
    #[inline]
    pub(crate) fn message(&mut self) -> Option<Message> {
        let item = self.items.pop_front()?;
        Some(Message::from_envelope(item.into_envelope(&self.head)))
    }
}

/// How a run of handlers ended: the replies to send (one per handler, when the message asked
/// for a reply; the driver makes them, with fresh ids), or the first failure.
pub(crate) type HandlerOutcome = Result<Replies, HandlerError>;

/// A run's replies: usually none or one (one handler), kept inline.
pub(crate) type Replies = SmallVec<[Message; 1]>;

/// What an operation ended with.
///
/// Kept small: it waits in every operation's slot, so the reply is boxed.
#[derive(Debug)]
pub(crate) enum Done {
    /// A point-to-point message was acknowledged.
    Sent(Receipt),
    /// A request was answered.
    Replied(Message),
    /// Every audience of an event acknowledged (or was dropped).
    Published(PublishReceipt),
    /// The lone events of separate `publish` calls that travelled together
    /// (`send/each.rs`): each one's result, in the order they were handed over.
    PublishedEach(Vec<Result<PublishReceipt, crate::Error>>),
    /// The commands of separate `send` calls that travelled together (`send/each.rs`): each
    /// one's result, in the order they were handed over.
    SentEach(Vec<Result<Receipt, crate::Error>>),
    /// The requests of separate `request` calls that travelled together
    /// (`send/each_request.rs`) were each answered or failed, and each caller was told on its
    /// own ([`Action::Answered`]): nothing is left to tell.
    RepliedEach,
    /// A ping was answered after this long.
    Pong(Duration),
}

/// Why the engine wants a connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum CloseReason {
    /// The node shuts down, or the peer said goodbye.
    Shutdown,
    /// The peer broke the protocol.
    Protocol(String),
    /// Another connection to the same node won (see [`super::Engine::connection_up`]).
    Duplicate,
    /// The peer does not read its stream: too much waits to be written to it.
    NotReading,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shutdown => f.write_str("shutdown"),
            Self::Protocol(reason) => write!(f, "protocol error: {reason}"),
            Self::Duplicate => f.write_str("duplicate connection"),
            Self::NotReading => f.write_str("peer is not reading its stream"),
        }
    }
}
