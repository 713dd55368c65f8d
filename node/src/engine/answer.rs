//! What a receiver says back: acks, nacks, and handlers' replies (kept for retries of
//! synchronous requests).

use std::time::Instant;

use shoal_proto::{Frame, Head, MessageId, Nack, NackCode, ReturnAddress};

use super::Engine;
use super::action::ConnId;
use crate::Message;
use crate::handler::HandlerError;

impl<H: Clone> Engine<H> {
    /// A message handled before came again (its sender retried it, because the answer was
    /// lost with a connection): acks it, or answers a synchronous request with its kept
    /// reply. With no reply kept (evicted, or it could not be sent) the retry is refused for
    /// good with the reason: an ack alone would leave the requester waiting until its timeout,
    /// and running the handler twice is what the dedup window exists to prevent. The reply is
    /// kept under the request's dedup `key` (bound to its sender, `super::sender`), not its id.
    pub(super) fn answer_again(
        &mut self,
        conn: ConnId,
        seq: u64,
        head: &Head,
        id: MessageId,
        key: MessageId,
        now: Instant,
    ) {
        let Some(addr) = head.reply_to.as_ref().filter(|a| is_synchronous(a)) else {
            return self.ack(conn, seq);
        };
        match self.inbound.replies.get(key, now) {
            Some(frame) => {
                self.stats.replies_resent += 1;
                let target = self.reply_conn(conn, addr);
                if let Some(c) = self.conns.get_mut(target)
                    && c.queue_frame(frame)
                {
                    self.transmit(target);
                }
                self.watch_queue(target, now); // backpressure.rs
            }
            None => {
                self.stats.replies_missing += 1;
                let reason = format!(
                    "request {id} was already handled here and its reply is no longer kept \
                     (see NodeBuilder::reply_cache); not running it twice"
                );
                self.nack(conn, seq, false, NackCode::ReplyNotKept, reason);
            }
        }
    }

    /// Sends a handler's reply to where the request asked: straight back to a synchronous
    /// request (one frame, kept for retries), or as a reliable message to an asynchronous
    /// reply channel. A synchronous reply that cannot be encoded fails the request for good,
    /// so the requester hears why instead of waiting for its timeout. `request` is the
    /// request's id and its dedup key (the kept reply's key).
    pub(super) fn deliver_reply(
        &mut self,
        conn: ConnId,
        addr: &ReturnAddress,
        (request, key): (MessageId, MessageId),
        reply: Message,
        now: Instant,
    ) -> Result<(), HandlerError> {
        if !is_synchronous(addr) {
            return self.send_reply(addr, reply, now).map_err(|e| {
                HandlerError::permanent(format!("the handler's reply was not sent: {e}"))
            });
        }
        // The handler's message keeps its box: the frame takes it as it is.
        let mut envelope = reply.env;
        envelope.attempt = 1;
        let frame = self
            .inbound
            .replies
            .encode_and_keep(key, &Frame::Reply(envelope), &self.config.limits, now)
            .map_err(|e| {
                HandlerError::permanent(format!("the handler's reply was not sent: {e}"))
            })?;
        let target = self.reply_conn(conn, addr);
        match self.conns.get_mut(target) {
            Some(c) => {
                if c.queue_frame(frame) {
                    self.transmit(target);
                }
                self.watch_queue(target, now); // backpressure.rs
            }
            None => tracing::debug!(%request, "requester is gone; reply dropped"),
        }
        Ok(())
    }

    /// The connection a reply goes on: the requester's current one (the request's own
    /// connection may have been replaced while the handler ran), if it is of the requester's
    /// service (the request connection's certified one, or the return address's once that
    /// connection is gone): a node id is only claimed, and a connection of another service
    /// claiming it gets no reply.
    pub(super) fn reply_conn(&self, conn: ConnId, addr: &ReturnAddress) -> ConnId {
        let asked = self.conns.get(conn);
        let node = addr.node.or_else(|| asked.map(|c| c.node));
        let service = asked.map_or(addr.service.as_str(), |c| c.service.as_str());
        node.and_then(|n| self.peers.current_of(&self.conns, n, service))
            .unwrap_or(conn)
    }

    pub(super) fn ack(&mut self, conn: ConnId, seq: u64) {
        if let Some(c) = self.conns.get_mut(conn)
            && c.ack(seq)
        {
            self.transmit(conn);
        }
    }

    pub(super) fn nack(
        &mut self,
        conn: ConnId,
        seq: u64,
        retryable: bool,
        code: NackCode,
        reason: String,
    ) {
        let frame = Frame::Nack(Nack {
            seq,
            retryable,
            code,
            // A handler's error can say more than a frame takes (`max_reason_len`).
            reason: self.config.limits.bounded_reason(reason),
        });
        self.queue_control(conn, &frame);
    }
}

/// Whether a request with this return address waits for its reply on the connection
/// (`Node::request`), rather than asking for it on a reply channel of its service: its reply
/// is then its answer, and no ack goes with it.
pub(super) fn is_synchronous(addr: &ReturnAddress) -> bool {
    addr.channel.is_empty()
}
