//! The backlog of background messages: what the node holds of background publishes and sends
//! ([`crate::PublishOptions::background`], [`crate::Node::send_background`]), its caps, and
//! telling a producer that was refused when there is room again.
//!
//! Nobody awaits a background message, so nothing paces the service that produces them but
//! the caps (`Config::max_background_publishes`, `max_background_bytes`): past them, a call
//! fails at once with [`Error::Backlog`] and keeps nothing. A producer that then tries again
//! at once spins, taking the CPU its own node needs to deliver what it holds. So it may wait
//! instead ([`crate::Node::wait_for_background_room`]): the engine notes that room is wanted
//! ([`Engine::background_room`]), and when the backlog has drained to half of both caps (so
//! the producer is woken once for many messages, not for each one delivered), and far enough
//! for the call last refused to be taken, it says so with [`Action::BackgroundRoom`]. A node
//! that stops says so too: its waiters then hear [`Error::ShuttingDown`] from their next
//! call.

use super::super::action::Action;
use super::super::{Engine, Lifecycle};
use crate::{BacklogLimit, Error};

/// Whether a producer waits for room in the backlog.
#[derive(Debug, Default)]
pub(in crate::engine) struct Room {
    /// The messages and payload bytes the backlog must be down to, while one waits.
    wanted: Option<(usize, usize)>,
    /// The backlog got there: [`Action::BackgroundRoom`] is due.
    ready: bool,
    /// The messages and payload bytes of the call refused last, which the room waited for
    /// must take (a batch, or a large message, needs more than half of a cap may leave).
    refused: (usize, usize),
}

impl Room {
    /// The backlog now holds `messages` messages of `bytes` payload bytes: room is ready if
    /// it was wanted and they are low enough.
    pub(in crate::engine) fn check(&mut self, messages: usize, bytes: usize) {
        if let Some((most, most_bytes)) = self.wanted
            && messages <= most
            && bytes <= most_bytes
        {
            self.wanted = None;
            self.ready = true;
            self.refused = (0, 0);
        }
    }

    /// Whether [`Action::BackgroundRoom`] is due.
    pub(in crate::engine) fn is_ready(&self) -> bool {
        self.ready
    }
}

impl<H: Clone> Engine<H> {
    /// Refuses `messages` background messages of `bytes` payload bytes when the node holds as
    /// many as it may (`Config::max_background_publishes`, `max_background_bytes`): the call
    /// fails with [`Error::Backlog`], and keeps nothing. Messages larger than the byte limit
    /// are taken when no other is held.
    pub(super) fn room_for_background(
        &mut self,
        messages: usize,
        bytes: usize,
    ) -> Result<(), Error> {
        let (held, held_bytes) = (self.out.background_publishes(), self.out.background_bytes());
        let limit = if held + messages > self.config.max_background_publishes && held > 0 {
            BacklogLimit::Events(self.config.max_background_publishes)
        } else if held_bytes + bytes > self.config.max_background_bytes && held > 0 {
            BacklogLimit::Bytes(self.config.max_background_bytes)
        } else {
            return Ok(());
        };
        self.stats.background_refused += 1;
        self.out.room.refused = (messages, bytes);
        Err(Error::Backlog { limit })
    }

    /// Whether the backlog holds at most half of each cap, and little enough for the call
    /// refused last to be taken, or the node stops (either way a waiting producer goes on).
    /// If not, room is wanted: [`Action::BackgroundRoom`] comes once it does.
    pub(crate) fn background_room(&mut self) -> bool {
        let (messages, bytes) = self.out.room.refused;
        let (cap, cap_bytes) = (
            self.config.max_background_publishes,
            self.config.max_background_bytes,
        );
        // More than a cap is taken only when nothing is held (`room_for_background`).
        let most = (cap / 2).min(cap.saturating_sub(messages));
        let most_bytes = (cap_bytes / 2).min(cap_bytes.saturating_sub(bytes));
        let out = &mut self.out;
        if self.lifecycle != Lifecycle::Running
            || (out.background_publishes() <= most && out.background_bytes() <= most_bytes)
        {
            return true;
        }
        out.room.wanted = Some((most, most_bytes));
        false
    }

    /// The node stops: whoever waits for room goes on (and hears it from its next call).
    pub(in crate::engine) fn stop_waiting_for_room(&mut self) {
        if self.out.room.wanted.take().is_some() {
            self.out.room.ready = true;
        }
    }

    /// [`Action::BackgroundRoom`], when due.
    pub(in crate::engine) fn poll_room(&mut self) -> Option<Action<H>> {
        std::mem::take(&mut self.out.room.ready).then_some(Action::BackgroundRoom)
    }
}
