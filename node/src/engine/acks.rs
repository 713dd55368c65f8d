//! Answers from the receiving end of a connection, taken against its window: acks, by
//! range, and nacks, one number each. An answer ends its message's part of an attempt; the
//! attempt is over when every message of it is answered, or one is refused
//! ([`Engine::attempt_over`]).

use std::ops::Range;
use std::time::Instant;

use shoal_proto::{NackCode, SeqRange};
use smallvec::SmallVec;

use super::Engine;
use super::action::ConnId;
use super::delivery::{Answer, Failure, State};
use super::send::{DeliveryId, InFlight};
use super::window::Window;

impl<H: Clone> Engine<H> {
    /// An [`Ack`](shoal_proto::Ack) came on `conn`: every message its ranges cover is
    /// answered. Only numbers this connection's window tracks are looked at, so a frame costs
    /// at most its ranges and the window's span: a peer that acknowledges `0..2^63` makes the
    /// node count through what it sent, not through the range.
    pub(super) fn on_ack(&mut self, conn: ConnId, mut ranges: Vec<SeqRange>, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        // Honest peers send sorted, disjoint ranges (`ranges.rs`); others are put in that
        // shape first, so that overlapping ranges cost no more than disjoint ones.
        if !sorted_and_disjoint(&ranges) {
            merge(&mut ranges);
        }
        // What the window tracks when the frame came: messages sent while it is answered
        // (its room freed) were not in it.
        let span = c.window.span();
        for seq in c.window.stragglers_in(&ranges) {
            self.on_answer(conn, seq, Answer::Ack, now);
        }
        for range in &ranges {
            let end = range.start.saturating_add(range.len);
            self.on_acked(conn, range.start.max(span.start)..end.min(span.end), now);
        }
    }

    /// Acks for `seqs`, numbers in the window's queue: the messages of one attempt sent one
    /// after the other (a batch's events, a run queued together) are counted in one step, and
    /// the room freed is offered to waiting deliveries once rather than once per number.
    /// Attempts that this ends are over after that, in the order of their first number.
    fn on_acked(&mut self, conn: ConnId, seqs: Range<u64>, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        // Room for every answer at once: at most what the window holds unanswered.
        let most = usize::try_from(seqs.end.saturating_sub(seqs.start)).unwrap_or(usize::MAX);
        let mut answered: SmallVec<[InFlight; 16]> =
            SmallVec::with_capacity(most.min(c.window.pending()));
        c.window.take_run(seqs, &mut answered);
        if answered.is_empty() {
            return; // late (their attempts ended), duplicates, or never sent
        }
        self.serve_room(conn, now);
        let mut ended: SmallVec<[DeliveryId; 4]> = SmallVec::new();
        let mut rest = &answered[..];
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .take_while(|e| e.delivery == first.delivery && e.epoch == first.epoch)
                .count();
            let (same, after) = rest.split_at(n);
            rest = after;
            let Some(del) = self.out.deliveries.get_mut(first.delivery) else {
                continue;
            };
            let State::Flight { left, .. } = &mut del.state else {
                continue;
            };
            if del.epoch != first.epoch {
                continue;
            }
            // At most the attempt's messages, each answered once.
            *left = left.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
            for entry in same {
                let slot = &mut del.acked[entry.index as usize];
                if !*slot {
                    *slot = true;
                    del.acked_count += 1;
                }
            }
            if *left == 0 {
                ended.push(first.delivery);
            }
        }
        for d in ended {
            self.attempt_over(d, now);
        }
    }

    /// An answer to message `seq` on `conn` came.
    pub(super) fn on_answer(&mut self, conn: ConnId, seq: u64, answer: Answer, now: Instant) {
        let Some(entry) = self.conns.get_mut(conn).and_then(|c| c.window.take(seq)) else {
            return; // late (its attempt ended), a duplicate, or never sent
        };
        self.serve_room(conn, now);
        if let Answer::Nack {
            code, retryable, ..
        } = &answer
        {
            self.note_nacked(entry.delivery, entry.index, *code, *retryable); // metrics/hooks.rs
        }
        // Separate calls' messages (send/each.rs): a refusal is the refused message's alone.
        let separate =
            matches!(answer, Answer::Nack { .. }) && self.of_separate_calls(entry.delivery);
        let Some(del) = self.out.deliveries.get_mut(entry.delivery) else {
            return;
        };
        let State::Flight { left, failure, .. } = &mut del.state else {
            return;
        };
        if del.epoch != entry.epoch {
            return;
        }
        *left -= 1;
        let mut ended = *left == 0;
        let mut refused = None;
        match answer {
            Answer::Ack => {
                let slot = &mut del.acked[entry.index as usize];
                if !*slot {
                    *slot = true;
                    del.acked_count += 1;
                }
            }
            // The failure of an earlier message of the run already ends the attempt.
            Answer::Nack {
                code: NackCode::Skipped,
                reason,
                ..
            } => {
                failure.get_or_insert(Failure::Retryable(reason));
            }
            Answer::Nack {
                retryable, reason, ..
            } => {
                let node = self.conns.get(conn).map(|c| c.node);
                let reason = match node {
                    Some(node) => format!("{node} refused: {reason}"),
                    None => reason,
                };
                if separate {
                    // The others of the attempt are still answered; this one is dead-lettered
                    // now, or retried with those not acknowledged when the attempt is over.
                    if retryable {
                        failure.get_or_insert(Failure::Retryable(reason));
                    } else {
                        refused = Some(reason);
                    }
                } else {
                    *failure = Some(if retryable {
                        Failure::Retryable(reason)
                    } else {
                        Failure::Permanent(reason)
                    });
                    ended = true;
                }
            }
        }
        if let Some(reason) = refused {
            self.refuse_alone(entry.delivery, entry.index as usize, &reason);
        }
        if ended {
            self.attempt_over(entry.delivery, now);
        }
    }
}

/// The number in `window` of message `index` of delivery `d`'s attempt `epoch`, sent as
/// `first..first + count`, while unanswered: the reply to a request that travelled with others
/// answers it (`send/each_request.rs`). The attempt numbered its unacknowledged messages in
/// order, so message `index` is at most `index` after `first`: found in one look on a first
/// attempt, counting back past those acknowledged before on a later one.
pub(super) fn reply_answers_seq(
    window: &Window<InFlight>,
    (d, epoch, index): (DeliveryId, u32, u32),
    first: u64,
    count: u32,
) -> Option<u64> {
    let last = u64::from(index.min(count.checked_sub(1)?));
    for seq in (first..=first + last).rev() {
        match window.get(seq) {
            Some(e) if e.delivery == d && e.epoch == epoch && e.index == index => return Some(seq),
            // An earlier message of the attempt: `index` is not in the window.
            Some(e) if e.delivery == d && e.epoch == epoch && e.index < index => return None,
            _ => {}
        }
    }
    None
}

/// Whether `ranges` are in increasing order without overlaps (and without overflowing ends).
fn sorted_and_disjoint(ranges: &[SeqRange]) -> bool {
    let mut from = 0;
    ranges.iter().all(|r| {
        let ok = r.start >= from;
        from = r.start.saturating_add(r.len);
        ok && r.start.checked_add(r.len).is_some()
    })
}

/// Sorts `ranges` and merges those that overlap or touch; a range whose end overflows is
/// dropped (it covers nothing, as `SeqRange::iter` says).
fn merge(ranges: &mut Vec<SeqRange>) {
    ranges.retain(|r| r.len > 0 && r.start.checked_add(r.len).is_some());
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<SeqRange> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if r.start <= last.start + last.len => {
                last.len = last.len.max(r.start + r.len - last.start);
            }
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}
