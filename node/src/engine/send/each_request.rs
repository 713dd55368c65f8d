//! Requests of separate calls that travel as one operation: one delivery for all of them,
//! and each caller answered by its own reply, as soon as it comes.
//!
//! A node with many `request` calls in flight gathers those made in one turn of its runtime
//! (`runtime/gather.rs`) as it does commands ([`super::each`]), and hands them over together
//! ([`Engine::request_each`]): one operation, one delivery to the service, one attempt, timer
//! and frame head for all. What differs from commands is the answer. A synchronous request
//! is answered by its reply, not by an ack (`answer.rs`), and its caller waits for that reply
//! alone, not for the others':
//!
//! - a reply stands for its request's ack: it takes the request's place in the connection's
//!   window ([`Engine::answer_one`]), and the attempt is over once every request of it is
//!   answered, as with acks;
//! - the caller gets the reply at once ([`Action::Answered`]), and so does a caller whose
//!   request failed alone (refused for good, dead-lettered);
//! - a request not answered yet is retried with the others not answered, elsewhere if its
//!   instance failed; the receiver's dedup window answers a retry of one it handled with the
//!   reply it kept;
//! - the operation's timeout ends every request still waiting (`ops.rs`), as it would each
//!   alone; the operation ends once no request waits ([`Done::RepliedEach`]).
//!
//! Only unkeyed requests with the same timeout travel together: keyed ones go alone, in their
//! key's turn.

use std::time::{Duration, Instant};

use shoal_proto::MessageId;

use super::super::Engine;
use super::super::acks::reply_answers_seq;
use super::super::action::{Action, Done, OpId};
use super::super::delivery::{Answer, State};
use super::{Each, Events, OpKind};
use crate::{Error, Message};

impl<H: Clone> Engine<H> {
    /// Sends the requests of separate calls, all to `service` and each waiting `timeout` at
    /// most, as one operation in which each is handled on its own and answered by its own
    /// reply ([`Action::Answered`]).
    ///
    /// Refused before anything is taken from `requests` (so that each can go alone and hear
    /// its own error) when they cannot go together: one breaks a limit, one has the id of a
    /// request waiting for its reply (or of another of them), or their return addresses
    /// differ.
    pub(crate) fn request_each(
        &mut self,
        service: &str,
        requests: &mut Events,
        timeout: Duration,
        now: Instant,
    ) -> Result<OpId, Error> {
        let Some(first) = requests.first() else {
            return self.each_to_service(OpKind::Request, service, requests, Each::new(0), now);
        };
        let reply_to = first.envelope().reply_to.as_ref();
        if requests
            .iter()
            .any(|r| r.envelope().reply_to.as_ref() != reply_to)
        {
            return Err(Error::InvalidBatch(
                "requests travel together only with the same return address".into(),
            ));
        }
        // Replies find their request by its id: ids must be unique among those waiting.
        let mut ids: Vec<MessageId> = requests.iter().map(Message::id).collect();
        ids.sort_unstable();
        if let Some(id) = ids
            .windows(2)
            .find(|pair| pair[0] == pair[1])
            .map(|pair| pair[0])
            .or_else(|| {
                ids.iter()
                    .copied()
                    .find(|id| self.out.replies.contains_key(id))
            })
        {
            return Err(Error::DuplicateRequest(id));
        }
        let each = Each::of_requests(requests.len());
        let op = self.each_to_service(OpKind::Request, service, requests, each, now)?;
        // Each reply finds its request's place in the operation.
        let out = &mut self.out;
        if let Some(o) = out.ops.get(op) {
            for (index, envelope) in (0u32..).zip(&o.messages) {
                out.replies.insert(envelope.id, (op, index));
            }
        }
        self.time_out_request(op, timeout, now); // ops.rs
        Ok(op)
    }

    /// Request `index` of `op` (made by [`Engine::request_each`]) got its `reply`: its caller
    /// has it now, and it counts as acknowledged in its delivery. A reply to a request that
    /// failed meanwhile (dead-lettered at its timeout) is dropped.
    pub(super) fn reply_one(&mut self, op: OpId, index: u32, reply: Message, now: Instant) {
        let Some(each) = self.out.ops.get_mut(op).and_then(|o| o.each.as_deref_mut()) else {
            return;
        };
        if !each.reply(index as usize) {
            return;
        }
        self.actions.push_back(Action::Answered {
            op,
            index,
            result: Ok(reply),
        });
        self.answer_one(op, index, now);
        self.end_if_answered(op);
    }

    /// Ends `op` (made by [`Engine::request_each`]) if no request of it waits any more and
    /// none of its deliveries is left: called when its last delivery ends, and after each
    /// request answered or failed (that delivery may have ended before the last reply came,
    /// acked by a node of an earlier release, which acks requests too).
    pub(in crate::engine) fn end_if_answered(&mut self, op: OpId) {
        if self.out.ops.get(op).is_some_and(|o| {
            o.open == 0
                && o.kind == OpKind::Request
                && o.each.as_deref().is_some_and(Each::all_answered)
        }) {
            self.complete(op, Ok(Done::RepliedEach));
        }
    }

    /// Request `index` of `op` was answered: in the delivery carrying it, the answer ends its
    /// part of the attempt in flight (its window entry), or, between attempts, marks it
    /// acknowledged so that it is not sent again.
    fn answer_one(&mut self, op: OpId, index: u32, now: Instant) {
        let Some(o) = self.out.ops.get(op) else {
            return;
        };
        let at = index as usize;
        let Some(d) = o.deliveries.iter().copied().find(|d| {
            self.out.deliveries.get(*d).is_some_and(|del| {
                del.op == op && del.carries(at) && del.acked.get(at) == Some(&false)
            })
        }) else {
            return;
        };
        let Some(del) = self.out.deliveries.get_mut(d) else {
            return;
        };
        if let State::Flight {
            conn, first, count, ..
        } = del.state
            && let Some(c) = self.conns.get(conn)
            && let Some(seq) = reply_answers_seq(&c.window, (d, del.epoch, index), first, count)
        {
            return self.on_answer(conn, seq, Answer::Ack, now); // acks.rs
        }
        // Not in flight (its attempt failed, and the next waits): not sent again.
        del.acked[at] = true;
        del.acked_count += 1;
        if del.acked_count == del.acked.len() && !matches!(del.state, State::Flight { .. }) {
            self.succeed(d, now); // outcome.rs
        }
    }
}
