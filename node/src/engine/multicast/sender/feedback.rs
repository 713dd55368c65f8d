//! What members say and what the publisher does about it: statuses (the cumulative
//! acknowledgement that frees the repair buffer and moves the flow-control window), NAKs and
//! the repairs that answer them, and moving silent, stalled or lagging members to unicast.

use std::time::{Duration, Instant};

use shoal_proto::NodeId;
use shoal_proto::multicast::{ChannelDemote, ChannelNak, ChannelStatus};

use super::{DemoteReason, Sender, SenderEvent, Transmit};

/// What the publisher knows of one active subscriber.
#[derive(Debug)]
pub(super) struct Member {
    /// Every datagram below this has reached it.
    pub(super) next_needed: u64,
    pub(super) window: u32,
    pub(super) last_heard: Instant,
    /// When `next_needed` last moved, or a datagram became outstanding for it.
    pub(super) progressed: Instant,
    /// Its measured round trip, once the driver said.
    pub(super) rtt: Option<Duration>,
}

impl Sender {
    /// The first datagram number the flow-control window does not allow yet.
    pub(super) fn limit(&self) -> u64 {
        let slowest = self
            .members
            .values()
            .map(|m| m.next_needed.saturating_add(u64::from(m.window)))
            .min()
            .unwrap_or(u64::MAX);
        let kept = self.repair.oldest(self.next_seq);
        slowest.min(kept.saturating_add(self.config.repair_capacity as u64))
    }

    /// Members' measured round trips ([`super::super::measured_rtt`]); others are ignored.
    /// The channel's timers follow the slowest member's.
    pub(crate) fn member_rtts(&mut self, rtts: impl IntoIterator<Item = (NodeId, Duration)>) {
        for (node, rtt) in rtts {
            if let Some(m) = self.members.get_mut(&node) {
                m.rtt = Some(rtt);
            }
        }
        self.config.rtt = self
            .members
            .values()
            .filter_map(|m| m.rtt)
            .max()
            .unwrap_or(self.default_rtt);
    }

    /// The round trip the channel's timers use now.
    #[cfg(test)]
    pub(crate) fn rtt(&self) -> Duration {
        self.config.rtt
    }

    /// A member's progress arrived over QUIC.
    pub(crate) fn on_status(&mut self, node: NodeId, status: ChannelStatus, now: Instant) {
        if !status.handled.is_empty() {
            self.events.push_back(SenderEvent::Handled {
                node,
                items: status.handled,
            });
        }
        if !status.failed.is_empty() {
            self.events.push_back(SenderEvent::Failed {
                node,
                items: status.failed,
            });
        }
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        m.last_heard = now;
        // Never beyond what was sent: a confused subscriber cannot free unsent numbers.
        let next = status.next_needed.min(self.next_seq);
        if next > m.next_needed {
            m.next_needed = next;
            m.progressed = now;
        }
        m.window = status.window.clamp(1, self.config.window);
        self.send_queued(now);
    }

    /// A member's NAK arrived over QUIC.
    pub(crate) fn on_nak(&mut self, node: NodeId, nak: &ChannelNak, now: Instant) {
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        m.last_heard = now;
        // Collect for two round trips, the spread of the subscribers' NAK delays, so those
        // that lost the same datagram are answered by one repair.
        let answer_at = now + 2 * self.config.rtt;
        let mut budget = self.config.window as usize;
        for range in &nak.missing {
            for seq in range.iter().take(budget) {
                budget -= 1;
                if seq < self.next_seq && self.repair.get(seq).is_some() {
                    self.naks.add(seq, node, now, answer_at);
                }
            }
        }
    }

    pub(super) fn repair_now(&mut self, now: Instant) {
        let holdoff = now + 2 * self.config.rtt;
        for (seq, askers) in self
            .naks
            .take(self.config.max_repairs_per_round, now, holdoff)
        {
            let Some(stored) = self.repair.get(seq) else {
                continue;
            };
            let bytes = stored.bytes.clone();
            if askers.len() >= self.config.multicast_repair_min {
                self.repaired_multicast += 1;
                self.out.push_back(Transmit::Multicast(bytes));
            } else {
                for to in askers {
                    self.repaired_unicast += 1;
                    self.out.push_back(Transmit::Repair {
                        to,
                        datagram: bytes.clone(),
                    });
                }
            }
        }
    }

    pub(super) fn demote_silent_and_stalled(&mut self, now: Instant) {
        let (next_seq, stall) = (self.next_seq, self.config.stall_timeout);
        // The members whose window is what holds the publisher back.
        let binding = self
            .members
            .values()
            .map(|m| m.next_needed.saturating_add(u64::from(m.window)))
            .min();
        let blocked = self
            .blocked_since
            .is_some_and(|since| now.saturating_duration_since(since) >= stall);
        let out: Vec<(NodeId, DemoteReason)> = self
            .members
            .iter()
            .filter_map(|(&node, m)| {
                if now.saturating_duration_since(m.last_heard) >= self.config.silent_timeout {
                    Some((node, DemoteReason::Silent))
                } else if m.next_needed < next_seq
                    && m.last_heard > m.progressed
                    && now.saturating_duration_since(m.progressed) >= stall
                {
                    // It still talks, but what was sent does not reach it.
                    Some((node, DemoteReason::Stalled))
                } else if blocked
                    && Some(m.next_needed.saturating_add(u64::from(m.window))) == binding
                {
                    Some((node, DemoteReason::Lagging))
                } else {
                    None
                }
            })
            .collect();
        for (node, reason) in out {
            self.demote(node, reason);
        }
    }

    /// Moves `node` to unicast. It keeps the key (it is still an allowed subscriber), so no
    /// rekey.
    pub(crate) fn demote(&mut self, node: NodeId, reason: DemoteReason) {
        let Some(m) = self.members.remove(&node) else {
            return;
        };
        self.naks.forget(node);
        let from_item = self
            .repair
            .get(m.next_needed)
            .map_or(self.next_item - self.queue.len() as u64, |s| s.first_item);
        self.out.push_back(Transmit::Demote {
            to: node,
            demote: ChannelDemote {
                channel: self.channel,
                from_item,
            },
        });
        self.events.push_back(SenderEvent::Demoted {
            node,
            reason,
            from_item,
        });
        self.release();
        self.blocked_since = None;
    }

    /// Forgets the datagrams every member has (all of them, without members).
    pub(super) fn release(&mut self) {
        let all_have = self.members.values().map(|m| m.next_needed).min();
        self.repair.release_below(all_have.unwrap_or(self.next_seq));
    }
}
