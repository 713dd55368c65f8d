//! Receiving: read frames from a peer, run handlers, answer with acks and nacks.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use shoal_proto::{DecodeError, Envelope, Frame, MessageId, MessageKind, Nack, codec};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::core::dedup::Seen;
use crate::handler::{BoxedHandler, HandlerError};
use crate::node::Shared;
use crate::peer::{Outcome, Outgoing, Peer};
use crate::registry::{Route, Target};
use crate::stats::Counters;
use crate::sync::lock;
use crate::{Message, NodeEvent};

/// Reads and handles frames from `peer` until its stream ends or breaks the protocol.
/// Returns why the connection should close.
pub(crate) async fn read_loop(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
) -> String {
    loop {
        loop {
            match codec::decode(&mut buf, &shared.config.limits) {
                Ok(Some(frame)) => {
                    if let Err(reason) = on_frame(shared, peer, frame).await {
                        return reason;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Counters::bump(&shared.counters.malformed_frames);
                    shared.emit(NodeEvent::ProtocolError {
                        addr: peer.addr,
                        reason: e.to_string(),
                    });
                    match e {
                        // The frame was consumed and names its message: refuse just that one.
                        DecodeError::LimitExceeded { id: Some(id), .. } => {
                            nack(peer, id, false, e.to_string()).await;
                        }
                        _ => return format!("protocol error: {e}"),
                    }
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match recv.read_buf(&mut buf).await {
            Ok(0) => return "peer closed its stream".into(),
            Ok(_) => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

async fn on_frame(shared: &Arc<Shared>, peer: &Arc<Peer>, frame: Frame) -> Result<(), String> {
    match frame {
        Frame::Deliver(env) => on_deliver(shared, peer, *env).await,
        Frame::Ack(ack) => {
            for id in ack.ids {
                peer.answer(id, Outcome::Acked);
            }
        }
        Frame::Nack(nack) => peer.answer(
            nack.id,
            Outcome::Nacked {
                retryable: nack.retryable,
                reason: nack.reason,
            },
        ),
        Frame::Ping(nonce) => peer.push(Outgoing::Frame(Frame::Pong(nonce))).await?,
        Frame::Pong(nonce) => peer.pong(nonce),
        Frame::Goodbye(goodbye) => {
            tracing::debug!(peer = %peer.node, reason = %goodbye.reason, "peer said goodbye");
            shared.registry.leaving(peer);
            return Err(format!("peer said goodbye: {}", goodbye.reason));
        }
        Frame::Hello(_) => {
            let reason = "protocol error: a second hello";
            Counters::bump(&shared.counters.malformed_frames);
            shared.emit(NodeEvent::ProtocolError {
                addr: peer.addr,
                reason: reason.into(),
            });
            return Err(reason.into());
        }
        Frame::Subscribe(sub) => {
            let event = NodeEvent::Subscribed {
                node: peer.node,
                pattern: sub.pattern.clone(),
                group: sub.group.clone(),
            };
            match crate::core::topic::check_pattern(&sub.pattern)
                .and_then(|()| shared.registry.subscribed(peer, sub))
            {
                Ok(true) => shared.emit(event),
                Ok(false) => {}
                Err(reason) => refused_subscription(shared, peer, reason),
            }
        }
        Frame::Unsubscribe(sub) if shared.registry.unsubscribed(peer, &sub) => {
            shared.emit(NodeEvent::Unsubscribed {
                node: peer.node,
                pattern: sub.pattern,
                group: sub.group,
            });
        }
        Frame::Publish(publish) => on_publish(shared, peer, *publish).await,
        // Newer frame kinds: not spoken by this version, ignored.
        _ => {}
    }
    Ok(())
}

/// A peer announced a subscription this node will not keep (malformed pattern, too many):
/// said in an event and counted; the connection stays up.
fn refused_subscription(shared: &Shared, peer: &Peer, reason: String) {
    Counters::bump(&shared.counters.malformed_frames);
    shared.emit(NodeEvent::ProtocolError {
        addr: peer.addr,
        reason: format!("subscription refused: {reason}"),
    });
}

/// The negative ack of message `id`.
fn nack_frame(id: MessageId, retryable: bool, reason: String) -> Outgoing {
    Outgoing::Frame(Frame::Nack(Nack {
        id,
        retryable,
        reason,
    }))
}

/// Refuses a delivery from the read loop (waiting on a full queue slows only this peer).
async fn nack(peer: &Peer, id: MessageId, retryable: bool, reason: String) {
    let _ = peer.push(nack_frame(id, retryable, reason)).await;
}

async fn on_deliver(shared: &Arc<Shared>, peer: &Arc<Peer>, env: Envelope) {
    if shared.is_stopping() {
        return nack(
            peer,
            env.id,
            true,
            format!("{} is shutting down", shared.id),
        )
        .await;
    }
    // A reply to a synchronous request goes straight to the waiting call: it is neither
    // deduplicated nor acked (see `reply_directly`).
    if env.kind == MessageKind::Reply && env.name.is_empty() {
        match env
            .correlation_id
            .and_then(|id| lock(&shared.pending).remove(&id))
        {
            Some(waiting) => {
                let _ = waiting.send(Message::from_envelope(env));
            }
            None => {
                tracing::debug!(id = %env.id, "late reply to a request that already ended; dropped")
            }
        }
        return;
    }
    if !is_new(shared, peer, env.id, true) {
        return;
    }
    let handler = crate::sync::read(&shared.handlers).get(&env.name).cloned();
    let Some(handler) = handler else {
        lock(&shared.dedup).forget(env.id);
        Counters::bump(&shared.counters.unhandled);
        let reason = format!(
            "service `{}` has no handler for `{}`",
            shared.service, env.name
        );
        // Retryable: the handler may be registered a moment after start, or another instance
        // (a newer version during a rolling deploy) may have it.
        return nack(peer, env.id, true, reason).await;
    };
    let work = Work {
        key: env.id,
        acked: true,
        handlers: vec![handler],
        env,
    };
    run(shared, peer, work).await;
}

/// One group's copy of a published event: run this node's subscriptions of that group.
async fn on_publish(shared: &Arc<Shared>, peer: &Arc<Peer>, publish: shoal_proto::Publish) {
    let shoal_proto::Publish {
        envelope: env,
        reliable,
        group,
    } = publish;
    let key = env.id.delivery_key(group.as_deref());
    if shared.is_stopping() {
        if reliable {
            nack(peer, key, true, format!("{} is shutting down", shared.id)).await;
        }
        return;
    }
    if !is_new(shared, peer, key, reliable) {
        return;
    }
    let handlers =
        crate::sync::read(&shared.subscriptions).handlers_for(group.as_deref(), &env.name);
    if handlers.is_empty() {
        // Unsubscribed while the event was on its way: the publisher has the unsubscribe
        // (it came first on this stream) and takes a retry to another instance.
        lock(&shared.dedup).forget(key);
        Counters::bump(&shared.counters.unhandled);
        if reliable {
            let group = group.as_deref().unwrap_or("(ungrouped)");
            let reason = format!("no subscription of group {group} for `{}` here", env.name);
            nack(peer, key, true, reason).await;
        }
        return;
    }
    run(
        shared,
        peer,
        Work {
            key,
            acked: reliable,
            handlers,
            env,
        },
    )
    .await;
}

/// Checks the dedup window: `true` for a first delivery. A copy of a message already handled
/// is acked again (if `acked`); a copy of one being handled now waits for that handler's ack.
fn is_new(shared: &Shared, peer: &Peer, key: MessageId, acked: bool) -> bool {
    let seen = lock(&shared.dedup).check(key, Instant::now().into_std());
    match seen {
        Seen::New => true,
        Seen::Done => {
            Counters::bump(&shared.counters.duplicates);
            if acked {
                peer.push_ack(key);
            }
            false
        }
        Seen::InProgress => {
            Counters::bump(&shared.counters.duplicates);
            false
        }
    }
}

/// A delivery admitted for handling.
struct Work {
    /// What the delivery is acked and deduplicated under.
    key: MessageId,
    /// Whether the sender waits for an ack (not for best-effort events).
    acked: bool,
    /// Run one after the other; the delivery is acked when all succeeded.
    handlers: Vec<BoxedHandler>,
    env: Envelope,
}

/// Runs a delivery's handlers in a task of their own, then acks or nacks it.
async fn run(shared: &Arc<Shared>, peer: &Arc<Peer>, work: Work) {
    // Bound concurrent handlers: when all permits are taken this read loop waits, and QUIC
    // flow control pushes back on the sender.
    let Ok(permit) = Arc::clone(&peer.handler_permits).acquire_owned().await else {
        return;
    };
    let Work {
        key,
        acked,
        handlers,
        env,
    } = work;
    let shared2 = Arc::clone(shared);
    let peer2 = Arc::clone(peer);
    let task = async move {
        let _permit = permit;
        let (shared, peer) = (shared2, peer2);
        let (id, reply_to) = (env.id, env.reply_to.clone());
        let msg = Message::from_envelope(env);
        // The closures themselves run inside the guard too: one may panic before it returns
        // a future.
        let run = CatchUnwind(AssertUnwindSafe(Box::pin(async move {
            let mut replies = Vec::with_capacity(handlers.len());
            for handler in handlers {
                replies.push(handler(msg.clone()).await?);
            }
            Ok::<_, HandlerError>(replies)
        })));
        let Some(result) = shared.killed.run_until_cancelled(run).await else {
            return;
        };
        match result {
            Ok(Ok(replies)) => {
                lock(&shared.dedup).complete(key);
                Counters::bump(&shared.counters.handled);
                // A message that asked for a reply always gets one: an empty body if the
                // handler returned none, so a request never just times out.
                if let Some(addr) = reply_to {
                    for reply in replies {
                        answer(&shared, &peer, id, &addr, reply.unwrap_or_default()).await;
                    }
                }
                if acked {
                    // The peer's current connection: the one the message came on may have
                    // been replaced while the handler ran (a retry there waits for this ack).
                    current(&shared, &peer).push_ack(key);
                }
            }
            Ok(Err(err)) => {
                Counters::bump(&shared.counters.handler_errors);
                fail(&shared, &peer, key, acked, &err).await;
            }
            Err(()) => {
                Counters::bump(&shared.counters.handler_errors);
                let err = HandlerError::permanent("handler panicked");
                fail(&shared, &peer, key, acked, &err).await;
            }
        }
    };
    // Admission and shutdown exclude each other: either this handler is tracked before
    // shutdown starts waiting for handlers, or it sees the node stopping and is refused.
    let admission = lock(&shared.admission);
    if shared.is_stopping() {
        drop(admission);
        lock(&shared.dedup).forget(key);
        if acked {
            let reason = format!("{} is shutting down", shared.id);
            nack(peer, key, true, reason).await;
        }
        return;
    }
    let task = shared.handler_tasks.track_future(task);
    drop(admission);
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

/// Sends a handler's reply to where the message asked: straight back to a synchronous
/// request, or as a reliable message to an asynchronous reply channel.
async fn answer(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    request: MessageId,
    addr: &shoal_proto::ReturnAddress,
    body: bytes::Bytes,
) {
    if addr.channel.is_empty() {
        reply_directly(shared, peer, request, addr.clone(), body).await;
    } else {
        send_reply(shared, request, addr.clone(), body);
        // Let the reply's first attempt queue its frame before the ack, so both go out in
        // one write.
        tokio::task::yield_now().await;
    }
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
/// it, QUIC delivers the stream reliably, and if the connection is gone the call ends with
/// `Error::Timeout` (the request was handled; its reply was lost with the connection).
async fn reply_directly(
    shared: &Shared,
    peer: &Arc<Peer>,
    request: MessageId,
    addr: shoal_proto::ReturnAddress,
    body: bytes::Bytes,
) {
    let target = match addr.node {
        Some(node) if node != peer.node => shared.registry.get(node),
        _ => Some(Arc::clone(peer)),
    };
    let Some(target) = target else {
        tracing::debug!(%request, "requester is gone; reply dropped");
        return;
    };
    let mut reply = Message::reply_to_request(request, String::new(), body);
    reply.env.attempt = 1;
    match crate::outbound::encode_delivery(&mut reply, &shared.config.limits) {
        Ok(bytes) => {
            let limit = shared.config.retry.ack_timeout;
            target.push_or_close(Outgoing::Encoded(bytes), limit).await;
        }
        Err(e) => tracing::warn!(%request, "reply not sent: {e}"),
    }
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
