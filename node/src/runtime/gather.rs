//! Lone events published, commands sent, or requests made while other calls wait travel to
//! the engine together.
//!
//! With many `publish` or `send` calls in flight (a service calling from many tasks), each
//! call used to be an operation of its own: its own delivery per destination, attempt, timer,
//! ack and engine call. Its messages already shared writes and acks on the wire, but that
//! bookkeeping cost about three times what an event of a `publish_batch` pays.
//!
//! So a lone reliable event published (or command sent) with the default options while other
//! calls of the node wait is not handed to the engine at once:
//! it joins those published on its topic (sent to its service) in the same turn of the
//! runtime, and a task of the node ([`Driver::run_gather`]) hands them over together once the
//! tasks ready now have run, as one operation whose messages stay independent
//! (`engine/send/each.rs`: each handled on its own, refused or retried alone, each caller with
//! its own receipt or error). No timer is involved: the messages wait for the tasks already
//! ready to run, as a busy connection's writes do (`transport/connection.rs`; on tokio's
//! multi-thread runtime, which runs the task woken last first, the task yields once to get
//! behind them, as the writer does). A call with no other call waiting (one at a time, or the
//! first after a quiet spell) goes at once, as before.
//!
//! Keyed messages are gathered too, and keep their order per key (the engine keeps their
//! turns and instances, `engine/parts.rs`): a keyed message joins only the newest group, so
//! the groups, handed over in turn, bring a key's messages in the order of their calls; and a
//! keyed call that goes to the engine at once hands the waiting groups over first
//! ([`Driver::call_in_order`]).
//!
//! Requests are gathered too, by service and timeout (`engine/send/each_request.rs`): each
//! caller is told as soon as its own reply comes ([`Claim::answer`]), not when the others'
//! have. Keyed requests go alone, in their key's turn.
//!
//! Background events and commands are not gathered here: the engine stages them itself, and
//! this task sends them after the groups, once their producer pauses
//! (`engine/send/staged.rs`, [`Driver::send_staged_soon`], `Driver::wait_while_staging_grows`).
//!
//! Not gathered: batches, keyed requests, best-effort messages, calls with options of their
//! own, payloads over 16 KiB, and nodes with a multicast channel.
//!
//! A caller that drops its future before its message was handed over takes the message back:
//! it is not sent. Once handed over, the message goes on with the others (as a lone message
//! already written goes on when its caller gives up); the operation is cancelled when every
//! caller gave up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use shoal_proto::SmolStr;
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod callers;

use super::{Driver, LazyNow, State};
use crate::engine::send::{MAX_TOGETHER_PAYLOAD, Publishing};
use crate::engine::{Done, Engine};
use crate::handler::BoxedHandler;
use crate::options::{MAX_BATCH_EVENTS, PublishOptions, Reliability, SendOptions};
use crate::receipts::PublishReceipt;
use crate::sync::lock;
use crate::{Error, Message, MessageId};
use callers::Callers;

pub(super) use callers::Claim;
pub(crate) use callers::Gathered;

/// The most turns [`Driver::wait_while_staging_grows`] waits.
const STAGING_TURNS: usize = 256;
/// The longest [`Driver::wait_while_staging_grows`] waits.
const STAGING_FOR: Duration = Duration::from_millis(1);
/// Staged messages enough to go: no turn more is waited for.
const STAGED_ENOUGH: usize = 256;
/// Staged payload bytes enough to go (a few packets' worth).
const STAGED_BYTES_ENOUGH: usize = 64 * 1024;
/// Turns without a new staged message after which the producer counts as paused.
const QUIET_TURNS: usize = 2;

/// Messages waiting to be handed to the engine, by destination.
pub(crate) struct Gather {
    /// Whether the engine takes calls together at all (`Engine::may_gather`: fixed when it
    /// is made).
    on: bool,
    /// `None` once the node was killed: nothing is gathered any more.
    pending: Mutex<Option<VecDeque<Pending>>>,
    /// Tells [`Driver::run_gather`] that messages wait.
    handover: Notify,
    /// How many messages the last group handed over held: a new group makes room for as
    /// many at once, rather than growing message by message.
    last_size: AtomicUsize,
    /// Whether a keyed message waits: a keyed call that goes to the engine at once hands
    /// the waiting messages over first ([`Driver::call_in_order`]).
    keyed: AtomicBool,
    /// Whether the engine staged background messages (`engine/send/staged.rs`): they go
    /// after the next hand-over, once their producer pauses.
    staged: AtomicBool,
}

impl Gather {
    /// Gathering for an engine that takes calls together when `on`.
    pub(super) fn new(on: bool) -> Self {
        Self {
            on,
            pending: Mutex::new(Some(VecDeque::new())),
            handover: Notify::new(),
            last_size: AtomicUsize::new(0),
            keyed: AtomicBool::new(false),
            staged: AtomicBool::new(false),
        }
    }
}

/// Where gathered messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Events published on this topic.
    Topic(SmolStr),
    /// Commands sent to this service.
    Service(SmolStr),
    /// Requests to this service, each waiting `timeout` at most.
    Request {
        /// The service.
        service: SmolStr,
        /// How long each caller waits for its reply.
        timeout: Duration,
    },
}

/// The messages for one destination gathered in one turn.
struct Pending {
    bound: Bound,
    messages: Vec<Message>,
    /// Whether one of `messages` has a key: then the group holds at most [`MAX_KEYED`].
    keyed: bool,
    callers: Arc<Callers>,
}

/// The most messages a group with keyed ones holds. In the engine, a keyed message whose key
/// is taken waits in a delivery of its own that keeps a mark for every message of its
/// operation (`engine/parts.rs`), so a group's cost grows with its keyed messages times its
/// size: 256 calls in flight still travel together, and a burst of thousands of calls of one
/// key makes many small operations rather than one whose hand-over holds the engine (and the
/// thread) for long.
const MAX_KEYED: usize = 256;

impl Driver {
    /// Whether `event`, published with `options`, joins the events of this turn rather than
    /// going to the engine at once (see the module docs).
    pub(crate) fn gathers_event(&self, event: &Message, options: &PublishOptions) -> bool {
        options.reliability == Reliability::Reliable
            && !options.background
            && options.retry.is_none()
            && options.hold_for.is_none()
            && self.gathers(event)
    }

    /// Whether `command`, sent with `options`, joins the commands of this turn rather than
    /// going to the engine at once (see the module docs).
    pub(crate) fn gathers_command(&self, command: &Message, options: &SendOptions) -> bool {
        options.retry.is_none() && !options.fail_fast && self.gathers(command)
    }

    /// Whether `request` joins the requests of this turn rather than going to the engine at
    /// once (see the module docs): keyed ones go alone, in their key's turn.
    pub(crate) fn gathers_request(&self, request: &Message) -> bool {
        request.key().is_none() && self.gathers(request)
    }

    fn gathers(&self, message: &Message) -> bool {
        message.payload().len() <= MAX_TOGETHER_PAYLOAD
            && self.gather.on
            && self.wakeups.others_waiting()
    }

    /// Adds `message` to those for `bound` of this turn; resolves with its own result.
    pub(crate) fn gather(self: Arc<Self>, bound: Bound, message: Message) -> Gathered {
        let mut pending_guard = lock(&self.gather.pending);
        let Some(pending) = pending_guard.as_mut() else {
            drop(pending_guard);
            // Killed: refused, as the engine refuses every call now.
            return self.refused(Error::ShuttingDown);
        };
        let first = pending.is_empty();
        // A keyed message joins only the newest group: the groups go to the engine in turn,
        // so its key's messages (on any topic) reach the engine in the order of their calls.
        let keyed = message.key().is_some();
        let joins = |p: &Pending| {
            let most = if keyed || p.keyed {
                MAX_KEYED
            } else {
                MAX_BATCH_EVENTS
            };
            p.bound == bound && p.messages.len() < most
        };
        let group = if keyed {
            self.gather.keyed.store(true, Ordering::Release);
            pending.back_mut().filter(|p| joins(p))
        } else {
            pending.iter_mut().find(|p| joins(p))
        };
        let group = match group {
            Some(group) => group,
            None => {
                let room = self.gather.last_size.load(Ordering::Relaxed);
                let room = if keyed { room.min(MAX_KEYED) } else { room };
                pending.push_back(Pending {
                    bound,
                    keyed: false,
                    messages: Vec::with_capacity(room),
                    callers: Callers::with_room(room),
                });
                pending.back_mut().expect("just pushed")
            }
        };
        group.messages.push(message);
        group.keyed |= keyed;
        let slot = group.messages.len() - 1;
        let callers = Arc::clone(&group.callers);
        drop(pending_guard);
        if first {
            self.gather.handover.notify_one();
        }
        Gathered::new(self, callers, slot)
    }

    /// The engine staged background messages: [`Driver::run_gather`] sends them once the
    /// tasks ready now have run and their producer paused, with those sent meanwhile.
    pub(super) fn send_staged_soon(&self) {
        self.gather.staged.store(true, Ordering::Release);
        self.gather.handover.notify_one();
    }

    /// A caller whose message was refused before it was gathered.
    fn refused(self: Arc<Self>, error: Error) -> Gathered {
        Gathered::new(self, Callers::refused(error), 0)
    }

    /// Hands the messages gathered to the engine whenever there are some, after the tasks
    /// ready then; when the node is killed, their callers hear it, and nothing more is
    /// gathered.
    pub(crate) async fn run_gather(self: &Arc<Self>, killed: &CancellationToken) {
        loop {
            tokio::select! {
                () = killed.cancelled() => break,
                () = self.gather.handover.notified() => {}
            }
            // Behind the callers ready now, whatever the runtime (see `yield_before_write`).
            if self.yield_before_write {
                tokio::task::yield_now().await;
            }
            self.hand_over_all();
            if self.gather.staged.load(Ordering::Acquire) {
                self.wait_while_staging_grows(killed).await;
                // Calls gathered meanwhile go first, as they would have without the wait.
                self.hand_over_all();
            }
            if self.gather.staged.swap(false, Ordering::AcqRel) {
                // An operation at a time, each in a call of its own, as the groups.
                while self.call(|engine, now| engine.send_staged(now)) {}
            }
        }
        let groups = lock(&self.gather.pending).take();
        for group in groups.into_iter().flatten() {
            let mut wake = Vec::new();
            let slots: SmallVec<[usize; 8]> = (0..group.messages.len()).collect();
            Claim::new(group.callers, slots).settle(None, &mut wake);
            wake.into_iter().for_each(Waker::wake);
        }
    }

    /// Hands every gathered group to the engine: a group at a time, each in a call of its
    /// own, so that a large backlog does not hold the engine for long.
    fn hand_over_all(self: &Arc<Self>) {
        loop {
            let mut wake = Vec::new();
            let more = self.call_state(|state, now| self.hand_over_first(state, now, &mut wake));
            wake.into_iter().for_each(Waker::wake);
            if !more {
                break;
            }
        }
    }

    /// Waits, a turn of the runtime at a time, while the staged background messages grow.
    ///
    /// A producer that yields between its calls (or awaits something ready at once) adds a
    /// few per turn; sent at each turn's end, they went a few per write, each write a system
    /// call and a packet (a loop yielding after every call made 46-100 k msgs/s). The wait
    /// ends once [`QUIET_TURNS`] turns in a row add none (the producer paused: what it
    /// staged goes now), once [`STAGED_ENOUGH`] messages or [`STAGED_BYTES_ENOUGH`] bytes are
    /// staged, a gathered call waits to be handed over, or the node is killed, and at the
    /// latest after [`STAGING_TURNS`] turns or [`STAGING_FOR`] (a busy node's turns may be
    /// long). The clock is read, never waited on: no timer.
    async fn wait_while_staging_grows(&self, killed: &CancellationToken) {
        let staged = || lock(&self.state).engine.staged_size();
        let calls_wait = || {
            lock(&self.gather.pending)
                .as_ref()
                .is_some_and(|p| !p.is_empty())
        };
        let started = Self::now();
        let (mut before, mut quiet) = (staged(), 0);
        for _ in 0..STAGING_TURNS {
            let (count, bytes) = before;
            if count >= STAGED_ENOUGH
                || bytes >= STAGED_BYTES_ENOUGH
                || calls_wait()
                || killed.is_cancelled()
                || Self::now().saturating_duration_since(started) >= STAGING_FOR
            {
                return;
            }
            tokio::task::yield_now().await;
            let now = staged();
            // A producer's turn and this task's do not alternate one for one (tokio defers a
            // yielding task behind the IO driver's poll): two turns without a new message
            // mean it paused.
            quiet = if now.0 > count { 0 } else { quiet + 1 };
            if quiet == QUIET_TURNS {
                return;
            }
            before = now;
        }
    }

    /// [`Driver::call`] for a call with a keyed message that goes to the engine at once:
    /// keyed messages gathered before it are handed over first, so that its key's turn comes
    /// after theirs, as their calls came first (README, "Ordering per key").
    pub(crate) fn call_in_order<R>(
        self: &Arc<Self>,
        keyed: bool,
        f: impl FnOnce(&mut Engine<BoxedHandler>, Instant) -> R,
    ) -> R {
        if !keyed || !self.gather.keyed.load(Ordering::Acquire) {
            return self.call(f);
        }
        let mut wake = Vec::new();
        let result = self.call_state(|state, now| {
            // Those waiting now, not those other tasks add meanwhile (each may be large).
            let waiting = lock(&self.gather.pending).as_ref().map_or(0, VecDeque::len);
            for _ in 0..waiting {
                self.hand_over_first(state, now, &mut wake);
            }
            f(&mut state.engine, now)
        });
        wake.into_iter().for_each(Waker::wake);
        result
    }

    /// [`Driver::call_lazy`] for a background call (`Node::send_background`,
    /// `Node::publish_background`, a background `publish_with`): an unkeyed message may be
    /// staged (`engine/send/staged.rs`), which needs no clock; a keyed one goes after the
    /// keyed messages gathered before it ([`Driver::call_in_order`]).
    pub(crate) fn call_background<R>(
        self: &Arc<Self>,
        keyed: bool,
        f: impl FnOnce(&mut Engine<BoxedHandler>, &mut LazyNow) -> R,
    ) -> R {
        if keyed {
            return self.call_in_order(true, |engine, now| f(engine, &mut LazyNow(Some(now))));
        }
        self.call_lazy(f)
    }

    /// Hands the oldest group gathered to the engine; says whether there was one. A group
    /// leaves `pending` in the call that hands it over, so a keyed call that goes at once
    /// ([`Driver::call_in_order`]) finds every group not yet handed over.
    fn hand_over_first(&self, state: &mut State, now: Instant, wake: &mut Vec<Waker>) -> bool {
        let group = {
            let mut pending = lock(&self.gather.pending);
            let Some(group) = pending.as_mut().and_then(VecDeque::pop_front) else {
                return false;
            };
            if pending.as_ref().is_some_and(VecDeque::is_empty) {
                self.gather.keyed.store(false, Ordering::Release);
            }
            group
        };
        self.hand_over(state, now, group, wake);
        true
    }

    /// Hands a destination's gathered messages to the engine as one operation (or each
    /// alone, when the engine refuses them together: one may break a limit), skipping those
    /// whose callers gave up.
    fn hand_over(&self, state: &mut State, now: Instant, group: Pending, wake: &mut Vec<Waker>) {
        let callers = group.callers;
        let count = group.messages.len();
        self.gather.last_size.store(count, Ordering::Relaxed);
        let (mut messages, slots) = callers.still_waiting(group.messages);
        if messages.is_empty() {
            return;
        }
        let ids: SmallVec<[MessageId; 8]> = messages.iter().map(Message::id).collect();
        let together = match &group.bound {
            Bound::Topic(_) => {
                let options = PublishOptions::default();
                state.engine.publish_each(&mut messages, &options, now)
            }
            Bound::Service(service) => state
                .engine
                .send_each(service, &mut messages, now)
                .map(Publishing::Waiting),
            Bound::Request { service, timeout } => state
                .engine
                .request_each(service, &mut messages, *timeout, now)
                .map(Publishing::Waiting),
        };
        match together {
            Ok(started) => claim(state, started, &callers, slots, &ids, wake),
            // Taken, then refused (not expected): every caller hears why.
            Err(e) if messages.is_empty() => {
                Claim::new(Arc::clone(&callers), slots).settle(Some(Err(e)), wake);
            }
            // Refused as they were: each goes alone, and hears its own result.
            Err(_) => {
                for ((message, slot), id) in messages.drain(..).zip(slots).zip(&ids) {
                    let alone = match &group.bound {
                        Bound::Topic(_) => state.engine.publish(
                            smallvec::smallvec![message],
                            false,
                            &PublishOptions::default(),
                            || now,
                        ),
                        Bound::Service(service) => state
                            .engine
                            .send(service, message, &SendOptions::default(), now)
                            .map(Publishing::Waiting),
                        Bound::Request { service, timeout } => state
                            .engine
                            .request(service, message, *timeout, now)
                            .map(Publishing::Waiting),
                    };
                    match alone {
                        Ok(started) => {
                            let slots = smallvec::smallvec![slot];
                            claim(state, started, &callers, slots, &[*id], wake);
                        }
                        Err(e) => callers.fill(slot, Err(e), wake),
                    }
                }
            }
        }
    }
}

/// Tells the callers in `slots` what `published` says now, or has `state` tell them when its
/// operation completes.
fn claim(
    state: &mut State,
    published: Publishing,
    callers: &Arc<Callers>,
    slots: SmallVec<[usize; 8]>,
    ids: &[MessageId],
    wake: &mut Vec<Waker>,
) {
    match published {
        Publishing::Waiting(op) => {
            callers.went_in(op);
            // Told by the engine's actions, taken once the hand-over's engine call returns:
            // those of requests answered, and the operation's completion (which may have come
            // during the hand-over already).
            state
                .claims
                .insert(op, Claim::new(Arc::clone(callers), slots));
        }
        // Nobody subscribes: every caller gets a receipt of its own event saying so.
        Publishing::Done(receipt) => {
            for (slot, id) in slots.iter().zip(ids) {
                let receipt = PublishReceipt {
                    id: *id,
                    ..receipt.clone()
                };
                callers.fill(*slot, Ok(Done::Published(receipt)), wake);
            }
        }
    }
}
