//! The subscriber's side of a channel. See the module docs of [`super`].
//!
//! Events are delivered in the publisher's order, like a QUIC stream's: a datagram after a
//! gap is opened, checked and held (at most [`ChannelConfig::window`] of them) until the gap
//! is repaired. Every datagram number is accepted once: below `next_needed` or already held
//! is a replay. That window is per publisher (a [`Receiver`] serves one channel) and covers
//! every epoch, since numbers go on across epochs; each epoch's key opens only the numbers
//! from its `first_seq` up to the next epoch's, and heartbeats carry a counter per epoch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use shoal_proto::codec;
use shoal_proto::multicast::{
    Assignment, ChannelDemote, ChannelKey, ChannelNak, ChannelStatus, DatagramBody,
};
use shoal_proto::{Head, Item, Limits, SeqRange};

use super::header::{HEADER_LEN, Header, HeaderError, Kind};
use super::seal::{EpochKey, TAG_LEN};
use super::{ChannelConfig, DropReason, Dropped};
use crate::engine::ranges::RangeSet;

/// Datagrams of an epoch whose key has not arrived yet (the key travels over QUIC and may be
/// overtaken by the first datagrams sealed with it), held unopened: at most this many.
const MAX_UNKEYED: usize = 64;

/// One event, in order, for the engine to hand to its handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Its number on the channel (acknowledged by [`Receiver::handled`]).
    pub(crate) number: u64,
    pub(crate) head: Arc<Head>,
    /// Which instance of each subscriber group handles it.
    pub(crate) assigned: Arc<[Assignment]>,
    pub(crate) item: Item,
}

/// Something the driver sends to the publisher over QUIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReceiverTransmit {
    Status(ChannelStatus),
    Nak(ChannelNak),
}

/// Where the subscriber is on the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No key yet.
    Waiting,
    Joined,
    /// Moved to unicast by the publisher.
    Demoted,
}

#[derive(Debug)]
struct Epoch {
    key: EpochKey,
    first_seq: u64,
    /// The last heartbeat counter seen.
    heartbeat: Option<u64>,
}

/// The subscriber's side of one channel.
#[derive(Debug)]
pub(crate) struct Receiver {
    channel: u64,
    config: ChannelConfig,
    limits: Limits,
    state: State,
    epochs: BTreeMap<u32, Epoch>,
    next_needed: u64,
    /// Every datagram numbered below this was sent (as far as this subscriber knows).
    known_end: u64,
    held: BTreeMap<u64, DatagramBody>,
    unkeyed: VecDeque<Vec<u8>>,
    /// Missing datagrams, with when to NAK them (again).
    gaps: BTreeMap<u64, Instant>,
    rng: SmallRng,
    ready: VecDeque<Delivered>,
    /// Whether datagrams that arrived in order wait here instead of going to the engine
    /// ([`Receiver::pause`]).
    paused: bool,
    handled: RangeSet,
    /// Items whose handling failed here since the last status.
    failed: RangeSet,
    /// When the last status went, and the `next_needed` it said.
    last_status: Option<(Instant, u64)>,
    joined_at: Option<Instant>,
    out: VecDeque<ReceiverTransmit>,
    /// Datagrams dropped, by reason.
    pub(crate) dropped: Dropped,
    /// NAKs sent.
    pub(crate) naks: u64,
}

impl Receiver {
    /// The subscriber's side of `channel`; `seed` seeds the NAK delays.
    pub(crate) fn new(channel: u64, config: ChannelConfig, limits: Limits, seed: u64) -> Self {
        Self {
            channel,
            config,
            limits,
            state: State::Waiting,
            epochs: BTreeMap::new(),
            next_needed: 0,
            known_end: 0,
            held: BTreeMap::new(),
            unkeyed: VecDeque::new(),
            gaps: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed),
            ready: VecDeque::new(),
            paused: false,
            handled: RangeSet::default(),
            failed: RangeSet::default(),
            last_status: None,
            joined_at: None,
            out: VecDeque::new(),
            dropped: Dropped::default(),
            naks: 0,
        }
    }

    /// Every datagram numbered below this has arrived.
    #[cfg(test)]
    pub(crate) fn next_needed(&self) -> u64 {
        self.next_needed
    }

    /// Whether the publisher moved this subscriber to unicast.
    #[cfg(test)]
    pub(crate) fn is_demoted(&self) -> bool {
        self.state == State::Demoted
    }

    /// A key arrived from the publisher over QUIC. Returns `false` for another channel's.
    pub(crate) fn on_key(&mut self, key: &ChannelKey, now: Instant) -> bool {
        if key.channel != self.channel {
            return false;
        }
        if self.state != State::Joined {
            // Joining (or joining again after unicast): reads from `first_seq` on.
            self.state = State::Joined;
            self.epochs.clear();
            self.held.clear();
            self.gaps.clear();
            self.next_needed = key.first_seq;
            self.known_end = key.first_seq;
            self.last_status = None;
            self.joined_at = Some(now);
        }
        self.epochs.entry(key.epoch).or_insert_with(|| Epoch {
            key: EpochKey::derive(&key.secret, key.channel, key.epoch),
            first_seq: key.first_seq,
            heartbeat: None,
        });
        for datagram in std::mem::take(&mut self.unkeyed) {
            let _ = self.on_datagram(&datagram, now);
        }
        true
    }

    /// The publisher moved this subscriber to unicast: the keys are dropped, and nothing more
    /// is delivered from the channel.
    pub(crate) fn on_demote(&mut self, demote: &ChannelDemote) {
        if demote.channel == self.channel {
            self.state = State::Demoted;
            self.epochs.clear();
            self.held.clear();
            self.gaps.clear();
            self.unkeyed.clear();
        }
    }

    /// A datagram arrived (from the group, or a repair over QUIC). Dropped datagrams are
    /// counted in [`Receiver::dropped`] by reason; the error says which.
    pub(crate) fn on_datagram(&mut self, datagram: &[u8], now: Instant) -> Result<(), DropReason> {
        let result = self.accept(datagram, now);
        if let Err(reason) = result {
            self.dropped.count(reason);
        }
        result
    }

    fn accept(&mut self, datagram: &[u8], now: Instant) -> Result<(), DropReason> {
        let header = match Header::parse(datagram) {
            Ok(h) if datagram.len() >= HEADER_LEN + TAG_LEN => h,
            Ok(_) | Err(HeaderError::Short) => return Err(DropReason::Truncated),
            Err(HeaderError::Foreign) => return Err(DropReason::Foreign),
        };
        if header.channel != self.channel {
            return Err(DropReason::Foreign);
        }
        let newest = self.epochs.keys().next_back().copied();
        match self.state {
            State::Demoted => return Err(DropReason::NotJoined),
            State::Waiting => return self.hold_unkeyed(datagram, DropReason::NotJoined),
            State::Joined if newest.is_some_and(|e| header.epoch > e) => {
                return self.hold_unkeyed(datagram, DropReason::UnknownEpoch);
            }
            State::Joined => {}
        }
        let next_first = self
            .epochs
            .range(header.epoch.saturating_add(1)..)
            .next()
            .map(|(_, e)| e.first_seq);
        let Some(epoch) = self.epochs.get_mut(&header.epoch) else {
            return Err(DropReason::UnknownEpoch);
        };
        let mut buf = datagram.to_vec();
        match header.kind {
            Kind::Events => {
                let seq = header.seq;
                if seq < self.next_needed || self.held.contains_key(&seq) {
                    return Err(DropReason::Replayed);
                }
                if seq < epoch.first_seq || next_first.is_some_and(|n| seq >= n) {
                    return Err(DropReason::WrongEpoch);
                }
                if seq - self.next_needed >= u64::from(self.config.window) {
                    return Err(DropReason::TooFarAhead);
                }
                let body = epoch.key.open(header, &mut buf).ok_or(DropReason::Forged)?;
                let body = codec::decode_datagram_body(body, &self.limits)
                    .ok()
                    .filter(|b| !b.runs.is_empty() && b.runs.iter().all(|r| !r.items.is_empty()))
                    .ok_or(DropReason::Malformed)?;
                self.held.insert(seq, body);
                self.gaps.remove(&seq);
                self.known_end = self.known_end.max(seq.saturating_add(1));
                self.deliver_in_order();
            }
            Kind::Heartbeat => {
                if epoch.heartbeat.is_some_and(|last| header.seq <= last) {
                    return Err(DropReason::Replayed);
                }
                let body = epoch.key.open(header, &mut buf).ok_or(DropReason::Forged)?;
                let hb = codec::decode_heartbeat(body).map_err(|_| DropReason::Malformed)?;
                epoch.heartbeat = Some(header.seq);
                // Never NAK beyond the window, whatever a heartbeat claims.
                let reach = self
                    .next_needed
                    .saturating_add(u64::from(self.config.window));
                self.known_end = self.known_end.max(hb.next_seq.min(reach));
            }
        }
        self.note_gaps(now);
        Ok(())
    }

    /// Datagrams held for a key that has not come (yet).
    #[cfg(test)]
    pub(crate) fn unkeyed(&self) -> usize {
        self.unkeyed.len()
    }

    fn hold_unkeyed(&mut self, datagram: &[u8], reason: DropReason) -> Result<(), DropReason> {
        if self.unkeyed.len() >= MAX_UNKEYED {
            self.unkeyed.pop_front();
            self.dropped.count(reason);
        }
        self.unkeyed.push_back(datagram.to_vec());
        Ok(())
    }

    /// Holds back (or lets go) what arrives in order, while the engine's handlers for this
    /// channel's events have a backlog: datagrams then wait here (a window of them at most,
    /// dropped beyond it and asked for again later), `next_needed` stays where it is, and the
    /// publisher, which goes at most a window ahead of it, waits too, or moves this
    /// subscriber to unicast, which has flow control of its own. Let go, what waited is
    /// delivered.
    pub(crate) fn pause(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.deliver_in_order();
        }
    }

    /// Whether arrivals are held back ([`Receiver::pause`]).
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    fn deliver_in_order(&mut self) {
        while !self.paused
            && let Some(body) = self.held.remove(&self.next_needed)
        {
            let mut number = body.first_item;
            for run in body.runs {
                let head = Arc::new(run.head);
                let assigned: Arc<[Assignment]> = run.assigned.into();
                for item in run.items {
                    self.ready.push_back(Delivered {
                        number,
                        head: Arc::clone(&head),
                        assigned: Arc::clone(&assigned),
                        item,
                    });
                    number = number.wrapping_add(1);
                }
            }
            self.next_needed += 1;
        }
        // An epoch whose successor starts at or below `next_needed` opens nothing wanted.
        let starts: Vec<(u32, u64)> = self.epochs.iter().map(|(e, x)| (*e, x.first_seq)).collect();
        for pair in starts.windows(2) {
            if pair[1].1 <= self.next_needed {
                self.epochs.remove(&pair[0].0);
            }
        }
    }

    /// Every missing number gets a NAK after a random delay of up to two round trips, so the
    /// subscribers that lost one datagram do not all ask at once, and a datagram that was only
    /// reordered arrives before anyone asks.
    fn note_gaps(&mut self, now: Instant) {
        let backoff = self.config.rtt * 2;
        let end = self.known_end.min(
            self.next_needed
                .saturating_add(u64::from(self.config.window)),
        );
        for seq in self.next_needed..end {
            if !self.held.contains_key(&seq) && !self.gaps.contains_key(&seq) {
                let delay = backoff.mul_f64(self.rng.random::<f64>());
                self.gaps.insert(seq, now + delay);
            }
        }
        self.gaps = self.gaps.split_off(&self.next_needed);
    }

    /// The publisher's measured round trip ([`super::measured_rtt`]): NAK delays follow it.
    pub(crate) fn set_rtt(&mut self, rtt: Duration) {
        self.config.rtt = rtt;
    }

    /// The round trip its timers use now.
    #[cfg(test)]
    pub(crate) fn rtt(&self) -> Duration {
        self.config.rtt
    }

    /// The engine's handlers finished event `number`: the publisher hears of it in the next
    /// status.
    pub(crate) fn handled(&mut self, number: u64) {
        self.handled.insert(number);
    }

    /// Handling event `number` failed here: the publisher hears of it in the next status
    /// (at once), and sends its copy again by unicast.
    pub(crate) fn failed(&mut self, number: u64) {
        self.failed.insert(number);
    }

    /// Whether a status has items to report.
    fn has_items(&self) -> bool {
        !self.handled.is_empty() || !self.failed.is_empty()
    }

    /// The next event, in order (the engine takes them all at once: [`Self::swap_delivered`]).
    #[cfg(test)]
    pub(crate) fn poll_delivered(&mut self) -> Option<Delivered> {
        self.ready.pop_front()
    }

    /// Hands over every event delivered in order so far: they go into `into` (an empty
    /// deque), whose place (and capacity) the receiver takes for the next ones.
    pub(crate) fn swap_delivered(&mut self, into: &mut VecDeque<Delivered>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.ready, into);
    }

    fn status_due(&self) -> Option<Instant> {
        let last = self.last_status.map(|(at, _)| at).or(self.joined_at);
        match self.state {
            State::Waiting => return None,
            // Moved to unicast: what its handlers finished since the last status is still
            // reported, so the publisher's deliveries of those events complete.
            State::Demoted => return last.filter(|_| self.has_items()),
            State::Joined => {}
        }
        let Some((last, said)) = self.last_status else {
            return self.joined_at;
        };
        let moved = self.next_needed - said;
        // Handled events at once, as unicast acks go: the publish's receipt waits for them.
        // (Those finished in one engine step share a status.) A quarter of the window at once
        // too, so the publisher can go on.
        if self.has_items() || moved >= u64::from(self.config.window / 4).max(1) {
            return Some(last);
        }
        if moved > 0 {
            Some(last + self.config.status_interval)
        } else {
            Some(last + self.config.status_keepalive)
        }
    }

    /// Time passed: NAKs and statuses that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Waiting {
            return;
        }
        // NAK what is due, and what would be due within a round trip with it.
        let soon = now + self.config.rtt;
        if self.gaps.values().any(|at| *at <= now) {
            let mut missing: Vec<SeqRange> = Vec::new();
            let retry = self.config.rtt * 4;
            for (seq, at) in self.gaps.iter_mut().filter(|(_, at)| **at <= soon) {
                match missing.last_mut() {
                    Some(r) if r.start + r.len == *seq => r.len += 1,
                    _ => missing.push(SeqRange {
                        start: *seq,
                        len: 1,
                    }),
                }
                *at = now + retry + self.config.rtt.mul_f64(self.rng.random::<f64>());
            }
            self.naks += 1;
            self.out.push_back(ReceiverTransmit::Nak(ChannelNak {
                channel: self.channel,
                missing,
            }));
        }
        self.report(now);
    }

    /// A status now if one is due (this node's handlers finished events since the last one,
    /// or the status interval passed); says whether one was made.
    pub(crate) fn report(&mut self, now: Instant) -> bool {
        let due = self.status_due().is_some_and(|at| at <= now);
        if due {
            self.status(now);
        }
        due
    }

    /// A status now if this node's handlers finished events since the last one: the node
    /// stops, and the publisher must hear of them before the goodbye (or it hands them to
    /// another instance, which runs them again).
    pub(crate) fn flush_handled(&mut self, now: Instant) {
        if self.state != State::Waiting && self.has_items() {
            self.status(now);
        }
    }

    fn status(&mut self, now: Instant) {
        self.last_status = Some((now, self.next_needed));
        self.out.push_back(ReceiverTransmit::Status(ChannelStatus {
            channel: self.channel,
            next_needed: self.next_needed,
            window: self.config.window,
            handled: self.handled.take().into_vec(),
            failed: self.failed.take().into_vec(),
        }));
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<ReceiverTransmit> {
        self.out.pop_front()
    }

    /// When [`Receiver::handle_timeout`] wants to be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let nak = self.gaps.values().min().copied();
        nak.into_iter().chain(self.status_due()).min()
    }
}
