//! The relay's bookkeeping: which rows are in flight, which keys may not go yet, where the
//! next read starts, and the outcomes waiting to be recorded.

use std::collections::{HashMap, HashSet};

use futures_util::stream::FuturesUnordered;

use super::{Delivery, WINDOW};
use crate::outbox::store::OutboxRow;
use crate::outbox::waiting::{Absence, Receiver};

/// A destination and partition key: rows sharing one go one at a time, in row order.
pub(super) type KeySlot = (String, String);

pub(super) fn key_slot(row: &OutboxRow) -> Option<KeySlot> {
    let key = row.message.key()?;
    Some((row.destination.to_column(), key.to_owned()))
}

/// A row being delivered.
pub(super) struct InFlight {
    pub(super) slot: Option<KeySlot>,
    pub(super) receiver: Receiver,
    /// Its receiver is away: the row does not count against [`WINDOW`].
    pub(super) waiting: bool,
    /// The peers' generation when it started ([`crate::Node::peer_changes`]).
    pub(super) generation: u64,
}

/// The relay's bookkeeping: which rows are in flight and which keys may not go yet.
#[derive(Default)]
pub(super) struct Relay {
    /// Rows are read from after this `seq`.
    pub(super) after: i64,
    pub(super) in_flight: HashMap<i64, InFlight>,
    /// How many rows in flight are waiting for an absent receiver.
    pub(super) waiting: usize,
    /// Keys with a row in flight.
    pub(super) busy: HashSet<KeySlot>,
    /// Keys whose earliest row was kept for later: their later rows wait for it.
    pub(super) blocked: HashSet<KeySlot>,
    /// The store must be read: woken by a commit, a poll, a change of peers, or a failure.
    pub(super) read: bool,
    /// The last read filled every free slot: more rows may be waiting behind it.
    pub(super) more: bool,
    /// The lowest row read but held back (behind its key, or past `max_waiting`), below the
    /// cursor: read again from there when a keyed or waiting row finishes ([`Relay::revisit`]).
    pub(super) held_from: Option<i64>,
    /// Keys with a row held back below the cursor: their later rows are held too, in order.
    pub(super) held_keys: HashSet<KeySlot>,
    /// The next read starts again from `held_from`.
    pub(super) revisit: bool,
    /// The last read stopped at its budget with more rows behind: read on at once.
    pub(super) unfinished: bool,
    /// Rows acknowledged, and rows dead-lettered (with the reason), not yet recorded in the
    /// store: outcomes are written in batches, at most [`RECORD_DELAY`] after the first.
    pub(super) delivered: Vec<i64>,
    pub(super) dead: Vec<(i64, String)>,
    /// When the outcomes above must be written.
    pub(super) record_at: Option<tokio::time::Instant>,
}

impl Relay {
    /// Rows below the cursor (kept for later, written by other processes, left unsent by a
    /// crash) are read again from the start; rows in flight are skipped then.
    pub(super) fn rescan(&mut self) {
        self.after = 0;
        self.blocked.clear();
        self.held_from = None;
        self.held_keys.clear();
        self.revisit = false;
        self.read = true;
    }

    /// The rows in flight may be another relay's now ([`crate::outbox::OutboxStore::claims_until`]): their
    /// deliveries stop (the node stops retrying them; a message already on its way may still
    /// arrive), and the store is read again from the start. Outcomes already known are still
    /// recorded.
    pub(super) fn let_go(&mut self, deliveries: &mut FuturesUnordered<Delivery>) {
        tracing::warn!(
            rows = self.in_flight.len(),
            "outbox relay: its claim on the rows in flight lapsed (another relay may deliver \
             them now); stopped delivering them"
        );
        deliveries.clear();
        self.in_flight.clear();
        self.waiting = 0;
        self.busy.clear();
        self.rescan();
    }

    /// Whether to read the store now: when told to, or when half the window is free and the
    /// last read suggested more rows (not after every single ack: most such reads would find
    /// nothing new).
    pub(super) fn should_read(&self, free: usize) -> bool {
        free > 0 && (self.read || (self.more && free >= WINDOW / 2))
    }

    /// Whether the row's outcome is known but not yet written (it must not go again).
    pub(super) fn unrecorded(&self, seq: i64) -> bool {
        self.delivered.contains(&seq) || self.dead.iter().any(|(s, _)| *s == seq)
    }

    /// Rows in flight that count against [`WINDOW`].
    pub(super) fn active(&self) -> usize {
        self.in_flight.len() - self.waiting
    }

    /// A row's delivery ended: its key may go on.
    pub(super) fn finished(&mut self, seq: i64) -> Option<InFlight> {
        let done = self.in_flight.remove(&seq)?;
        if done.waiting {
            self.waiting -= 1;
        }
        if let Some(slot) = &done.slot {
            self.busy.remove(slot);
        }
        // A held row may go now: its key is free, or there is room among the waiting rows.
        if self.held_from.is_some() && (done.waiting || done.slot.is_some()) {
            self.revisit = true;
            self.read = true;
        }
        Some(done)
    }

    /// The peers changed: rows whose receiver went away stop counting against the window,
    /// rows whose receiver came back count again (they are about to finish).
    pub(super) fn reclassify(&mut self, absence: &mut Absence<'_>) {
        for row in self.in_flight.values_mut() {
            let waiting = absence.away(&row.receiver);
            if waiting != row.waiting {
                row.waiting = waiting;
                if waiting {
                    self.waiting += 1;
                } else {
                    self.waiting -= 1;
                }
            }
        }
    }
}
