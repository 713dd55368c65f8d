//! The multicast channel inside the engine: its state, the control frames that travel over
//! QUIC beside it, and its timers.
//!
//! A node with a group (`Config::multicast`) says so to every peer after the hello
//! ([`Frame::ChannelHello`]). Once the driver opened the node's channel
//! ([`Engine::open_channel`], with a secret source of its own), every peer that said the
//! same group joins it and is handed the current key over its mutual-TLS connection; its
//! copies of events then travel in the channel's datagrams ([`super::multicast_fanout`]).
//! Going the other way, a node takes the keys its peers hand it and the datagrams of their
//! channels ([`super::multicast_receive`]).
//!
//! A member whose connection is lost, or whose subscription the policy refuses, leaves: the
//! channel changes its key before it seals anything more, and only the remaining members get
//! the new one. A member is never offered the channel again after a refusal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_proto::multicast::{ChannelHello, ChannelKey};
use shoal_proto::{Frame, MessageId, NodeId};

use super::multicast::{
    ChannelConfig, Delivered, DropReason, Receiver, RekeyReason, Sender, measured_rtt,
};
use super::multicast_fanout::Staged;
use super::multicast_unreported::Unreported;
use super::{ConnId, Engine, Lifecycle, TaskId};
use crate::NodeEvent;
use crate::config::Config;

pub(crate) use super::multicast::SecretSource;

/// A node's multicast group and how its channel behaves (`Config::multicast`).
#[derive(Clone, Debug)]
pub(crate) struct MulticastSetup {
    /// The group address and port: nodes on the same one share channels.
    pub(crate) group: SocketAddr,
    pub(crate) channel: ChannelConfig,
}

impl MulticastSetup {
    /// Group `group`, with the channel's defaults ([`ChannelConfig`]).
    pub(crate) fn new(group: SocketAddr) -> Self {
        Self {
            group,
            channel: ChannelConfig::default(),
        }
    }
}

/// How the maps of received channels hash (channel ids, event numbers, handler runs, message
/// ids: looked up several times for every event received): foldhash, seeded per process,
/// several times cheaper than the default SipHash.
type Hashing = foldhash::fast::RandomState;

/// One publisher's channel as this node receives it.
#[derive(Debug)]
pub(super) struct Inbound {
    /// The publisher: only it may hand keys, repairs and demotions for this channel.
    pub(super) publisher: NodeId,
    pub(super) rx: Receiver,
}

/// The engine's multicast state. See the module docs.
pub(super) struct Channels {
    pub(super) setup: MulticastSetup,
    /// This node's channel, once the driver opened it.
    pub(super) sender: Option<Sender>,
    /// Peers that said they are on this node's group, with the service their connection is
    /// certified for: a node id is only claimed, so the channel's keys, repairs and
    /// demotions for a member go only to a connection of that service, and a connection of
    /// another service claiming a member's id is not taken for the member.
    pub(super) on_group: HashMap<NodeId, String>,
    /// Peers whose subscription the policy refused: never offered the channel again.
    pub(super) refused: HashSet<NodeId>,
    /// Events staged for the next datagrams ([`super::multicast_fanout`]).
    pub(super) staged: Vec<Staged>,
    /// Copies on the channel waiting for their member's report, by member and event number.
    pub(super) unreported: Unreported,
    /// Topics every member may subscribe to (cached while the members stay the same), when
    /// the policy restricts subscriptions: only those go on the channel.
    pub(super) topics: HashMap<String, bool>,
    /// When the engine last staged an event: the instant the staged events are sealed at.
    pub(super) staged_at: Option<Instant>,
    /// When handlers here last finished a channel event (or it needed none): the channels'
    /// statuses go out when the engine's actions are next taken, one for all the events of
    /// an engine step ([`Engine::poll_action`]), not on a timer.
    pub(super) reported_at: Option<Instant>,
    /// The channels of other publishers this node receives, by channel id.
    pub(super) inbound: HashMap<u64, Inbound, Hashing>,
    /// Handler runs of channel events: which channel and event number they are for.
    pub(super) tasks: HashMap<TaskId, (u64, u64), Hashing>,
    /// Channel events being handled here: runs left, and whether one failed (then the event
    /// is reported failed, and the publisher's copy is sent again by unicast).
    pub(super) handling: HashMap<(u64, u64), (u32, bool), Hashing>,
    /// Channel events whose message was being handled when they came (by delivery key):
    /// they end with that run.
    pub(super) followers: HashMap<MessageId, Vec<(u64, u64)>, Hashing>,
    /// An empty deque for the events a received channel delivers, swapped with the
    /// receiver's so that neither allocates for each datagram
    /// ([`Engine::drain_receiver`]).
    pub(super) delivering: VecDeque<Delivered>,
    /// Datagrams on the group of no channel this node holds a key for.
    pub(super) foreign: u64,
    /// Members this node's channel moved to unicast (`SenderEvent::Demoted`).
    pub(super) demotions: u64,
}

/// What the multicast channels of a node did, for `NodeStats` (the driver adds the socket's
/// own counts). See [`Engine::channel_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChannelStats {
    /// Event datagrams this node's channel sealed (heartbeats are not counted; repairs are
    /// not sealed again).
    pub(crate) sealed: u64,
    /// Events this node's channel packed into datagrams (each once for all members).
    pub(crate) events: u64,
    /// Repairs this node's channel sent, by multicast and over QUIC.
    pub(crate) repairs: u64,
    /// Times this node's channel changed its key (a member left or was refused, the timer,
    /// the usage limit).
    pub(crate) rekeys: u64,
    /// Members this node's channel moved to unicast.
    pub(crate) demotions: u64,
    /// Datagrams the channels this node receives dropped, for any reason, and datagrams of no
    /// channel it holds a key for.
    pub(crate) dropped: u64,
    /// Of those, datagrams whose seal did not open (forged or damaged) or that opened to
    /// something that is not events.
    pub(crate) forged: u64,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("group", &self.setup.group)
            .field("sender", &self.sender)
            .field("on_group", &self.on_group.len())
            .field("inbound", &self.inbound.len())
            .finish_non_exhaustive()
    }
}

impl Channels {
    /// The state for `config`'s group, if it names one.
    pub(super) fn new(config: &Config) -> Option<Box<Self>> {
        let setup = config.multicast.clone()?;
        Some(Box::new(Self {
            setup,
            sender: None,
            on_group: HashMap::new(),
            refused: HashSet::new(),
            staged: Vec::new(),
            unreported: Unreported::default(),
            topics: HashMap::new(),
            staged_at: None,
            reported_at: None,
            inbound: HashMap::default(),
            tasks: HashMap::default(),
            handling: HashMap::default(),
            followers: HashMap::default(),
            delivering: VecDeque::new(),
            foreign: 0,
            demotions: 0,
        }))
    }

    /// Drops the channel `publisher` sends this node, and what is tracked of its events.
    fn forget_publisher(&mut self, publisher: NodeId) {
        let gone: Vec<u64> = self
            .inbound
            .iter()
            .filter(|(_, i)| i.publisher == publisher)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.inbound.remove(&id);
            self.tasks.retain(|_, (channel, _)| *channel != id);
            self.handling.retain(|(channel, _), _| *channel != id);
            for waiting in self.followers.values_mut() {
                waiting.retain(|(channel, _)| *channel != id);
            }
        }
    }

    pub(super) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// The earliest instant the channel's timers want.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let sender = self.sender.as_ref().and_then(Sender::poll_timeout);
        let receivers = self.inbound.values().filter_map(|i| i.rx.poll_timeout());
        sender.into_iter().chain(receivers).min()
    }
}

/// The driver's entry points: the runtime's multicast glue (`runtime/multicast.rs`) calls them.
impl<H: Clone> Engine<H> {
    /// Opens this node's channel `channel` (an id the driver draws at random, unique per
    /// publisher and group), keyed with secrets from `secrets` (a cryptographically secure
    /// generator: the engine draws none). Peers already on the group join at once. Does
    /// nothing without `Config::multicast`, or when the channel is open already.
    pub(crate) fn open_channel(&mut self, channel: u64, secrets: SecretSource, now: Instant) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        if ch.sender.is_some() {
            return;
        }
        let mut sender = Sender::new(channel, ch.setup.channel.clone(), secrets, now);
        for &node in ch.on_group.keys() {
            // Nothing is sealed yet: no key to replace.
            sender.join(node, false, now);
        }
        ch.sender = Some(sender);
        self.drain_sender(now);
    }

    /// The group link sent every datagram it was handed: with a paced channel
    /// (`ChannelConfig::paced`), the events queued meanwhile are packed and sent now.
    pub(crate) fn multicast_link_idle(&mut self, now: Instant) {
        if let Some(sender) = self.channels.as_deref_mut().and_then(|c| c.sender.as_mut()) {
            sender.link_idle();
            self.drain_sender(now);
        }
    }

    /// A datagram arrived on the multicast group (from any sender: the channel's seal says
    /// whether it is genuine). What is not a datagram of a channel this node holds a key for,
    /// or does not open, is dropped and counted by its channel's receiver.
    pub(crate) fn on_multicast_datagram(&mut self, datagram: &[u8], now: Instant) {
        if self.lifecycle == Lifecycle::Killed {
            return;
        }
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let channel = super::multicast::channel_of(datagram);
        match channel.filter(|id| ch.inbound.contains_key(id)) {
            Some(channel) => self.channel_datagram(channel, datagram, now),
            None => ch.foreign += 1,
        }
    }

    /// What the channels did so far (all zero without `Config::multicast`).
    pub(crate) fn channel_stats(&self) -> ChannelStats {
        let Some(ch) = self.channels.as_deref() else {
            return ChannelStats::default();
        };
        let (dropped, foreign) = self.channel_drops();
        let sender = ch.sender.as_ref();
        ChannelStats {
            sealed: sender.map_or(0, |s| s.sent),
            events: sender.map_or(0, Sender::events_sent),
            repairs: sender.map_or(0, |s| s.repaired_multicast + s.repaired_unicast),
            rekeys: sender.map_or(0, |s| u64::from(s.epoch().saturating_sub(1))),
            demotions: ch.demotions,
            dropped: dropped.total() + foreign,
            forged: dropped.of(DropReason::Forged) + dropped.of(DropReason::Malformed),
        }
    }
}

impl<H: Clone> Engine<H> {
    /// The driver measured these connections' round trips (quinn's smoothed RTT): this node's
    /// channel follows its slowest member's, each received channel its publisher's
    /// ([`ChannelConfig::rtt`], within [`measured_rtt`]'s bounds).
    pub(crate) fn channel_rtts(&mut self, samples: &[(ConnId, Duration)]) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let conns = &self.conns;
        let rtts = samples.iter().filter_map(|&(conn, rtt)| {
            let node = conns.get(conn)?.node;
            Some((node, measured_rtt(rtt)))
        });
        let rtts: Vec<(NodeId, Duration)> = rtts.collect();
        for i in ch.inbound.values_mut() {
            if let Some(&(_, rtt)) = rtts.iter().find(|(node, _)| *node == i.publisher) {
                i.rx.set_rtt(rtt);
            }
        }
        if let Some(sender) = ch.sender.as_mut() {
            sender.member_rtts(rtts);
        }
    }

    /// Tells a new connection this node's group.
    pub(super) fn channel_hello(&mut self, conn: ConnId) {
        if let Some(group) = self.channels.as_ref().map(|c| c.setup.group) {
            self.queue_control(conn, &Frame::ChannelHello(ChannelHello { group }));
        }
    }

    /// A channel control frame arrived on `conn`.
    pub(super) fn on_channel_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        let Some(node) = self.conns.get(conn).map(|c| c.node) else {
            return;
        };
        let Some(ch) = self.channels.as_deref_mut() else {
            // No group here: a peer that knows it was never told one. Ignored.
            return;
        };
        match frame {
            Frame::ChannelHello(hello) => {
                if hello.group != ch.setup.group {
                    let ours = ch.setup.group;
                    self.emit(NodeEvent::MulticastGroupDiffers {
                        node,
                        service: self.service_of(conn),
                        theirs: hello.group,
                        ours,
                    });
                    return;
                }
                if ch.refused.contains(&node) {
                    return;
                }
                let service = self.conns.get(conn).map_or("", |c| c.service.as_str());
                if let Some(known) = ch.on_group.get(&node)
                    && known != service
                {
                    // Another service's connection claiming the id of a node on the group
                    // (its connection lost a duplicate race, say): not that node. Handing it
                    // the member's key would let it read what the policy keeps from it.
                    tracing::warn!(%node, claimed = %service, certified = %known,
                        "multicast: a hello claiming the id of a node of another service ignored");
                    return;
                }
                ch.on_group.insert(node, service.to_owned());
                if let Some(sender) = ch.sender.as_mut() {
                    if sender.is_member(node) {
                        // A hello on a new connection: the key may have gone with the old one,
                        // and so may a status: what it has not reported goes to it again by
                        // unicast now (its dedup window answers for what it handled) rather
                        // than after each copy's ack timeout.
                        sender.regrant(node);
                        self.channel_unreported(node, None, now);
                    } else {
                        sender.join(node, !self.guard.open_peer_subscribe, now);
                        ch.topics.clear();
                    }
                    self.drain_sender(now);
                }
            }
            Frame::ChannelKey(key) => self.on_channel_key(conn, node, &key, now),
            Frame::ChannelStatus(status) => {
                if let Some(sender) = ch.sender.as_mut()
                    && sender.channel() == status.channel
                {
                    sender.on_status(node, status, now);
                    self.drain_sender(now);
                }
            }
            Frame::ChannelNak(nak) => {
                if let Some(sender) = ch.sender.as_mut()
                    && sender.channel() == nak.channel
                {
                    sender.on_nak(node, &nak, now);
                    self.drain_sender(now);
                }
            }
            Frame::ChannelRepair(datagram) => {
                let channel = super::multicast::channel_of(&datagram);
                let from_publisher = channel
                    .and_then(|id| ch.inbound.get(&id))
                    .is_some_and(|i| i.publisher == node);
                if let (true, Some(channel)) = (from_publisher, channel) {
                    self.channel_datagram(channel, &datagram, now);
                }
            }
            Frame::ChannelDemote(demote) => {
                if let Some(i) = ch.inbound.get_mut(&demote.channel)
                    && i.publisher == node
                {
                    i.rx.on_demote(&demote);
                    self.drain_receiver(demote.channel, now);
                }
            }
            _ => {}
        }
    }

    /// A key from `node`. A channel's keys are taken only from the publisher that first
    /// handed one for it: another peer naming the same channel is refused (and told in an
    /// event), so no key holder can take over someone else's channel. A publisher has one
    /// channel: a key for a new one replaces its old one (so a peer cannot make this node
    /// keep any number of receivers).
    fn on_channel_key(&mut self, conn: ConnId, node: NodeId, key: &ChannelKey, now: Instant) {
        let limits = self.config.limits.clone();
        let seed = self.rng_seed();
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        if !ch.inbound.contains_key(&key.channel) {
            ch.forget_publisher(node);
        }
        let inbound = ch.inbound.entry(key.channel).or_insert_with(|| Inbound {
            publisher: node,
            rx: Receiver::new(key.channel, ch.setup.channel.clone(), limits, seed),
        });
        if inbound.publisher != node {
            let reason = format!("a key for channel {:x} of another publisher", key.channel);
            return self.channel_protocol_error(conn, reason);
        }
        inbound.rx.on_key(key, now);
        self.drain_receiver(key.channel, now);
    }

    /// A peer's subscription was refused by the policy: it leaves the channel, and the
    /// channel changes its key at once.
    pub(super) fn channel_refused(&mut self, conn: ConnId, now: Instant) {
        let Some(node) = self.conns.get(conn).map(|c| c.node) else {
            return;
        };
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        ch.refused.insert(node);
        ch.on_group.remove(&node);
        self.channel_leave(
            node,
            RekeyReason::Refused,
            "its subscription was refused",
            now,
        );
    }

    /// `node`'s last connection is gone: it leaves this node's channel (rekey) and its copies
    /// on the channel go by unicast (elsewhere, for a group); its own channel is dropped.
    pub(super) fn channel_peer_lost(&mut self, node: NodeId, now: Instant) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        ch.on_group.remove(&node);
        ch.forget_publisher(node);
        self.channel_leave(node, RekeyReason::Left, "the connection was lost", now);
    }

    /// Channel timers.
    pub(super) fn channel_timeout(&mut self, now: Instant) {
        if self.lifecycle == Lifecycle::Killed {
            return;
        }
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        if let Some(sender) = ch.sender.as_mut() {
            sender.handle_timeout(now);
        }
        let ids: Vec<u64> = ch.inbound.keys().copied().collect();
        for i in ch.inbound.values_mut() {
            i.rx.handle_timeout(now);
        }
        self.drain_sender(now);
        for id in ids {
            self.drain_receiver(id, now);
        }
    }

    /// Sends `frame` to `node` over its current connection, if it has one.
    pub(super) fn send_to_node(&mut self, node: NodeId, frame: &Frame) {
        if let Some(conn) = self.peers.current(node) {
            self.queue_control(conn, frame);
        }
    }

    /// The connection standing for `node`, a peer on this node's group, if it is of the
    /// service `node` said it was on the group with (see [`Channels::on_group`]).
    pub(super) fn group_conn(&self, node: NodeId) -> Option<ConnId> {
        let service = self.channels.as_deref()?.on_group.get(&node)?;
        self.peers.current_of(&self.conns, node, service)
    }

    /// Sends this node's channel's `frame` (a key, a repair, a demotion) to member `node`:
    /// only over a connection of the member's service ([`Engine::group_conn`]).
    pub(super) fn send_to_member(&mut self, node: NodeId, frame: &Frame) {
        if let Some(conn) = self.group_conn(node) {
            self.queue_control(conn, frame);
        }
    }

    fn channel_protocol_error(&mut self, conn: ConnId, reason: String) {
        self.stats.malformed_frames += 1;
        tracing::warn!("multicast: {reason}");
        if let Some(addr) = self.conns.get(conn).map(|c| c.addr) {
            self.emit(NodeEvent::ProtocolError { addr, reason });
        }
    }

    /// A seed for a receiver's NAK delays (not key material: keys come from the driver).
    fn rng_seed(&mut self) -> u64 {
        self.turn() as u64 ^ ((self.turn() as u64) << 32)
    }
}
