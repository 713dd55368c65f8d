//! Receiving from other publishers' multicast channels: their datagrams are opened by the
//! channel's [`Receiver`], and each event it delivers (in the publisher's order) goes
//! through the same path as a unicast copy: the policy, the dedup window under the copy's
//! delivery key, and a handler run in the publisher's connection's handler slots.
//!
//! An event is handled here for each of this node's subscriptions it matches that the
//! datagram assigns to this node: an ungrouped subscription always, a group's only when the
//! datagram names this node as the group's instance (so each event is handled by exactly one
//! instance per group). When all of those runs succeeded (or the dedup window says they ran
//! before), the event's number goes in the channel's next status as handled, which completes
//! the publisher's copies. When one failed (or the policy refused it), the number goes in the
//! status as failed: the publisher sends its copy again by unicast at once, and the dedup
//! window (which forgot the failed id) runs it again, where a handler error gets its usual
//! answer (a retry, or a dead letter if it is permanent).

use std::sync::Arc;
use std::time::Instant;

use shoal_proto::multicast::Assignment;
use shoal_proto::{Frame, Head, MessageId, To};
use smallvec::SmallVec;

use super::dedup::Seen;
use super::multicast::{Delivered, ReceiverTransmit};
use super::sender::{RunKey, forged_return_address};
use super::{ConnId, Engine, Lifecycle, TaskId, topic};

/// One audience of a run: its head, its handlers, and its events' dedup keys' part.
type Audience<H> = (Arc<Head>, SmallVec<[H; 1]>, RunKey);

/// How this node handles the events of one run of a datagram (one head, one assignment): each
/// audience's head, handlers and dedup keys' part (bound to the publisher's service, as a
/// unicast copy's: `super::sender`). The events of a run share them, so topic matching, the
/// assignment, the handlers and the keys are worked out once per run, not once per event.
struct Plan<H> {
    head: Arc<Head>,
    assigned: Arc<[Assignment]>,
    audiences: Vec<Audience<H>>,
    /// Why the run's return address is refused (not the publisher's own), if it is.
    forged: Option<String>,
}

impl<H> Plan<H> {
    /// Whether `d` belongs to the run this plan was made for.
    fn fits(&self, d: &Delivered) -> bool {
        Arc::ptr_eq(&self.head, &d.head) && Arc::ptr_eq(&self.assigned, &d.assigned)
    }
}

impl<H: Clone> Engine<H> {
    /// A datagram of `channel` (from the group, or a repair over QUIC).
    pub(super) fn channel_datagram(&mut self, channel: u64, datagram: &[u8], now: Instant) {
        let Some(i) = self.inbound_channel(channel) else {
            return;
        };
        let _ = i.rx.on_datagram(datagram, now);
        self.drain_receiver(channel, now);
    }

    /// Hands `channel`'s delivered events to their handlers and sends its statuses and NAKs
    /// to the publisher.
    pub(super) fn drain_receiver(&mut self, channel: u64, now: Instant) {
        let Some((publisher, paused)) = self
            .inbound_channel(channel)
            .map(|i| (i.publisher, i.rx.is_paused()))
        else {
            return;
        };
        // Held back for a handler backlog (below): let go once it is gone.
        let release = paused && !self.backlogged(publisher);
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let Some(i) = ch.inbound.get_mut(&channel) else {
            return;
        };
        if release {
            i.rx.pause(false);
        }
        // The engine's spare deque and the receiver's swap places: neither allocates again.
        let mut delivered = std::mem::take(&mut ch.delivering);
        i.rx.swap_delivered(&mut delivered);
        let mut out = Vec::new();
        while let Some(t) = i.rx.poll_transmit() {
            out.push(t);
        }
        let deadline = i.rx.poll_timeout();
        if let Some(conn) = self.peers.current(publisher) {
            let mut plan: Option<Plan<H>> = None;
            for d in delivered.drain(..) {
                if !plan.as_ref().is_some_and(|p| p.fits(&d)) {
                    plan = Some(self.plan(conn, &d));
                }
                if let Some(plan) = &plan {
                    self.channel_event(conn, channel, d, plan, now);
                }
            }
        }
        delivered.clear();
        // Handlers with a backlog (receive.rs: every slot taken): what arrives next waits
        // in the receiver, and the publisher with it, until the backlog is gone
        // (`resume_channels`). Without this a publisher faster than the handlers would
        // queue every event it sends here.
        let backlogged = self.backlogged(publisher);
        if let Some(ch) = self.channels.as_deref_mut() {
            ch.delivering = delivered;
            if backlogged && let Some(i) = ch.inbound.get_mut(&channel) {
                i.rx.pause(true);
            }
        }
        for t in out {
            let frame = match t {
                ReceiverTransmit::Status(status) => Frame::ChannelStatus(status),
                ReceiverTransmit::Nak(nak) => Frame::ChannelNak(nak),
            };
            self.send_to_node(publisher, &frame);
        }
        if let Some(at) = deadline {
            self.deadline_at(at);
        }
    }

    /// Whether messages of `publisher` wait for a handler slot here.
    fn backlogged(&self, publisher: shoal_proto::NodeId) -> bool {
        self.peers
            .current(publisher)
            .and_then(|conn| self.conns.get(conn))
            .is_some_and(|c| !c.backlog.is_empty())
    }

    /// `conn`'s handler backlog is gone: the channels its peer publishes deliver again what
    /// waited in their receivers.
    pub(super) fn resume_channels(&mut self, conn: ConnId, now: Instant) {
        let (Some(ch), Some(c)) = (self.channels.as_deref_mut(), self.conns.get(conn)) else {
            return;
        };
        let paused: Vec<u64> = ch
            .inbound
            .iter()
            .filter(|(_, i)| i.publisher == c.node && i.rx.is_paused())
            .map(|(channel, _)| *channel)
            .collect();
        for channel in paused {
            self.drain_receiver(channel, now);
        }
    }

    /// What this node does with events under `d`'s head and assignment: each of its
    /// subscriptions the topic matches, an ungrouped one always, a group's only when the
    /// assignment names this node as the group's instance; one audience (and run) per group,
    /// one for the ungrouped subscriptions. `conn` is the publisher's connection.
    fn plan(&self, conn: ConnId, d: &Delivered) -> Plan<H> {
        let sender = self.sender_key(conn);
        let forged = d.head.reply_to.as_ref().and_then(|addr| {
            let c = self.conns.get(conn)?;
            forged_return_address(addr, &d.head.to, &c.service, c.node)
        });
        let mut audiences: Vec<Audience<H>> = Vec::new();
        for sub in self.inbound.local.distinct_subscriptions() {
            if !topic::matches(&sub.pattern, &d.head.name) {
                continue;
            }
            let to = match &sub.group {
                None => To::Instance,
                Some(group) => {
                    let assigned = d
                        .assigned
                        .iter()
                        .any(|a| a.group == *group && a.node == self.id);
                    if !assigned {
                        continue;
                    }
                    To::Group(group.clone())
                }
            };
            if audiences.iter().any(|(head, _, _)| head.to == to) {
                continue;
            }
            let handlers = self.inbound.local.handlers_for(&to, &d.head.name);
            let key = RunKey::new(sender, to.group_key());
            let head = Arc::new(Head {
                to,
                ..(*d.head).clone()
            });
            audiences.push((head, handlers, key));
        }
        Plan {
            head: Arc::clone(&d.head),
            assigned: Arc::clone(&d.assigned),
            audiences,
            forged,
        }
    }

    /// One event of `channel`, in order, from the publisher on `conn`, for its run's [`Plan`].
    fn channel_event(
        &mut self,
        conn: ConnId,
        channel: u64,
        d: Delivered,
        plan: &Plan<H>,
        now: Instant,
    ) {
        if self.lifecycle != Lifecycle::Running {
            return; // not reported: the publisher retries it by unicast, and hears we stop
        }
        let audiences = &plan.audiences;
        if audiences.is_empty() {
            return;
        }
        // A return address not the publisher's own (sender.rs): reported as failed, so the
        // publisher sends it by unicast, where it is refused for good with the reason.
        if let Some(reason) = &plan.forged {
            self.stats.forged_return_addresses += 1;
            tracing::warn!(channel, "{reason}");
            self.channel_report(channel, d.number, false, now);
            return;
        }
        let mut left = 0u32;
        let mut failed = false;
        let mut runs: SmallVec<[_; 2]> = SmallVec::new();
        for (head, handlers, run_key) in audiences {
            // The policy (authz.rs), as for a unicast copy.
            if !self.guard.open_inbound && self.refuse_unauthorized_run(conn, head, 1).is_some() {
                failed = true;
                continue;
            }
            let key = run_key.key(d.item.id);
            match self.inbound.dedup.check(key, now) {
                Seen::New => {
                    left += 1;
                    runs.push((Arc::clone(head), handlers.clone(), key));
                }
                // Handled before (by unicast, or an earlier datagram): reported as handled.
                Seen::Done => self.stats.duplicates += 1,
                // Being handled now (a unicast copy, or this event's copy for another audience
                // that came in an earlier datagram): reported when that run ends well.
                Seen::InProgress => {
                    self.stats.duplicates += 1;
                    left += 1;
                    if let Some(ch) = self.channels.as_deref_mut() {
                        ch.followers
                            .entry(key)
                            .or_default()
                            .push((channel, d.number));
                    }
                }
            }
        }
        let number = d.number;
        if left == 0 {
            self.channel_report(channel, number, !failed, now);
            return;
        }
        if let Some(ch) = self.channels.as_deref_mut() {
            ch.handling.insert((channel, number), (left, failed));
        }
        let mut item = Some(d.item);
        let count = runs.len();
        for (n, (head, handlers, key)) in runs.into_iter().enumerate() {
            // The last run takes the item; the others a copy (its payload is shared).
            let item = if n + 1 == count {
                item.take()
            } else {
                item.clone()
            };
            let Some(item) = item else { break };
            let message = (number, key, item);
            let task = self.start_task(conn, head, handlers, message, now);
            if let Some(ch) = self.channels.as_deref_mut() {
                ch.tasks.insert(task, (channel, number));
            }
        }
    }

    /// The handlers of `task` (of the message with delivery key `key`) finished (`ok`). Says
    /// whether it was a channel event's run (then it is reported in the channel's status, not
    /// acknowledged on its connection). Inlined: a node without channels (every unicast
    /// message's run ends here) pays one branch.
    #[inline]
    pub(super) fn channel_task_done(
        &mut self,
        task: TaskId,
        key: MessageId,
        ok: bool,
        now: Instant,
    ) -> bool {
        self.channels.is_some() && self.channel_run_done(task, key, ok, now)
    }

    /// [`Engine::channel_task_done`] on a node with channels.
    fn channel_run_done(&mut self, task: TaskId, key: MessageId, ok: bool, now: Instant) -> bool {
        let Some(ch) = self.channels.as_deref_mut() else {
            return false;
        };
        let mut ended: Vec<(u64, u64)> = ch.followers.remove(&key).unwrap_or_default();
        let own = ch.tasks.remove(&task);
        ended.extend(own);
        for (channel, number) in ended {
            self.channel_run_ended(channel, number, ok, now);
        }
        own.is_some()
    }

    /// One run of event `number` of `channel` ended: reported once all did, and all went well.
    fn channel_run_ended(&mut self, channel: u64, number: u64, ok: bool, now: Instant) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let Some((left, failed)) = ch.handling.get_mut(&(channel, number)) else {
            return;
        };
        *left = left.saturating_sub(1);
        *failed |= !ok;
        if *left == 0 {
            let failed = *failed;
            ch.handling.remove(&(channel, number));
            self.channel_report(channel, number, !failed, now);
        }
    }

    /// Event `number` of `channel` was handled here (`ok`), or its handling failed: the
    /// publisher hears of it in the next status, which leaves when the engine's actions are
    /// next taken ([`Engine::send_reports`]), with the reports of every other event handled
    /// until then: as unicast acks go, without a turn of the driver's timer.
    fn channel_report(&mut self, channel: u64, number: u64, ok: bool, now: Instant) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let Some(i) = ch.inbound.get_mut(&channel) else {
            return;
        };
        if ok {
            i.rx.handled(number);
        } else {
            i.rx.failed(number);
        }
        ch.reported_at = Some(now);
    }

    /// Sends the statuses due since events were reported ([`Engine::channel_report`]), one per
    /// channel: called as the engine's actions are taken.
    pub(super) fn send_reports(&mut self) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let Some(now) = ch.reported_at.take() else {
            return;
        };
        let due: SmallVec<[u64; 4]> = ch
            .inbound
            .iter_mut()
            .filter_map(|(id, i)| i.rx.report(now).then_some(*id))
            .collect();
        for channel in due {
            self.drain_receiver(channel, now);
        }
    }

    /// Reports every channel event handled here at once (see [`Receiver::flush_handled`]):
    /// before the goodbyes of a graceful stop.
    ///
    /// [`Receiver::flush_handled`]: super::multicast::Receiver::flush_handled
    pub(super) fn channel_flush_handled(&mut self, now: Instant) {
        let Some(ch) = self.channels.as_deref_mut() else {
            return;
        };
        let ids: Vec<u64> = ch.inbound.keys().copied().collect();
        for i in ch.inbound.values_mut() {
            i.rx.flush_handled(now);
        }
        for id in ids {
            self.drain_receiver(id, now);
        }
    }

    /// The channel `channel` this node receives.
    fn inbound_channel(&mut self, channel: u64) -> Option<&mut super::multicast_link::Inbound> {
        self.channels.as_deref_mut()?.inbound.get_mut(&channel)
    }

    /// What the channels this node receives dropped, by reason (for `NodeStats`), and
    /// datagrams of no channel it holds a key for.
    pub(crate) fn channel_drops(&self) -> (super::multicast::Dropped, u64) {
        let mut all = super::multicast::Dropped::default();
        let Some(ch) = self.channels.as_deref() else {
            return (all, 0);
        };
        for i in ch.inbound.values() {
            all.add(&i.rx.dropped);
        }
        (all, ch.foreign)
    }
}
