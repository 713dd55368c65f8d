//! The publisher's side of a channel. See the module docs of [`super`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use shoal_proto::codec::{self, EncodedHead, EncodedItem, RunParts};
use shoal_proto::multicast::{
    Assignment, ChannelDemote, ChannelKey, ChannelNak, ChannelStatus, HeartbeatBody,
};
use shoal_proto::{NodeId, SeqRange};

use super::ChannelConfig;
use super::header::{HEADER_LEN, Header, Kind};
use super::repair::{Naks, RepairBuffer, Stored};
use super::seal::{EpochKey, Secret, TAG_LEN};

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

/// What the publisher knows of one active subscriber.
#[derive(Debug)]
struct Member {
    /// Every datagram below this has reached it.
    next_needed: u64,
    window: u32,
    last_heard: Instant,
    /// When `next_needed` last moved, or a datagram became outstanding for it.
    progressed: Instant,
}

/// The publisher's side of one channel.
pub(crate) struct Sender {
    channel: u64,
    config: ChannelConfig,
    secrets: SecretSource,
    /// The current epoch's secret, for subscribers that join during it.
    secret: Secret,
    epoch: u32,
    key: EpochKey,
    key_since: Instant,
    heartbeats: u64,
    next_seq: u64,
    next_item: u64,
    queue: VecDeque<Queued>,
    repair: RepairBuffer,
    naks: Naks,
    members: BTreeMap<NodeId, Member>,
    /// Since when a backlog has waited for the slowest subscriber's window.
    blocked_since: Option<Instant>,
    next_heartbeat: Option<Instant>,
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
            config,
            secrets,
            secret,
            epoch: 1,
            key,
            key_since: now,
            heartbeats: 0,
            next_seq: 0,
            next_item: 0,
            queue: VecDeque::new(),
            repair: RepairBuffer::default(),
            naks: Naks::default(),
            members: BTreeMap::new(),
            blocked_since: None,
            next_heartbeat: None,
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

    /// `node` joins: it gets the current key over QUIC and takes the datagrams from the next
    /// one on. (Joining does not rekey: the joiner is allowed to read the channel, and what was
    /// sent before it joined is not meant for it.)
    pub(crate) fn join(&mut self, node: NodeId, now: Instant) {
        self.naks.forget(node);
        self.members.insert(
            node,
            Member {
                next_needed: self.next_seq,
                window: self.config.window,
                last_heard: now,
                progressed: now,
            },
        );
        self.out.push_back(Transmit::Key {
            to: node,
            key: self.grant(),
        });
    }

    /// `node` leaves (or is refused): the key changes before anything more is sent, and only
    /// the remaining members get the new one.
    pub(crate) fn leave(&mut self, node: NodeId, reason: RekeyReason, now: Instant) {
        if self.members.remove(&node).is_none() {
            return;
        }
        self.naks.forget(node);
        self.rekey(reason, now);
    }

    /// Draws a secret, derives the next epoch's key and hands it to every member.
    fn new_key(&mut self, now: Instant) {
        self.secret = (self.secrets)();
        self.epoch = self.epoch.wrapping_add(1);
        self.key = EpochKey::derive(&self.secret, self.channel, self.epoch);
        self.key_since = now;
        self.heartbeats = 0;
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

    /// The first datagram number the flow-control window does not allow yet.
    fn limit(&self) -> u64 {
        let slowest = self
            .members
            .values()
            .map(|m| m.next_needed.saturating_add(u64::from(m.window)))
            .min()
            .unwrap_or(u64::MAX);
        let kept = self.repair.oldest(self.next_seq);
        slowest.min(kept.saturating_add(self.config.repair_capacity as u64))
    }

    /// Packs queued events into datagrams and seals them, as far as the window allows.
    fn send_queued(&mut self, now: Instant) {
        self.release();
        while !self.queue.is_empty() {
            if self.next_seq >= self.limit() {
                self.blocked_since.get_or_insert(now);
                return;
            }
            if self.key.seals >= self.config.usage_limit {
                self.rekey(RekeyReason::Usage, now);
            }
            let datagram = self.pack();
            let seq = self.next_seq;
            // A member that had everything starts waiting now: its stall clock starts here.
            for m in self.members.values_mut().filter(|m| m.next_needed == seq) {
                m.progressed = now;
            }
            let first_item = self.next_item - self.queue.len() as u64 - datagram.1 as u64;
            let bytes = self.seal(Kind::Events, seq, datagram.0);
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
            self.next_heartbeat = Some(now + self.config.tail_heartbeat);
        }
        self.blocked_since = None;
    }

    /// Takes as many queued events as fit in one datagram; returns the datagram's body (after
    /// room for the header) and how many events it holds.
    fn pack(&mut self) -> (Vec<u8>, usize) {
        let budget = self.config.max_datagram - HEADER_LEN - TAG_LEN;
        let mut used = codec::BODY_OVERHEAD;
        let mut taken = 0;
        // Runs as (start, end) over the queue's front.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        while let Some(q) = self.queue.get(taken) {
            let joins = runs.last().is_some_and(|&(start, _)| {
                let first = &self.queue[start];
                Arc::ptr_eq(&first.head, &q.head) && Arc::ptr_eq(&first.assigned, &q.assigned)
            });
            let items = std::slice::from_ref(&q.item);
            let cost = if joins {
                q.item.len()
            } else {
                codec::run_len(&RunParts {
                    head: &q.head,
                    assigned: &q.assigned,
                    items,
                })
            };
            if used + cost > budget && taken > 0 {
                break;
            }
            used += cost;
            taken += 1;
            match runs.last_mut() {
                Some(run) if joins => run.1 = taken,
                _ => runs.push((taken - 1, taken)),
            }
        }
        let sent: Vec<Queued> = self.queue.drain(..taken).collect();
        let items: Vec<EncodedItem> = sent.iter().map(|q| q.item.clone()).collect();
        let parts: Vec<RunParts<'_>> = runs
            .iter()
            .map(|&(start, end)| RunParts {
                head: &sent[start].head,
                assigned: &sent[start].assigned,
                items: &items[start..end],
            })
            .collect();
        let first_item = self.next_item - self.queue.len() as u64 - taken as u64;
        let mut body = BytesMut::with_capacity(used);
        // Every event fitted alone (push checked) and the total is bounded above by `used`.
        let _ = codec::write_datagram_body(&mut body, first_item, &parts, usize::MAX);
        let mut datagram = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        datagram.resize(HEADER_LEN, 0);
        datagram.extend_from_slice(&body);
        (datagram, taken)
    }

    fn seal(&mut self, kind: Kind, seq: u64, mut datagram: Vec<u8>) -> Bytes {
        let header = Header {
            kind,
            channel: self.channel,
            epoch: self.epoch,
            seq,
        };
        self.key.seal(header, &mut datagram);
        Bytes::from(datagram)
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
        let bytes = self.seal(Kind::Heartbeat, counter, buf.to_vec());
        self.out.push_back(Transmit::Multicast(bytes));
        self.next_heartbeat = Some(now + self.config.heartbeat_interval);
    }

    /// A member's progress arrived over QUIC.
    pub(crate) fn on_status(&mut self, node: NodeId, status: ChannelStatus, now: Instant) {
        if !status.handled.is_empty() {
            self.events.push_back(SenderEvent::Handled {
                node,
                items: status.handled,
            });
        }
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        m.last_heard = now;
        // Never beyond what was sent: a confused subscriber cannot free unsent numbers.
        let next = status.next_needed.min(self.next_seq);
        if next > m.next_needed {
            m.next_needed = next;
            m.progressed = now;
        }
        m.window = status.window.clamp(1, self.config.window);
        self.send_queued(now);
    }

    /// A member's NAK arrived over QUIC.
    pub(crate) fn on_nak(&mut self, node: NodeId, nak: &ChannelNak, now: Instant) {
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        m.last_heard = now;
        let answer_at = now + self.config.rtt;
        let mut budget = self.config.window as usize;
        for range in &nak.missing {
            for seq in range.iter().take(budget) {
                budget -= 1;
                if seq < self.next_seq && self.repair.get(seq).is_some() {
                    self.naks.add(seq, node, now, answer_at);
                }
            }
        }
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

    fn repair_now(&mut self, now: Instant) {
        let holdoff = now + 2 * self.config.rtt;
        for (seq, askers) in self
            .naks
            .take(self.config.max_repairs_per_round, now, holdoff)
        {
            let Some(stored) = self.repair.get(seq) else {
                continue;
            };
            let bytes = stored.bytes.clone();
            if askers.len() >= self.config.multicast_repair_min {
                self.repaired_multicast += 1;
                self.out.push_back(Transmit::Multicast(bytes));
            } else {
                for to in askers {
                    self.repaired_unicast += 1;
                    self.out.push_back(Transmit::Repair {
                        to,
                        datagram: bytes.clone(),
                    });
                }
            }
        }
    }

    fn demote_silent_and_stalled(&mut self, now: Instant) {
        let (next_seq, stall) = (self.next_seq, self.config.stall_timeout);
        // The members whose window is what holds the publisher back.
        let binding = self
            .members
            .values()
            .map(|m| m.next_needed.saturating_add(u64::from(m.window)))
            .min();
        let blocked = self
            .blocked_since
            .is_some_and(|since| now.saturating_duration_since(since) >= stall);
        let out: Vec<(NodeId, DemoteReason)> = self
            .members
            .iter()
            .filter_map(|(&node, m)| {
                if now.saturating_duration_since(m.last_heard) >= self.config.silent_timeout {
                    Some((node, DemoteReason::Silent))
                } else if m.next_needed < next_seq
                    && m.last_heard > m.progressed
                    && now.saturating_duration_since(m.progressed) >= stall
                {
                    // It still talks, but what was sent does not reach it.
                    Some((node, DemoteReason::Stalled))
                } else if blocked
                    && Some(m.next_needed.saturating_add(u64::from(m.window))) == binding
                {
                    Some((node, DemoteReason::Lagging))
                } else {
                    None
                }
            })
            .collect();
        for (node, reason) in out {
            self.demote(node, reason);
        }
    }

    /// Moves `node` to unicast. It keeps the key (it is still an allowed subscriber), so no
    /// rekey.
    pub(crate) fn demote(&mut self, node: NodeId, reason: DemoteReason) {
        let Some(m) = self.members.remove(&node) else {
            return;
        };
        self.naks.forget(node);
        let from_item = self
            .repair
            .get(m.next_needed)
            .map_or(self.next_item - self.queue.len() as u64, |s| s.first_item);
        self.out.push_back(Transmit::Demote {
            to: node,
            demote: ChannelDemote {
                channel: self.channel,
                from_item,
            },
        });
        self.events.push_back(SenderEvent::Demoted {
            node,
            reason,
            from_item,
        });
        self.release();
        self.blocked_since = None;
    }

    /// Forgets the datagrams every member has (all of them, without members).
    fn release(&mut self) {
        let all_have = self.members.values().map(|m| m.next_needed).min();
        self.repair.release_below(all_have.unwrap_or(self.next_seq));
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
        let silent = self
            .members
            .values()
            .map(|m| m.last_heard + self.config.silent_timeout);
        let stalled = self
            .members
            .values()
            .filter(|m| m.next_needed < self.next_seq && m.last_heard > m.progressed)
            .map(|m| m.progressed + self.config.stall_timeout);
        let blocked = self.blocked_since.map(|s| s + self.config.stall_timeout);
        [
            self.naks.due,
            self.next_heartbeat,
            Some(self.key_since + self.config.rekey_interval),
            blocked,
        ]
        .into_iter()
        .flatten()
        .chain(silent)
        .chain(stalled)
        .min()
    }
}
