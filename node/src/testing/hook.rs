//! The hooks a test mesh puts into the nodes it builds: the fault plan between each
//! connection's reader and the engine, and the signal that wakes whoever waits for the mesh to
//! go idle.
//!
//! The reader (`transport::connection::read_loop`) hands each batch of decoded frames to
//! [`ConnFaults::deliver`] when the node has hooks. With no fault about the connection's two
//! ends the batch goes on untouched; otherwise the plan hands the engine what survives, in
//! order, in one call, and spawns a timer task for each frame it holds back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shoal_proto::{Ack, DecodeError, Frame, Messages, NodeId, SeqRange};

use super::faults::{Ends, Kind, Rule};
use super::mesh::Shared;
use crate::engine::{ConnId, Engine};
use crate::handler::BoxedHandler;
use crate::runtime::Driver;
use crate::sync::lock;

/// One node's hooks: its mesh, its own random stream (from the mesh's seed), the frames it
/// holds back, and its driver once started.
pub(crate) struct NodeHooks {
    pub(crate) mesh: Arc<Shared>,
    pub(crate) service: String,
    rng: Mutex<SmallRng>,
    held: AtomicUsize,
    driver: OnceLock<Weak<Driver>>,
}

impl std::fmt::Debug for NodeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHooks")
            .field("service", &self.service)
            .field("held", &self.held.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl NodeHooks {
    /// Hooks for the `index`-th node the mesh builds, an instance of `service`.
    pub(crate) fn new(mesh: Arc<Shared>, service: &str, index: u64) -> Arc<Self> {
        let seed = mesh.seed ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Arc::new(Self {
            mesh,
            service: service.to_owned(),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            held: AtomicUsize::new(0),
            driver: OnceLock::new(),
        })
    }

    /// The node started: the mesh can reach its driver from now on.
    pub(crate) fn attach(&self, driver: &Arc<Driver>) {
        let _ = self.driver.set(Arc::downgrade(driver));
    }

    /// The node's driver, while it exists.
    pub(crate) fn driver(&self) -> Option<Arc<Driver>> {
        self.driver.get().and_then(Weak::upgrade)
    }

    /// Frames held back and not yet handed to the engine.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The node's engine was called: the mesh may have gone idle.
    pub(crate) fn engine_called(&self) {
        self.mesh.activity.notify_waiters();
    }
}

/// The outbox relay of `node` recorded outcomes or read rows: whoever waits for the mesh to
/// go idle looks again (pending rows count as busy, and the relay's store calls are no
/// engine calls).
#[cfg(feature = "outbox")]
pub(crate) fn relay_turned(node: &crate::node::WeakNode) {
    if let Some(hooks) = node
        .upgrade()
        .and_then(|n| n.driver().test_hooks.get().cloned())
    {
        hooks.engine_called();
    }
}

/// What a faulted frame becomes.
enum Held {
    /// A frame for [`Engine::handle_frame`].
    Frame(Frame),
    /// A copy the dedup window must not recognise ([`Engine::deliver_unseen`]).
    Unseen(Messages),
}

impl Held {
    fn deliver(self, engine: &mut Engine<BoxedHandler>, conn: ConnId, now: Instant) {
        match self {
            Self::Frame(frame) => engine.handle_frame(conn, frame, now),
            Self::Unseen(run) => engine.deliver_unseen(conn, run, now),
        }
    }
}

/// What one batch of frames becomes.
#[derive(Default)]
struct Plan {
    now: Vec<Result<Held, DecodeError>>,
    later: Vec<(Duration, Held)>,
}

impl Plan {
    fn push(&mut self, delay: Option<Duration>, held: Held) {
        match delay {
            Some(d) => self.later.push((d, held)),
            None => self.now.push(Ok(held)),
        }
    }
}

/// What the faults decided for one delivery.
#[derive(Default)]
struct Decision {
    dropped: bool,
    delay: Option<Duration>,
    wire_copy: bool,
    unseen_copy: bool,
}

/// The fault plan of one connection, as its reader applies it.
pub(crate) struct ConnFaults {
    hooks: Arc<NodeHooks>,
    node: NodeId,
    peer: (String, NodeId),
}

impl ConnFaults {
    /// The plan for `conn` when the node has test hooks; `None` otherwise (and when the
    /// connection is already gone).
    pub(crate) fn attach(driver: &Arc<Driver>, conn: ConnId) -> Option<Self> {
        let hooks = Arc::clone(driver.test_hooks.get()?);
        let peer = driver.read(|engine| {
            engine
                .peers()
                .into_iter()
                .find(|p| p.conn == conn)
                .map(|p| (p.service, p.node))
        })?;
        Some(Self {
            hooks,
            node: driver.id,
            peer,
        })
    }

    /// Applies the faults about this connection to `frames`: hands the engine what survives
    /// (and copies), holds back what is delayed, and leaves `frames` empty. Leaves `frames`
    /// untouched when no fault is about this connection.
    pub(crate) fn deliver(
        &mut self,
        driver: &Arc<Driver>,
        conn: ConnId,
        frames: &mut Vec<Result<Frame, DecodeError>>,
    ) {
        let ends = Ends {
            here: (&self.hooks.service, self.node),
            peer: (&self.peer.0, self.peer.1),
        };
        let rules = self.hooks.mesh.rules.between(ends);
        if rules.is_empty() {
            return;
        }
        let mut plan = Plan::default();
        {
            let mut rng = lock(&self.hooks.rng);
            for frame in frames.drain(..) {
                match frame {
                    Ok(Frame::Messages(run)) => messages(*run, &rules, &mut rng, &mut plan),
                    Ok(Frame::Ack(ack)) => {
                        if let Some(ack) = acks(driver, conn, ack, &rules, &mut rng) {
                            plan.now.push(Ok(Held::Frame(Frame::Ack(ack))));
                        }
                    }
                    Ok(Frame::Reply(reply)) => {
                        let name = reply.name.clone();
                        let d = decide(&rules, Some(&name), &mut rng);
                        if !d.dropped {
                            let frame = Frame::Reply(reply);
                            if d.wire_copy || d.unseen_copy {
                                plan.push(d.delay, Held::Frame(frame.clone()));
                            }
                            plan.push(d.delay, Held::Frame(frame));
                        }
                    }
                    // A partition loses answers and pings too; subscriptions and goodbyes
                    // pass, so the two nodes agree on them after it heals.
                    Ok(frame @ (Frame::Nack(_) | Frame::Ping(_) | Frame::Pong(_)))
                        if rules
                            .iter()
                            .any(|r| matches!(r.fault.kind, Kind::Partition(..))) =>
                    {
                        drop(frame);
                    }
                    Ok(frame) => plan.now.push(Ok(Held::Frame(frame))),
                    Err(e) => plan.now.push(Err(e)),
                }
            }
        }
        if !plan.now.is_empty() {
            let now_frames = std::mem::take(&mut plan.now);
            driver.call(|engine, now| {
                for held in now_frames {
                    match held {
                        Ok(held) => held.deliver(engine, conn, now),
                        Err(e) => engine.malformed(conn, &e),
                    }
                }
            });
        }
        for (delay, held) in plan.later {
            self.hold(driver, conn, delay, held);
        }
    }

    /// Hands `held` to the engine after `delay` (tokio's clock), unless the node stops first.
    fn hold(&self, driver: &Arc<Driver>, conn: ConnId, delay: Duration, held: Held) {
        self.hooks.held.fetch_add(1, Ordering::AcqRel);
        let hooks = Arc::clone(&self.hooks);
        let driver2 = Arc::clone(driver);
        driver.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {
                    driver2.call(|engine, now| held.deliver(engine, conn, now));
                }
                () = driver2.killed.cancelled() => {}
            }
            // After the engine took it, so an idle check never sees neither.
            hooks.held.fetch_sub(1, Ordering::AcqRel);
            hooks.engine_called();
        });
    }
}

/// What the delivery faults do to a run of messages: an ordered run (a batch) as a whole, an
/// unordered one message by message (each becomes a run of one, with its own number).
fn messages(run: Messages, rules: &[Arc<Rule>], rng: &mut SmallRng, plan: &mut Plan) {
    let name = run.head.name.clone();
    if !rules
        .iter()
        .any(|r| r.fault.kind != Kind::DropAcks && r.on_channel(Some(&name)))
    {
        plan.now
            .push(Ok(Held::Frame(Frame::Messages(Box::new(run)))));
        return;
    }
    if run.head.ordered || run.items.len() == 1 {
        return one(run, rules, rng, plan);
    }
    let Messages {
        first_seq,
        head,
        items,
    } = run;
    for (seq, item) in (first_seq..).zip(items) {
        let single = Messages {
            first_seq: seq,
            head: head.clone(),
            items: vec![item],
        };
        one(single, rules, rng, plan);
    }
}

/// The faults' decision for one delivery (a single message, or a batch as a whole).
fn one(run: Messages, rules: &[Arc<Rule>], rng: &mut SmallRng, plan: &mut Plan) {
    let d = decide(rules, Some(&run.head.name), rng);
    if d.dropped {
        return;
    }
    if d.unseen_copy && !run.head.ordered {
        // A redelivery: the sender's next attempt.
        let mut copy = run.clone();
        for item in &mut copy.items {
            item.attempt = item.attempt.saturating_add(1);
        }
        plan.push(d.delay, Held::Frame(Frame::Messages(Box::new(run))));
        plan.push(d.delay, Held::Unseen(copy));
        return;
    }
    let copy = (d.wire_copy || d.unseen_copy).then(|| run.clone());
    plan.push(d.delay, Held::Frame(Frame::Messages(Box::new(run))));
    if let Some(copy) = copy {
        plan.push(d.delay, Held::Frame(Frame::Messages(Box::new(copy))));
    }
}

/// Draws every delivery fault about `name`, in the order they were injected; a loss ends it.
fn decide(rules: &[Arc<Rule>], name: Option<&str>, rng: &mut SmallRng) -> Decision {
    let mut d = Decision::default();
    for rule in rules {
        if rule.fault.kind == Kind::DropAcks || !rule.on_channel(name) || !rule.hits(rng) {
            continue;
        }
        match &rule.fault.kind {
            Kind::Drop | Kind::Partition(..) => {
                d.dropped = true;
                return d;
            }
            Kind::Duplicate => d.unseen_copy = true,
            Kind::DuplicateOnWire => d.wire_copy = true,
            Kind::Delay(by) => d.delay = Some(d.delay.map_or(*by, |d| d.max(*by))),
            Kind::Reorder(window) => {
                let ms = window.as_millis().max(1) as u64;
                let by = Duration::from_millis(rng.random_range(1..=ms));
                d.delay = Some(d.delay.map_or(by, |d| d.max(by)));
            }
            Kind::DropAcks => {}
        }
    }
    d
}

/// What the ack faults leave of `ack` (`None`: nothing).
fn acks(
    driver: &Arc<Driver>,
    conn: ConnId,
    ack: Ack,
    rules: &[Arc<Rule>],
    rng: &mut SmallRng,
) -> Option<Ack> {
    let hits: Vec<&Arc<Rule>> = rules
        .iter()
        .filter(|r| matches!(r.fault.kind, Kind::DropAcks | Kind::Partition(..)))
        .collect();
    if hits.is_empty() {
        return Some(ack);
    }
    if hits
        .iter()
        .any(|r| matches!(r.fault.kind, Kind::Partition(..)))
    {
        return None;
    }
    let seqs: Vec<u64> = ack.ranges.iter().flat_map(|r| r.iter()).collect();
    // The names of what is acknowledged, read from the engine, only when a fault needs them.
    let names: Vec<Option<String>> = if hits.iter().any(|r| r.has_channel()) {
        driver.read(|engine| {
            seqs.iter()
                .map(|seq| engine.in_flight_name(conn, *seq))
                .collect()
        })
    } else {
        vec![None; seqs.len()]
    };
    let mut ranges: Vec<SeqRange> = Vec::new();
    for (seq, name) in seqs.into_iter().zip(names) {
        let lost = hits
            .iter()
            .any(|r| r.on_channel(name.as_deref()) && r.hits(rng));
        if lost {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if last.start + last.len == seq => last.len += 1,
            _ => ranges.push(SeqRange { start: seq, len: 1 }),
        }
    }
    (!ranges.is_empty()).then_some(Ack { ranges })
}
