//! Running handlers: a delivery admitted by the read loop ([`crate::inbound`]) is handled in a
//! task of its own (or in the read loop's first poll, on a current-thread runtime), then
//! acked or nacked; replies go back to where the message asked.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use shoal_proto::{Envelope, Frame, MessageId, Nack};
use tokio::time::Instant;

use crate::Message;
use crate::core::dedup::Seen;
use crate::handler::{BoxedHandler, HandlerError};
use crate::node::Shared;
use crate::peer::{Outgoing, Peer};
use crate::registry::{Route, Target};
use crate::stats::Counters;
use crate::sync::lock;

/// The negative ack of message `id`.
pub(crate) fn nack_frame(id: MessageId, retryable: bool, reason: String) -> Outgoing {
    Outgoing::Frame(Frame::Nack(Nack {
        id,
        retryable,
        reason,
    }))
}

/// Refuses a delivery from the read loop (waiting on a full queue slows only this peer).
pub(crate) async fn nack(peer: &Peer, id: MessageId, retryable: bool, reason: String) {
    let _ = peer.push(nack_frame(id, retryable, reason)).await;
}

/// A delivery admitted for handling: one message, or a batch of events.
pub(crate) struct Work {
    /// What the delivery is acked and deduplicated under.
    pub(crate) key: MessageId,
    /// Whether the sender waits for an ack (not for best-effort events).
    pub(crate) acked: bool,
    /// Run one after the other for each item; the delivery is acked when all succeeded.
    pub(crate) handlers: Vec<BoxedHandler>,
    /// The messages, in order. An item with a key of its own (an event in a batch) is also
    /// deduplicated on its own, so a batch retried after a failure part-way skips the items
    /// already handled.
    pub(crate) items: Vec<(Option<MessageId>, Envelope)>,
}

/// Runs a delivery's handlers in a task of their own, then acks or nacks it.
pub(crate) async fn run(shared: &Arc<Shared>, peer: &Arc<Peer>, work: Work) {
    // Bound concurrent handlers: when all permits are taken this read loop waits, and QUIC
    // flow control pushes back on the sender.
    // If this read loop is dropped while it waits (the connection closed), the key must not
    // stay "in progress" in the dedup window: a redelivery would then never be answered.
    let pending = ForgetOnDrop {
        shared,
        key: Some(work.key),
    };
    let Ok(permit) = Arc::clone(&peer.handler_permits).acquire_owned().await else {
        return;
    };
    let Work {
        key,
        acked,
        handlers,
        items,
    } = work;
    let shared2 = Arc::clone(shared);
    let peer2 = Arc::clone(peer);
    let task = async move {
        let _permit = permit;
        let (shared, peer) = (shared2, peer2);
        let handled = handle_items(&shared, &peer, &handlers, items);
        // Handlers' panics are caught one by one; this guard is for the node's own code.
        let run = CatchUnwind(AssertUnwindSafe(Box::pin(handled)));
        let Some(result) = shared.killed.run_until_cancelled(run).await else {
            return;
        };
        let err = match result {
            Ok(Ok(())) => {
                lock(&shared.dedup).complete(key);
                if acked {
                    // The peer's current connection: the one the message came on may have
                    // been replaced while the handler ran (a retry there waits for this ack).
                    current(&shared, &peer).push_ack(key);
                }
                return;
            }
            Ok(Err(err)) => err,
            Err(()) => HandlerError::permanent("handler panicked"),
        };
        Counters::bump(&shared.counters.handler_errors);
        fail(&shared, &peer, key, acked, &err).await;
    };
    // Admission and shutdown exclude each other: either this handler is tracked before
    // shutdown starts waiting for handlers, or it sees the node stopping and is refused.
    let admission = lock(&shared.admission);
    if shared.is_stopping() {
        drop(admission);
        pending.disarm();
        lock(&shared.dedup).forget(key);
        if acked {
            let reason = format!("{} is shutting down", shared.id);
            nack(peer, key, true, reason).await;
        }
        return;
    }
    let task = shared.handler_tasks.track_future(task);
    drop(admission);
    pending.disarm();
    if !shared.inline_handlers {
        tokio::spawn(task);
        return;
    }
    // On a current-thread runtime a spawned handler would run on this thread anyway: give it
    // its first poll here, and spawn a task only for a handler that has to wait. Most
    // handlers finish in that poll, and skip the task.
    let mut task = Box::pin(task);
    let first = std::future::poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx))).await;
    if first.is_pending() {
        tokio::spawn(task);
    }
}

/// Runs every handler on every item in order and sends the replies; stops at the first
/// failure (a panicking handler counts as a permanent failure).
async fn handle_items(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    handlers: &[BoxedHandler],
    items: Vec<(Option<MessageId>, Envelope)>,
) -> Result<(), HandlerError> {
    // One clock read for the whole delivery: a batch's events arrived together.
    let now = Instant::now().into_std();
    for (item_key, env) in items {
        if let Some(k) = item_key {
            match lock(&shared.dedup).check(k, now) {
                Seen::New => {}
                Seen::Done => {
                    Counters::bump(&shared.counters.duplicates);
                    continue;
                }
                // Another delivery (a single publish of the same event) is handling it: the
                // batch must not be acked before that one finishes.
                Seen::InProgress => {
                    return Err(HandlerError::retryable(format!(
                        "event {} of this batch is being handled by another delivery",
                        env.id
                    )));
                }
            }
        }
        let (id, reply_to) = (env.id, env.reply_to.clone());
        let msg = Message::from_envelope(env);
        let mut replies = Vec::with_capacity(handlers.len());
        let mut msg = Some(msg);
        for (i, handler) in handlers.iter().enumerate() {
            // The last handler (usually the only one) takes the message itself.
            let this = if i + 1 == handlers.len() {
                msg.take()
            } else {
                msg.clone()
            };
            let Some(this) = this else { break };
            match call(handler, this).await {
                Ok(reply) => replies.push(reply),
                Err(err) => {
                    if let Some(k) = item_key {
                        lock(&shared.dedup).forget(k);
                    }
                    return Err(err);
                }
            }
        }
        Counters::bump(&shared.counters.handled);
        // A message that asked for a reply always gets one: an empty body if the handler
        // returned none, so a request never just times out. The reply is sent (and kept for
        // retries) before the id counts as done, so a retry never finds it done yet unanswered.
        if let Some(addr) = reply_to {
            for reply in replies {
                if let Err(err) = answer(shared, peer, id, &addr, reply.unwrap_or_default()).await {
                    if let Some(k) = item_key {
                        lock(&shared.dedup).forget(k);
                    }
                    return Err(err);
                }
            }
        }
        if let Some(k) = item_key {
            lock(&shared.dedup).complete(k);
        }
    }
    Ok(())
}

/// Calls one handler, turning a panic (in the closure or in its future) into a permanent
/// failure so one bad handler does not take the node down.
async fn call(handler: &BoxedHandler, msg: Message) -> Result<Option<bytes::Bytes>, HandlerError> {
    let panicked = || HandlerError::permanent("handler panicked");
    let Ok(future) = std::panic::catch_unwind(AssertUnwindSafe(|| handler(msg))) else {
        return Err(panicked());
    };
    CatchUnwind(AssertUnwindSafe(future))
        .await
        .unwrap_or_else(|()| Err(panicked()))
}

/// Forgets a dedup key when dropped while armed: a delivery admitted as new but never handed
/// to a handler task.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    key: Option<MessageId>,
}

impl ForgetOnDrop<'_> {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.shared.dedup).forget(key);
        }
    }
}

/// Sends a handler's reply to where the message asked: straight back to a synchronous
/// request, or as a reliable message to an asynchronous reply channel. A synchronous reply
/// that cannot be encoded (larger than the wire limits) fails the request for good, so the
/// requester hears why instead of waiting for its timeout.
async fn answer(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    request: MessageId,
    addr: &shoal_proto::ReturnAddress,
    body: bytes::Bytes,
) -> Result<(), HandlerError> {
    if addr.channel.is_empty() {
        reply_directly(shared, peer, request, addr.clone(), body).await?;
    } else {
        send_reply(shared, request, addr.clone(), body);
        // Let the reply's first attempt queue its frame before the ack, so both go out in
        // one write.
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Forgets the id (a redelivery must run the handler again, or be refused again: never be
/// acknowledged as if it had succeeded) and sends the negative ack, if the sender waits for
/// one.
async fn fail(shared: &Shared, peer: &Arc<Peer>, id: MessageId, acked: bool, err: &HandlerError) {
    lock(&shared.dedup).forget(id);
    if !acked {
        return;
    }
    let nack = nack_frame(id, err.is_retryable(), err.reason().to_owned());
    let limit = shared.config.retry.ack_timeout;
    current(shared, peer).push_or_close(nack, limit).await;
}

/// The connection that now stands for `peer`'s node: the same one, unless it was replaced.
fn current(shared: &Shared, peer: &Arc<Peer>) -> Arc<Peer> {
    shared
        .registry
        .get(peer.node)
        .unwrap_or_else(|| Arc::clone(peer))
}

/// Answers a synchronous request: one frame on the requester's connection, written in the same
/// batch as the request's ack. It is not tracked, acked or retried: exactly one call waits for
/// it and QUIC delivers the stream reliably. The frame is also kept in the reply cache: if the
/// connection breaks before it arrives, the requester retries the request and
/// [`answer_retried_request`] sends the kept frame again.
async fn reply_directly(
    shared: &Shared,
    peer: &Arc<Peer>,
    request: MessageId,
    addr: shoal_proto::ReturnAddress,
    body: bytes::Bytes,
) -> Result<(), HandlerError> {
    let mut reply = Message::reply_to_request(request, String::new(), body);
    reply.env.attempt = 1;
    let frame = crate::outbound::encode_delivery(&mut reply, &shared.config.limits)
        .map_err(|e| HandlerError::permanent(format!("the handler's reply was not sent: {e}")))?;
    lock(&shared.replies).insert(request, frame.clone(), Instant::now().into_std());
    send_reply_frame(shared, peer, request, &addr, frame).await;
    Ok(())
}

/// A synchronous request this node has already handled came again (the requester retried
/// it, because the reply or the ack was lost with a connection): sends the reply kept for it,
/// then acks. With no reply kept (evicted from the cache, or it could not be sent) the retry
/// is refused for good with the reason: an ack alone would leave the requester waiting until
/// its timeout, and running the handler twice is what the dedup window exists to prevent.
pub(crate) async fn answer_retried_request(shared: &Shared, peer: &Arc<Peer>, env: &Envelope) {
    let Some(addr) = env.reply_to.as_ref().filter(|a| a.channel.is_empty()) else {
        return peer.push_ack(env.id);
    };
    let kept = lock(&shared.replies).get(env.id, Instant::now().into_std());
    match kept {
        Some(frame) => {
            Counters::bump(&shared.counters.replies_resent);
            send_reply_frame(shared, peer, env.id, addr, frame).await;
            peer.push_ack(env.id);
        }
        None => {
            Counters::bump(&shared.counters.replies_missing);
            let reason = format!(
                "request {} was already handled here and its reply is no longer kept \
                 (see NodeBuilder::reply_cache); not running it twice",
                env.id
            );
            nack(peer, env.id, false, reason).await;
        }
    }
}

/// Writes an encoded reply to the requester: the node named in its return address, on the
/// connection that stands for it now (the request's own connection may have been replaced).
async fn send_reply_frame(
    shared: &Shared,
    peer: &Arc<Peer>,
    request: MessageId,
    addr: &shoal_proto::ReturnAddress,
    frame: bytes::Bytes,
) {
    let target = match addr.node {
        Some(node) if node != peer.node => shared.registry.get(node),
        _ => Some(current(shared, peer)),
    };
    let Some(target) = target else {
        tracing::debug!(%request, "requester is gone; reply dropped");
        return;
    };
    let limit = shared.config.retry.ack_timeout;
    target.push_or_close(Outgoing::Encoded(frame), limit).await;
}

/// Sends a handler's reply to an asynchronous request's reply channel: a reliable message
/// (acked, retried, deduplicated), in its own task.
fn send_reply(
    shared: &Arc<Shared>,
    request: MessageId,
    addr: shoal_proto::ReturnAddress,
    body: bytes::Bytes,
) {
    let reply = Message::reply_to_request(request, addr.channel, body);
    let target = Target {
        service: addr.service,
        node: addr.node,
    };
    let policy = shared.config.retry.clone();
    let shared2 = Arc::clone(shared);
    // Tracked with the handlers, so a graceful shutdown waits for replies too.
    shared.handler_tasks.spawn(async move {
        let shared = shared2;
        let stop = shared.killed.clone();
        let delivery =
            crate::outbound::Delivery::new(&shared, Route::Service(target), policy, &reply);
        if let Err(e) = crate::outbound::deliver(&shared, delivery, reply, &stop).await {
            tracing::debug!("reply not delivered: {e}");
        }
    });
}

/// Catches a panic in the wrapped future so one bad handler does not take the node down.
struct CatchUnwind<F>(AssertUnwindSafe<F>);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut inner.0).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
