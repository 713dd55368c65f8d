//! What the mDNS source has seen: instances, rejections. Pure apart from the timestamps
//! passed in, so the transitions are unit-tested without a daemon.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use shoal_proto::{NodeId, Subscription};

use super::record::{self, Announcement, Me, RejectReason, Verdict};
use crate::event::{DiscoveryEvent, PeerHint, Source};

/// At most this many instances are tracked at once; more are rejected
/// ([`RejectReason::TooManyInstances`]) until some leave.
pub const MAX_TRACKED_INSTANCES: usize = 1024;

/// At most this many distinct rejected records are kept in diagnostics (oldest dropped first).
pub const MAX_REJECTED_RECORDS: usize = 64;

/// At most this many notes from the mDNS daemon are kept in diagnostics.
pub(crate) const MAX_NOTES: usize = 16;

/// An instance this source currently reports as up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenInstance {
    /// Its node id (from the instance name and TXT `id`, which agree).
    pub node_id: NodeId,
    /// Its service (TXT `svc`).
    pub service: String,
    /// Its DNS-SD full name, `<node id>._shoal._udp.local.`.
    pub fullname: String,
    /// Where to dial it: the announced addresses with the SRV port.
    pub addrs: Vec<SocketAddr>,
    /// The subscriptions it advertises, if its announcement says.
    pub subscriptions: Option<Vec<Subscription>>,
    /// The multicast group it advertises (TXT `mc`), if its announcement says one that parses.
    pub multicast: Option<SocketAddrV4>,
    /// The local interfaces its records arrived on, if known (for example `["eth1"]`).
    pub via: Vec<String>,
    /// When it was first reported up.
    pub first_seen: Instant,
    /// When its announcement was last resolved.
    pub last_seen: Instant,
}

/// An announcement that was not reported, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RejectedRecord {
    /// The instance's full name, shortened and with control characters escaped.
    pub instance: String,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The addresses it announced (at most a few), to find the sender.
    pub addrs: Vec<SocketAddr>,
    /// The local interfaces it arrived on, if known.
    pub via: Vec<String>,
    /// How many times it was rejected for this reason.
    pub count: u64,
    /// When it was first rejected.
    pub first_seen: Instant,
    /// When it was last rejected.
    pub last_seen: Instant,
}

/// The table behind [`MdnsDiscovery`](super::MdnsDiscovery).
#[derive(Debug)]
pub(crate) struct State {
    me: Me,
    /// Keyed by lowercase full name (DNS names are case-insensitive).
    peers: HashMap<String, SeenInstance>,
    rejected: VecDeque<RejectedRecord>,
    pub(crate) rejected_total: u64,
    pub(crate) own_announcement_seen: bool,
    pub(crate) notes: VecDeque<String>,
    /// Instances described by answers to the start-up query (repeats included).
    pub(crate) startup_query_answers: u64,
    /// Introductions sent to instances that answered the start-up query.
    pub(crate) introductions_sent: u64,
    /// Start-up queries sent (the first and its repeats).
    pub(crate) startup_queries_sent: u64,
    /// Unasked announcements after the first (`MdnsConfig::reannounce`).
    pub(crate) reannouncements: u64,
    /// Who keeps the table, once started.
    pub(crate) browser: Option<super::Browser>,
}

impl State {
    pub(crate) fn new(me: Me) -> Self {
        Self {
            me,
            peers: HashMap::new(),
            rejected: VecDeque::new(),
            rejected_total: 0,
            own_announcement_seen: false,
            notes: VecDeque::new(),
            startup_query_answers: 0,
            introductions_sent: 0,
            startup_queries_sent: 0,
            reannouncements: 0,
            browser: None,
        }
    }

    /// A resolved announcement arrived. Returns the event to forward, if any.
    pub(crate) fn on_resolved(&mut self, a: &Announcement, now: Instant) -> Option<DiscoveryEvent> {
        let key = a.fullname.to_ascii_lowercase();
        let verdict = match record::check(a, &self.me) {
            Verdict::Peer(_)
                if !self.peers.contains_key(&key) && self.peers.len() >= MAX_TRACKED_INSTANCES =>
            {
                Verdict::Rejected(RejectReason::TooManyInstances)
            }
            verdict => verdict,
        };
        match verdict {
            Verdict::Ours => {
                self.own_announcement_seen = true;
                None
            }
            Verdict::Rejected(reason) => {
                self.reject(a, reason, now);
                // An instance that was fine and now is not is gone as far as the node knows.
                self.peers
                    .remove(&key)
                    .map(|gone| DiscoveryEvent::Down(hint(&gone)))
            }
            Verdict::Peer(peer) => match self.peers.get_mut(&key) {
                Some(known) => {
                    known.last_seen = now;
                    known.via.clone_from(&a.via);
                    if known.addrs == peer.addrs
                        && known.service == peer.service
                        && known.subscriptions == peer.subscriptions
                        && known.multicast == peer.multicast
                    {
                        return None;
                    }
                    known.addrs = peer.addrs;
                    known.service = peer.service;
                    known.subscriptions = peer.subscriptions;
                    known.multicast = peer.multicast;
                    Some(DiscoveryEvent::Updated(hint(known)))
                }
                None => {
                    let seen = SeenInstance {
                        node_id: peer.node_id,
                        service: peer.service,
                        fullname: a.fullname.clone(),
                        addrs: peer.addrs,
                        subscriptions: peer.subscriptions,
                        multicast: peer.multicast,
                        via: a.via.clone(),
                        first_seen: now,
                        last_seen: now,
                    };
                    let event = DiscoveryEvent::Up(hint(&seen));
                    self.peers.insert(key, seen);
                    Some(event)
                }
            },
        }
    }

    /// An instance was heard again, saying what it said before. Returns whether it is a
    /// known peer (else what it said must be checked again: it was refused, or went down).
    pub(crate) fn touch(&mut self, fullname: &str, now: Instant) -> bool {
        match self.peers.get_mut(&fullname.to_ascii_lowercase()) {
            Some(known) => {
                known.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Whether the instance `fullname` is a peer this table reports as up.
    pub(crate) fn is_peer(&self, fullname: &str) -> bool {
        self.peers.contains_key(&fullname.to_ascii_lowercase())
    }

    /// An instance said goodbye or expired. Returns the event to forward, if any.
    pub(crate) fn on_removed(&mut self, fullname: &str) -> Option<DiscoveryEvent> {
        self.peers
            .remove(&fullname.to_ascii_lowercase())
            .map(|gone| DiscoveryEvent::Down(hint(&gone)))
    }

    /// Records `a` as refused for `reason` (its addresses listed, a few at most).
    pub(crate) fn reject(&mut self, a: &Announcement, reason: RejectReason, now: Instant) {
        self.rejected_total += 1;
        let instance = record::printable_name(&a.fullname);
        tracing::debug!(%instance, %reason, "mdns: rejected announcement");
        let mut addrs = record::usable_addrs(&a.addrs, a.port);
        addrs.truncate(4);
        if let Some(pos) = self
            .rejected
            .iter()
            .position(|r| r.instance == instance && r.reason == reason)
        {
            if let Some(mut entry) = self.rejected.remove(pos) {
                entry.count += 1;
                entry.last_seen = now;
                entry.addrs = addrs;
                entry.via.clone_from(&a.via);
                self.rejected.push_back(entry);
            }
        } else {
            if self.rejected.len() >= MAX_REJECTED_RECORDS {
                self.rejected.pop_front();
            }
            let via = a.via.clone();
            self.rejected.push_back(RejectedRecord {
                instance,
                reason,
                addrs,
                via,
                count: 1,
                first_seen: now,
                last_seen: now,
            });
        }
    }

    pub(crate) fn note(&mut self, note: String) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.pop_front();
        }
        self.notes.push_back(note);
    }

    /// The instances currently up, sorted by node id.
    pub(crate) fn peers(&self) -> Vec<SeenInstance> {
        let mut peers: Vec<_> = self.peers.values().cloned().collect();
        peers.sort_by_key(|p| p.node_id);
        peers
    }

    /// The rejected records, oldest first.
    pub(crate) fn rejected(&self) -> Vec<RejectedRecord> {
        self.rejected.iter().cloned().collect()
    }
}

/// Locks the table, carrying on with what is there if a holder of the lock panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn hint(seen: &SeenInstance) -> PeerHint {
    PeerHint {
        node_id: Some(seen.node_id),
        service: Some(seen.service.clone()),
        addrs: seen.addrs.clone(),
        source: Source::Mdns,
        subscriptions: seen.subscriptions.clone(),
        multicast: seen.multicast,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use shoal_proto::PROTOCOL_VERSION;

    use super::*;
    use crate::mdns::record::{ReceivedAddr, SERVICE_TYPE};

    fn state() -> State {
        State::new(Me {
            node_id: NodeId::from_u128(1),
            service: "invoice".into(),
            port: 7000,
        })
    }

    fn announcement(id: u128, service: &str, last_octet: u8) -> Announcement {
        let id = NodeId::from_u128(id).to_string();
        Announcement {
            fullname: format!("{id}.{SERVICE_TYPE}"),
            port: 7001,
            addrs: vec![ReceivedAddr {
                ip: IpAddr::V4(Ipv4Addr::new(10, 99, 0, last_octet)),
                scope_id: 0,
            }],
            txt: vec![
                ("svc".into(), Some(service.as_bytes().to_vec())),
                ("id".into(), Some(id.into_bytes())),
                ("pv".into(), Some(PROTOCOL_VERSION.to_string().into_bytes())),
            ],
            via: vec!["lan0".into()],
        }
    }

    #[test]
    fn up_then_updated_then_down() {
        let mut s = state();
        let now = Instant::now();
        let a = announcement(2, "billing", 2);
        let Some(DiscoveryEvent::Up(hint)) = s.on_resolved(&a, now) else {
            panic!("expected Up")
        };
        assert_eq!(hint.node_id, Some(NodeId::from_u128(2)));
        assert_eq!(hint.service.as_deref(), Some("billing"));
        assert_eq!(hint.source, Source::Mdns);

        assert_eq!(
            s.on_resolved(&a, now),
            None,
            "same announcement again is not news"
        );

        let moved = announcement(2, "billing", 3);
        let Some(DiscoveryEvent::Updated(hint)) = s.on_resolved(&moved, now) else {
            panic!("expected Updated")
        };
        assert_eq!(
            hint.addrs,
            vec!["10.99.0.3:7001".parse::<SocketAddr>().expect("addr")]
        );

        let Some(DiscoveryEvent::Down(hint)) = s.on_removed(&moved.fullname.to_uppercase()) else {
            panic!("expected Down")
        };
        assert_eq!(hint.node_id, Some(NodeId::from_u128(2)));
        assert_eq!(s.on_removed(&moved.fullname), None, "already gone");
        assert!(s.peers().is_empty());
    }

    #[test]
    fn a_changed_group_is_an_update_and_a_bad_one_no_group() {
        let mut s = state();
        let now = Instant::now();
        let with_group = |group: &str| {
            let mut a = announcement(2, "billing", 2);
            a.txt.push(("mc".into(), Some(group.as_bytes().to_vec())));
            a
        };
        let Some(DiscoveryEvent::Up(hint)) = s.on_resolved(&with_group("239.1.1.1:7451"), now)
        else {
            panic!("expected Up")
        };
        assert_eq!(
            hint.multicast,
            Some("239.1.1.1:7451".parse().expect("group"))
        );
        assert_eq!(s.on_resolved(&with_group("239.1.1.1:7451"), now), None);
        let Some(DiscoveryEvent::Updated(hint)) = s.on_resolved(&with_group("239.2.2.2:7451"), now)
        else {
            panic!("expected Updated")
        };
        assert_eq!(
            hint.multicast,
            Some("239.2.2.2:7451".parse().expect("group"))
        );
        let Some(DiscoveryEvent::Updated(hint)) = s.on_resolved(&with_group("[ff02::1]:7451"), now)
        else {
            panic!("expected Updated")
        };
        assert_eq!(hint.multicast, None, "not a group: none");
        assert!(s.rejected().is_empty());
        assert_eq!(s.peers()[0].multicast, None);
    }

    #[test]
    fn own_announcement_is_silent() {
        let mut s = state();
        let mut own = announcement(1, "invoice", 1);
        own.port = 7000;
        assert_eq!(s.on_resolved(&own, Instant::now()), None);
        assert!(s.own_announcement_seen);
        assert!(s.rejected().is_empty());
    }

    #[test]
    fn a_peer_turning_bad_goes_down_and_is_recorded() {
        let mut s = state();
        let now = Instant::now();
        let a = announcement(2, "billing", 2);
        assert!(matches!(
            s.on_resolved(&a, now),
            Some(DiscoveryEvent::Up(_))
        ));
        let mut bad = a;
        bad.txt.retain(|(k, _)| k != "pv");
        assert!(matches!(
            s.on_resolved(&bad, now),
            Some(DiscoveryEvent::Down(_))
        ));
        assert_eq!(s.rejected()[0].reason, RejectReason::MissingTxt("pv"));
        assert_eq!(s.on_resolved(&bad, now), None);
        assert_eq!(s.rejected().len(), 1, "repeats are counted, not listed");
        assert_eq!(s.rejected()[0].count, 2);
        assert_eq!(s.rejected_total, 2);
    }

    #[test]
    fn rejections_are_bounded() {
        let mut s = state();
        let now = Instant::now();
        for i in 0..(MAX_REJECTED_RECORDS as u128 * 3) {
            let mut a = announcement(1000 + i, "x", 2);
            a.txt.clear();
            assert_eq!(s.on_resolved(&a, now), None);
        }
        assert_eq!(s.rejected().len(), MAX_REJECTED_RECORDS);
        assert_eq!(s.rejected_total, MAX_REJECTED_RECORDS as u64 * 3);
        // The newest are kept.
        let last = NodeId::from_u128(1000 + MAX_REJECTED_RECORDS as u128 * 3 - 1).to_string();
        assert!(
            s.rejected()
                .last()
                .is_some_and(|r| r.instance.starts_with(&last))
        );
    }

    #[test]
    fn tracked_instances_are_bounded() {
        let mut s = state();
        let now = Instant::now();
        for i in 0..MAX_TRACKED_INSTANCES as u128 {
            assert!(matches!(
                s.on_resolved(&announcement(10 + i, "x", 2), now),
                Some(DiscoveryEvent::Up(_))
            ));
        }
        assert_eq!(s.on_resolved(&announcement(5_000_000, "x", 2), now), None);
        assert_eq!(s.rejected()[0].reason, RejectReason::TooManyInstances);
        // Known ones still update.
        assert!(matches!(
            s.on_resolved(&announcement(10, "x", 3), now),
            Some(DiscoveryEvent::Updated(_))
        ));
    }

    #[test]
    fn notes_are_bounded() {
        let mut s = state();
        for i in 0..100 {
            s.note(format!("note {i}"));
        }
        assert_eq!(s.notes.len(), MAX_NOTES);
        assert_eq!(s.notes.back().map(String::as_str), Some("note 99"));
    }
}
