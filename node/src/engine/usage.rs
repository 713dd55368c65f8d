//! The use a connection sees, for closing idle ones (see [`super::lazy`]).

use std::time::{Duration, Instant};

/// Whether, and since when, a connection has gone unused.
#[derive(Debug)]
pub(crate) struct Usage {
    /// Kept open however idle (a static peer, or an instance whose subscriptions can only be
    /// learned over a connection); set by the transport when it dials.
    pub(crate) pinned: bool,
    /// Frames with messages or replies received (to tell use from silence).
    pub(crate) received: u64,
    /// The next sequence number and the received count at the last sign of use, and when that
    /// was.
    mark: (u64, u64),
    quiet_since: Instant,
    /// This side closed the connection for being idle.
    pub(crate) closed_idle: bool,
}

impl Usage {
    pub(crate) fn new(pinned: bool, now: Instant) -> Self {
        Self {
            pinned,
            received: 0,
            mark: (0, 0),
            quiet_since: now,
            closed_idle: false,
        }
    }

    /// How long the connection has gone unused, given the next sequence number to send and
    /// whether anything is in progress on it now.
    pub(crate) fn idle_for(&mut self, next_seq: u64, busy: bool, now: Instant) -> Duration {
        let mark = (next_seq, self.received);
        if busy || mark != self.mark {
            self.mark = mark;
            self.quiet_since = now;
        }
        now.saturating_duration_since(self.quiet_since)
    }
}
