//! The driver: the one place that sees both the engine and the IO.
//!
//! [`Driver`] holds the [`Engine`] under a mutex, with what the IO needs to act on the
//! engine's actions: the waiting callers' wakers, each connection's IO handles, the handlers'
//! closures (stored in the engine, which hands them back to run). Every call into the engine
//! goes through [`Driver::call`]: lock, feed the engine with the time from tokio's clock (the
//! node's one clock), take every action it produced, unlock, then act: wake callers (many
//! at once, a slice at a time: `wakeups.rs`), wake connection writers, run handlers, close
//! connections, move the timer. Only pausing and resuming a connection's reading and
//! broadcasting the node's events are done before the unlock, so that calls on several
//! threads do them in the engine's order.
//!
//! Handlers run outside the lock. A handler gets its first poll right here (a spawned task
//! would run on this thread anyway: `handlers.rs`), and most finish in it: their outcomes go
//! back to the engine in one more call, without a task.
//!
//! Every call also counts as activity for the busy poller, when the node has one
//! (`busy_poll.rs`): it keeps the runtime polling for input for a while after each.
//! Lone `publish` and `send` calls made while others wait are handed over together, one
//! operation per turn of the runtime whose messages keep their own results (`gather.rs`).

mod backlog;
mod busy_poll;
#[cfg(test)]
mod event_order_tests;
pub(crate) mod gather;
mod handlers;
mod lifecycle;
mod multicast;
pub(crate) mod op;
mod wakeups;

pub(crate) use busy_poll::BusyPolling;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use shoal_proto::NodeId;
use slotmap::SecondaryMap;
use smallvec::SmallVec;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeEvent;
use crate::config::Config;
use crate::diagnose::DialFailures;
use crate::engine::{Action, CloseReason, ConnId, Engine, Lifecycle, Run};
use crate::handler::BoxedHandler;
use crate::sync::lock;
use crate::transport::connection::ConnIo;

/// The node's clock for one engine call, read when first asked ([`Driver::call_lazy`]).
#[derive(Default)]
pub(crate) struct LazyNow(Option<Instant>);

impl LazyNow {
    /// The call's time: the node's clock, read the first time.
    pub(crate) fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Driver::now)
    }
}

/// The node's engine and everything around it. Shared by every [`crate::Node`] handle and the
/// node's tasks.
pub(crate) struct Driver {
    pub(crate) id: NodeId,
    pub(crate) service: String,
    pub(crate) config: Config,
    pub(crate) endpoint: quinn::Endpoint,
    state: Mutex<State>,
    peers: watch::Sender<u64>,
    /// Woken when the engine's next deadline moved earlier.
    timer: Notify,
    /// Woken when the engine may have become idle (for a graceful shutdown).
    idle: Notify,
    /// Woken when the backlog of background messages has room again (`backlog.rs`).
    room: Notify,
    /// Cancelled when shutdown starts: no new work is taken.
    pub(crate) stopping: CancellationToken,
    /// Cancelled when the node stops at once: running handlers are dropped. Cancelled only
    /// by [`Driver::mark_killed`], which sets `is_killed` too.
    pub(crate) killed: CancellationToken,
    /// Whether `killed` was cancelled, read without the token's lock (before every handler).
    is_killed: AtomicBool,
    /// Background tasks (accept loop, diallers, discovery, connections, the timer).
    pub(crate) tasks: TaskTracker,
    /// Handlers that had to wait, each in a task of its own.
    handler_tasks: TaskTracker,
    /// Whether a connection's writer, woken on a busy connection, lets the tasks ready now
    /// run first (`transport/connection.rs`). A current-thread runtime runs a woken task after
    /// those queued already; tokio's multi-thread scheduler runs the task woken last first,
    /// so without the yield the writer would take one caller's message at a time.
    pub(crate) yield_before_write: bool,
    pub(crate) discovery: Mutex<Vec<Box<dyn shoal_discovery::Discovery>>>,
    pub(crate) static_peers: Vec<std::net::SocketAddr>,
    pub(crate) dial_failures: DialFailures,
    /// On-demand dials in progress (mesh branch).
    pub(crate) dials: crate::transport::dial::Dials,
    /// Keeps the node's announcement in step with its subscriptions (mesh branch).
    pub(crate) announcer: crate::discovered::Announcer,
    pub(crate) handshake_failures: AtomicU64,
    /// The limits on incoming connections, and their refusals (`transport/limits.rs`).
    pub(crate) accept_limits: Arc<crate::transport::limits::AcceptLimits>,
    /// Set when a graceful shutdown has completed.
    pub(crate) finished: AtomicBool,
    /// The node's certificate, trusted CAs and revocations, read by every handshake and
    /// swapped by [`crate::Node::reload_tls`].
    pub(crate) tls: crate::tls::LiveTls,
    /// The outbox's store, when the node relays one ([`crate::Node::forget_group`] edits it).
    #[cfg(feature = "outbox")]
    pub(crate) outbox: std::sync::OnceLock<Arc<dyn crate::outbox::OutboxStore>>,
    /// The test kit's hooks (faults, activity), when a `shoal::testing::TestMesh` built the
    /// node.
    #[cfg(feature = "testing")]
    pub(crate) test_hooks: std::sync::OnceLock<Arc<crate::testing::NodeHooks>>,
    /// The metrics endpoint's address and the outbox counts it reports (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::Exporter,
    /// The group link, when the node fans events out by multicast (`runtime/multicast.rs`).
    pub(crate) multicast: std::sync::OnceLock<multicast::MulticastIo>,
    /// The busy poller, when the node polls for input after each activity
    /// (`runtime/busy_poll.rs`).
    busy_poll: Option<busy_poll::BusyPoll>,
    /// Callers completed many at once, woken a slice at a time (`wakeups.rs`).
    pub(crate) wakeups: wakeups::Wakeups,
    /// Lone events, commands and requests of one turn, handed to the engine together
    /// (`gather.rs`).
    gather: gather::Gather,
}

/// What the lock protects.
struct State {
    engine: Engine<BoxedHandler>,
    /// Callers waiting for an operation's result.
    waiters: SecondaryMap<crate::engine::OpId, std::task::Waker>,
    /// Callers of gathered calls waiting for their operation's results (`gather.rs`).
    claims: SecondaryMap<crate::engine::OpId, gather::Claim>,
    /// Each connection's IO side.
    conns: SecondaryMap<ConnId, Arc<ConnIo>>,
    /// Events for users, sent under the lock: in the engine's order, whichever thread made
    /// them (sent after unlocking, a `PeerDown` made on one thread could reach subscribers
    /// after the `PeerUp` another thread made next).
    events: broadcast::Sender<NodeEvent>,
}

/// What to do once the lock is released. Most calls produce a few of each: kept inline,
/// without allocations.
#[derive(Default)]
struct Effects {
    wake: SmallVec<[std::task::Waker; 4]>,
    /// Connections with something to write, and whether to write it here and now.
    write: SmallVec<[(ConnId, Arc<ConnIo>, bool); 2]>,
    run: SmallVec<[Run<BoxedHandler>; 4]>,
    close: Vec<(Arc<ConnIo>, CloseReason, bool)>,
    /// Announced instances to connect to (mesh branch: connections on first use).
    connect: Vec<(NodeId, Vec<std::net::SocketAddr>)>,
    /// Datagrams for the multicast group (`runtime/multicast.rs`).
    multicast: Vec<bytes::Bytes>,
    peers_changed: bool,
    timer_moved: bool,
    idle: bool,
    /// Background messages were staged (`gather.rs`).
    staged: bool,
    /// The backlog of background messages has room again (`backlog.rs`).
    room: bool,
}

impl Driver {
    /// A driver for `engine` on `endpoint`.
    pub(crate) fn new(
        engine: Engine<BoxedHandler>,
        service: String,
        config: Config,
        endpoint: quinn::Endpoint,
        static_peers: Vec<std::net::SocketAddr>,
        tls: crate::tls::LiveTls,
    ) -> Arc<Self> {
        let accept_limits = crate::transport::limits::AcceptLimits::new(&config);
        let busy_poll = config.busy_poll.poller();
        let gathers = engine.may_gather();
        let current_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
        Arc::new(Self {
            id: engine.id(),
            service,
            config,
            endpoint,
            state: Mutex::new(State {
                engine,
                waiters: SecondaryMap::new(),
                claims: SecondaryMap::new(),
                conns: SecondaryMap::new(),
                events: broadcast::channel(1024).0,
            }),
            peers: watch::channel(0).0,
            timer: Notify::new(),
            idle: Notify::new(),
            room: Notify::new(),
            stopping: CancellationToken::new(),
            killed: CancellationToken::new(),
            is_killed: AtomicBool::new(false),
            tasks: TaskTracker::new(),
            handler_tasks: TaskTracker::new(),
            yield_before_write: !current_thread,
            discovery: Mutex::new(Vec::new()),
            static_peers,
            dial_failures: DialFailures::default(),
            dials: crate::transport::dial::Dials::default(),
            announcer: crate::discovered::Announcer::default(),
            handshake_failures: AtomicU64::new(0),
            accept_limits,
            finished: AtomicBool::new(false),
            tls,
            #[cfg(feature = "outbox")]
            outbox: std::sync::OnceLock::new(),
            #[cfg(feature = "testing")]
            test_hooks: std::sync::OnceLock::new(),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Exporter::default(),
            multicast: std::sync::OnceLock::new(),
            busy_poll,
            wakeups: wakeups::Wakeups::default(),
            gather: gather::Gather::new(gathers),
        })
    }

    /// The node's clock: tokio's, so tests that pause time move the engine's time too.
    pub(crate) fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// The node's clock `d` from now, for a timeout a user configured: a century from now
    /// when `d` does not fit (`Duration::MAX`: never), rather than a panic.
    pub(crate) fn deadline_in(d: std::time::Duration) -> tokio::time::Instant {
        tokio::time::Instant::from_std(crate::engine::retry::later(Self::now(), d))
    }

    /// Calls into the engine, then acts on what it asked for.
    pub(crate) fn call<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Engine<BoxedHandler>, Instant) -> R,
    ) -> R {
        self.call_state(|state, now| f(&mut state.engine, now))
    }

    /// [`Driver::call`] with the rest of the locked state.
    fn call_state<R>(self: &Arc<Self>, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let mut state = lock(&self.state);
        let mut clock = LazyNow::default();
        let result = f(&mut state, clock.now());
        self.after_call(state, &mut clock);
        result
    }

    /// [`Driver::call`] for an engine call that may need no clock (staging a background
    /// event): `f` reads it from the [`LazyNow`] it is given when it needs it, and the clock is
    /// read at most once in the call.
    pub(crate) fn call_lazy<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Engine<BoxedHandler>, &mut LazyNow) -> R,
    ) -> R {
        let mut state = lock(&self.state);
        let mut clock = LazyNow::default();
        let result = f(&mut state.engine, &mut clock);
        self.after_call(state, &mut clock);
        result
    }

    /// Acts on what the engine call just made left to do, if anything (`clock`: the call's
    /// time), once `state` is unlocked.
    fn after_call(self: &Arc<Self>, mut state: MutexGuard<'_, State>, clock: &mut LazyNow) {
        // Asked on every call, so that it says what this call did.
        let batched = state.engine.take_batched();
        // Nothing to act on (framing a write, usually): no effects to collect.
        if state.engine.is_quiet() {
            drop(state);
        } else {
            // Filled and acted on in place: it holds a few inline vectors (over a kilobyte),
            // which moving by value would copy on every call.
            let mut effects = Effects::default();
            state.take_effects(&mut effects, clock.now());
            drop(state);
            self.act(&mut effects);
        }
        if let Some(poller) = &self.busy_poll {
            poller.touch(batched);
        }
        #[cfg(feature = "testing")]
        self.tell_test_kit();
    }

    /// Test kit: the engine may have changed; whoever waits for the mesh to go idle looks
    /// again.
    #[cfg(feature = "testing")]
    fn tell_test_kit(&self) {
        if let Some(hooks) = self.test_hooks.get() {
            hooks.engine_called();
        }
    }

    /// Reads the engine without acting (queries that change nothing).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Engine<BoxedHandler>) -> R) -> R {
        f(&lock(&self.state).engine)
    }

    /// Registers `waker` for `op`'s result; returns the result if it is there already.
    pub(crate) fn poll_op(
        self: &Arc<Self>,
        op: crate::engine::OpId,
        waker: &std::task::Waker,
    ) -> Option<Result<crate::engine::Done, crate::Error>> {
        let mut state = lock(&self.state);
        match state.engine.take_result(op) {
            Some(result) => {
                state.waiters.remove(op);
                Some(result)
            }
            None => {
                match state.waiters.get_mut(op) {
                    Some(w) if w.will_wake(waker) => {}
                    _ => {
                        state.waiters.insert(op, waker.clone());
                    }
                }
                None
            }
        }
    }

    /// Forgets a caller that gave up on `op`.
    pub(crate) fn cancel_op(self: &Arc<Self>, op: crate::engine::OpId) {
        self.call(|engine, now| engine.cancel(op, now));
        lock(&self.state).waiters.remove(op);
    }

    /// Forgets gathered calls whose callers all gave up on `op` (`gather.rs`).
    fn cancel_gathered(self: &Arc<Self>, op: crate::engine::OpId) {
        self.call_state(|state, now| {
            state.claims.remove(op);
            state.engine.cancel(op, now);
        });
    }

    /// Has the engine admit a peer whose handshake completed, and attaches its connection's
    /// IO side under the same lock, so the engine's first actions for it (this node's
    /// subscriptions) find it.
    pub(crate) fn admit(
        self: &Arc<Self>,
        hello: crate::engine::PeerHello,
        io: &Arc<ConnIo>,
    ) -> (ConnId, crate::engine::Admission) {
        let mut effects = Effects::default();
        let admitted = {
            let mut state = lock(&self.state);
            let now = Self::now();
            let (id, admission) = state.engine.connection_up(hello, now);
            if admission != crate::engine::Admission::Refused {
                state.conns.insert(id, Arc::clone(io));
            }
            state.take_effects(&mut effects, now);
            (id, admission)
        };
        self.act(&mut effects);
        #[cfg(feature = "testing")]
        self.tell_test_kit();
        admitted
    }

    /// Forgets the IO side of a connection that ended.
    pub(crate) fn detach(&self, conn: ConnId) {
        lock(&self.state).conns.remove(conn);
    }

    /// The IO sides of the live connections.
    pub(crate) fn connections(&self) -> Vec<(ConnId, Arc<ConnIo>)> {
        lock(&self.state)
            .conns
            .iter()
            .map(|(id, io)| (id, Arc::clone(io)))
            .collect()
    }

    /// The IO side of `conn`.
    pub(crate) fn connection(&self, conn: ConnId) -> Option<Arc<ConnIo>> {
        lock(&self.state).conns.get(conn).cloned()
    }

    /// Connection events for users.
    pub(crate) fn events(&self) -> broadcast::Receiver<NodeEvent> {
        lock(&self.state).events.subscribe()
    }

    /// A receiver that wakes on every change of the peers; its value counts the changes.
    pub(crate) fn peer_changes(&self) -> watch::Receiver<u64> {
        self.peers.subscribe()
    }

    /// Emits an event that happened outside the engine (a failed handshake).
    pub(crate) fn emit(&self, event: NodeEvent) {
        tracing::debug!(?event, node = %self.id, "node event");
        lock(&self.state).emit(event);
    }

    /// Whether shutdown started.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    fn act(self: &Arc<Self>, effects: &mut Effects) {
        self.act_until_written(effects);
        // Last, so the acks of every handler that finished here leave in one write.
        for (conn, io, at_once) in effects.write.drain(..) {
            if at_once {
                io.write_now(self, conn);
            } else {
                io.wake_writer();
            }
        }
    }

    /// Everything but the writes, handlers included (and the effects of those that finish in
    /// their first poll, in turn).
    fn act_until_written(self: &Arc<Self>, effects: &mut Effects) {
        loop {
            self.wakeups.wake(&mut effects.wake, &self.killed);
            for (io, reason, flush) in effects.close.drain(..) {
                io.close(&reason, flush);
            }
            for (node, addrs) in effects.connect.drain(..) {
                crate::transport::dial::connect_on_demand(self, node, addrs);
            }
            if !effects.multicast.is_empty() {
                self.send_multicast(effects.multicast.drain(..));
            }
            if std::mem::take(&mut effects.peers_changed) {
                self.peers.send_modify(|v| *v += 1);
            }
            if std::mem::take(&mut effects.timer_moved) {
                self.timer.notify_one();
            }
            if std::mem::take(&mut effects.staged) {
                self.send_staged_soon();
            }
            if std::mem::take(&mut effects.room) {
                self.room.notify_waiters();
            }
            if std::mem::take(&mut effects.idle) {
                self.idle.notify_waiters();
            }
            if effects.run.is_empty() {
                return;
            }
            // Handlers that finish in their first poll report together, in one more call;
            // those that have to wait start after it.
            let mut trip = handlers::Trip::default();
            for run in effects.run.drain(..) {
                self.run_handlers(run, &mut trip);
            }
            let reported = trip.has_reports();
            if reported {
                let mut state = lock(&self.state);
                let now = Self::now();
                trip.report(&mut state.engine, now);
                state.take_effects(effects, now);
            }
            self.start_waiting(&mut trip);
            if !reported {
                return;
            }
        }
    }
}

impl State {
    /// Sends `event` to the node's event subscribers (a receiver that lags loses the oldest;
    /// none listening is fine).
    fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    /// Takes every action of the engine into `effects` (emptied by the last
    /// [`Driver::act`]), turned into what to do after unlocking; `now` is the call's time.
    fn take_effects(&mut self, effects: &mut Effects, now: Instant) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Transmit(conn) => {
                    if let Some(io) = self.conns.get(conn)
                        && !effects.write.iter().any(|(w, _, _)| *w == conn)
                    {
                        let at_once = self.engine.write_at_once(conn, now);
                        effects.write.push((conn, Arc::clone(io), at_once));
                    }
                }
                Action::Run(run) => effects.run.push(run),
                Action::Complete(op) => {
                    if let Some(waker) = self.waiters.remove(op) {
                        effects.wake.push(waker);
                    } else if let Some(claim) = self.claims.remove(op) {
                        claim.settle(self.engine.take_result(op), &mut effects.wake);
                    }
                }
                // One of requests that travelled together (`gather.rs`), answered alone.
                Action::Answered { op, index, result } => {
                    if let Some(claim) = self.claims.get(op) {
                        claim.answer(index, result, &mut effects.wake);
                    }
                }
                Action::Close {
                    conn,
                    reason,
                    flush,
                } => {
                    if let Some(io) = self.conns.get(conn) {
                        effects.close.push((Arc::clone(io), reason, flush));
                    }
                }
                // Applied here, under the lock, in the engine's order: applied after the unlock,
                // a pause taken on one thread could land after the resume another thread took
                // later, and leave the reader paused for good (the engine would not resume a
                // reader it believes reading). Resuming only wakes the reader's task.
                Action::PauseReading(conn) | Action::ResumeReading(conn) => {
                    if let Some(io) = self.conns.get(conn) {
                        io.set_paused(matches!(action, Action::PauseReading(_)));
                    }
                }
                Action::Event(event) => self.emit(event),
                Action::PeersChanged => effects.peers_changed = true,
                Action::SendStaged => effects.staged = true,
                Action::BackgroundRoom => effects.room = true,
                Action::Connect { node, addrs } => effects.connect.push((node, addrs)),
                // Handed to the group link once unlocked (`runtime/multicast.rs`).
                Action::Multicast(datagram) => effects.multicast.push(datagram),
            }
        }
        effects.timer_moved = self.engine.timer_moved();
        effects.idle = self.engine.lifecycle() != Lifecycle::Running && self.engine.is_idle();
    }
}
