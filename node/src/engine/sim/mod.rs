//! A simulated network for engines: nodes exchange frames through in-memory links on a
//! virtual clock, with settable delay, loss, duplication and reordering, all drawn from one
//! seed, so a failing schedule can be replayed exactly.
//!
//! The harness plays the driver for every engine: it writes what an engine transmits (encoded
//! and decoded again by the real codec), delivers frames after their link's delay, runs
//! handlers (closures that say how long they take and what they return), completes calls, and
//! calls each engine's timeout when its deadline comes. It records every handler run, so tests
//! can check what was handled where and when.
//!
//! Links model one QUIC connection each: frames arrive in order unless a test asks for
//! reordering, and faults touch only frames that carry messages and their answers (a lost
//! subscription would only make a test wait for nothing). A link can be cut; both sides then
//! see their connection lost, as after QUIC's idle timeout.

mod admission_tests;
mod authz;
mod background_send_tests;
mod background_tests;
mod backlog_tests;
mod batch_copy_tests;
mod bounds_tests;
mod driver;
mod duplicate_tests;
mod each_request_tests;
mod each_tests;
mod handler;
mod hold_tests;
mod hostile_tests;
mod keyed_each_tests;
mod lazy_tests;
mod metrics_tests;
mod multicast;
mod multicast_guard_tests;
mod multicast_tests;
mod net;
mod random;
mod reason_tests;
mod request_tests;
mod sender_binding_tests;
mod tests;
mod transmit_tests;
mod unordered_run_tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shoal_proto::{Envelope, MessageId, MessageKind, NodeId, ReturnAddress};

use super::{ConnId, Done, Engine, OpId, TaskId};
use crate::config::Config;
use crate::{Error, Message};

use handler::Running;
pub(super) use handler::{Handled, HandlerRun, SimHandler};
pub(super) use net::Faults;

/// One simulated node.
pub(super) struct SimNode {
    pub(super) engine: Engine<SimHandler>,
    pub(super) alive: bool,
    pub(super) results: std::collections::HashMap<OpId, Result<Done, Error>>,
    /// Requests that travelled together, answered one by one ([`super::Action::Answered`]):
    /// when, and with what, by operation and place.
    pub(super) answers: std::collections::HashMap<(OpId, u32), (Duration, Result<Message, Error>)>,
    pub(super) events: Vec<crate::NodeEvent>,
    /// How often the engine said the backlog has room ([`super::Action::BackgroundRoom`]).
    pub(super) rooms: u32,
    /// The engine's next deadline, as last asked.
    deadline: Option<Instant>,
    /// Its deadlines are never reached ([`Sim::stop_timers`]).
    timers_stopped: bool,
    /// Handler runs in progress: when they started.
    running: BTreeMap<TaskId, VecDeque<Running>>,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "a test harness's queue")]
enum Event {
    Frame(net::Packet),
    HandlerDone {
        node: usize,
        task: TaskId,
        outcome: super::HandlerOutcome,
    },
    Lost {
        node: usize,
        conn: ConnId,
        reason: String,
    },
    /// A dial `node` started when its engine asked for a connection ([`super::Action::Connect`])
    /// completes: the handshake took a millisecond.
    Dialled {
        node: usize,
        to: NodeId,
    },
    /// A multicast datagram reaches `to` (`multicast.rs`).
    Datagram {
        to: usize,
        bytes: Bytes,
    },
    /// `node`'s group link may have sent everything it was handed (`multicast.rs`).
    LinkIdle {
        node: usize,
    },
    /// `node` sends its staged background messages ([`super::Action::SendStaged`]),
    /// after what else is due now, as the runtime does once the ready tasks have run.
    SendStaged {
        node: usize,
    },
    /// The rest of an unordered run whose handler has to wait goes back to `node`'s engine
    /// ([`super::Engine::spread`]).
    Spread {
        node: usize,
        task: TaskId,
        rest: Box<super::Following>,
    },
}

/// The simulated network. See the module docs.
pub(super) struct Sim {
    pub(super) now: Instant,
    start: Instant,
    pub(super) rng: SmallRng,
    pub(super) nodes: Vec<SimNode>,
    pub(super) net: net::Net,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    /// Scheduled events by slot; `free` lists the slots to reuse.
    events: Vec<Option<Event>>,
    free: Vec<usize>,
    next_event: u64,
    pub(super) runs: Vec<HandlerRun>,
    /// Messages handed to handlers (for the throughput figure).
    pub(super) handled: u64,
    /// Every connection an engine asked for: the asking node, and whom to.
    pub(super) dials: Vec<(usize, NodeId)>,
    /// The nodes on the multicast group, with the faults of what reaches each.
    pub(super) lan: BTreeMap<usize, multicast::LanFaults>,
    /// Multicast datagrams sent, by every node.
    pub(super) datagrams: u64,
    /// Datagrams that reached a crashed node, kept for the tests.
    pub(super) captured: Vec<(usize, Bytes)>,
    /// When each node's group link has sent what it was handed (`multicast.rs`).
    link_free_at: BTreeMap<usize, Instant>,
}

/// Unix milliseconds at the virtual clock's start.
const EPOCH_MS: u64 = 1_750_000_000_000;

impl Sim {
    /// A network with no nodes; every random choice follows `seed`.
    pub(super) fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            now: start,
            start,
            rng: SmallRng::seed_from_u64(seed),
            nodes: Vec::new(),
            net: net::Net::default(),
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free: Vec::new(),
            next_event: 0,
            runs: Vec::new(),
            handled: 0,
            dials: Vec::new(),
            lan: BTreeMap::new(),
            datagrams: 0,
            captured: Vec::new(),
            link_free_at: BTreeMap::new(),
        }
    }

    /// Adds a node of `service` with `config`.
    pub(super) fn node_with(&mut self, service: &str, config: Config) -> usize {
        let id = NodeId::from_u128(self.rng.random());
        let seed = self.rng.random();
        self.nodes.push(SimNode {
            engine: Engine::new(id, service.to_owned(), config, seed),
            alive: true,
            results: std::collections::HashMap::new(),
            answers: std::collections::HashMap::new(),
            events: Vec::new(),
            rooms: 0,
            deadline: None,
            timers_stopped: false,
            running: BTreeMap::new(),
        });
        self.nodes.len() - 1
    }

    /// Tells `node`'s engine that discovery announced `other` (advertising its subscriptions
    /// when `advertise` says so): the node connects to it on first use.
    pub(super) fn announce(&mut self, node: usize, other: usize, advertise: bool) {
        let engine = &self.nodes[other].engine;
        let subs = advertise.then(|| engine.inbound.local.distinct_subscriptions());
        let known = super::Discovered {
            service: engine.service.clone(),
            addrs: vec![std::net::SocketAddr::from((
                [127, 0, 0, 1],
                10_000 + other as u16,
            ))],
            source: shoal_discovery::Source::Mdns,
            subscriptions: subs,
            // What the node would advertise: its group, when it has multicast on.
            multicast: engine.config.multicast_group(),
        };
        let (id, now) = (engine.id(), self.now);
        self.nodes[node].engine.discovered(id, known, now);
        self.settle();
    }

    /// Adds a node of `service` with the default configuration.
    pub(super) fn node(&mut self, service: &str) -> usize {
        self.node_with(service, Config::default())
    }

    /// Registers `f` as `node`'s handler for `name`.
    pub(super) fn handle(
        &mut self,
        node: usize,
        name: &str,
        f: impl Fn(&Message) -> Handled + 'static,
    ) {
        let handler = SimHandler(Rc::new((name.to_owned(), Box::new(f))));
        self.nodes[node]
            .engine
            .set_handler(name.to_owned(), handler);
    }

    /// Subscribes `node` to `pattern` in `group` (`None`: every instance) with `f`.
    pub(super) fn subscribe(
        &mut self,
        node: usize,
        pattern: &str,
        group: Option<&str>,
        f: impl Fn(&Message) -> Handled + 'static,
    ) -> super::SubId {
        let label = group.unwrap_or("(instance)").to_owned();
        let handler = SimHandler(Rc::new((label, Box::new(f))));
        let sub = shoal_proto::Subscription {
            pattern: pattern.to_owned(),
            group: group.map(Into::into),
        };
        let id = self.nodes[node].engine.subscribe(sub, handler);
        self.settle();
        id
    }

    /// The virtual time since the start.
    pub(super) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// A message of `kind` with a deterministic id and the virtual clock's timestamp.
    pub(super) fn message(
        &mut self,
        kind: MessageKind,
        name: &str,
        payload: impl Into<Bytes>,
    ) -> Message {
        let ms = EPOCH_MS + self.elapsed().as_millis() as u64;
        let mut envelope = Envelope::new(
            MessageId::from_parts(ms, self.rng.random()),
            kind,
            name.to_owned(),
            ms,
            payload.into(),
        );
        envelope.attempt = 1;
        Message::from_envelope(envelope)
    }

    /// A command named `name`.
    pub(super) fn command(&mut self, name: &str, payload: impl Into<Bytes>) -> Message {
        self.message(MessageKind::Command, name, payload)
    }

    /// An event on `topic`.
    pub(super) fn event(&mut self, topic: &str, payload: impl Into<Bytes>) -> Message {
        self.message(MessageKind::Event, topic, payload)
    }

    /// `node` sends `msg` to `service`.
    pub(super) fn send(&mut self, node: usize, service: &str, msg: Message) -> OpId {
        let now = self.now;
        let op = self.nodes[node]
            .engine
            .send(service, msg, &Default::default(), now)
            .expect("send refused");
        self.settle();
        op
    }

    /// `node` sends `msg` to `service` in the background ([`crate::Node::send_background`]).
    pub(super) fn send_background(
        &mut self,
        node: usize,
        service: &str,
        msg: Message,
    ) -> Result<MessageId, Error> {
        let now = self.now;
        let sent = self.nodes[node]
            .engine
            .send_background(service, msg, || now);
        self.settle();
        sent
    }

    /// `node` sends `msg` as a request to `service`, waiting an hour at most.
    pub(super) fn request(&mut self, node: usize, service: &str, msg: Message) -> OpId {
        self.request_within(node, service, msg, Duration::from_secs(3600))
    }

    /// `node` sends `msg` as a request to `service`, waiting `timeout` at most.
    pub(super) fn request_within(
        &mut self,
        node: usize,
        service: &str,
        mut msg: Message,
        timeout: Duration,
    ) -> OpId {
        let now = self.now;
        msg.env.reply_to = Some(self.return_address(node));
        let op = self.nodes[node]
            .engine
            .request(service, msg, timeout, now)
            .expect("request refused");
        self.settle();
        op
    }

    /// `node` sends `requests` to `service` as separate calls' requests, each waiting
    /// `timeout` at most, as its runtime does once it gathered them (`send/each_request.rs`).
    pub(super) fn request_each(
        &mut self,
        node: usize,
        service: &str,
        mut requests: Vec<Message>,
        timeout: Duration,
    ) -> Result<OpId, Error> {
        let now = self.now;
        for msg in &mut requests {
            msg.env.reply_to = Some(self.return_address(node));
        }
        let result =
            self.nodes[node]
                .engine
                .request_each(service, &mut requests.into(), timeout, now);
        self.settle();
        result
    }

    /// Where `node`'s requests ask for their replies: straight back to it.
    fn return_address(&self, node: usize) -> ReturnAddress {
        let engine = &self.nodes[node].engine;
        ReturnAddress {
            service: engine.service.as_str().into(),
            node: Some(engine.id()),
            channel: Default::default(),
        }
    }

    /// `node` publishes `events` (a batch when there are several).
    pub(super) fn publish(
        &mut self,
        node: usize,
        events: Vec<Message>,
        options: &crate::PublishOptions,
    ) -> Result<super::send::Publishing, Error> {
        let now = self.now;
        let batched = events.len() > 1;
        let result = self.nodes[node]
            .engine
            .publish(events.into(), batched, options, || now);
        self.settle();
        result
    }

    /// `node` publishes `event` in the background ([`crate::Node::publish_background`]).
    pub(super) fn publish_background(
        &mut self,
        node: usize,
        event: Message,
    ) -> Result<MessageId, Error> {
        let now = self.now;
        let published = self.nodes[node].engine.publish_background(event, || now);
        self.settle();
        published
    }

    /// `node` sends `commands` to `service` as separate calls' commands (`send/each.rs`).
    pub(super) fn send_each(
        &mut self,
        node: usize,
        service: &str,
        commands: Vec<Message>,
    ) -> Result<OpId, Error> {
        let now = self.now;
        let result = self.nodes[node]
            .engine
            .send_each(service, &mut commands.into(), now);
        self.settle();
        result
    }

    /// `node` publishes `events` as separate calls' events (`send/each.rs`).
    pub(super) fn publish_each(
        &mut self,
        node: usize,
        events: Vec<Message>,
    ) -> Result<super::send::Publishing, Error> {
        let now = self.now;
        let result = self.nodes[node].engine.publish_each(
            &mut events.into(),
            &crate::PublishOptions::default(),
            now,
        );
        self.settle();
        result
    }

    /// `node` publishes one reliable `event` with the default options; the operation waits
    /// for its receipt.
    pub(super) fn publish_event(&mut self, node: usize, event: Message) -> OpId {
        match self.publish(node, vec![event], &crate::PublishOptions::default()) {
            Ok(super::send::Publishing::Waiting(op)) => op,
            other => panic!("publish: {other:?}"),
        }
    }

    /// The result of `op` on `node`, once it completed.
    pub(super) fn result(&self, node: usize, op: OpId) -> Option<&Result<Done, Error>> {
        self.nodes[node].results.get(&op)
    }

    /// Connects `a` (dialling) and `b`, with `faults` on the link; returns the connection ids
    /// on each side, or `None` when one side refused it (a duplicate).
    pub(super) fn connect_with(
        &mut self,
        a: usize,
        b: usize,
        faults: Faults,
    ) -> Option<(ConnId, ConnId)> {
        self.link_up(a, b, faults, true)
    }

    /// Connects `a` (dialling) and `b`; a `pinned` connection is kept however idle, as a
    /// static peer's is; one made on demand is not.
    pub(super) fn link_up(
        &mut self,
        a: usize,
        b: usize,
        faults: Faults,
        pinned: bool,
    ) -> Option<(ConnId, ConnId)> {
        let now = self.now;
        let hello = |sim: &Self, of: usize, dialed: bool, port: u16| super::PeerHello {
            node: sim.nodes[of].engine.id(),
            service: sim.nodes[of].engine.service.clone(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            listen_addrs: Vec::new(),
            dialed,
            pinned: pinned && dialed,
        };
        let (ha, hb) = (
            hello(self, b, true, 10_000 + b as u16),
            hello(self, a, false, 10_000 + a as u16),
        );
        let (ca, admitted_a) = self.nodes[a].engine.connection_up(ha, now);
        let (cb, admitted_b) = self.nodes[b].engine.connection_up(hb, now);
        let refused = super::Admission::Refused;
        if admitted_a == refused || admitted_b == refused {
            // Whoever admitted it closes it again, as a transport does with a refused dial.
            if admitted_a != refused {
                self.nodes[a]
                    .engine
                    .connection_lost(ca, "duplicate connection", true, now);
            }
            if admitted_b != refused {
                self.nodes[b]
                    .engine
                    .connection_lost(cb, "duplicate connection", true, now);
            }
            self.settle();
            return None;
        }
        self.net.link(a, ca, b, cb, faults);
        self.settle();
        Some((ca, cb))
    }

    /// Connects `a` and `b` with a clean link of 50 µs each way.
    pub(super) fn connect(&mut self, a: usize, b: usize) -> (ConnId, ConnId) {
        self.connect_with(a, b, Faults::default())
            .expect("not a duplicate")
    }

    /// Cuts every link of `node` (both sides see the connections lost after `after`, as after
    /// QUIC's idle timeout) and stops it: a crash.
    pub(super) fn crash(&mut self, node: usize, after: Duration) {
        self.nodes[node].alive = false;
        self.nodes[node].running.clear();
        let at = self.now + after;
        for (n, c) in self.net.cut_all(node) {
            if n != node {
                self.schedule(
                    at,
                    Event::Lost {
                        node: n,
                        conn: c,
                        reason: "timed out".into(),
                    },
                );
            }
        }
    }

    /// Both sides lose the link between `a` and `b` now, as a duplicate: what a node sees
    /// when its peer closes a connection because another one between the two won (which the
    /// test may then bring up with [`Sim::link_up`], or not).
    pub(super) fn lose_as_duplicate(&mut self, a: usize, b: usize) {
        let now = self.now;
        for (n, c) in self.net.cut_between(a, b) {
            self.nodes[n]
                .engine
                .connection_lost(c, "duplicate connection", true, now);
        }
        self.settle();
    }

    /// Cuts the link between `a` and `b`; both sides lose it after `after`.
    pub(super) fn partition(&mut self, a: usize, b: usize, after: Duration) {
        let at = self.now + after;
        for (n, c) in self.net.cut_between(a, b) {
            self.schedule(
                at,
                Event::Lost {
                    node: n,
                    conn: c,
                    reason: "timed out".into(),
                },
            );
        }
    }
}
