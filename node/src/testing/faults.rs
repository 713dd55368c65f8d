//! [`Fault`]: what a test mesh does to the frames its nodes read, and the mesh's list of
//! active faults.
//!
//! Faults act between the transport and the engine on the node that **reads** a frame: a
//! delivery is dropped, duplicated or held back on the receiving node, before its engine
//! sees it; an ack is dropped on the node that sent the acknowledged message, so that node
//! retries. The sender's and receiver's protocol code runs unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use rand::rngs::SmallRng;
use shoal_proto::NodeId;

use crate::Node;
use crate::engine::topic;
use crate::sync::lock;

/// Which nodes a fault names: every instance of a service, or one node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// Every instance of this service.
    Service(String),
    /// This node only.
    Node(NodeId),
}

impl Peer {
    /// Whether the node `node` of `service` is this peer.
    pub(crate) fn is(&self, service: &str, node: NodeId) -> bool {
        match self {
            Self::Service(s) => s == service,
            Self::Node(id) => *id == node,
        }
    }
}

impl From<&str> for Peer {
    fn from(service: &str) -> Self {
        Self::Service(service.to_owned())
    }
}

impl From<String> for Peer {
    fn from(service: String) -> Self {
        Self::Service(service)
    }
}

impl From<NodeId> for Peer {
    fn from(node: NodeId) -> Self {
        Self::Node(node)
    }
}

impl From<&Node> for Peer {
    fn from(node: &Node) -> Self {
        Self::Node(node.id())
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Service(s) => write!(f, "`{s}`"),
            Self::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// Deliveries are lost (the sender retries after its ack timeout).
    Drop,
    /// Deliveries arrive twice; the second copy is a redelivery the receiver's dedup window
    /// does not know (as on a restarted or another instance).
    Duplicate,
    /// Deliveries arrive twice on their connection, as a network duplicate: the receiver's
    /// dedup window recognises the copy.
    DuplicateOnWire,
    /// Deliveries arrive this much later; everything else on the connection goes on.
    Delay(Duration),
    /// Deliveries are held back a random time up to this window, so later ones overtake them.
    Reorder(Duration),
    /// Acks are lost on their way back (the sender retries, the receiver's dedup window acks
    /// the retry without running the handler again).
    DropAcks,
    /// Nothing passes between the two.
    Partition(Peer, Peer),
}

/// A fault a [`TestMesh`](super::TestMesh) injects into what its nodes read.
///
/// Pick what happens, then narrow where: [`to`](Self::to) the node that reads the frame
/// (deliveries to a service; for [`drop_acks`](Self::drop_acks), the sender the acks return
/// to), [`from`](Self::from) the node that wrote it, [`channel`](Self::channel) a message
/// name or topic (patterns as in subscriptions: `order.*`), and [`times`](Self::times) to
/// stop after a number of hits. Probabilities are drawn from the mesh's seed, so a run
/// replays with the same seed (see [`TestMeshBuilder::seed`](super::TestMeshBuilder::seed)).
///
/// ```
/// use std::time::Duration;
/// use shoal::testing::Fault;
///
/// let twice = Fault::duplicate(1.0).to("invoice").channel("order.created");
/// let lossy = Fault::drop(0.3).from("orders");
/// let one_lost_ack = Fault::drop_acks(1.0).from("invoice").times(1);
/// let slow = Fault::delay(Duration::from_millis(200)).channel("order.*");
/// # let _ = (twice, lossy, one_lost_ack, slow);
/// ```
#[derive(Clone, Debug)]
pub struct Fault {
    pub(crate) kind: Kind,
    probability: f64,
    to: Option<Peer>,
    from: Option<Peer>,
    channel: Option<String>,
    times: Option<u32>,
}

impl Fault {
    fn new(kind: Kind, probability: f64) -> Self {
        Self {
            kind,
            probability: probability.clamp(0.0, 1.0),
            to: None,
            from: None,
            channel: None,
            times: None,
        }
    }

    /// Loses each matching delivery with `probability`: the sender gets no ack and retries
    /// after its ack timeout (or another instance takes it).
    pub fn drop(probability: f64) -> Self {
        Self::new(Kind::Drop, probability)
    }

    /// Delivers each matching delivery twice with `probability`. The second copy is a
    /// redelivery (attempt + 1) that the receiving node's dedup window has **not** seen, as
    /// a restarted instance or another instance of the service would get it after the first
    /// copy's ack was lost: the handler runs again. A handler that is not idempotent (and
    /// uses no inbox) shows it here. Batches (ordered runs) are copied as on the wire
    /// ([`duplicate_on_wire`](Self::duplicate_on_wire)).
    pub fn duplicate(probability: f64) -> Self {
        Self::new(Kind::Duplicate, probability)
    }

    /// Delivers each matching delivery twice with `probability`, as a network duplicate on
    /// the same connection: the receiving node's dedup window recognises the copy and acks it
    /// without running the handler (unless the window is turned off,
    /// [`NodeBuilder::dedup_window`](crate::NodeBuilder::dedup_window) with capacity 0).
    pub fn duplicate_on_wire(probability: f64) -> Self {
        Self::new(Kind::DuplicateOnWire, probability)
    }

    /// Delivers each matching delivery `by` later (on tokio's clock, so virtual time applies);
    /// other frames of the connection are not held up. A delay longer than the sender's ack
    /// timeout makes it retry.
    pub fn delay(by: Duration) -> Self {
        Self::new(Kind::Delay(by), 1.0)
    }

    /// Holds each matching delivery back with `probability`, for a random time up to 50 ms
    /// (see [`reorder_window`](Self::reorder_window)), so deliveries after it overtake it.
    /// Keyed messages stay in order: the sender sends one key's next message only after the
    /// previous one was acknowledged.
    pub fn reorder(probability: f64) -> Self {
        Self::new(Kind::Reorder(Duration::from_millis(50)), probability)
    }

    /// Loses each matching ack with `probability` on its way back to the sender, which
    /// retries after its ack timeout; the receiver's dedup window acks the retry without
    /// running the handler again. Narrow with [`from`](Self::from) (who acks) and
    /// [`channel`](Self::channel) (the acknowledged message's name or topic).
    pub fn drop_acks(probability: f64) -> Self {
        Self::new(Kind::DropAcks, probability)
    }

    /// Cuts `a` off from `b` until healed: every message, ack, reply and ping between them,
    /// both ways, is lost. Their QUIC connection stays up (keep-alives pass), so neither sees
    /// the other leave: senders notice missing acks, retry (on another instance when there
    /// is one) and dead-letter what outlasts their retry deadline. Subscriptions pass, so
    /// after [`heal`](super::TestMesh::heal) the two go on where they were.
    pub fn partition(a: impl Into<Peer>, b: impl Into<Peer>) -> Self {
        Self::new(Kind::Partition(a.into(), b.into()), 1.0)
    }

    /// Only frames read by `peer`: deliveries to it, or (for
    /// [`drop_acks`](Self::drop_acks)) acks coming back to it.
    pub fn to(mut self, peer: impl Into<Peer>) -> Self {
        self.to = Some(peer.into());
        self
    }

    /// Only frames written by `peer`.
    pub fn from(mut self, peer: impl Into<Peer>) -> Self {
        self.from = Some(peer.into());
        self
    }

    /// Only messages whose name (or topic) matches `pattern` (`order.created`, `order.*`,
    /// `order.>`). For acks, the name of the message acknowledged.
    pub fn channel(mut self, pattern: impl Into<String>) -> Self {
        self.channel = Some(pattern.into());
        self
    }

    /// Stops after hitting `n` times.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Sets the probability of a hit (for [`delay`](Self::delay), which is 1 by default).
    pub fn with_probability(mut self, probability: f64) -> Self {
        self.probability = probability.clamp(0.0, 1.0);
        self
    }

    /// How long [`reorder`](Self::reorder) holds a delivery back at most (50 ms by default).
    pub fn reorder_window(mut self, window: Duration) -> Self {
        if let Kind::Reorder(w) = &mut self.kind {
            *w = window.max(Duration::from_millis(1));
        }
        self
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Drop => write!(f, "drop({})", self.probability)?,
            Kind::Duplicate => write!(f, "duplicate({})", self.probability)?,
            Kind::DuplicateOnWire => write!(f, "duplicate_on_wire({})", self.probability)?,
            Kind::Delay(d) => write!(f, "delay({d:?})")?,
            Kind::Reorder(w) => write!(f, "reorder({}, within {w:?})", self.probability)?,
            Kind::DropAcks => write!(f, "drop_acks({})", self.probability)?,
            Kind::Partition(a, b) => write!(f, "partition({a}, {b})")?,
        }
        if let Some(to) = &self.to {
            write!(f, " to {to}")?;
        }
        if let Some(from) = &self.from {
            write!(f, " from {from}")?;
        }
        if let Some(channel) = &self.channel {
            write!(f, " on `{channel}`")?;
        }
        if let Some(n) = self.times {
            write!(f, " ({n} times)")?;
        }
        Ok(())
    }
}

/// Names an injected fault, to [`heal`](super::TestMesh::heal) it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultId(u64);

/// An injected fault and how often it hit.
#[derive(Debug)]
pub(crate) struct Rule {
    id: FaultId,
    pub(crate) fault: Fault,
    hits: AtomicU32,
}

/// The two ends of a frame: the node that reads it and the node that wrote it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ends<'a> {
    pub(crate) here: (&'a str, NodeId),
    pub(crate) peer: (&'a str, NodeId),
}

impl Rule {
    /// Whether this rule is about frames between these two ends.
    fn between(&self, ends: Ends<'_>) -> bool {
        let f = &self.fault;
        let (here, peer) = (ends.here, ends.peer);
        if let Kind::Partition(a, b) = &f.kind {
            return (a.is(here.0, here.1) && b.is(peer.0, peer.1))
                || (b.is(here.0, here.1) && a.is(peer.0, peer.1));
        }
        f.to.as_ref().is_none_or(|p| p.is(here.0, here.1))
            && f.from.as_ref().is_none_or(|p| p.is(peer.0, peer.1))
    }

    /// Whether the rule is about messages named `name` (`None`: a name not known).
    pub(crate) fn on_channel(&self, name: Option<&str>) -> bool {
        match (&self.fault.channel, name) {
            (None, _) => true,
            (Some(pattern), Some(name)) => pattern == name || topic::matches(pattern, name),
            (Some(_), None) => false,
        }
    }

    /// Whether the rule has a channel filter (acks then need the names of what they ack).
    pub(crate) fn has_channel(&self) -> bool {
        self.fault.channel.is_some()
    }

    /// Draws whether the rule hits now (a partition always does), counting the hit.
    pub(crate) fn hits(&self, rng: &mut SmallRng) -> bool {
        let p = self.fault.probability;
        if p < 1.0 && !rng.random_bool(p) {
            return false;
        }
        let limit = self.fault.times;
        self.hits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                limit.is_none_or(|l| n < l).then_some(n + 1)
            })
            .is_ok()
    }
}

/// The faults injected into one mesh.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    list: std::sync::Mutex<Vec<Arc<Rule>>>,
    next: AtomicU64,
}

impl Rules {
    pub(crate) fn add(&self, fault: Fault) -> FaultId {
        let id = FaultId(self.next.fetch_add(1, Ordering::Relaxed));
        lock(&self.list).push(Arc::new(Rule {
            id,
            fault,
            hits: AtomicU32::new(0),
        }));
        id
    }

    /// Removes a fault; says whether it was there.
    pub(crate) fn remove(&self, id: FaultId) -> bool {
        let mut list = lock(&self.list);
        let before = list.len();
        list.retain(|r| r.id != id);
        list.len() != before
    }

    pub(crate) fn clear(&self) {
        lock(&self.list).clear();
    }

    /// The faults about frames between these ends, in the order they were injected.
    pub(crate) fn between(&self, ends: Ends<'_>) -> Vec<Arc<Rule>> {
        let list = lock(&self.list);
        if list.is_empty() {
            return Vec::new();
        }
        list.iter().filter(|r| r.between(ends)).cloned().collect()
    }

    /// How often the fault `id` hit so far.
    pub(crate) fn hit_count(&self, id: FaultId) -> Option<u32> {
        lock(&self.list)
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.hits.load(Ordering::Acquire))
    }
}
