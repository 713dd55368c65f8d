//! What the test kit (`shoal::testing`, feature `testing`) asks of the engine: whether a node
//! has anything going on, which message a sequence number stands for, whether a peer holds a
//! subscription, and one way in for a copy of a message that the dedup window must not
//! recognise. Nothing here is on a hot path; none of it is compiled without the feature.

use std::time::{Duration, Instant};

use shoal_proto::{Messages, NodeId, Subscription};

use super::Engine;
use super::action::ConnId;
use super::dedup::DedupWindow;

/// What a node is busy with (all zero: idle). Counted by the test kit's `wait_idle`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Busy {
    /// Handler runs going on or waiting for a slot.
    pub(crate) handlers: usize,
    /// Deliveries of sends, requests, publishes and replies not finished (unacknowledged,
    /// waiting for a retry, an instance, a turn or room), and event copies on the multicast
    /// channel waiting for their member's report.
    pub(crate) deliveries: usize,
    /// Requests acknowledged whose reply has not arrived, and pings without their pong.
    pub(crate) answers: usize,
    /// Connections with messages, frames or acks queued and not yet written.
    pub(crate) unwritten: usize,
}

impl Busy {
    /// Whether nothing is going on.
    pub(crate) fn is_idle(&self) -> bool {
        *self == Self::default()
    }
}

impl<H: Clone> Engine<H> {
    /// What this node is busy with now.
    pub(crate) fn busy(&self) -> Busy {
        Busy {
            handlers: self.inbound.running(),
            deliveries: self.out.deliveries.len() + self.out.channel_copies,
            answers: self.out.replies.len() + self.out.pongs.len(),
            unwritten: self.conns.values().filter(|c| c.has_unwritten()).count(),
        }
    }

    /// The name (or topic) of the message this node sent on `conn` as `seq`, while it waits
    /// for its answer.
    pub(crate) fn in_flight_name(&self, conn: ConnId, seq: u64) -> Option<String> {
        let entry = self.conns.get(conn)?.window.get(seq)?;
        let delivery = self.out.deliveries.get(entry.delivery)?;
        let op = self.out.ops.get(delivery.op)?;
        Some(op.messages.get(entry.index as usize)?.name.to_string())
    }

    /// Whether the live peer `node` has announced `sub` to this node.
    pub(crate) fn peer_subscribes(&self, node: NodeId, sub: &Subscription) -> bool {
        self.conns
            .values()
            .any(|c| c.node == node && c.subscriptions.contains(sub))
    }

    /// Handles `run` (its items are redeliveries) as a node that has never seen them would:
    /// as a restarted instance, or another instance of the service, after the first copy was
    /// handled and its ack lost. The dedup window is set aside for this one call, so the
    /// handlers run again; what they do is then what such a redelivery does.
    ///
    /// Only for unordered runs (the test kit splits them into single messages): an ordered
    /// run's later items are checked against the window when their turn comes.
    pub(crate) fn deliver_unseen(&mut self, conn: ConnId, run: Messages, now: Instant) {
        let blank = DedupWindow::new(0, Duration::ZERO, [0, 0]);
        let window = std::mem::replace(&mut self.inbound.dedup, blank);
        self.on_messages(conn, run, now);
        self.inbound.dedup = window;
    }
}
