//! The delivery engine: every decision about messages, as a deterministic state machine.
//!
//! Like `quinn-proto` beside `quinn`, the engine does no IO, owns no clock and starts no task.
//! The driver ([`crate::runtime`]) feeds it what happened, with the time it happened:
//!
//! - a connection came up or went down ([`Engine::connection_up`],
//!   [`Engine::connection_lost`]); a frame arrived ([`Engine::handle_frame`]) or could not be
//!   decoded ([`Engine::malformed`]);
//! - a user called `send`, `request`, `publish`, `ping`, `subscribe` ... ([`Engine::send`]
//!   and friends; several callers' lone messages at once: [`Engine::publish_each`],
//!   [`Engine::send_each`], [`Engine::request_each`]), or dropped the call's future
//!   ([`Engine::cancel`]);
//! - handlers finished ([`Engine::handler_done`]); time passed ([`Engine::handle_timeout`]).
//!
//! and takes back what to do: [`Action`]s from [`Engine::poll_action`] (run handlers, complete
//! a caller, or one of several callers whose requests travelled together, close a connection,
//! tell users of an event), the bytes each connection should write from
//! [`Engine::poll_transmit`], and the next instant it wants to be woken at from
//! [`Engine::poll_timeout`].
//!
//! Inside: the dedup window and the kept replies ([`dedup`], [`replies`]), the retry schedule
//! ([`retry`]), the choice of instance ([`route`], [`peers`]), topics and the audiences of an
//! event ([`topic`], [`fanout`]), the turns of keyed messages ([`ordering`]; of keyed messages
//! of separate calls travelling together, [`parts`]), the window of
//! unanswered messages per connection ([`window`]), and the states of sending
//! ([`send`], [`delivery`]) and receiving ([`receive`]), with this node's own handlers and
//! subscriptions ([`local_handlers`]).
//!
//! Handlers are opaque to the engine (`H`): it stores them and hands them back in
//! [`Action::Run`]; the driver calls them. The simulated network in the tests plays driver for
//! many engines at once, on a virtual clock.
//!
//! A test (`node/tests/engine_boundary.rs`) checks that nothing here names tokio, quinn, a
//! clock or a thread-local random source.

mod acks;
pub(crate) mod action;
mod answer;
mod attempt;
mod authz;
mod backpressure;
mod conn;
pub(crate) mod dedup;
mod delivery;
// Connections where they are used (mesh branch): the directory of announced instances,
// connecting on first use, closing idle connections.
pub(crate) mod directory;
pub(crate) mod fanout;
mod heads;
mod lazy;
mod link;
mod local_handlers;
// Per-message metrics (feature `metrics`): hooks that cost one branch when off.
pub(crate) mod metrics;
// Multicast fan-out (issue 14): the channel protocol (`multicast/`), and its wiring into the
// engine: control frames and timers (`multicast_link`), publishing on the channel
// (`multicast_fanout`; copies that need no delivery of their own, `multicast_copies`; what
// members have not reported, `multicast_unreported`), receiving from it (`multicast_receive`).
mod multicast;
mod multicast_copies;
mod multicast_fanout;
mod multicast_link;
mod multicast_receive;
mod multicast_unreported;
mod ops;
mod ordering;
mod outcome;
mod parts;
pub(crate) mod peers;
mod ranges;
// Asking again for the instances waiting deliveries need: one timer per instance.
mod reask;
mod receive;
pub(crate) mod replies;
pub(crate) mod retry;
pub(crate) mod route;
pub(crate) mod send;
mod sender;
mod stats;
/// Queries and one entry point for the test kit (feature `testing`).
#[cfg(feature = "testing")]
mod testing;
pub(crate) mod topic;
mod usage;
mod window;

#[cfg(test)]
mod sim;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shoal_proto::{NodeId, Subscription};
use slotmap::SlotMap;

pub(crate) use action::{
    Action, CloseReason, ConnId, Done, Following, HandlerOutcome, OpId, Replies, Run, TaskId,
};
pub(crate) use directory::Discovered;
pub(crate) use link::PeerHello;
pub(crate) use local_handlers::SubId;
pub(crate) use multicast_link::{MulticastSetup, SecretSource};
pub(crate) use peers::{Admission, Route, Target};

use crate::config::Config;
use crate::dead_letter::DeadLetter;
use crate::{NodeEvent, NodeStats};

/// How long a connection must have gone without a write for the next one to be written at
/// once ([`Engine::write_at_once`]): shorter than a round trip on loopback (25-45 µs here),
/// longer than the gap between the writes of a busy connection (a few µs).
const WRITE_QUIET: Duration = Duration::from_micros(10);

/// Where the node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    /// Taking work.
    Running,
    /// A graceful shutdown started: no new work; handlers and background deliveries finish.
    Stopping,
    /// Stopped at once, like a crash.
    Killed,
}

/// Something the engine wants to be woken for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A delivery waits for a turn, an instance, room or a backoff: look at it again. Stale
    /// when the delivery moved on (its epoch changed).
    Delivery(send::DeliveryId, u32),
    /// Look for connections idle long enough to close (see [`lazy`]).
    IdleSweep,
    /// Deliveries wait for this announced instance, which may be asked for again at this
    /// instant (see [`reask`]). Stale when the instance's timer was set for another instant.
    AskAgain(NodeId, Instant),
    /// A connection's queue was seen full with the driver's take count here: close it if
    /// nothing was taken since (see [`backpressure`]).
    QueueFull(ConnId, u64),
    /// An operation's copies on the multicast channel not reported by now go by unicast
    /// (see [`multicast_copies`]).
    ChannelCopies(OpId),
}

/// The engine of one node. See the module docs.
#[derive(Debug)]
pub(crate) struct Engine<H> {
    id: NodeId,
    service: String,
    config: Config,
    rng: SmallRng,
    lifecycle: Lifecycle,
    conns: SlotMap<ConnId, conn::Conn>,
    peers: peers::Peers,
    names: peers::Names,
    out: send::Outbound,
    inbound: receive::Inbound<H>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    actions: VecDeque<Action<H>>,
    stats: stats::Counters,
    dead_letters: VecDeque<DeadLetter>,
    /// The earliest deadline the driver was told of, to tell it again only when one is earlier.
    told_deadline: Option<Instant>,
    /// A new deadline is earlier than the one the driver knows.
    timer_moved: bool,
    /// A frame read held two or more messages, or a write took two or more, since the driver
    /// last asked ([`Engine::take_batched`]).
    batched: bool,
    /// The authorization policy, with what it can refuse worked out once ([`authz`]).
    guard: authz::Guard,
    /// Whether idle connections are being looked for (see [`lazy`]).
    idle: lazy::IdleSweep,
    /// The deliveries waiting for each announced instance asked for (see [`reask`]).
    reasks: reask::Reasks,
    /// Per-message metrics, when `NodeBuilder::metrics` turned them on ([`metrics`]).
    metrics: Option<Box<metrics::Recorder>>,
    /// The multicast channel's state, when `Config::multicast` names a group
    /// ([`multicast_link`]).
    channels: Option<Box<multicast_link::Channels>>,
}

impl<H: Clone> Engine<H> {
    /// The engine of node `id`, an instance of `service`. `seed` seeds every random choice
    /// (jitter, ties between instances, the dedup hash), so a run is repeatable.
    pub(crate) fn new(id: NodeId, service: String, config: Config, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (dedup_keys, reply_keys) = (rng.random(), rng.random());
        let inbound = receive::Inbound::new(&config, dedup_keys, reply_keys);
        let guard = authz::Guard::new(std::sync::Arc::clone(&config.policy), &service);
        let channels = multicast_link::Channels::new(&config);
        Self {
            id,
            service,
            peers: peers::Peers::new(config.remember_groups),
            config,
            rng,
            lifecycle: Lifecycle::Running,
            conns: SlotMap::with_key(),
            names: peers::Names::default(),
            out: send::Outbound::new(reply_keys),
            inbound,
            timers: BinaryHeap::new(),
            actions: VecDeque::new(),
            stats: stats::Counters::default(),
            dead_letters: VecDeque::new(),
            told_deadline: None,
            timer_moved: false,
            batched: false,
            guard,
            idle: lazy::IdleSweep::default(),
            reasks: reask::Reasks::default(),
            metrics: None,
            channels,
        }
    }

    /// This node's id.
    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_action(&mut self) -> Option<Action<H>> {
        // Multicast (multicast_fanout.rs): events staged for the channel since the last call
        // leave together, as few datagrams as they fit in.
        if self.channels.as_ref().is_some_and(|c| c.has_staged()) {
            self.flush_channel();
        }
        // Multicast (multicast_receive.rs): the statuses of the channels whose events were
        // handled since the last call, one each.
        if self
            .channels
            .as_ref()
            .is_some_and(|c| c.reported_at.is_some())
        {
            self.send_reports();
        }
        // send/backlog.rs: a producer waiting for room in the backlog may go on.
        self.actions.pop_front().or_else(|| self.poll_room())
    }

    /// Whether the driver has nothing to act on: no action waits, the timer need not move,
    /// nothing waits to go on the multicast channel, and the node runs (a stopping node's
    /// driver watches for it going idle). Framing a write for a connection usually leaves the
    /// engine so, and the driver then skips collecting effects.
    pub(crate) fn is_quiet(&self) -> bool {
        self.actions.is_empty()
            && !self.out.room.is_ready()
            && !self.timer_moved
            && self.lifecycle == Lifecycle::Running
            && self
                .channels
                .as_ref()
                .is_none_or(|c| !c.has_staged() && c.reported_at.is_none())
    }

    /// Whether a deadline earlier than the last one [`Engine::poll_timeout`] gave was set
    /// since: the driver's timer must be moved.
    pub(crate) fn timer_moved(&mut self) -> bool {
        std::mem::take(&mut self.timer_moved)
    }

    /// Whether, since the last call, a frame read held two or more messages or a write took
    /// two or more: the node's messages travel in batches, which they do when calls wait for
    /// each other (a node under load). The driver busy polls only then by default
    /// (`runtime/busy_poll.rs`).
    pub(crate) fn take_batched(&mut self) -> bool {
        std::mem::take(&mut self.batched)
    }

    /// The instant the engine next wants [`Engine::handle_timeout`] called at.
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(conn::Conn::next_deadline);
        let timers = self.timers.peek().map(|Reverse((at, _))| *at);
        let requests = self.out.next_request_deadline();
        // Multicast (multicast_link.rs): the channel's repairs, heartbeats, statuses and NAKs.
        let channel = self.channels.as_ref().and_then(|c| c.next_deadline());
        let next = conns.chain(timers).chain(requests).chain(channel).min();
        self.told_deadline = next;
        self.timer_moved = false;
        next
    }

    /// Notes a deadline the driver may not know of yet.
    fn deadline_at(&mut self, at: Instant) {
        if self.told_deadline.is_none_or(|told| at < told) {
            self.timer_moved = true;
            self.told_deadline = Some(at);
        }
    }

    fn set_timer(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
        self.deadline_at(at);
    }

    /// Time passed: acts on every deadline due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.expire_windows(now);
        self.expire_requests(now); // ops.rs
        // Multicast (multicast_link.rs).
        if self.channels.is_some() {
            self.channel_timeout(now);
        }
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Delivery(d, epoch) => self.delivery_timer(d, epoch, now),
                Timer::ChannelCopies(op) => self.copies_timer(op, now),
                Timer::IdleSweep => self.sweep_idle(now),
                Timer::AskAgain(node, at) => self.ask_again_timer(node, at, now),
                Timer::QueueFull(conn, taken) => self.queue_timer(conn, taken, now),
            }
        }
    }

    /// The service `conn`'s peer is an instance of (empty once the connection is gone).
    fn service_of(&self, conn: ConnId) -> String {
        self.conns
            .get(conn)
            .map(|c| c.service.clone())
            .unwrap_or_default()
    }

    fn emit(&mut self, event: NodeEvent) {
        tracing::debug!(?event, node = %self.id, "node event");
        self.actions.push_back(Action::Event(event));
    }

    /// Makes `event` as the engine makes its own (for tests of the driver's event order).
    #[cfg(test)]
    pub(crate) fn emit_for_test(&mut self, event: NodeEvent) {
        self.emit(event);
    }

    /// Tells the driver that `conn` has something to write.
    fn transmit(&mut self, conn: ConnId) {
        self.actions.push_back(Action::Transmit(conn));
    }

    /// Whether what waits on `conn` ([`Action::Transmit`]) is best written at once, by the
    /// caller that queued it, rather than in the connection's writer's next turn: when nothing
    /// was written on it for [`WRITE_QUIET`]. A connection written to that recently is busy
    /// (a burst of sends, the acks of handlers finishing one after another, best-effort
    /// events in a loop), and the writer's turn, after the tasks ready now, gathers what they
    /// queue meanwhile into one write; an idle one only gains a task switch by waiting.
    pub(crate) fn write_at_once(&self, conn: ConnId, now: Instant) -> bool {
        self.conns.get(conn).is_some_and(|c| {
            c.last_write
                .is_none_or(|at| now.saturating_duration_since(at) >= WRITE_QUIET)
        })
    }

    /// The peers changed: deliveries waiting for an instance look again, and so does whoever
    /// watches the peers.
    fn peers_changed(&mut self, now: Instant) {
        self.actions.push_back(Action::PeersChanged);
        self.wake_waiting(now);
    }

    /// A random number for tie-breaks.
    fn turn(&mut self) -> usize {
        self.rng.random::<u32>() as usize
    }

    // ---------------------------------------------------------------------------------------
    // Lifecycle

    /// Where the node is in its life.
    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    /// Starts a graceful shutdown: calls waiting for a result end with
    /// [`crate::Error::ShuttingDown`], new messages are refused with a retryable nack so their
    /// senders go elsewhere; running handlers, asynchronous replies and background publishes
    /// go on.
    pub(crate) fn begin_shutdown(&mut self, now: Instant) {
        if self.lifecycle != Lifecycle::Running {
            return;
        }
        // Staged background messages were sent before the stop: they go on.
        self.send_all_staged(now);
        self.lifecycle = Lifecycle::Stopping;
        self.stop_waiting_for_room();
        self.stop_user_ops(now);
    }

    /// Whether nothing is left to wait for before saying goodbye: no handler runs and no
    /// background delivery is in progress.
    pub(crate) fn is_idle(&self) -> bool {
        self.inbound.running() == 0 && self.out.background_open() == 0
    }

    /// Queues a goodbye on every connection (after every ack owed), and ends what is still in
    /// progress: background copies not delivered by now are dead-lettered with that reason.
    pub(crate) fn say_goodbye(&mut self, now: Instant) {
        self.stop_background_ops(now);
        // Multicast (multicast_receive.rs): channel events handled here are reported first.
        self.channel_flush_handled(now);
        let conns: Vec<ConnId> = self.conns.keys().collect();
        for conn in conns {
            if let Some(c) = self.conns.get_mut(conn)
                && c.say_goodbye("shutdown")
            {
                self.transmit(conn);
            }
        }
    }

    /// Stops at once, like a crash: every call and delivery ends; nothing more is written.
    pub(crate) fn kill(&mut self, now: Instant) {
        if self.lifecycle == Lifecycle::Killed {
            return;
        }
        // Staged background messages end as every background message does: dead letters.
        self.send_all_staged(now);
        self.lifecycle = Lifecycle::Killed;
        self.stop_waiting_for_room();
        self.stop_user_ops(now);
        self.stop_background_ops(now);
        for conn in self.conns.values_mut() {
            conn.clear_queue();
        }
    }

    // ---------------------------------------------------------------------------------------
    // What a node tells about itself

    /// Counters since start.
    pub(crate) fn stats(&self) -> NodeStats {
        self.stats.snapshot()
    }

    /// The most recent dead letters.
    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.iter().cloned().collect()
    }

    fn record_dead_letter(&mut self, letter: DeadLetter) {
        tracing::warn!("{letter}");
        self.stats.dead_lettered += 1;
        if self.config.dead_letter_capacity == 0 {
            return;
        }
        if self.dead_letters.len() >= self.config.dead_letter_capacity {
            self.dead_letters.pop_front();
        }
        self.dead_letters.push_back(letter);
    }

    /// The subscriber groups (by name) and ungrouped subscriber instances (`None`) an event on
    /// `topic` would go to now, each with its live instances.
    pub(crate) fn subscribers(
        &mut self,
        topic: &str,
        now: Instant,
    ) -> Vec<(Option<String>, Vec<NodeId>)> {
        self.peers
            .audiences(&self.conns, topic, now)
            .iter()
            .map(|(audience, nodes)| (audience.wire_group().map(str::to_owned), nodes.clone()))
            .collect()
    }

    /// Live instances of `service` that take messages.
    pub(crate) fn live_instances(&mut self, service: &str, now: Instant) -> usize {
        let route = Route::Service(Target::service(self.names.get(service)));
        self.peers.live_count(&self.conns, &route, now)
    }

    /// The grouped subscriptions of the live peers.
    #[cfg(feature = "outbox")]
    pub(crate) fn live_groups(&self) -> Vec<Subscription> {
        self.peers.live_groups(&self.conns)
    }

    /// Keeps the grouped `subs` that no live peer holds as audiences until `until`.
    #[cfg(any(test, feature = "outbox"))]
    pub(crate) fn remember_groups(
        &mut self,
        subs: Vec<Subscription>,
        until: Instant,
        now: Instant,
    ) {
        if self.peers.remember_groups(&self.conns, subs, until, now) {
            self.peers_changed(now);
        }
    }

    /// Forgets the remembered group `sub`: copies held for it end as dropped. Says whether it
    /// was remembered.
    pub(crate) fn forget_group(&mut self, sub: &Subscription, now: Instant) -> bool {
        let forgotten = self.peers.forget_group(sub);
        if forgotten {
            self.peers_changed(now);
        }
        forgotten
    }
}
