//! The log tail's bookkeeping, apart from any IO: the rows read from the log and not yet
//! taken by the relay, the rows recently finished, and how far the replication slot may be
//! confirmed (past a commit only once its rows and every earlier commit's are finished).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::outbox::store::StoredRow;

/// Rows recently acknowledged, remembered so the log's copy of one is not sent again.
const RECENT_ROWS: usize = 65_536;

#[derive(Default)]
pub(super) struct State {
    /// Rows from the log, in commit order, not yet taken by the relay.
    pub(super) fresh: VecDeque<StoredRow>,
    /// The highest row the relay was given: a read from above it takes fresh rows, one from
    /// below goes to the table (`i64::MAX`: read the table until a read reaches its end).
    pub(super) served_max: i64,
    pub(super) recent: Recent,
    /// Commits read from the log whose rows are not all finished, in commit order.
    pub(super) commits: VecDeque<Commit>,
    /// The commit (its end position) of each unfinished row.
    owner: HashMap<i64, u64>,
    /// Where the slot may be confirmed to.
    pub(super) confirmed: u64,
}

pub(super) struct Commit {
    end: u64,
    unfinished: usize,
    read_at: Instant,
}

/// Row numbers recently finished, oldest forgotten first.
#[derive(Default)]
pub(super) struct Recent {
    pub(super) set: HashSet<i64>,
    order: VecDeque<i64>,
}

impl Recent {
    fn insert(&mut self, seq: i64) {
        if self.set.insert(seq) {
            self.order.push_back(seq);
            if self.order.len() > RECENT_ROWS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

impl State {
    /// Nothing read yet; reads go to the table.
    pub(super) fn new() -> Self {
        Self {
            served_max: i64::MAX,
            ..Self::default()
        }
    }

    pub(super) fn reset(&mut self, confirmed: u64) {
        self.fresh.clear();
        self.commits.clear();
        self.owner.clear();
        self.served_max = i64::MAX;
        self.confirmed = confirmed;
    }

    /// Up to `limit` fresh rows, skipping rows already finished.
    pub(super) fn take_fresh(&mut self, limit: usize) -> Vec<StoredRow> {
        let mut rows = Vec::new();
        while rows.len() < limit {
            let Some(row) = self.fresh.pop_front() else {
                break;
            };
            if !self.recent.set.contains(&row.seq) {
                self.served_max = self.served_max.max(row.seq);
                rows.push(row);
            }
        }
        rows
    }

    /// A commit read from the log, with its pending outbox rows.
    pub(super) fn commit(&mut self, end: u64, mut rows: Vec<StoredRow>) {
        rows.retain(|row| !self.recent.set.contains(&row.seq));
        for row in &rows {
            self.owner.insert(row.seq, end);
        }
        self.commits.push_back(Commit {
            end,
            unfinished: rows.len(),
            read_at: Instant::now(),
        });
        self.fresh.extend(rows);
    }

    /// Rows acknowledged or dead: they no longer hold the slot back.
    pub(super) fn finished(&mut self, seqs: &[i64]) {
        for &seq in seqs {
            self.recent.insert(seq);
            if let Some(end) = self.owner.remove(&seq)
                && let Ok(at) = self.commits.binary_search_by_key(&end, |c| c.end)
            {
                self.commits[at].unfinished -= 1;
            }
        }
    }

    /// Moves the confirmable position past the commits that are done (or held back longer
    /// than `hold`); whether it moved.
    pub(super) fn advance(&mut self, hold: Duration) -> bool {
        let before = self.confirmed;
        while let Some(first) = self.commits.front() {
            let expired = first.read_at.elapsed() >= hold;
            if first.unfinished > 0 && !expired {
                break;
            }
            if first.unfinished > 0 {
                let end = first.end;
                tracing::debug!(
                    rows = first.unfinished,
                    "outbox rows waited past hold_slot_for: the slot moves on, they stay in the table"
                );
                self.owner.retain(|_, e| *e != end);
            }
            self.confirmed = self.confirmed.max(first.end);
            self.commits.pop_front();
        }
        self.confirmed != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64) -> StoredRow {
        StoredRow {
            seq,
            destination: "publish".into(),
            frame: Vec::new(),
            created_ms: 0,
        }
    }

    #[test]
    fn the_slot_is_confirmed_past_a_commit_only_once_its_rows_and_earlier_ones_finished() {
        let hold = Duration::from_secs(60);
        let mut state = State::default();
        state.reset(100);
        state.commit(200, vec![row(1), row(2)]);
        state.commit(300, vec![row(3)]);
        state.commit(400, Vec::new());
        assert!(!state.advance(hold), "nothing finished yet");
        // The later commit finishing first does not move the slot past the earlier one.
        state.finished(&[3]);
        assert!(!state.advance(hold));
        state.finished(&[1]);
        assert!(!state.advance(hold));
        assert_eq!(state.confirmed, 100);
        state.finished(&[2]);
        assert!(state.advance(hold));
        assert_eq!(
            state.confirmed, 400,
            "and the commits after it, done or empty"
        );
        // A row finished is not handed over again when the log brings it once more, nor
        // does it hold the slot.
        state.commit(500, vec![row(2), row(4)]);
        state.served_max = 0;
        let again: Vec<i64> = state.take_fresh(10).iter().map(|r| r.seq).collect();
        assert_eq!(again, [4]);
        state.finished(&[4]);
        assert!(state.advance(hold));
        assert_eq!(state.confirmed, 500);
    }

    #[test]
    fn a_row_waiting_past_the_hold_no_longer_holds_the_slot() {
        let mut state = State::default();
        state.reset(0);
        state.commit(200, vec![row(1)]);
        assert!(!state.advance(Duration::from_secs(60)));
        assert!(state.advance(Duration::ZERO));
        assert_eq!(state.confirmed, 200);
        assert!(state.owner.is_empty());
    }
}
