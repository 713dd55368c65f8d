//! The listener's table: the addresses each instance last announced on each interface in each
//! address family, until when, and which datagram said them (so that the same datagram heard
//! again only moves that expiry on, unparsed).
//!
//! # What a repeat may skip
//!
//! A datagram announcing one instance alone is remembered, by [`fingerprint`](Table::fingerprint), on the address
//! sets it wrote. Heard again, word for word, it is taken as a repeat (no parse, no checks)
//! only if those sets still carry its fingerprint and none of the instance's sets has lapsed:
//!
//! - a later datagram that writes the same sets takes them over, so an older announcement
//!   heard again (subscriptions going back to what they were, an address flapping back) is
//!   parsed and reported;
//! - a datagram that changes the instance (an event) drops every fingerprint the instance's
//!   other sets carry: they vouched for what it said before;
//! - a repeat renews only the sets its datagram wrote: an IPv4 announcement does not keep
//!   alive an IPv6 address its sender no longer announces;
//! - a set that lapsed makes the next datagram for the instance a parse, which reports the
//!   instance without the lapsed addresses.
//!
//! # Bounds
//!
//! Only instances the [`State`] keeps as peers are kept here (at most
//! [`MAX_TRACKED_INSTANCES`](super::super::state::MAX_TRACKED_INSTANCES)): a refused
//! announcement, this node's own and one past the limit are dropped as soon as they are
//! checked. An announcement's TTL counts up to [`MAX_TTL`]. A fingerprint is kept only while
//! a set carries it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use super::DEFAULT_TTL;
use crate::event::DiscoveryEvent;
use crate::mdns::link::Link;
use crate::mdns::record::{Announcement, ReceivedAddr};
use crate::mdns::state::State;

/// The longest an announcement keeps an instance without being heard again, whatever TTL it
/// gives: twice the 120 s mdns-sd gives the SRV and address records of every Shoal node.
pub(super) const MAX_TTL: Duration = DEFAULT_TTL.saturating_mul(2);

/// The instances heard: the addresses last announced on each interface in each address
/// family, and when each such set expires unless announced again; the earliest expiry, so that
/// the table is looked over only when something may have expired. Shared by the listener's
/// threads and the start-up query.
#[derive(Debug, Default)]
pub(in crate::mdns) struct Table {
    instances: HashMap<String, Heard>,
    earliest: Option<Instant>,
    /// Datagrams that alone announced an instance, by [`fingerprint`](Table::fingerprint),
    /// while a set of that instance carries it: what a repeat renews.
    repeats: HashMap<u64, Repeat>,
    /// The random keys of [`Table::fingerprint`], this table's own.
    keys: RandomState,
}

/// What a datagram heard before said: one instance, with this TTL.
#[derive(Debug)]
struct Repeat {
    key: String,
    ttl: Duration,
}

/// One instance as heard: an address set per (interface, family), sorted by both.
#[derive(Debug, Default)]
struct Heard {
    sets: Vec<AddrSet>,
}

#[derive(Debug)]
struct AddrSet {
    v6: bool,
    interface: String,
    addrs: Vec<ReceivedAddr>,
    until: Instant,
    /// The fingerprint of the datagram that wrote this set, if it announced the instance
    /// alone and nothing has changed the instance since.
    said_by: Option<u64>,
}

impl Heard {
    fn expires(&self) -> Option<Instant> {
        self.sets.iter().map(|set| set.until).max()
    }

    fn carries(&self, fingerprint: u64) -> bool {
        self.sets.iter().any(|set| set.said_by == Some(fingerprint))
    }
}

impl Table {
    /// A hash of a datagram, the interface it came on and that interface's link (what its
    /// addresses were checked against), its id (first two bytes) left out. Keyed with this
    /// table's random keys, so that nobody on the link can craft a datagram that passes for
    /// another instance's repeat (with fixed keys, a collision costs about 2^32 tries).
    pub(super) fn fingerprint(&self, datagram: &[u8], index: u32, link: &Link) -> u64 {
        self.keys
            .hash_one((index, link, datagram.get(2..).unwrap_or_default()))
    }

    /// Takes in `announcement`, heard on its interface (`via`, one entry) with `ttl` (counted
    /// up to [`MAX_TTL`]), in the table and then in `state`; `fingerprint` is the datagram's
    /// if it announced this instance alone. Returns the event to forward, if any. An instance
    /// the state does not keep as a peer is not kept here either.
    pub(in crate::mdns) fn resolve(
        &mut self,
        state: &mut State,
        announcement: &mut Announcement,
        ttl: Duration,
        now: Instant,
        fingerprint: Option<u64>,
    ) -> Option<DiscoveryEvent> {
        let key = announcement.fullname.to_ascii_lowercase();
        let ttl = ttl.min(MAX_TTL);
        self.heard_by(announcement, now + ttl, now, fingerprint);
        let event = state.on_resolved(announcement, now);
        if !state.is_peer(&key) {
            self.forget(&key);
            return event;
        }
        if event.is_some() {
            self.changed(&key, fingerprint);
        }
        // Remembered only while a set carries it (a datagram that wrote no set renews nothing).
        if let Some(fingerprint) = fingerprint
            && self
                .instances
                .get(&key)
                .is_some_and(|heard| heard.carries(fingerprint))
        {
            self.repeats.insert(fingerprint, Repeat { key, ttl });
        }
        event
    }

    /// [`Table::heard_by`] a datagram not remembered.
    #[cfg(test)]
    pub(super) fn heard(
        &mut self,
        announcement: &mut Announcement,
        expires: Instant,
        now: Instant,
    ) {
        self.heard_by(announcement, expires, now, None);
    }

    /// `announcement` was heard on its interface (`via`, one entry), valid until `expires`:
    /// each family present in its addresses replaces what that interface last said of it, the
    /// set written marked with the datagram's `fingerprint`; sets that lapsed are dropped. On
    /// return its addresses and interfaces are all those still valid for the instance.
    fn heard_by(
        &mut self,
        announcement: &mut Announcement,
        expires: Instant,
        now: Instant,
        fingerprint: Option<u64>,
    ) {
        let interface = announcement.via.first().cloned().unwrap_or_default();
        let key = announcement.fullname.to_ascii_lowercase();
        let heard = self.instances.entry(key.clone()).or_default();
        let mut unsaid = Vec::new();
        let (v4, v6): (Vec<ReceivedAddr>, Vec<ReceivedAddr>) =
            announcement.addrs.drain(..).partition(|a| a.ip.is_ipv4());
        for (is_v6, fresh) in [(false, v4), (true, v6)] {
            if fresh.is_empty() {
                continue;
            }
            let set = AddrSet {
                v6: is_v6,
                interface: interface.clone(),
                addrs: fresh,
                until: expires,
                said_by: fingerprint,
            };
            let by = |s: &AddrSet| (s.v6, s.interface.clone());
            match heard.sets.binary_search_by_key(&by(&set), by) {
                Ok(at) => unsaid.extend(std::mem::replace(&mut heard.sets[at], set).said_by),
                Err(at) => heard.sets.insert(at, set),
            }
        }
        heard.sets.retain(|set| {
            let valid = set.until > now;
            if !valid {
                unsaid.extend(set.said_by);
            }
            valid
        });
        announcement.via.clear();
        for set in &heard.sets {
            announcement.addrs.extend(set.addrs.iter().cloned());
            if !announcement.via.contains(&set.interface) {
                announcement.via.push(set.interface.clone());
            }
        }
        announcement.via.sort();
        if let Some(expires) = heard.expires() {
            self.earliest = Some(self.earliest.map_or(expires, |e| e.min(expires)));
        }
        for fingerprint in unsaid {
            self.unsaid(&key, fingerprint);
        }
    }

    /// The instance `key` changed: the datagrams that wrote its sets, but `fingerprint`'s,
    /// said what it was before and are parsed if heard again.
    fn changed(&mut self, key: &str, fingerprint: Option<u64>) {
        let Some(heard) = self.instances.get_mut(key) else {
            return;
        };
        let mut unsaid = Vec::new();
        for set in &mut heard.sets {
            if set.said_by != fingerprint {
                unsaid.extend(set.said_by.take());
            }
        }
        for fingerprint in unsaid {
            self.unsaid(key, fingerprint);
        }
    }

    /// Forgets the datagram `fingerprint` as a repeat of `key` once no set of it carries it.
    fn unsaid(&mut self, key: &str, fingerprint: u64) {
        let carried = self
            .instances
            .get(key)
            .is_some_and(|heard| heard.carries(fingerprint));
        if !carried && self.repeats.get(&fingerprint).is_some_and(|r| r.key == key) {
            self.repeats.remove(&fingerprint);
        }
    }

    /// Forgets the instance `key` and the datagrams that announced it.
    pub(super) fn forget(&mut self, key: &str) {
        let Some(heard) = self.instances.remove(key) else {
            return;
        };
        for fingerprint in heard.sets.iter().filter_map(|set| set.said_by) {
            self.unsaid(key, fingerprint);
        }
    }

    /// If the datagram `fingerprint` was heard before, alone announcing an instance, and still
    /// is what that instance last said (see the module's doc), moves the expiry of the sets it
    /// wrote on and returns the instance.
    pub(super) fn repeat(&mut self, fingerprint: u64, now: Instant) -> Option<String> {
        let repeat = self.repeats.get(&fingerprint)?;
        let heard = self.instances.get_mut(&repeat.key)?;
        if !heard.carries(fingerprint) || heard.sets.iter().any(|set| set.until <= now) {
            return None;
        }
        for set in heard
            .sets
            .iter_mut()
            .filter(|set| set.said_by == Some(fingerprint))
        {
            set.until = now + repeat.ttl;
        }
        Some(repeat.key.clone())
    }

    /// Removes and returns the instances expired at `now`.
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<String> {
        if self.earliest.is_none_or(|earliest| now < earliest) {
            return Vec::new();
        }
        let expired: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, heard)| heard.expires().is_none_or(|at| at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            self.forget(name);
        }
        self.earliest = self.instances.values().filter_map(Heard::expires).min();
        expired
    }

    /// How many instances and remembered datagrams the table holds.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.instances.len(), self.repeats.len())
    }
}
