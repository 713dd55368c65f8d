//! What the next datagram takes: as many queued events as fit, in runs that share a head and
//! an assignment, and whether a datagram that has room for more waits for them (coalescing).

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use shoal_proto::codec::{self, EncodedItem, RunParts};

use super::super::ChannelConfig;
use super::super::header::HEADER_LEN;
use super::super::seal::TAG_LEN;
use super::{Queued, Sender};

/// What the next datagram takes from the queue.
struct Plan {
    /// How many queued events.
    taken: usize,
    /// Body bytes.
    used: usize,
    /// Runs as (start, end) over the queue's front.
    runs: Vec<(usize, usize)>,
    /// Whether more is queued than fits.
    full: bool,
    /// The bytes of the last event taken.
    last: usize,
}

impl Plan {
    /// Whether the datagram is worth sending without waiting for more: more is queued than
    /// fits, or another event the size of the last one would not fit (large events never
    /// wait; small ones fill the datagram).
    fn no_room_for_another(&self, config: &ChannelConfig) -> bool {
        let budget = config.max_datagram - HEADER_LEN - TAG_LEN;
        self.full || self.used + self.last > budget
    }
}

impl Sender {
    /// The next datagram from the queue (its body after room for the header, and the number
    /// of its first event), or `None` while it waits for more ([`ChannelConfig::coalesce`]).
    pub(super) fn next_datagram(&mut self, now: Instant) -> Option<(BytesMut, u64)> {
        let plan = self.plan();
        if !plan.no_room_for_another(&self.config) && self.holds_partial(now) {
            return None;
        }
        self.held_since = None;
        Some(self.pack(plan))
    }

    /// Whether a datagram with room for more waits ([`ChannelConfig::coalesce`]): while the
    /// last one sent has reached no member yet, for at most a round trip.
    fn holds_partial(&mut self, now: Instant) -> bool {
        let in_flight = self.config.coalesce
            && !self.members.is_empty()
            && self.members.values().all(|m| m.next_needed < self.next_seq);
        if !in_flight {
            return false;
        }
        let since = *self.held_since.get_or_insert(now);
        now < since + self.config.rtt
    }

    /// Which queued events the next datagram takes: as many as fit, in runs of events that
    /// share a head and an assignment.
    fn plan(&self) -> Plan {
        let budget = self.config.max_datagram - HEADER_LEN - TAG_LEN;
        let mut plan = Plan {
            taken: 0,
            used: codec::BODY_OVERHEAD,
            runs: Vec::new(),
            full: false,
            last: 0,
        };
        while let Some(q) = self.queue.get(plan.taken) {
            let joins = plan.runs.last().is_some_and(|&(start, _)| {
                let first = &self.queue[start];
                same(&first.head, &q.head) && same(&first.assigned, &q.assigned)
            });
            let items = std::slice::from_ref(&q.item);
            let cost = if joins {
                q.item.len()
            } else {
                codec::run_len(&RunParts {
                    head: &q.head,
                    assigned: &q.assigned,
                    items,
                })
            };
            if plan.used + cost > budget && plan.taken > 0 {
                plan.full = true;
                break;
            }
            plan.used += cost;
            plan.taken += 1;
            plan.last = q.item.len();
            match plan.runs.last_mut() {
                Some(run) if joins => run.1 = plan.taken,
                _ => plan.runs.push((plan.taken - 1, plan.taken)),
            }
        }
        plan
    }

    /// Takes what [`Sender::plan`] chose; returns the datagram (its body after room for the
    /// header) and the number of its first event.
    fn pack(&mut self, plan: Plan) -> (BytesMut, u64) {
        let Plan {
            taken, used, runs, ..
        } = plan;
        let sent: Vec<Queued> = self.queue.drain(..taken).collect();
        let items: Vec<EncodedItem> = sent.iter().map(|q| q.item.clone()).collect();
        let parts: Vec<RunParts<'_>> = runs
            .iter()
            .map(|&(start, end)| RunParts {
                head: &sent[start].head,
                assigned: &sent[start].assigned,
                items: &items[start..end],
            })
            .collect();
        let first_item = self.next_item - self.queue.len() as u64 - taken as u64;
        let mut datagram = BytesMut::with_capacity(HEADER_LEN + used + TAG_LEN);
        datagram.resize(HEADER_LEN, 0);
        // Every event fitted alone (push checked it) and `used` bounds the body: no error.
        let written = codec::write_datagram_body(&mut datagram, first_item, &parts, usize::MAX);
        debug_assert!(
            matches!(written, Ok(len) if len <= used),
            "{written:?} > {used}"
        );
        (datagram, first_item)
    }
}

/// Whether two events' heads (or assignments) are the same: the same allocation, or equal.
/// Events published one call at a time each come with their own (the head from the head
/// cache, the assignment from the flush that staged them), and equal ones still share a run,
/// so their head and assignment travel once per datagram, not once per event.
fn same<T: PartialEq + ?Sized>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}
