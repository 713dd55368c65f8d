//! The publisher's side of a channel. See the module docs of [`super`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shoal_proto::codec::{self, EncodedHead, EncodedItem, RunParts};
use shoal_proto::multicast::{Assignment, ChannelDemote, ChannelKey, HeartbeatBody};
use shoal_proto::{NodeId, SeqRange};

use super::ChannelConfig;
use super::header::{HEADER_LEN, Header, Kind};
use super::repair::{Naks, RepairBuffer, Stored};
use super::seal::{EpochKey, Secret, TAG_LEN};

mod feedback;
mod packing;

use feedback::Member;

/// Where the publisher's fresh secrets come from: a cryptographically secure generator (the
/// driver's; the engine draws no randomness of its own for keys).
pub(crate) type SecretSource = Box<dyn FnMut() -> Secret + Send>;

/// Why the channel changed its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RekeyReason {
    /// A subscriber left (unsubscribed, disconnected, crashed): it must not read what follows.
    Left,
    /// A subscriber was refused (the policy or its certificate no longer allows it).
    Refused,
    /// The key was in use for [`ChannelConfig::rekey_interval`].
    Timer,
    /// The key sealed [`ChannelConfig::usage_limit`] datagrams.
    Usage,
    /// A subscriber joined after the key had sealed events: they are not for it.
    Joined,
}

/// Why a subscriber was moved to unicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DemoteReason {
    /// It said nothing for [`ChannelConfig::silent_timeout`].
    Silent,
    /// It still reports, but what was sent did not reach it for
    /// [`ChannelConfig::stall_timeout`] (multicast does not arrive there).
    Stalled,
    /// It held the publisher back at its window for [`ChannelConfig::stall_timeout`].
    Lagging,
}

/// Something the driver sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transmit {
    /// A datagram to the group address (events, a heartbeat, or a repair: the same bytes).
    Multicast(Bytes),
    /// A repair to one subscriber over its QUIC connection: the stored datagram's bytes.
    Repair { to: NodeId, datagram: Bytes },
    /// A key to one subscriber over its QUIC connection.
    Key { to: NodeId, key: ChannelKey },
    /// A subscriber's events come by unicast from now on.
    Demote { to: NodeId, demote: ChannelDemote },
}

/// Something the engine acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SenderEvent {
    /// A subscriber's handlers finished these events (by number): their deliveries are done.
    Handled { node: NodeId, items: Vec<SeqRange> },
    /// A subscriber failed to handle these events: their copies go to it again by unicast.
    Failed { node: NodeId, items: Vec<SeqRange> },
    /// A subscriber was moved to unicast: the events numbered from `from_item` that it has
    /// not acknowledged go to it by unicast.
    Demoted {
        node: NodeId,
        reason: DemoteReason,
        from_item: u64,
    },
    /// The channel changed its key; every active subscriber was sent the new one.
    Rekeyed { epoch: u32, reason: RekeyReason },
}

/// Why an event cannot go on the channel (it goes by unicast instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Alone it would not fit in a datagram.
    TooLarge { needed: usize, max: usize },
}

/// An event waiting to be sent.
#[derive(Debug)]
struct Queued {
    head: Arc<EncodedHead>,
    assigned: Arc<[Assignment]>,
    item: EncodedItem,
}

/// The publisher's side of one channel.
pub(crate) struct Sender {
    channel: u64,
    config: ChannelConfig,
    /// `config.rtt` as configured: the round trip until a member's is measured.
    default_rtt: Duration,
    secrets: SecretSource,
    /// The current epoch's secret, for subscribers that join during it.
    secret: Secret,
    epoch: u32,
    key: EpochKey,
    key_since: Instant,
    heartbeats: u64,
    next_seq: u64,
    /// The first datagram number sealed under the current key.
    epoch_first: u64,
    next_item: u64,
    queue: VecDeque<Queued>,
    repair: RepairBuffer,
    naks: Naks,
    members: BTreeMap<NodeId, Member>,
    /// Who was handed the current key: the members, and those moved to unicast since (they
    /// keep it). One of them leaving changes the key.
    holders: BTreeSet<NodeId>,
    /// Since when a backlog has waited for the slowest subscriber's window.
    blocked_since: Option<Instant>,
    next_heartbeat: Option<Instant>,
    /// The time from this heartbeat to the next: [`ChannelConfig::tail_heartbeat`] after a
    /// datagram, doubling up to [`ChannelConfig::heartbeat_interval`].
    heartbeat_gap: Duration,
    /// Paced (`ChannelConfig::paced`): whether the link sent every event datagram it was
    /// handed. Events are packed only then.
    link_idle: bool,
    /// Since when a datagram with room for more waits for the one before it to arrive
    /// ([`ChannelConfig::coalesce`]).
    held_since: Option<Instant>,
    out: VecDeque<Transmit>,
    events: VecDeque<SenderEvent>,
    /// Counters: datagrams sealed, repairs by multicast and by unicast.
    pub(crate) sent: u64,
    pub(crate) repaired_multicast: u64,
    pub(crate) repaired_unicast: u64,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("channel", &self.channel)
            .field("epoch", &self.epoch)
            .field("next_seq", &self.next_seq)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Channel `channel` (unique per publisher and group: drawn at random when it opens),
    /// starting at epoch 1 with a secret from `secrets`.
    pub(crate) fn new(
        channel: u64,
        config: ChannelConfig,
        mut secrets: SecretSource,
        now: Instant,
    ) -> Self {
        let secret = secrets();
        let key = EpochKey::derive(&secret, channel, 1);
        Self {
            channel,
            default_rtt: config.rtt,
            heartbeat_gap: config.heartbeat_interval,
            config,
            secrets,
            secret,
            epoch: 1,
            key,
            key_since: now,
            heartbeats: 0,
            next_seq: 0,
            epoch_first: 0,
            next_item: 0,
            queue: VecDeque::new(),
            repair: RepairBuffer::default(),
            naks: Naks::default(),
            members: BTreeMap::new(),
            holders: BTreeSet::new(),
            blocked_since: None,
            next_heartbeat: None,
            link_idle: true,
            held_since: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            sent: 0,
            repaired_multicast: 0,
            repaired_unicast: 0,
        }
    }

    pub(crate) fn channel(&self) -> u64 {
        self.channel
    }

    /// The current key's epoch (1 at the start; one more per rekey).
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Whether `node` takes this channel's events by multicast.
    pub(crate) fn is_member(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// The current key, for a subscriber that reads from the next datagram on.
    fn grant(&self) -> ChannelKey {
        ChannelKey {
            channel: self.channel,
            epoch: self.epoch,
            secret: self.secret,
            first_seq: self.next_seq,
        }
    }

    /// `node` joins: it gets a key over QUIC and takes the datagrams from the next one on.
    /// With `fresh_key` (a policy restricts who may subscribe to what), a key that has sealed
    /// events is first replaced for every member: what it sealed went out before `node`
    /// joined, and may be events of topics `node` may not read (it could have captured them).
    /// Without, `node` gets the current key: any member may read any topic.
    pub(crate) fn join(&mut self, node: NodeId, fresh_key: bool, now: Instant) {
        self.naks.forget(node);
        self.members.insert(
            node,
            Member {
                next_needed: self.next_seq,
                window: self.config.window,
                last_heard: now,
                progressed: now,
                rtt: None,
            },
        );
        if fresh_key && self.next_seq > self.epoch_first {
            return self.rekey(RekeyReason::Joined, now);
        }
        self.holders.insert(node);
        self.out.push_back(Transmit::Key {
            to: node,
            key: self.grant(),
        });
    }

    /// `node`, a member, may have lost its key: a key sent on a connection that was then
    /// replaced (two nodes dialling each other at once keep one connection, and the other
    /// one's queued frames may go with it). The current key again, from the first datagram it
    /// still needs (this epoch's first, at the earliest); a member that holds it already
    /// ignores it. Not a member: nothing.
    pub(crate) fn regrant(&mut self, node: NodeId) {
        let Some(member) = self.members.get(&node) else {
            return;
        };
        let mut key = self.grant();
        key.first_seq = member.next_needed.clamp(self.epoch_first, self.next_seq);
        self.out.push_back(Transmit::Key { to: node, key });
    }

    /// `node` leaves (or is refused): if it holds the current key (a member, or one moved to
    /// unicast since it was handed the key), the key changes before anything more is sent, and
    /// only the remaining members get the new one.
    pub(crate) fn leave(&mut self, node: NodeId, reason: RekeyReason, now: Instant) {
        self.members.remove(&node);
        self.naks.forget(node);
        if self.holders.remove(&node) {
            self.rekey(reason, now);
        }
    }

    /// Draws a secret, derives the next epoch's key and hands it to every member.
    fn new_key(&mut self, now: Instant) {
        self.secret = (self.secrets)();
        self.epoch = self.epoch.wrapping_add(1);
        self.key = EpochKey::derive(&self.secret, self.channel, self.epoch);
        self.key_since = now;
        self.epoch_first = self.next_seq;
        self.heartbeats = 0;
        self.holders = self.members.keys().copied().collect();
        let grant = self.grant();
        for &to in self.members.keys() {
            self.out.push_back(Transmit::Key {
                to,
                key: grant.clone(),
            });
        }
    }

    fn rekey(&mut self, reason: RekeyReason, now: Instant) {
        self.new_key(now);
        self.events.push_back(SenderEvent::Rekeyed {
            epoch: self.epoch,
            reason,
        });
    }

    /// Queues an event: `item` under `head`, handled in each group by the instance
    /// `assigned` names. Consecutive events with the same head and assignments share a run.
    /// Returns the event's number on the channel.
    pub(crate) fn push(
        &mut self,
        head: &Arc<EncodedHead>,
        assigned: &Arc<[Assignment]>,
        item: EncodedItem,
    ) -> Result<u64, PushError> {
        let items = std::slice::from_ref(&item);
        let run = RunParts {
            head,
            assigned,
            items,
        };
        let needed = HEADER_LEN + codec::BODY_OVERHEAD + codec::run_len(&run) + TAG_LEN;
        if needed > self.config.max_datagram {
            return Err(PushError::TooLarge {
                needed,
                max: self.config.max_datagram,
            });
        }
        self.queue.push_back(Queued {
            head: Arc::clone(head),
            assigned: Arc::clone(assigned),
            item,
        });
        let number = self.next_item;
        self.next_item += 1;
        Ok(number)
    }

    /// Events queued and not yet sent (the window is full, or [`Sender::poll_transmit`] was
    /// not called since).
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Events packed into datagrams so far.
    pub(crate) fn events_sent(&self) -> u64 {
        self.next_item - self.queue.len() as u64
    }

    /// Packs queued events into datagrams and seals them, as far as the window allows.
    fn send_queued(&mut self, now: Instant) {
        self.release();
        if !self.link_idle {
            return; // packed when the link is idle (`link_idle`)
        }
        while !self.queue.is_empty() {
            if self.next_seq >= self.limit() {
                self.blocked_since.get_or_insert(now);
                // No coalescing wait while blocked: its deadline would fire in vain until the
                // window opens (a status), which starts it again.
                self.held_since = None;
                return;
            }
            if self.key.seals >= self.config.usage_limit {
                self.rekey(RekeyReason::Usage, now);
            }
            let Some((datagram, first_item)) = self.next_datagram(now) else {
                return; // packed when a member reports, or a round trip later
            };
            let seq = self.next_seq;
            // A member that had everything starts waiting now: its stall clock starts here.
            for m in self.members.values_mut().filter(|m| m.next_needed == seq) {
                m.progressed = now;
            }
            let bytes = self.seal(Kind::Events, seq, datagram);
            self.next_seq += 1;
            self.sent += 1;
            self.repair.push(
                seq,
                Stored {
                    bytes: bytes.clone(),
                    first_item,
                },
            );
            self.out.push_back(Transmit::Multicast(bytes));
            self.heartbeat_gap = self.config.tail_heartbeat;
            self.next_heartbeat = Some(now + self.heartbeat_gap);
            self.link_idle = !self.config.paced;
        }
        self.blocked_since = None;
    }

    /// Paced: the link sent every datagram it was handed. What queued meanwhile is packed
    /// (on the next [`Sender::poll_transmit`]), several events to a datagram.
    pub(crate) fn link_idle(&mut self) {
        self.link_idle = true;
    }

    fn seal(&mut self, kind: Kind, seq: u64, mut datagram: BytesMut) -> Bytes {
        let header = Header {
            kind,
            channel: self.channel,
            epoch: self.epoch,
            seq,
        };
        self.key.seal(header, &mut datagram);
        datagram.freeze()
    }

    fn heartbeat(&mut self, now: Instant) {
        if self.key.seals >= self.config.usage_limit {
            self.rekey(RekeyReason::Usage, now);
        }
        let body = HeartbeatBody {
            next_seq: self.next_seq,
            oldest_kept: self.repair.oldest(self.next_seq),
        };
        let mut buf = BytesMut::from(&[0u8; HEADER_LEN][..]);
        let _ = codec::write_heartbeat(&mut buf, &body);
        let counter = self.heartbeats;
        self.heartbeats += 1;
        let bytes = self.seal(Kind::Heartbeat, counter, buf);
        self.out.push_back(Transmit::Multicast(bytes));
        // A burst's tail, and its first heartbeat, may both be lost: the next heartbeats come
        // soon after, then ever less often.
        self.heartbeat_gap = (self.heartbeat_gap * 2).min(self.config.heartbeat_interval);
        self.next_heartbeat = Some(now + self.heartbeat_gap);
    }

    /// Time passed: repairs, heartbeats, the key's timer, silent and lagging members.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.naks.due.is_some_and(|due| due <= now) {
            self.repair_now(now);
        }
        if now.saturating_duration_since(self.key_since) >= self.config.rekey_interval {
            self.rekey(RekeyReason::Timer, now);
        }
        self.demote_silent_and_stalled(now);
        self.send_queued(now);
        if self.next_heartbeat.is_some_and(|at| at <= now) {
            self.heartbeat(now);
        }
    }

    /// The next thing to send, after sealing what the window allows.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.out.is_empty() {
            self.send_queued(now);
        }
        self.out.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// When [`Sender::handle_timeout`] wants to be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        // One pass over the members (asked after every datagram and status): a member is
        // silent `silent_timeout` after it was last heard, and stalled `stall_timeout` after
        // it last moved if it lags and was heard since.
        let mut members: Option<Instant> = None;
        for m in self.members.values() {
            let mut at = m.last_heard + self.config.silent_timeout;
            if m.next_needed < self.next_seq && m.last_heard > m.progressed {
                at = at.min(m.progressed + self.config.stall_timeout);
            }
            members = Some(members.map_or(at, |earliest| earliest.min(at)));
        }
        let blocked = self.blocked_since.map(|s| s + self.config.stall_timeout);
        let held = self.held_since.map(|s| s + self.config.rtt);
        [
            held,
            self.naks.due,
            self.next_heartbeat,
            Some(self.key_since + self.config.rekey_interval),
            blocked,
            members,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
