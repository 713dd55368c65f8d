//! Backpressure on a connection's write queue, and telling a slow reader from one that does
//! not read at all.
//!
//! What the engine sends to a peer waits in that connection's queue until the driver takes it,
//! and the driver takes more only once QUIC's flow control has let the last write through, so
//! the queue drains as fast as the peer reads. `max_queued_bytes` caps it:
//!
//! - a reliable message that finds the queue at its cap waits in the connection's waiting
//!   room, as it does when the in-flight window is full, and goes as the queue drains (or to
//!   another instance at its ack deadline);
//! - a best-effort copy that finds it at its cap is dropped, as when its item count is full;
//! - a queue that stays at its cap while the driver takes nothing from it for an ack timeout
//!   belongs to a peer that does not read: the connection is closed ("not reading") and its
//!   unanswered messages go to other instances.
//!
//! A peer that reads, however slowly, is never cut off: only its sender waits.

use std::time::Instant;

use super::action::{Action, CloseReason, ConnId};
use super::retry::later;
use super::{Engine, Timer};

impl<H: Clone> Engine<H> {
    /// Something was queued on `conn`: if that filled its queue, starts watching whether the
    /// driver takes anything from it.
    pub(super) fn watch_queue(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.full_at().is_some() || !c.queue_full(self.config.max_queued_bytes) {
            return;
        }
        let taken = c.taken();
        if let Some(c) = self.conns.get_mut(conn) {
            c.set_full_at(Some(taken));
        }
        let at = later(now, self.config.retry.ack_timeout);
        self.set_timer(at, Timer::QueueFull(conn, taken));
    }

    /// The driver took from `conn`'s queue: once it is below its cap, the messages waiting
    /// for room go.
    pub(super) fn queue_drained(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.queue_full(self.config.max_queued_bytes) {
            return;
        }
        let waiting = !c.waiting_room.is_empty();
        if let Some(c) = self.conns.get_mut(conn) {
            c.set_full_at(None);
        }
        if waiting {
            self.serve_room(conn, now);
        }
    }

    /// An ack timeout after `conn`'s queue was seen full with the driver's count at `taken`:
    /// closes the connection if nothing was taken since and it is still full.
    pub(super) fn queue_timer(&mut self, conn: ConnId, taken: u64, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.full_at() != Some(taken) {
            return; // the queue drained since, and this watch ended
        }
        let (stuck, full) = (
            c.taken() == taken,
            c.queue_full(self.config.max_queued_bytes),
        );
        if let Some(c) = self.conns.get_mut(conn) {
            c.set_full_at(None);
        }
        if !stuck {
            // The peer reads, if slowly: keep watching from here.
            return self.watch_queue(conn, now);
        }
        if !full {
            return;
        }
        // Nothing leaves: the peer does not read. Its messages are retried elsewhere once the
        // connection is gone.
        self.actions.push_back(Action::Close {
            conn,
            reason: CloseReason::NotReading,
            flush: false,
        });
    }
}
