//! The hooks the engine calls as messages move, and what a scrape reads.
//!
//! Each hook is called where its event happens (a delivery started in `delivery.rs`, an ack or
//! a dead letter in `outcome.rs`, a nack or a retry in `attempt.rs`, a handler's run or a
//! duplicate in `receive.rs`, a copy on the multicast channel in `multicast_copies.rs`) and
//! starts with one branch on [`Engine::metrics`]: with metrics off, that branch is all it
//! costs. With them on, it finds the series of the message's (service, message) pair in the
//! [`super::Recorder`] and counts.

use std::time::{Duration, Instant};

use shoal_proto::NackCode;

use super::super::action::{ConnId, OpId, TaskId};
use super::super::peers::Route;
use super::super::send::DeliveryId;
use super::super::{Engine, Lifecycle};
use super::{DeadReason, NackReason, Outbound, Snapshot};

/// The service label of a delivery: the destination service, or the audience's group (empty
/// for an instance subscribed without a group).
fn service_of(route: &Route) -> &str {
    match route {
        Route::Service(target) => &target.service,
        Route::Audience { audience, .. } => audience.wire_group().unwrap_or(""),
    }
}

impl<H: Clone> Engine<H> {
    /// Turns per-message metrics on (before the node takes work).
    pub(crate) fn enable_metrics(&mut self) {
        self.metrics.get_or_insert_with(Box::default);
    }

    /// What a scrape reads: the per-message series (if on) and the gauges.
    pub(crate) fn metrics_snapshot(&self) -> Snapshot {
        let (outbound, inbound) = match &self.metrics {
            Some(m) => (m.outbound.snapshot(), m.inbound.snapshot()),
            None => (Vec::new(), Vec::new()),
        };
        Snapshot {
            outbound,
            inbound,
            connections: self.conns.len(),
            subscriptions: self.inbound.local.subscription_count(),
            peer_subscriptions: self.conns.values().map(|c| c.subscriptions.len()).sum(),
            background_publishes: self.out.background_publishes(),
        }
    }

    /// Applies `f` to the outbound series of each message of `d` (only those not acked yet
    /// with `unacked_only`).
    fn each_outbound(
        &mut self,
        d: DeliveryId,
        unacked_only: bool,
        mut f: impl FnMut(&mut Outbound),
    ) {
        let Some(m) = self.metrics.as_deref_mut() else {
            return;
        };
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let Some(op) = self.out.ops.get(del.op) else {
            return;
        };
        let service = service_of(&del.route);
        for (index, envelope) in op.messages.iter().enumerate() {
            if !del.carries(index) || unacked_only && del.acked.get(index).copied().unwrap_or(false)
            {
                continue;
            }
            f(m.outbound.get(service, &envelope.name));
        }
    }

    /// Delivery `d` started: its messages count as sent.
    #[inline]
    pub(in crate::engine) fn note_sent(&mut self, d: DeliveryId) {
        if self.metrics.is_some() {
            self.each_outbound(d, false, |s| s.sent += 1);
        }
    }

    /// A copy of `op`'s event for `group` ("" for an instance) went on the multicast channel
    /// without a delivery of its own.
    #[inline]
    pub(in crate::engine) fn note_copy_sent(&mut self, op: OpId, group: &str) {
        self.each_copy(op, group, |s| s.sent += 1);
    }

    /// A copy of `op`'s event for `group` on the multicast channel was reported handled,
    /// `took` after it was sent.
    #[inline]
    pub(in crate::engine) fn note_copy_acked(&mut self, op: OpId, group: &str, took: Duration) {
        self.each_copy(op, group, |s| {
            s.acked += 1;
            s.latency.observe(took);
        });
    }

    /// Applies `f` to the outbound series of `op`'s event for `group`, as
    /// [`Engine::each_outbound`] does to a delivery's.
    fn each_copy(&mut self, op: OpId, group: &str, f: impl FnOnce(&mut Outbound)) {
        let Some(m) = self.metrics.as_deref_mut() else {
            return;
        };
        if let Some(event) = self.out.ops.get(op).and_then(|o| o.messages.first()) {
            f(m.outbound.get(group, &event.name));
        }
    }

    /// An attempt after the first sent `d`'s unacknowledged messages again.
    #[inline]
    pub(in crate::engine) fn note_retried(&mut self, d: DeliveryId) {
        if self.metrics.is_some() {
            self.each_outbound(d, true, |s| s.retried += 1);
        }
    }

    /// `d` was acknowledged in full at `now`.
    #[inline]
    pub(in crate::engine) fn note_acked(&mut self, d: DeliveryId, now: Instant) {
        if self.metrics.is_none() {
            return;
        }
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        if !del.spec.reliable {
            return;
        }
        let took = now.saturating_duration_since(del.created);
        self.each_outbound(d, false, |s| {
            s.acked += 1;
            s.latency.observe(took);
        });
    }

    /// Message `index` of `d` was nacked with `code`.
    #[inline]
    pub(in crate::engine) fn note_nacked(
        &mut self,
        d: DeliveryId,
        index: u32,
        code: NackCode,
        retryable: bool,
    ) {
        let Some(m) = self.metrics.as_deref_mut() else {
            return;
        };
        let Some(del) = self.out.deliveries.get(d) else {
            return;
        };
        let Some(envelope) = self
            .out
            .ops
            .get(del.op)
            .and_then(|op| op.messages.get(index as usize))
        else {
            return;
        };
        let reason = NackReason::of(code);
        let series = m.outbound.get(service_of(&del.route), &envelope.name);
        series.nacked[reason as usize] += 1;
        if !retryable && reason != NackReason::Skipped {
            m.refused.insert(d, ());
        }
    }

    /// `d` is being dead-lettered: its unacknowledged messages count, with the reason.
    #[inline]
    pub(in crate::engine) fn note_dead_lettered(&mut self, d: DeliveryId) {
        let Some(m) = self.metrics.as_deref_mut() else {
            return;
        };
        let refused = m.refused.remove(d).is_some();
        let reason = if self.lifecycle != Lifecycle::Running {
            DeadReason::Shutdown
        } else if refused {
            DeadReason::Refused
        } else {
            DeadReason::GaveUp
        };
        self.each_outbound(d, true, |s| s.dead_lettered[reason as usize] += 1);
    }

    /// `task`'s current message was handed to its handlers at `now`.
    #[inline]
    pub(in crate::engine) fn note_handler_started(&mut self, task: TaskId, now: Instant) {
        if let Some(m) = self.metrics.as_deref_mut() {
            m.started.insert(task, now);
        }
    }

    /// The handlers of `task`'s message `name` from `conn` finished at `now`.
    #[inline]
    pub(in crate::engine) fn note_handled(
        &mut self,
        task: TaskId,
        conn: ConnId,
        name: &str,
        ok: bool,
        now: Instant,
    ) {
        let Some(m) = self.metrics.as_deref_mut() else {
            return;
        };
        let service = self.conns.get(conn).map_or("", |c| c.service.as_str());
        let series = m.inbound.get(service, name);
        if ok {
            series.handled += 1;
        } else {
            series.failed += 1;
        }
        if let Some(started) = m.started.remove(task) {
            series
                .latency
                .observe(now.saturating_duration_since(started));
        }
    }

    /// A copy of message `name` from `conn` was recognised as a duplicate.
    #[inline]
    pub(in crate::engine) fn note_duplicate(&mut self, conn: ConnId, name: &str) {
        let Some(m) = self.metrics.as_deref_mut() else {
            return;
        };
        let service = self.conns.get(conn).map_or("", |c| c.service.as_str());
        m.inbound.get(service, name).deduplicated += 1;
    }
}
