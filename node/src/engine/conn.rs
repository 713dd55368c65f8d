//! One connection as the engine sees it: who is on the other end, the messages it has sent
//! there and not yet had answered, what waits to be written, and what it owes the peer (acks).
//!
//! Writing is pulled, not pushed: the engine queues items and frames here and tells the driver
//! once that the connection has something to write; the driver's writer then takes
//! everything queued in one [`Conn::transmit`], so messages queued together leave together
//! (in as few runs as their heads allow) with every ack owed so far, and a lone message on an
//! idle connection leaves at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use shoal_proto::codec::{self, EncodedHead, EncodedItem};
use shoal_proto::{Frame, Goodbye, Limits, NodeId, Subscription};
use smallvec::SmallVec;

use super::action::TaskId;
use super::ranges::RangeSet;
use super::send::InFlight;
use super::window::Window;

/// Most acknowledged ranges in one frame.
const MAX_RANGES_PER_ACK: usize = 4096;

/// Something queued for the writer.
#[derive(Debug)]
enum Outgoing {
    /// A message: its item, under a head it may share with its neighbours.
    Item {
        seq: u64,
        head: Arc<EncodedHead>,
        /// Items of one ordered run share a run number (and never join another run); 0 for
        /// unordered items, which join any neighbour with an equal head.
        run: u64,
        item: EncodedItem,
        /// Whose item it is, and which attempt: an item whose attempt ended before it was
        /// written is not written.
        owner: Option<Owner>,
    },
    /// A frame encoded when it was queued.
    Frame(Bytes),
}

/// The attempt an item belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) delivery: super::send::DeliveryId,
    pub(super) epoch: u32,
}

/// What [`Conn::transmit`] wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Transmit {
    /// The goodbye was written: finish the stream after these bytes.
    pub(crate) finish: bool,
    /// More is queued than fitted in this write: call again after writing.
    pub(crate) more: bool,
}

/// A live connection to a peer node.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) node: NodeId,
    pub(super) service: String,
    /// The dedup keys' part of messages from `service` ([`super::sender`]), worked out once.
    pub(super) sender: super::sender::SenderKey,
    pub(super) addr: SocketAddr,
    pub(super) listen_addrs: Vec<SocketAddr>,
    /// Which node dialled: decides which of two duplicate connections survives.
    pub(super) dialer: NodeId,
    /// The peer said goodbye, or lost a duplicate race: nothing new goes to it.
    pub(super) leaving: bool,
    /// The reason the peer gave in its goodbye.
    pub(super) goodbye: Option<String>,
    /// The topic patterns the peer subscribed to, with their groups.
    pub(super) subscriptions: Vec<Subscription>,
    /// Messages sent here and not yet answered.
    pub(super) window: Window<InFlight>,
    /// Deliveries waiting for room in the window, with the epoch they waited in.
    pub(super) waiting_room: VecDeque<(super::send::DeliveryId, u32)>,
    /// Handlers running for this peer's messages.
    pub(super) running: usize,
    /// Handler runs admitted while all handler slots were taken, in arrival order.
    pub(super) backlog: VecDeque<TaskId>,
    /// Reading is paused because of the backlog.
    pub(super) paused: bool,
    next_seq: u64,
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    /// Items queued (for the best-effort "queue full" rule).
    queued_items: usize,
    /// How many times the driver took something from the queue (see [`super::backpressure`]).
    taken: u64,
    /// The queue is over its byte cap: the value of `taken` when it was seen so.
    full_at: Option<u64>,
    acks: RangeSet,
    /// A goodbye to write after everything queued.
    farewell: Option<String>,
    /// This node said goodbye here (queued or written): it takes no new message, in either
    /// direction, for good (`farewell` is taken when the goodbye is written).
    said_goodbye: bool,
    /// The driver has been told there is something to write and has not taken it yet.
    signalled: bool,
    /// When the driver last took bytes to write (see [`super::Engine::write_at_once`]).
    pub(super) last_write: Option<Instant>,
    /// How the connection is used, for closing it once idle (see [`super::lazy`]).
    pub(super) usage: super::usage::Usage,
}

impl Conn {
    pub(super) fn new(
        node: NodeId,
        service: String,
        sender: super::sender::SenderKey,
        addr: SocketAddr,
        listen_addrs: Vec<SocketAddr>,
        dialer: NodeId,
        usage: super::usage::Usage,
    ) -> Self {
        Self {
            node,
            service,
            sender,
            addr,
            listen_addrs,
            dialer,
            leaving: false,
            goodbye: None,
            subscriptions: Vec::new(),
            window: Window::new(0),
            waiting_room: VecDeque::new(),
            running: 0,
            backlog: VecDeque::new(),
            paused: false,
            next_seq: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_items: 0,
            taken: 0,
            full_at: None,
            acks: RangeSet::default(),
            farewell: None,
            said_goodbye: false,
            signalled: false,
            last_write: None,
            usage,
        }
    }

    /// Whether anything waits to be written: messages, frames or acks (for the test kit's
    /// idle check).
    #[cfg(feature = "testing")]
    pub(super) fn has_unwritten(&self) -> bool {
        !self.queue.is_empty() || !self.acks.is_empty()
    }

    /// Whether new messages may go here.
    pub(super) fn takes_messages(&self) -> bool {
        !self.leaving && !self.said_goodbye
    }

    /// Whether this node said goodbye on this connection (for being idle, or shutting down).
    pub(super) fn said_goodbye(&self) -> bool {
        self.said_goodbye
    }

    /// The next sequence number.
    pub(super) fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The sequence number the next message will get (without taking it).
    pub(super) fn peek_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes waiting to be written.
    pub(super) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Items waiting to be written.
    pub(super) fn queued_items(&self) -> usize {
        self.queued_items
    }

    /// Whether the queue holds `max_bytes` or more: nothing more goes to it until it drains
    /// (see [`super::backpressure`]).
    pub(super) fn queue_full(&self, max_bytes: usize) -> bool {
        self.queued_bytes >= max_bytes
    }

    /// How many times the driver took something from the queue.
    pub(super) fn taken(&self) -> u64 {
        self.taken
    }

    /// The value of [`Conn::taken`] when the queue was last seen over its cap, if it is.
    pub(super) fn full_at(&self) -> Option<u64> {
        self.full_at
    }

    /// Records that the queue is over its cap (`Some`, with [`Conn::taken`] then) or not.
    pub(super) fn set_full_at(&mut self, taken: Option<u64>) {
        self.full_at = taken;
    }

    /// Queues a message's item. Says whether the driver must be told (nothing was waiting).
    pub(super) fn queue_item(
        &mut self,
        seq: u64,
        head: &Arc<EncodedHead>,
        run: u64,
        item: EncodedItem,
        owner: Option<Owner>,
    ) -> bool {
        self.queued_bytes += item.len();
        self.queued_items += 1;
        self.queue.push_back(Outgoing::Item {
            seq,
            head: Arc::clone(head),
            run,
            item,
            owner,
        });
        self.signal()
    }

    /// Queues an encoded frame. Says whether the driver must be told.
    pub(super) fn queue_frame(&mut self, frame: Bytes) -> bool {
        self.queued_bytes += frame.len();
        self.queue.push_back(Outgoing::Frame(frame));
        self.signal()
    }

    /// Encodes and queues a control frame built by the node itself. Says whether the driver
    /// must be told.
    pub(super) fn queue_control(&mut self, frame: &Frame, limits: &Limits) -> bool {
        let mut buf = BytesMut::new();
        // Frames built by the node (nacks, pings, subscriptions) are far below every limit,
        // and subscriptions were checked when they were made.
        if let Err(e) = codec::encode(frame, limits, &mut buf) {
            tracing::error!("could not encode a control frame: {e}");
            return false;
        }
        self.queue_frame(buf.freeze())
    }

    /// Owes the peer an ack of `seq`. Says whether the driver must be told.
    pub(super) fn ack(&mut self, seq: u64) -> bool {
        self.acks.insert(seq);
        self.signal()
    }

    /// Writes a goodbye after everything queued, then finishes the stream.
    pub(super) fn say_goodbye(&mut self, reason: &str) -> bool {
        if self.said_goodbye {
            return false;
        }
        self.said_goodbye = true;
        self.farewell = Some(reason.to_owned());
        self.signal()
    }

    fn signal(&mut self) -> bool {
        !std::mem::replace(&mut self.signalled, true)
    }

    /// Appends to `buf` what is queued, up to about `max_bytes`: first every ack owed, then
    /// items (as runs) and frames in the order they were queued, then the goodbye if one is
    /// due and nothing else waits. Items whose attempt has ended (`current` says no) are
    /// dropped unwritten.
    pub(super) fn transmit(
        &mut self,
        buf: &mut BytesMut,
        max_bytes: usize,
        limits: &Limits,
        mut current: impl FnMut(Owner) -> bool,
    ) -> Transmit {
        self.signalled = false;
        // Room for what is queued, reserved once; none when nothing is. (The writer's buffer
        // is empty here: its earlier writes were split off for QUIC, and its allocation is
        // reused once QUIC has let go of them.)
        if self.queued_bytes > 0 {
            reserve_fresh(buf, self.queued_bytes.min(max_bytes) + FRAMING_ROOM);
        }
        let start = buf.len();
        if !self.acks.is_empty() {
            let ranges = self.acks.take();
            for chunk in ranges.chunks(MAX_RANGES_PER_ACK) {
                if let Err(e) = codec::write_ack(buf, chunk, limits) {
                    tracing::error!("could not encode an ack: {e}");
                }
            }
        }
        // A lone message (the usual run when calls are one at a time) needs no allocation; a
        // longer run is sized once for what waits (bounded), not grown item by item.
        let mut run: SmallVec<[EncodedItem; 4]> = SmallVec::new();
        if self.queued_items > 4 {
            run.reserve_exact(self.queued_items.min(256));
        }
        while buf.len() < max_bytes {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            match next {
                Outgoing::Frame(frame) => {
                    self.queued_bytes -= frame.len();
                    buf.extend_from_slice(&frame);
                }
                Outgoing::Item {
                    seq,
                    head,
                    run: run_id,
                    item,
                    owner,
                } => {
                    self.queued_bytes -= item.len();
                    self.queued_items -= 1;
                    if owner.is_some_and(|o| !current(o)) {
                        continue;
                    }
                    run.clear();
                    run.push(item);
                    let mut last = seq;
                    // Gather the queued items that can share this frame: an ordered run whole (it
                    // was checked against the frame limit when it was sent), others up to the
                    // size of a write.
                    let cap = if run_id == 0 {
                        max_bytes.min(limits.max_frame_len)
                    } else {
                        usize::MAX
                    };
                    let mut len = codec::messages_len(&head, &run);
                    while let Some(Outgoing::Item {
                        seq: s,
                        head: h,
                        run: r,
                        item: i,
                        owner: o,
                    }) = self.queue.front()
                    {
                        let joins = *s == last + 1
                            && *r == run_id
                            && (Arc::ptr_eq(h, &head) || (run_id == 0 && **h == *head));
                        if !joins || len + i.len() > cap {
                            break;
                        }
                        if o.is_some_and(|o| !current(o)) {
                            // A gap in the numbers ends the run; the stale item is dropped.
                            break;
                        }
                        len += i.len();
                        last = *s;
                        if let Some(Outgoing::Item { item, .. }) = self.queue.pop_front() {
                            self.queued_bytes -= item.len();
                            self.queued_items -= 1;
                            run.push(item);
                        }
                    }
                    let first = last + 1 - run.len() as u64;
                    if let Err(e) = codec::write_messages(buf, first, &head, &run, limits) {
                        // Each item was checked against the frame limit with its head when it
                        // was sent, and runs are cut below it: not expected.
                        tracing::error!("could not frame a run of {} messages: {e}", run.len());
                    }
                }
            }
        }
        if buf.len() > start {
            self.taken += 1;
        }
        let more = !self.queue.is_empty();
        let finish = !more && self.farewell.is_some();
        if finish && let Some(reason) = self.farewell.take() {
            let reason = limits.bounded_reason(reason);
            let frame = Frame::Goodbye(Goodbye { reason });
            if let Err(e) = codec::encode(&frame, limits, buf) {
                tracing::error!("could not encode a goodbye: {e}");
            }
        }
        if more {
            self.signalled = true;
        }
        Transmit { finish, more }
    }

    /// Drops everything queued (the connection is gone).
    pub(super) fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
        self.queued_items = 0;
    }

    /// When the oldest unanswered message here is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.window.next_deadline()
    }
}

/// Room reserved beyond the queued items' bytes for their frames' prefixes and heads (an ack
/// and a few runs' worth), so a write rarely grows its buffer midway.
const FRAMING_ROOM: usize = 512;

/// Makes room for `want` more bytes in `buf`: in the allocation it has when that is free
/// (QUIC let go of the earlier writes), otherwise in a new one when `buf` is empty. Growing a
/// spent buffer with `reserve` would copy everything written to it before (the bytes crate
/// keeps the whole allocation's contents when it reallocates), tens of kilobytes each time.
fn reserve_fresh(buf: &mut BytesMut, want: usize) {
    if buf.try_reclaim(want) {
        return;
    }
    if buf.is_empty() {
        *buf = BytesMut::with_capacity(want);
    } else {
        buf.reserve(want);
    }
}
