//! Sending: the operations users start (send, request, publish, ping) and what they end with.
//!
//! An **operation** is one call: its messages (one, or the events of a batch), each encoded
//! once, and its **deliveries**, one per destination (one for a point-to-point message, one
//! per audience of an event). Deliveries move on their own ([`super::delivery`]: attempts,
//! acks, retries, holds, dead letters); the operation ends when all have, and a caller waiting
//! for it is told with [`Action::Complete`].
//!
//! This file holds the operation and the sending side's state ([`Op`], [`Outbound`]), the
//! point-to-point calls (send, request, a handler's reply, ping) and the encoding they share;
//! publishing an event to every audience of its topic is in [`publish`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shoal_proto::codec::{self, EncodedHead, EncodedItem};
use shoal_proto::{Envelope, Frame, Head, Limits, MessageId, ReturnAddress, To};
use slotmap::SlotMap;
use smallvec::{SmallVec, smallvec};

use super::Engine;
use super::action::{ConnId, Done, OpId};
use super::dedup::IdHashing;
use super::delivery::{Delivery, Spec};
use super::heads::HeadCache;
use super::multicast_copies::ChannelCopies;
use super::ordering::{Destination, KeyTurns};
use super::peers::{Route, Target};
use crate::options::SendOptions;
use crate::receipts::{EventDelivery, Receipt};
use crate::{Error, Message};

mod backlog;
mod each;
mod each_request;
mod publish;
mod staged;

pub(crate) use each::{Each, MAX_PAYLOAD as MAX_TOGETHER_PAYLOAD};
pub(crate) use publish::{Events, Publishing};

/// An operation's messages (usually one, kept inline).
pub(super) type Envelopes = SmallVec<[Box<Envelope>; 1]>;
/// Each message's encoded item, with the attempt it was encoded for ([`NOT_ENCODED`] once
/// handed over: attempts count from 1).
pub(super) type Items = SmallVec<[(u32, EncodedItem); 1]>;

/// The attempt of an item handed over to its only delivery ([`Op::item`]).
const NOT_ENCODED: u32 = 0;

slotmap::new_key_type! {
    /// One destination's delivery of an operation.
    pub(crate) struct DeliveryId;
}

/// What an entry of a connection's window stands for: message `index` of a delivery, sent in
/// the delivery's attempt `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub(super) delivery: DeliveryId,
    pub(super) index: u32,
    pub(super) epoch: u32,
}

/// What a call wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    /// `send`: a receipt when acknowledged.
    Send,
    /// `request`: the reply.
    Request,
    /// `publish`: a receipt when every audience acknowledged.
    Publish,
    /// A background publish or send: nobody waits; a graceful shutdown lets it finish, and
    /// it counts towards the backlog's caps.
    Background,
    /// A handler's reply to an asynchronous request: nobody waits; a graceful shutdown lets
    /// it finish.
    Reply,
    /// `ping`: the round-trip time.
    Ping,
}

impl OpKind {
    /// Whether a caller waits for the result.
    pub(super) fn waited(self) -> bool {
        !matches!(self, Self::Background | Self::Reply)
    }
}

/// One call.
#[derive(Debug)]
pub(super) struct Op {
    pub(super) kind: OpKind,
    /// The messages, as sent (the attempt number of the last attempt), in the boxes the
    /// caller's [`Message`]s came in. Usually one: kept inline, without an allocation.
    pub(super) messages: Envelopes,
    /// Each message's item, encoded for the attempt number it carries; empty once handed
    /// over to the only delivery ([`Op::item`]).
    pub(super) items: Items,
    /// Deliveries not finished yet.
    pub(super) open: usize,
    /// Every delivery this operation started (some may have finished since: their ids no
    /// longer resolve), so stopping it costs its own deliveries, not a scan of all of them.
    pub(super) deliveries: SmallVec<[DeliveryId; 1]>,
    /// Publish: the copies delivered, and those dropped.
    pub(super) copies: Vec<EventDelivery>,
    pub(super) dropped: Vec<String>,
    /// Send and request: the receipt, once acknowledged.
    pub(super) sent: Option<Receipt>,
    /// The first failure of a delivery.
    pub(super) error: Option<Error>,
    pub(super) result: Option<Result<Done, Error>>,
    /// Request: when its caller stops waiting (its entry in
    /// [`Outbound::request_deadlines`]).
    pub(super) deadline: Option<Instant>,
    /// Publish: the copies that went on the multicast channel without a delivery each.
    pub(super) channel: Option<Box<ChannelCopies>>,
    /// Publish: the events are separate calls' (`send/each.rs`), each with a result of its
    /// own.
    pub(super) each: Option<Box<Each>>,
}

impl Op {
    /// Message `index`'s item for `attempt`, encoded again if it was last encoded for another.
    ///
    /// An operation with one delivery (and no multicast copies) sends each attempt's item
    /// once, and the next attempt carries another number: its item is handed over rather than
    /// kept, so the bytes' shared count is not raised for the copy kept and lowered again
    /// when the operation ends (two atomic operations per message, a twentieth of a
    /// background event's cost to its sender).
    pub(super) fn item(
        &mut self,
        index: usize,
        attempt: u32,
        limits: &Limits,
        arena: &mut BytesMut,
    ) -> Result<EncodedItem, Error> {
        // `open` counts the deliveries a publish will start, before they all are.
        let shared = self.open > 1 || self.deliveries.len() > 1 || self.channel.is_some();
        let (encoded_for, item) = &mut self.items[index];
        if *encoded_for == attempt {
            if shared {
                return Ok(item.clone());
            }
            *encoded_for = NOT_ENCODED;
            return Ok(std::mem::take(item));
        }
        self.messages[index].attempt = attempt;
        // Separate calls' events are encoded as lone ones are, not against a batch's head.
        let head = match self.each {
            Some(_) => None,
            None => batch_head(&self.messages),
        };
        let item =
            EncodedItem::from_envelope_in(&self.messages[index], head.as_ref(), limits, arena)?;
        if shared {
            self.items[index] = (attempt, item.clone());
        }
        Ok(item)
    }
}

/// The sending side's state.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) ops: SlotMap<OpId, Op>,
    pub(super) deliveries: SlotMap<DeliveryId, Delivery>,
    pub(super) turns: KeyTurns,
    /// Deliveries waiting for a live instance, with the epoch they started waiting in.
    pub(super) waiting: Vec<(DeliveryId, u32)>,
    /// Synchronous requests waiting for their reply, by request id (hashed with keys of this
    /// node's, as a reply's correlation id comes from the peer): the operation, and the
    /// request's place in it (0 but for requests that travel together, `each_request.rs`).
    pub(super) replies: HashMap<MessageId, (OpId, u32), IdHashing>,
    /// Pings waiting for their pong, by nonce, with when they left.
    pub(super) pongs: HashMap<u64, (OpId, Instant)>,
    /// Ordered runs are numbered so that two never merge into one frame.
    next_run: u64,
    /// Heads encoded for recent messages.
    pub(super) heads: HeadCache,
    /// Where items are encoded: one allocation shared by many.
    pub(super) arena: BytesMut,
    /// The messages of background publishes and sends in `ops`, and their payload bytes (see
    /// [`Outbound::insert_op`]).
    background: usize,
    background_bytes: usize,
    /// Background messages waiting for the turn's end ([`staged`]).
    pub(super) staged: staged::Staged,
    /// Whether a producer waits for room in the backlog ([`backlog`]).
    pub(super) room: backlog::Room,
    /// When the callers of requests stop waiting, earliest first (`ops.rs`); an entry leaves
    /// with its operation.
    pub(super) request_deadlines: BTreeMap<(Instant, OpId), Duration>,
    /// Copies on the multicast channel that wait for their member's report without a
    /// delivery of their own, in every operation ([`super::multicast_copies`]).
    pub(super) channel_copies: usize,
}

impl Outbound {
    /// Nothing sent yet; `reply_keys` seed the hashing of request ids.
    pub(super) fn new(reply_keys: [u64; 2]) -> Self {
        Self {
            ops: SlotMap::default(),
            deliveries: SlotMap::default(),
            turns: KeyTurns::default(),
            waiting: Vec::new(),
            replies: HashMap::with_hasher(IdHashing::new(reply_keys)),
            pongs: HashMap::new(),
            next_run: 0,
            heads: HeadCache::default(),
            arena: BytesMut::new(),
            background: 0,
            background_bytes: 0,
            staged: staged::Staged::default(),
            room: backlog::Room::default(),
            request_deadlines: BTreeMap::new(),
            channel_copies: 0,
        }
    }

    /// Keeps `op`; every operation goes in here and leaves through [`Outbound::remove_op`],
    /// so the count of background publishes stays right.
    pub(super) fn insert_op(&mut self, op: Op) -> OpId {
        if op.kind == OpKind::Background {
            self.background += op.messages.len();
            self.background_bytes += payload_bytes(&op.messages);
        }
        self.ops.insert(op)
    }

    /// Forgets `id`'s operation.
    pub(super) fn remove_op(&mut self, id: OpId) {
        let Some(op) = self.ops.get_mut(id) else {
            return;
        };
        let background = op.kind == OpKind::Background;
        if background {
            self.background -= op.messages.len();
            self.background_bytes -= payload_bytes(&op.messages);
        }
        // The envelopes' boxes serve the next messages made on this thread.
        crate::message::recycle(op.messages.drain(..));
        self.channel_copies -= op.channel.as_deref().map_or(0, ChannelCopies::waiting);
        if let Some(at) = op.deadline {
            self.request_deadlines.remove(&(at, id));
        }
        // Dropped where it lies: an operation is a few hundred bytes, not worth moving out.
        self.ops.remove(id);
        if background {
            self.backlog_shrank();
        }
    }

    /// The earliest instant a request's caller stops waiting.
    pub(super) fn next_request_deadline(&self) -> Option<Instant> {
        self.request_deadlines
            .first_key_value()
            .map(|((at, _), _)| *at)
    }

    /// Messages of background publishes and sends not finished yet (each operation holds
    /// its messages until then), staged ones included.
    pub(super) fn background_publishes(&self) -> usize {
        self.background + self.staged.count()
    }

    /// The backlog of background messages shrank: a producer waiting for room may go on
    /// ([`backlog`]).
    pub(super) fn backlog_shrank(&mut self) {
        let (held, bytes) = (self.background_publishes(), self.background_bytes());
        self.room.check(held, bytes);
    }

    /// The payload bytes of [`Outbound::background_publishes`].
    pub(super) fn background_bytes(&self) -> usize {
        self.background_bytes + self.staged.bytes()
    }

    /// Operations nobody waits for that are still going (background publishes, asynchronous
    /// replies): a graceful shutdown waits for them.
    pub(super) fn background_open(&self) -> usize {
        self.ops
            .values()
            .filter(|op| !op.kind.waited() && op.open > 0)
            .count()
    }

    pub(super) fn next_run(&mut self) -> u64 {
        self.next_run += 1;
        self.next_run
    }
}

impl<H: Clone> Engine<H> {
    /// Sends `msg` to one instance of `service`; the result is a [`Done::Sent`] receipt once
    /// that instance's handler acknowledged it. `msg`'s return address (if any) is already
    /// filled in.
    pub(crate) fn send(
        &mut self,
        service: &str,
        msg: Message,
        options: &SendOptions,
        now: Instant,
    ) -> Result<OpId, Error> {
        if let Some(policy) = &options.retry {
            policy.check("SendOptions::retry")?;
        }
        let spec = Spec {
            fail_fast: options.fail_fast,
            ..Spec::point_to_point(
                options
                    .retry
                    .clone()
                    .unwrap_or_else(|| self.config.retry.clone()),
            )
        };
        self.check_service(service)?;
        let target = Target::service(self.names.get(service));
        self.point_to_point(OpKind::Send, target, msg, spec, now)
    }

    /// Refuses a target service name no node can have: empty, or longer than the limits
    /// allow (as a message name that long is refused), before anything is sent.
    pub(super) fn check_service(&self, service: &str) -> Result<(), Error> {
        if service.is_empty() {
            return Err(Error::EmptyServiceName);
        }
        let max = self.config.limits.max_name_len;
        if service.len() > max {
            return Err(Error::Encode(shoal_proto::EncodeError::LimitExceeded {
                limit: "max_name_len",
                actual: service.len(),
                max,
            }));
        }
        Ok(())
    }

    /// Sends `msg` as a synchronous request to one instance of `service`; the result is the
    /// reply ([`Done::Replied`]). `msg`'s return address names this node.
    pub(crate) fn request(
        &mut self,
        service: &str,
        msg: Message,
        timeout: Duration,
        now: Instant,
    ) -> Result<OpId, Error> {
        self.check_service(service)?;
        let id = msg.id();
        // Replies find their request by its id: a second request with it would take the
        // first one's place, and one of the two would wait for a reply that went to the other.
        if self.out.replies.contains_key(&id) {
            return Err(Error::DuplicateRequest(id));
        }
        let spec = Spec::point_to_point(self.config.retry.clone());
        let target = Target::service(self.names.get(service));
        let op = self.point_to_point(OpKind::Request, target, msg, spec, now)?;
        self.out.replies.insert(id, (op, 0));
        self.time_out_request(op, timeout, now); // ops.rs
        Ok(op)
    }

    /// Sends a handler's reply to an asynchronous request's reply channel: a reliable message
    /// nobody waits for.
    pub(super) fn send_reply(
        &mut self,
        addr: &ReturnAddress,
        reply: Message,
        now: Instant,
    ) -> Result<(), Error> {
        let target = Target {
            service: self.names.get(&addr.service),
            node: addr.node,
        };
        let spec = Spec::point_to_point(self.config.retry.clone());
        self.point_to_point(OpKind::Reply, target, reply, spec, now)
            .map(|_| ())
    }

    pub(super) fn point_to_point(
        &mut self,
        kind: OpKind,
        target: Target,
        msg: Message,
        spec: Spec,
        now: Instant,
    ) -> Result<OpId, Error> {
        self.accepting(kind)?;
        let mut envelope = msg.env;
        envelope.attempt = 1;
        let limits = &self.config.limits;
        let item = EncodedItem::from_envelope_in(&envelope, None, limits, &mut self.out.arena)?;
        let head = encoded_head(
            &mut self.out.heads,
            &envelope,
            To::Handler,
            (spec.reliable, spec.ordered),
            std::iter::once(&item),
            limits,
        )?;
        let route = Route::Service(target);
        let slot = envelope
            .partition_key
            .clone()
            .map(|k| (Destination::of(&route), k));
        let op = self
            .out
            .insert_op(new_op(kind, smallvec![envelope], smallvec![(1, item)], 1));
        self.add_delivery(op, route, head, spec, slot, now);
        Ok(op)
    }

    /// Takes `messages` for their first attempt, each encoded as an item: under the head a
    /// batch's events share when `batched` ([`batch_head`]), on its own otherwise.
    fn first_attempt(
        &mut self,
        messages: &mut Events,
        batched: bool,
    ) -> Result<(Envelopes, Items), Error> {
        let mut envelopes = Envelopes::with_capacity(messages.len());
        for message in messages.drain(..) {
            let mut envelope = message.env;
            envelope.attempt = 1;
            envelopes.push(envelope);
        }
        let head = if batched {
            batch_head(&envelopes)
        } else {
            None
        };
        let limits = &self.config.limits;
        let mut items = SmallVec::with_capacity(envelopes.len());
        for envelope in &envelopes {
            let arena = &mut self.out.arena;
            items.push((
                1,
                EncodedItem::from_envelope_in(envelope, head.as_ref(), limits, arena)?,
            ));
        }
        Ok((envelopes, items))
    }

    /// Pings one live instance of `service`; the result is the round-trip time
    /// ([`Done::Pong`]). `None` when no instance is connected.
    pub(crate) fn ping(&mut self, service: &str, nonce: u64, now: Instant) -> Option<OpId> {
        let route = Route::Service(Target::service(self.names.get(service)));
        let turn = self.turn();
        let conn = self
            .peers
            .choose(&self.conns, &route, &[], None, turn, now)?;
        let op = self
            .out
            .insert_op(new_op(OpKind::Ping, SmallVec::new(), SmallVec::new(), 1));
        self.out.pongs.insert(nonce, (op, now));
        self.queue_control(conn, &Frame::Ping(nonce));
        Some(op)
    }

    /// A pong came back.
    pub(super) fn on_pong(&mut self, nonce: u64, now: Instant) {
        if let Some((op, sent)) = self.out.pongs.remove(&nonce) {
            self.complete(op, Ok(Done::Pong(now.saturating_duration_since(sent))));
        }
    }

    /// A synchronous reply came back: it answers the request (the handler ran, so the request
    /// is not retried), and no ack comes with it.
    pub(super) fn on_reply(&mut self, reply: Box<Envelope>, now: Instant) {
        let Some((op, index)) = reply
            .correlation_id
            .and_then(|id| self.out.replies.remove(&id))
        else {
            tracing::debug!(id = %reply.id, "late reply to a request that already ended; dropped");
            return;
        };
        // One of separate calls' requests (send/each_request.rs): its caller's answer alone.
        if self.out.ops.get(op).is_some_and(|o| o.each.is_some()) {
            return self.reply_one(op, index, Message { env: reply }, now);
        }
        // The reply is the request's answer; no ack comes with it (a node of an earlier
        // release sends one first, which ends the attempt as usual and leaves nothing here).
        self.answer_deliveries(op, now);
        // The decoded envelope's box becomes the message's: no copy, no allocation.
        self.complete(op, Ok(Done::Replied(Message { env: reply })));
    }

    /// Queues a control frame on `conn`.
    pub(super) fn queue_control(&mut self, conn: ConnId, frame: &Frame) {
        if let Some(c) = self.conns.get_mut(conn)
            && c.queue_control(frame, &self.config.limits)
        {
            self.transmit(conn);
        }
    }
}

/// The head the events of a batch share, their key included (`None` for a lone message,
/// whose item needs none). Each event is encoded as an item under it, carrying whatever of
/// its own differs from the first event's.
fn batch_head(messages: &[Box<Envelope>]) -> Option<Head> {
    match messages {
        [first, _, ..] => Some(Head::of(first, To::Handler, true, true)),
        _ => None,
    }
}

fn new_op(kind: OpKind, messages: Envelopes, items: Items, open: usize) -> Op {
    Op {
        kind,
        messages,
        items,
        open,
        deliveries: SmallVec::new(),
        // A publish's receipt lists every copy: room for them at once.
        copies: match kind {
            OpKind::Publish => Vec::with_capacity(open),
            _ => Vec::new(),
        },
        dropped: Vec::new(),
        sent: None,
        error: None,
        result: None,
        deadline: None,
        channel: None,
        each: None,
    }
}

/// The encoded head of `envelope`'s run for `to`, checked with `items` against the frame
/// limit: a message (or an ordered batch, which travels as one frame) that can never be sent
/// is refused before anything is.
fn encoded_head<'a>(
    heads: &mut HeadCache,
    envelope: &Envelope,
    to: To,
    (reliable, ordered): (bool, bool),
    items: impl Iterator<Item = &'a EncodedItem> + Clone,
    limits: &Limits,
) -> Result<Arc<EncodedHead>, Error> {
    let head = heads.get(envelope, &to, reliable, ordered, limits)?;
    let longest = if ordered {
        codec::messages_len(&head, items)
    } else {
        items
            .map(|item| codec::messages_len(&head, [item]))
            .max()
            .unwrap_or(0)
    };
    let max = limits.max_frame_len.min(codec::MAX_FRAME_LEN_CAP);
    if longest - codec::LENGTH_PREFIX > max {
        return Err(Error::Encode(shoal_proto::EncodeError::LimitExceeded {
            limit: "max_frame_len",
            actual: longest - codec::LENGTH_PREFIX,
            max,
        }));
    }
    Ok(head)
}

/// The payload bytes of `messages`.
fn payload_bytes(messages: &Envelopes) -> usize {
    messages.iter().map(|m| m.payload.len()).sum()
}
