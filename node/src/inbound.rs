//! Receiving: read frames from a peer, check them against the dedup window and the
//! subscriptions, and hand what is new to [`crate::handling`].

use std::sync::Arc;

use bytes::BytesMut;
use shoal_proto::{DecodeError, Envelope, Frame, MessageId, MessageKind, codec};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::core::dedup::Seen;
use crate::handling::{Work, answer_retried_request, nack, run};
use crate::node::Shared;
use crate::peer::{Outcome, Outgoing, Peer};
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
        Frame::PublishBatch(batch) => on_publish_batch(shared, peer, *batch).await,
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
    match admit(shared, env.id, true) {
        Seen::New => {}
        Seen::InProgress => return,
        Seen::Done => return answer_retried_request(shared, peer, &env).await,
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
        items: vec![(None, env)],
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
            items: vec![(None, env)],
        },
    )
    .await;
}

/// A batch of events for one group: handled in order, acked once.
async fn on_publish_batch(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    batch: shoal_proto::PublishBatch,
) {
    let shoal_proto::PublishBatch {
        id,
        envelopes,
        reliable,
        group,
    } = batch;
    let key = id.delivery_key(group.as_deref());
    let refuse = |retryable, reason: String| async move {
        if reliable {
            nack(peer, key, retryable, reason).await;
        }
    };
    if shared.is_stopping() {
        return refuse(true, format!("{} is shutting down", shared.id)).await;
    }
    let topic = match envelopes.first() {
        Some(first) if envelopes.iter().all(|e| e.name == first.name) => first.name.clone(),
        Some(_) => {
            Counters::bump(&shared.counters.malformed_frames);
            return refuse(false, "the events of a batch must share one topic".into()).await;
        }
        None => {
            if reliable {
                peer.push_ack(key);
            }
            return;
        }
    };
    if !is_new(shared, peer, key, reliable) {
        return;
    }
    let handlers = crate::sync::read(&shared.subscriptions).handlers_for(group.as_deref(), &topic);
    if handlers.is_empty() {
        lock(&shared.dedup).forget(key);
        Counters::bump(&shared.counters.unhandled);
        let name = group.as_deref().unwrap_or("(ungrouped)");
        return refuse(
            true,
            format!("no subscription of group {name} for `{topic}` here"),
        )
        .await;
    }
    // Each event of a reliable batch is tracked on its own (a retried batch skips what was
    // handled); a batch that would push most of the window out is refused.
    if reliable && envelopes.len() > shared.config.dedup_capacity / 2 {
        lock(&shared.dedup).forget(key);
        let reason = format!(
            "a batch of {} events is larger than half this node's dedup window ({})",
            envelopes.len(),
            shared.config.dedup_capacity
        );
        return refuse(false, reason).await;
    }
    let items = envelopes
        .into_iter()
        .map(|e| (reliable.then(|| e.id.delivery_key(group.as_deref())), e))
        .collect();
    let work = Work {
        key,
        acked: reliable,
        handlers,
        items,
    };
    run(shared, peer, work).await;
}

/// Checks the dedup window: `true` for a first delivery. A copy of a message already handled
/// is acked again; a copy of one being handled now waits for that handler's ack. Copies that
/// are not acknowledged (`acked` false, best-effort) are not tracked.
fn is_new(shared: &Shared, peer: &Peer, key: MessageId, acked: bool) -> bool {
    match admit(shared, key, acked) {
        Seen::New => true,
        Seen::Done => {
            peer.push_ack(key);
            false
        }
        Seen::InProgress => false,
    }
}

/// Checks `key` against the dedup window and counts a duplicate. A running handler acks its
/// duplicates when it finishes; one already done must be acked again by the caller.
fn admit(shared: &Shared, key: MessageId, acked: bool) -> Seen {
    // Unacknowledged (best-effort) copies are never retried: they need no dedup entry, and
    // must not crowd reliable ids out of the window.
    if !acked {
        return Seen::New;
    }
    let seen = lock(&shared.dedup).check(key, Instant::now().into_std());
    if seen != Seen::New {
        Counters::bump(&shared.counters.duplicates);
    }
    seen
}
