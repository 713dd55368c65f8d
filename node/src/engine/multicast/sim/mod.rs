//! A simulated LAN for one channel: a publisher, subscribers that each see the group's
//! datagrams with their own loss, duplication and reordering, and a reliable QUIC connection
//! between the publisher and each subscriber for keys, statuses, NAKs and unicast repairs, all
//! on a virtual clock and drawn from one seed.

mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shoal_proto::codec::{EncodedHead, EncodedItem};
use shoal_proto::multicast::{Assignment, ChannelDemote, ChannelKey};
use shoal_proto::{Envelope, Head, Item, Limits, MessageId, MessageKind, NodeId, To};
use std::sync::Arc;

use super::{ChannelConfig, Header, Receiver, ReceiverTransmit, Sender, SenderEvent, Transmit};

/// What the group address does to the datagrams one subscriber receives. The engine's
/// simulated network (`engine/sim/multicast.rs`) uses it too.
#[derive(Clone, Debug)]
pub(in crate::engine) struct Faults {
    pub(in crate::engine) latency: Duration,
    /// Extra delay up to this, drawn per datagram: datagrams overtake each other.
    pub(in crate::engine) jitter: Duration,
    pub(in crate::engine) loss: f64,
    pub(in crate::engine) duplicate: f64,
}

impl Faults {
    /// When a datagram sent at `now` arrives: never (lost), once, or twice (duplicated), each
    /// copy after the latency and its own share of the jitter.
    pub(in crate::engine) fn arrivals(&self, rng: &mut SmallRng, now: Instant) -> Vec<Instant> {
        if rng.random_bool(self.loss) {
            return Vec::new();
        }
        let copies = if rng.random_bool(self.duplicate) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| now + self.latency + self.jitter.mul_f64(rng.random()))
            .collect()
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::from_micros(100),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// One subscriber.
pub(super) struct Sub {
    pub(super) node: NodeId,
    pub(super) rx: Receiver,
    pub(super) faults: Faults,
    /// The events delivered, by number, in delivery order.
    pub(super) delivered: Vec<u64>,
    /// The group it handles events for (`None`: every event).
    pub(super) group: Option<String>,
    /// The events its handlers ran (the ones assigned to it, or all without a group).
    pub(super) handled: Vec<u64>,
    /// Crashed: it processes nothing (what reaches it is kept in `captured`).
    pub(super) dead: bool,
    pub(super) captured: Vec<Bytes>,
}

enum Ev {
    Datagram { to: usize, bytes: Bytes },
    Key { to: usize, key: ChannelKey },
    Repair { to: usize, bytes: Bytes },
    Demote { to: usize, demote: ChannelDemote },
    ToPub { from: usize, msg: ReceiverTransmit },
}

/// The simulated LAN. See the module docs.
pub(super) struct Lan {
    pub(super) now: Instant,
    pub(super) rng: SmallRng,
    pub(super) tx: Sender,
    pub(super) subs: Vec<Sub>,
    pub(super) quic_latency: Duration,
    /// What arrives when (in order of scheduling among equal instants).
    queue: BTreeMap<(Instant, u64), Ev>,
    next: u64,
    /// Every sealed datagram the publisher sent, by header: a header seen twice must carry the
    /// same bytes (a repair resends; nothing is sealed twice under one nonce).
    pub(super) sealed: BTreeMap<(u32, u8, u64), Bytes>,
    /// Datagrams sent again with a header already sent (repairs).
    pub(super) resent: u64,
    pub(super) multicast_datagrams: u64,
    pub(super) sender_events: Vec<SenderEvent>,
    head: Arc<EncodedHead>,
    next_id: u64,
}

pub(super) const CHANNEL: u64 = 0x5eed;

impl Lan {
    /// A publisher with `config`, and no subscriber yet.
    pub(super) fn new(seed: u64, config: ChannelConfig) -> Self {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(seed);
        // Secrets from the seeded generator: deterministic runs (the driver uses the OS's).
        let mut keys = SmallRng::seed_from_u64(rng.random());
        let source = Box::new(move || keys.random::<[u8; 32]>());
        let event = envelope(0);
        let head = Head::of(&event, To::Instance, true, false);
        Self {
            now,
            rng,
            tx: Sender::new(CHANNEL, config, source, now),
            subs: Vec::new(),
            quic_latency: Duration::from_micros(150),
            queue: BTreeMap::new(),
            next: 0,
            sealed: BTreeMap::new(),
            resent: 0,
            multicast_datagrams: 0,
            sender_events: Vec::new(),
            head: Arc::new(EncodedHead::new(&head, &Limits::default()).expect("a small head")),
            next_id: 1,
        }
    }

    /// Adds a subscriber (in `group`, or of every event) and lets it join.
    pub(super) fn subscriber(
        &mut self,
        group: Option<&str>,
        faults: Faults,
        config: ChannelConfig,
    ) -> usize {
        let node = NodeId::from_u128(self.rng.random());
        let rx = Receiver::new(CHANNEL, config, Limits::default(), self.rng.random());
        self.subs.push(Sub {
            node,
            rx,
            faults,
            delivered: Vec::new(),
            group: group.map(str::to_owned),
            handled: Vec::new(),
            dead: false,
            captured: Vec::new(),
        });
        self.tx.join(node, false, self.now);
        self.flush();
        self.subs.len() - 1
    }

    /// Publishes `count` events as one burst; the instance of each group that handles them is
    /// the next in turn. Returns their numbers.
    pub(super) fn publish(&mut self, count: usize) -> std::ops::Range<u64> {
        self.publish_burst(count, false)
    }

    /// [`Lan::publish`], each event with its own copy of the head and the assignment, as the
    /// engine stages events published one call at a time.
    pub(super) fn publish_apart(&mut self, count: usize) -> std::ops::Range<u64> {
        self.publish_burst(count, true)
    }

    fn publish_burst(&mut self, count: usize, apart: bool) -> std::ops::Range<u64> {
        let mut groups: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
        for s in self.subs.iter().filter(|s| self.tx.is_member(s.node)) {
            if let Some(g) = &s.group {
                groups.entry(g.clone()).or_default().push(s.node);
            }
        }
        let turn = self.next_id as usize;
        let assigned: Arc<[Assignment]> = groups
            .into_iter()
            .map(|(group, nodes)| Assignment {
                group: group.into(),
                node: nodes[turn % nodes.len()],
            })
            .collect();
        let mut first = None;
        for _ in 0..count {
            let item = Item::of(&envelope(self.next_id));
            self.next_id += 1;
            let item = EncodedItem::new(&item, &Limits::default()).expect("a small item");
            let (head, assigned) = if apart {
                (Arc::new((*self.head).clone()), Arc::from(&*assigned))
            } else {
                (Arc::clone(&self.head), Arc::clone(&assigned))
            };
            let n = self
                .tx
                .push(&head, &assigned, item)
                .expect("fits a datagram");
            first.get_or_insert(n);
        }
        self.flush();
        let first = first.unwrap_or(0);
        first..first + count as u64
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.queue.insert((at, self.next), ev);
        self.next += 1;
    }

    /// Sends what the publisher and the subscribers have to send, and runs handlers.
    fn flush(&mut self) {
        let now = self.now;
        while let Some(t) = self.tx.poll_transmit(now) {
            match t {
                Transmit::Multicast(bytes) => {
                    self.record(&bytes);
                    self.multicast_datagrams += 1;
                    for to in 0..self.subs.len() {
                        let arrivals = self.subs[to].faults.arrivals(&mut self.rng, now);
                        for at in arrivals {
                            self.schedule(
                                at,
                                Ev::Datagram {
                                    to,
                                    bytes: bytes.clone(),
                                },
                            );
                        }
                    }
                }
                Transmit::Repair { to, datagram } => {
                    self.record(&datagram);
                    if let Some(i) = self.index(to) {
                        self.schedule(
                            now + self.quic_latency,
                            Ev::Repair {
                                to: i,
                                bytes: datagram,
                            },
                        );
                    }
                }
                Transmit::Key { to, key } => {
                    if let Some(i) = self.index(to) {
                        self.schedule(now + self.quic_latency, Ev::Key { to: i, key });
                    }
                }
                Transmit::Demote { to, demote } => {
                    if let Some(i) = self.index(to) {
                        self.schedule(now + self.quic_latency, Ev::Demote { to: i, demote });
                    }
                }
            }
        }
        while let Some(e) = self.tx.poll_event() {
            self.sender_events.push(e);
        }
        for i in 0..self.subs.len() {
            if self.subs[i].dead {
                continue;
            }
            while let Some(d) = self.subs[i].rx.poll_delivered() {
                let sub = &mut self.subs[i];
                sub.delivered.push(d.number);
                let mine = match &sub.group {
                    None => true,
                    Some(g) => d
                        .assigned
                        .iter()
                        .any(|a| a.group == g && a.node == sub.node),
                };
                if mine {
                    sub.handled.push(d.number);
                }
                sub.rx.handled(d.number);
            }
            while let Some(msg) = self.subs[i].rx.poll_transmit() {
                self.schedule(now + self.quic_latency, Ev::ToPub { from: i, msg });
            }
        }
    }

    fn record(&mut self, bytes: &Bytes) {
        let h = Header::parse(bytes).expect("the publisher writes headers");
        match self.sealed.get(&(h.epoch, h.kind as u8, h.seq)) {
            Some(before) => {
                assert_eq!(before, bytes, "one nonce, two different datagrams: {h:?}");
                self.resent += 1;
            }
            None => {
                self.sealed
                    .insert((h.epoch, h.kind as u8, h.seq), bytes.clone());
            }
        }
    }

    fn index(&self, node: NodeId) -> Option<usize> {
        self.subs.iter().position(|s| s.node == node)
    }

    /// Runs the network for `d` of virtual time.
    pub(super) fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        // Steps at one instant in a row: many means a deadline in the past that nothing clears.
        let mut stuck = 0;
        for _ in 0..10_000_000 {
            let queued = self.queue.first_key_value().map(|((at, _), _)| *at);
            let timers = self
                .subs
                .iter()
                .filter(|s| !s.dead)
                .filter_map(|s| s.rx.poll_timeout())
                .chain(self.tx.poll_timeout());
            let Some(next) = queued.into_iter().chain(timers).min() else {
                break;
            };
            if next > end {
                break;
            }
            stuck = if next <= self.now { stuck + 1 } else { 0 };
            assert!(stuck < 10_000, "a deadline in the past is never cleared");
            self.now = self.now.max(next);
            let now = self.now;
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ev = entry.remove();
                self.deliver(ev);
            }
            self.tx.handle_timeout(now);
            for s in self.subs.iter_mut().filter(|s| !s.dead) {
                s.rx.handle_timeout(now);
            }
            self.flush();
        }
        self.now = self.now.max(end);
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Datagram { to, bytes } | Ev::Repair { to, bytes } => {
                let sub = &mut self.subs[to];
                if sub.dead {
                    sub.captured.push(bytes);
                } else {
                    let _ = sub.rx.on_datagram(&bytes, now);
                }
            }
            Ev::Key { to, key } => {
                if !self.subs[to].dead {
                    self.subs[to].rx.on_key(&key, now);
                }
            }
            Ev::Demote { to, demote } => self.subs[to].rx.on_demote(&demote),
            Ev::ToPub { from, msg } => {
                let node = self.subs[from].node;
                match msg {
                    ReceiverTransmit::Status(s) => self.tx.on_status(node, s, now),
                    ReceiverTransmit::Nak(n) => self.tx.on_nak(node, &n, now),
                }
            }
        }
    }
}

fn envelope(n: u64) -> Envelope {
    Envelope::new(
        MessageId::from_parts(1_750_000_000_000, u128::from(n)),
        MessageKind::Event,
        "order.created",
        0,
        Bytes::from(format!("order {n} with a payload of some length")),
    )
}
