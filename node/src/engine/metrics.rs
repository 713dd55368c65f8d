//! Per-message metrics: counts and latencies per peer service and message name, kept as plain
//! numbers under the driver's lock and read at scrape time (`crate::metrics`, feature
//! `metrics`).
//!
//! Off unless `NodeBuilder::metrics` turned them on. The engine calls one hook per event (a
//! delivery started, a message acked, nacked, retried, dead-lettered, handled or recognised as
//! a duplicate); each hook starts with one branch on [`Engine::metrics`], which is all it costs
//! when metrics are off: no lookup, no label, no allocation.
//!
//! When on, the series of a (service, message) pair is found by comparing the names with the
//! series used last (a workload with one hot message never hashes), otherwise in an
//! [`IndexMap`] (one hash of the two names); only the first event of a pair allocates its
//! names. Label values are never formatted here: the collector writes them at scrape time.
//! Latencies are taken from the `now` the driver passes in, like every other time in the
//! engine: delivery latency from a delivery's start to its last ack, handler latency from the
//! run handed to the driver to its outcome coming back.
//!
//! This file holds the series, their table and the snapshot a scrape reads; the hooks the
//! engine calls, and the call that takes the snapshot, are in [`hooks`].
//!
//! [`Engine::metrics`]: super::Engine::metrics

// Without the `metrics` feature nothing turns the recorder on or reads it.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use shoal_proto::NackCode;
use slotmap::SecondaryMap;

use super::action::TaskId;
use super::send::DeliveryId;

mod hooks;

/// At most this many (service, message) series per direction; events of further pairs are
/// counted under [`OVERFLOW`], so a stream of distinct names cannot grow memory or the scrape
/// without bound.
pub(crate) const MAX_SERIES: usize = 2048;
/// The service and message label of the series past [`MAX_SERIES`].
pub(crate) const OVERFLOW: &str = "_overflow";

/// Upper bounds of the latency histograms' buckets, from 10 µs (a handler that returns at
/// once) to 30 s (the default retry deadline); the last bucket (`+Inf`) is implied.
pub(crate) const BUCKETS: [Duration; 20] = [
    Duration::from_micros(10),
    Duration::from_micros(25),
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2500),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// A latency histogram over [`BUCKETS`]: counts per bucket (not cumulative; the last one is
/// `+Inf`) and the sum.
#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    pub(crate) counts: [u64; BUCKETS.len() + 1],
    pub(crate) sum: Duration,
}

impl Histogram {
    fn observe(&mut self, took: Duration) {
        let bucket = BUCKETS.partition_point(|bound| *bound < took);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(took);
    }
}

/// Why a receiver refused a message (the `reason` label of nacks), one fixed name per
/// [`NackCode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NackReason {
    HandlerFailed,
    NoHandler,
    NoSubscription,
    ShuttingDown,
    LimitExceeded,
    Invalid,
    ReplyNotKept,
    Skipped,
    NotAuthorized,
    /// A code this version does not know (a newer peer).
    Other,
}

impl NackReason {
    pub(crate) const ALL: [Self; 10] = [
        Self::HandlerFailed,
        Self::NoHandler,
        Self::NoSubscription,
        Self::ShuttingDown,
        Self::LimitExceeded,
        Self::Invalid,
        Self::ReplyNotKept,
        Self::Skipped,
        Self::NotAuthorized,
        Self::Other,
    ];

    fn of(code: NackCode) -> Self {
        match code {
            NackCode::HandlerFailed => Self::HandlerFailed,
            NackCode::NoHandler => Self::NoHandler,
            NackCode::NoSubscription => Self::NoSubscription,
            NackCode::ShuttingDown => Self::ShuttingDown,
            NackCode::LimitExceeded => Self::LimitExceeded,
            NackCode::Invalid => Self::Invalid,
            NackCode::ReplyNotKept => Self::ReplyNotKept,
            NackCode::Skipped => Self::Skipped,
            NackCode::NotAuthorized => Self::NotAuthorized,
            _ => Self::Other,
        }
    }

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::HandlerFailed => "handler_failed",
            Self::NoHandler => "no_handler",
            Self::NoSubscription => "no_subscription",
            Self::ShuttingDown => "shutting_down",
            Self::LimitExceeded => "limit_exceeded",
            Self::Invalid => "invalid",
            Self::ReplyNotKept => "reply_not_kept",
            Self::Skipped => "skipped",
            Self::NotAuthorized => "not_authorized",
            Self::Other => "other",
        }
    }
}

/// Why a message was dead-lettered (the `reason` label of dead letters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadReason {
    /// A receiver refused it for good (a permanent nack: the handler's permanent error, the
    /// policy, a limit, a reply no longer kept).
    Refused,
    /// Its retry policy ran out (attempts or deadline), including waiting for an instance or
    /// for its key's turn.
    GaveUp,
    /// The node stopped before it was delivered.
    Shutdown,
}

impl DeadReason {
    pub(crate) const ALL: [Self; 3] = [Self::Refused, Self::GaveUp, Self::Shutdown];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::GaveUp => "gave_up",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What this node sent to one (service, message): the sender's side.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outbound {
    /// Messages handed to a delivery (an event once per audience).
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Messages sent again (attempts after the first).
    pub(crate) retried: u64,
    /// Nacks received, by [`NackReason`] (indexed as [`NackReason::ALL`]).
    pub(crate) nacked: [u64; NackReason::ALL.len()],
    /// Dead letters, by [`DeadReason`] (indexed as [`DeadReason::ALL`]).
    pub(crate) dead_lettered: [u64; DeadReason::ALL.len()],
    /// From a delivery's start to its last ack (reliable deliveries only).
    pub(crate) latency: Histogram,
}

/// What this node handled from one (service, message): the receiver's side.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inbound {
    pub(crate) handled: u64,
    pub(crate) failed: u64,
    pub(crate) deduplicated: u64,
    /// How long the handlers ran.
    pub(crate) latency: Histogram,
}

/// Series keyed by (service, message), with the one used last remembered.
#[derive(Debug)]
pub(crate) struct Table<S> {
    series: IndexMap<(Box<str>, Box<str>), S>,
    last: usize,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Self {
            series: IndexMap::new(),
            last: 0,
        }
    }
}

/// A borrowed key: hashes as the owned `(Box<str>, Box<str>)` does, so a lookup allocates
/// nothing.
#[derive(Hash)]
struct Key<'a>(&'a str, &'a str);

impl indexmap::Equivalent<(Box<str>, Box<str>)> for Key<'_> {
    fn equivalent(&self, key: &(Box<str>, Box<str>)) -> bool {
        *key.0 == *self.0 && *key.1 == *self.1
    }
}

impl<S: Default + Clone> Table<S> {
    /// The series of (`service`, `message`), created on first use.
    fn get(&mut self, service: &str, message: &str) -> &mut S {
        let hit = self
            .series
            .get_index(self.last)
            .is_some_and(|((s, m), _)| **s == *service && **m == *message);
        if !hit {
            self.last = match self.series.get_index_of(&Key(service, message)) {
                Some(index) => index,
                None if self.series.len() < MAX_SERIES => {
                    let key = (service.into(), message.into());
                    self.series.insert_full(key, S::default()).0
                }
                None => match self.series.get_index_of(&Key(OVERFLOW, OVERFLOW)) {
                    Some(index) => index,
                    None => {
                        let key = (OVERFLOW.into(), OVERFLOW.into());
                        self.series.insert_full(key, S::default()).0
                    }
                },
            };
        }
        &mut self.series[self.last]
    }

    /// Every series, for a scrape.
    fn snapshot(&self) -> Vec<(String, String, S)> {
        self.series
            .iter()
            .map(|((s, m), series)| (s.to_string(), m.to_string(), series.clone()))
            .collect()
    }
}

/// The per-message metrics of one engine (boxed in [`Engine::metrics`] when on).
///
/// [`Engine::metrics`]: super::Engine::metrics
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    outbound: Table<Outbound>,
    inbound: Table<Inbound>,
    /// When each running handler was handed to the driver.
    started: SecondaryMap<TaskId, Instant>,
    /// Deliveries a receiver refused for good, so their dead letters count as
    /// [`DeadReason::Refused`].
    refused: SecondaryMap<DeliveryId, ()>,
}

/// What a scrape reads from the engine.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Per (service, message) series; empty when per-message metrics are off.
    pub(crate) outbound: Vec<(String, String, Outbound)>,
    pub(crate) inbound: Vec<(String, String, Inbound)>,
    /// Peer connections open now.
    pub(crate) connections: usize,
    /// This node's own subscriptions.
    pub(crate) subscriptions: usize,
    /// The subscriptions the connected peers announced.
    pub(crate) peer_subscriptions: usize,
    /// Events of background publishes on their way, staged ones included.
    pub(crate) background_publishes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(10)); // on the bound: that bucket
        h.observe(Duration::from_micros(11)); // just past: the next
        h.observe(Duration::from_secs(60)); // past every bound: +Inf
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BUCKETS.len()], 1);
        assert_eq!(h.sum, Duration::from_secs(60) + Duration::from_micros(21));
    }

    #[test]
    fn a_table_finds_its_series_again_and_caps_their_number() {
        let mut table: Table<Inbound> = Table::default();
        table.get("a", "x").handled += 1;
        table.get("b", "x").handled += 1;
        table.get("a", "x").handled += 1; // not the last used: found by hash
        let rows = table.snapshot();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.handled),
            ("a", "x", 2)
        );
        for i in 0..MAX_SERIES + 10 {
            table.get("c", &i.to_string()).handled += 1;
        }
        let rows = table.snapshot();
        assert_eq!(rows.len(), MAX_SERIES + 1);
        let overflow = rows.iter().find(|r| r.0 == OVERFLOW && r.1 == OVERFLOW);
        assert_eq!(overflow.map(|r| r.2.handled), Some(12));
    }
}
