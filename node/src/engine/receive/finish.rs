//! A handler run's end: its message acknowledged (or its reply sent) and the task's next
//! message handed over, or, on a failure, the message refused, and with it everything after
//! it in an ordered run.

use std::sync::Arc;
use std::time::Instant;

use shoal_proto::NackCode;

use super::super::Engine;
use super::super::action::{HandlerOutcome, TaskId};
use super::super::answer::is_synchronous;

/// The reason given with [`NackCode::Skipped`]: the events after a failed one in its run.
const SKIPPED: &str = "an earlier event of its batch failed";

impl<H: Clone> Engine<H> {
    /// The handlers of `task`'s current message finished.
    pub(crate) fn handler_done(&mut self, task: TaskId, outcome: HandlerOutcome, now: Instant) {
        let Some(t) = self.inbound.tasks.get_mut(task) else {
            return;
        };
        let Some((seq, key, id)) = t.running.take() else {
            return;
        };
        let (conn, reliable) = (t.conn, t.head.reliable);
        // The head, for a reply to make or metrics to name: shared only then (usually neither).
        let head =
            (t.head.reply_to.is_some() || self.metrics.is_some()).then(|| Arc::clone(&t.head));
        // A message that asked for a reply always gets one (an empty body if the handler
        // returned none, so a request never just times out). The reply is sent (and kept for
        // retries) before the id counts as done, so a retry never finds it done yet unanswered.
        let reply_to = head.as_deref().and_then(|h| h.reply_to.as_ref());
        let outcome = outcome.and_then(|replies| match reply_to {
            Some(addr) => replies
                .into_iter()
                .try_for_each(|reply| self.deliver_reply(conn, addr, (id, key), reply, now)),
            None => Ok(()),
        });
        if let Some(head) = &head {
            self.note_handled(task, conn, &head.name, outcome.is_ok(), now); // metrics/hooks.rs
        }
        // Usually nobody waits: the empty map is not hashed into.
        let waiters = if self.inbound.waiters.is_empty() {
            Vec::new()
        } else {
            self.inbound.waiters.remove(&key).unwrap_or_default()
        };
        // Multicast (multicast_receive.rs): a channel event is reported in the channel's status,
        // not acknowledged on `conn`; duplicates that came by unicast meanwhile still are.
        let own = (!self.channel_task_done(task, key, outcome.is_ok(), now))
            .then_some((conn, seq))
            .into_iter();
        match outcome {
            Ok(()) => {
                self.stats.handled += 1;
                self.inbound.dedup.complete(key, now);
                // A synchronous request's reply is its answer (the requester ends the request's
                // delivery on it, `Engine::on_reply`): no ack follows it. Copies that came in
                // meanwhile are answered as a copy of a request handled before is: with the
                // reply kept. An ack would tell the requester that the request arrived, and it
                // would not send it again, though this reply might not reach it; only a reply
                // that was not kept leaves them an ack.
                let synchronous = reply_to.is_some_and(is_synchronous);
                match &head {
                    // A reply not kept (too large, or no cache) would refuse them: acked.
                    Some(head)
                        if synchronous
                            && (waiters.is_empty()
                                || self.inbound.replies.get(key, now).is_some()) =>
                    {
                        for (c, s) in waiters {
                            self.answer_again(c, s, head, id, key, now); // answer.rs
                        }
                    }
                    _ if synchronous => {
                        for (c, s) in waiters {
                            self.ack(c, s);
                        }
                    }
                    _ if reliable => {
                        for (c, s) in own.chain(waiters) {
                            self.ack(c, s);
                        }
                    }
                    _ => {}
                }
                self.next_handed(task, now);
            }
            Err(err) => {
                self.stats.handler_errors += 1;
                // Forgotten: a redelivery must run the handler again, or be refused again;
                // never be acknowledged as if it had succeeded.
                self.inbound.dedup.forget(key);
                if reliable {
                    for (c, s) in own.chain(waiters) {
                        let reason = err.reason().to_owned();
                        self.nack(c, s, err.is_retryable(), NackCode::HandlerFailed, reason);
                    }
                }
                // In an unordered run, the others go on.
                if self
                    .inbound
                    .tasks
                    .get(task)
                    .is_some_and(|t| t.run.as_deref().is_some_and(|r| !r.ordered))
                {
                    return self.next_handed(task, now);
                }
                self.skip_handed(task, now);
                self.skip_rest(task);
                self.end_task(task, now);
            }
        }
    }

    /// The next message handed over with the one that finished runs now (the driver runs
    /// it after that one, once it succeeded in an ordered run); the task steps on once none
    /// is left.
    fn next_handed(&mut self, task: TaskId, now: Instant) {
        if let Some(t) = self.inbound.tasks.get_mut(task)
            && let Some(next) = t.run.as_deref_mut().and_then(|r| r.handed.pop_front())
        {
            t.running = Some(next);
            self.note_handler_started(task, now); // metrics/hooks.rs
        } else {
            self.step(task, now);
        }
    }

    /// Refuses the messages handed over after a failed one (the run's `handed`; the driver runs
    /// none of them): each is forgotten, as a message whose handler failed, and refused as
    /// [`NackCode::Skipped`], with the copies that wait for it.
    fn skip_handed(&mut self, task: TaskId, now: Instant) {
        let Some(t) = self.inbound.tasks.get_mut(task) else {
            return;
        };
        let Some(run) = t.run.as_deref_mut().filter(|r| !r.handed.is_empty()) else {
            return;
        };
        let handed = std::mem::take(&mut run.handed);
        let (conn, reliable) = (t.conn, t.head.reliable);
        for (seq, key, _) in handed {
            self.inbound.dedup.forget(key);
            let waiters = self.inbound.waiters.remove(&key).unwrap_or_default();
            // Multicast: channel copies that followed it fail with it.
            self.channel_task_done(task, key, false, now);
            if reliable {
                for (c, s) in std::iter::once((conn, seq)).chain(waiters) {
                    let reason = SKIPPED.to_owned();
                    self.nack(c, s, true, NackCode::Skipped, reason);
                }
            }
        }
    }

    /// Refuses the rest of an ordered run after a failure, so its sender retries them in order.
    pub(super) fn skip_rest(&mut self, task: TaskId) {
        let Some(t) = self.inbound.tasks.get_mut(task) else {
            return;
        };
        let (conn, reliable) = (t.conn, t.head.reliable);
        let Some(run) = t.run.as_deref_mut() else {
            return;
        };
        let rest: Vec<u64> = (run.rest_seq..).take(run.rest.len()).collect();
        run.rest.clear();
        if reliable {
            for seq in rest {
                let reason = SKIPPED.to_owned();
                self.nack(conn, seq, true, NackCode::Skipped, reason);
            }
        }
    }
}
