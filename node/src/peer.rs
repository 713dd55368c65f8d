//! One live peer: its QUIC connection, the task that writes frames to it, and the messages
//! waiting for its acknowledgement.
//!
//! Each side of a connection writes on one long-lived unidirectional stream. The writer task
//! drains everything queued before each write, so under load many frames (and all pending acks,
//! coalesced into one [`Frame::Ack`]) go out in one write, while an idle connection writes a
//! lone frame at once: batching without added latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shoal_proto::codec::EventFrame;
use shoal_proto::{Ack, Frame, Goodbye, Limits, MessageId, NodeId, Subscription, codec};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::sync::lock;

/// How a delivery attempt ended, as seen by the sender.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The receiver's handler finished.
    Acked,
    /// The receiver refused or failed the message.
    Nacked { retryable: bool, reason: String },
    /// The connection ended before an answer came.
    Lost(String),
}

/// What the writer task is asked to write.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// An already encoded frame (deliveries are encoded by the sender, once).
    Encoded(Bytes),
    /// One group's copy of a published event, sharing its encoded body with the other copies.
    Event(EventFrame),
    /// A frame to encode.
    Frame(Frame),
    /// Write a goodbye, flush, finish the stream and stop.
    Close(String),
}

/// Largest batch gathered before a write, and most acks in one frame.
const MAX_BATCH_BYTES: usize = 256 * 1024;
const MAX_ACKS_PER_FRAME: usize = 4096;
const MAX_ACKS_PER_BATCH: usize = 16 * MAX_ACKS_PER_FRAME;

/// Most subscriptions one peer may announce.
pub(crate) const MAX_PEER_SUBSCRIPTIONS: usize = 10_000;

/// A connected, handshaken peer.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) node: NodeId,
    pub(crate) service: String,
    pub(crate) addr: SocketAddr,
    pub(crate) listen_addrs: Vec<SocketAddr>,
    pub(crate) conn: quinn::Connection,
    /// Which node dialled this connection: decides which of two duplicate connections survives.
    pub(crate) dialer: NodeId,
    out: mpsc::Sender<Outgoing>,
    /// Acks travel apart from the frame queue so a handler never waits to ack, and the writer
    /// drains them all before a goodbye. An honest peer never has more unread acks than its
    /// in-flight window; the cap is a multiple of ours, and a peer past it is not reading.
    acks: mpsc::Sender<MessageId>,
    /// Waiting senders by message id; `None` once the connection is gone, so a late
    /// registration fails at once instead of waiting for its ack timeout.
    in_flight: Mutex<Option<HashMap<MessageId, oneshot::Sender<Outcome>>>>,
    /// One permit per message in flight to this peer: the bound on unacknowledged messages.
    pub(crate) permits: Arc<Semaphore>,
    /// Handlers running for this peer's deliveries. Per peer, so a peer that keeps handlers
    /// busy slows only its own stream, never the reading of other peers' acks and frames.
    pub(crate) handler_permits: Arc<Semaphore>,
    max_in_flight: usize,
    pings: Mutex<HashMap<u64, (Instant, oneshot::Sender<Duration>)>>,
    /// Set when the peer said goodbye or lost a duplicate-connection race: send nothing new.
    leaving: AtomicBool,
    /// The topic patterns the peer subscribed to, with their groups (see [`crate::subscribe`]).
    subscriptions: Mutex<Vec<Subscription>>,
    writer_done: Mutex<Option<oneshot::Receiver<()>>>,
}

/// What [`Peer::new`] needs besides the connection.
pub(crate) struct PeerParams {
    pub(crate) node: NodeId,
    pub(crate) service: String,
    pub(crate) listen_addrs: Vec<SocketAddr>,
    pub(crate) dialer: NodeId,
    pub(crate) max_in_flight: usize,
    pub(crate) max_handlers: usize,
    pub(crate) queue_len: usize,
    pub(crate) limits: Limits,
}

impl Peer {
    /// Wraps an established connection and starts its writer task on `send`.
    pub(crate) fn new(
        conn: quinn::Connection,
        send: quinn::SendStream,
        p: PeerParams,
    ) -> Arc<Self> {
        let (out, rx) = mpsc::channel(p.queue_len);
        let (acks, ack_rx) = mpsc::channel(4 * p.max_in_flight.max(1024));
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(write_loop(send, rx, ack_rx, p.limits, done_tx));
        Arc::new(Self {
            node: p.node,
            service: p.service,
            addr: conn.remote_address(),
            listen_addrs: p.listen_addrs,
            conn,
            dialer: p.dialer,
            out,
            acks,
            in_flight: Mutex::new(Some(HashMap::new())),
            permits: Arc::new(Semaphore::new(p.max_in_flight)),
            handler_permits: Arc::new(Semaphore::new(p.max_handlers)),
            max_in_flight: p.max_in_flight,
            pings: Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
            subscriptions: Mutex::new(Vec::new()),
            writer_done: Mutex::new(Some(done_rx)),
        })
    }

    /// Messages sent and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_leaving(&self) {
        self.leaving.store(true, Ordering::Relaxed);
    }

    /// The peer's subscriptions, as it announced them.
    pub(crate) fn subscriptions(&self) -> Vec<Subscription> {
        lock(&self.subscriptions).clone()
    }

    /// Calls `f` with the peer's subscriptions, without copying them.
    pub(crate) fn with_subscriptions<R>(&self, f: impl FnOnce(&[Subscription]) -> R) -> R {
        f(&lock(&self.subscriptions))
    }

    /// The peer announced a subscription. Refused (`Err`) past [`MAX_PEER_SUBSCRIPTIONS`], so a
    /// peer cannot grow this node's memory without bound; `Ok(false)` if it was known already.
    pub(crate) fn subscribe(&self, sub: Subscription) -> Result<bool, String> {
        let mut subs = lock(&self.subscriptions);
        if subs.contains(&sub) {
            return Ok(false);
        }
        if subs.len() >= MAX_PEER_SUBSCRIPTIONS {
            return Err(format!(
                "more than {MAX_PEER_SUBSCRIPTIONS} subscriptions from one peer"
            ));
        }
        subs.push(sub);
        Ok(true)
    }

    /// The peer withdrew a subscription; says whether it had it.
    pub(crate) fn unsubscribe(&self, sub: &Subscription) -> bool {
        let mut subs = lock(&self.subscriptions);
        let before = subs.len();
        subs.retain(|s| s != sub);
        subs.len() != before
    }

    /// Queues something for the writer without waiting; gives it back if the queue is full.
    pub(crate) fn try_push(&self, item: Outgoing) -> Result<(), Outgoing> {
        self.out.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => item,
        })
    }

    /// Registers interest in the answer to message `id`; replaces an earlier registration
    /// (a retry to the same peer).
    pub(crate) fn expect_answer(&self, id: MessageId) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        match lock(&self.in_flight).as_mut() {
            Some(waiting) => {
                waiting.insert(id, tx);
            }
            None => {
                let _ = tx.send(Outcome::Lost("connection closed".into()));
            }
        }
        rx
    }

    /// Stops waiting for `id` (its ack timed out).
    pub(crate) fn forget_answer(&self, id: MessageId) {
        if let Some(waiting) = lock(&self.in_flight).as_mut() {
            waiting.remove(&id);
        }
    }

    /// Hands an answer from the peer to whoever waits for it; unknown ids are ignored (a late
    /// ack after a timeout, or a duplicate ack).
    pub(crate) fn answer(&self, id: MessageId, outcome: Outcome) {
        let waiting = lock(&self.in_flight).as_mut().and_then(|w| w.remove(&id));
        if let Some(tx) = waiting {
            let _ = tx.send(outcome);
        }
    }

    /// Fails every message waiting on this peer: the connection is gone.
    pub(crate) fn fail_all(&self, reason: &str) {
        let waiting = lock(&self.in_flight).take().unwrap_or_default();
        for (_, tx) in waiting {
            let _ = tx.send(Outcome::Lost(reason.to_owned()));
        }
        lock(&self.pings).clear();
    }

    /// Queues something for the writer, waiting if the queue is full (backpressure).
    pub(crate) async fn push(&self, item: Outgoing) -> Result<(), String> {
        self.out
            .send(item)
            .await
            .map_err(|_| "connection writer stopped".to_owned())
    }

    /// Queues an ack without waiting; it is coalesced with other acks into one frame. A peer
    /// with more unread acks than the cap is not reading its stream: its connection is closed
    /// (its messages will be retried elsewhere).
    pub(crate) fn push_ack(&self, id: MessageId) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.acks.try_send(id) {
            self.conn
                .close(crate::net::CLOSE_PROTOCOL, b"too many unread acks");
        }
        // A closed channel means the connection is gone: the sender will retry.
    }

    /// Queues a frame from a handler task, which must not wait forever on a peer that stopped
    /// reading (it would hold a handler slot): after `limit` the connection is closed.
    pub(crate) async fn push_or_close(&self, item: Outgoing, limit: Duration) {
        if tokio::time::timeout(limit, self.push(item)).await.is_err() {
            self.conn.close(
                crate::net::CLOSE_PROTOCOL,
                b"peer is not reading its stream",
            );
        }
    }

    /// Sends a ping and waits for its pong, at most `limit`; the pending entry is removed
    /// whatever happens.
    pub(crate) async fn ping(&self, limit: Duration) -> Result<Duration, String> {
        let nonce = rand::random();
        let (tx, rx) = oneshot::channel();
        lock(&self.pings).insert(nonce, (Instant::now(), tx));
        let result = tokio::time::timeout(limit, async {
            self.push(Outgoing::Frame(Frame::Ping(nonce))).await?;
            rx.await.map_err(|_| "connection closed".to_owned())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no pong within {limit:?}")));
        lock(&self.pings).remove(&nonce);
        result
    }

    /// A pong arrived.
    pub(crate) fn pong(&self, nonce: u64) {
        if let Some((sent, tx)) = lock(&self.pings).remove(&nonce) {
            let _ = tx.send(sent.elapsed());
        }
    }

    /// Writes a goodbye after everything queued, finishes the stream, and waits (bounded)
    /// until the peer has read it and closed the connection, so queued acks are not lost.
    pub(crate) async fn close_gracefully(&self, reason: &str, wait: Duration) {
        self.mark_leaving();
        let _ = tokio::time::timeout(wait, self.push(Outgoing::Close(reason.to_owned()))).await;
        let done = lock(&self.writer_done).take();
        if let Some(done) = done {
            let _ = tokio::time::timeout(wait, done).await;
        }
        // The peer closes the connection once it has read our goodbye, and so every ack
        // before it. Closing first could discard acks it has received but not yet read.
        let _ = tokio::time::timeout(wait, self.conn.closed()).await;
    }
}

async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
    mut ack_rx: mpsc::Receiver<MessageId>,
    limits: Limits,
    done: oneshot::Sender<()>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    let mut closing = None;
    loop {
        let first = tokio::select! {
            biased;
            Some(id) = ack_rx.recv() => {
                acks.push(id);
                rx.try_recv().ok()
            }
            item = rx.recv() => match item {
                Some(item) => Some(item),
                None => break,
            },
        };
        let mut item = first;
        while let Some(next) = item.take() {
            match next {
                Outgoing::Encoded(bytes) => buf.extend_from_slice(&bytes),
                Outgoing::Event(frame) => frame.write_to(&mut buf),
                Outgoing::Frame(frame) => encode_into(&frame, &limits, &mut buf),
                Outgoing::Close(reason) => {
                    closing = Some(reason);
                    break;
                }
            }
            if buf.len() < MAX_BATCH_BYTES {
                item = rx.try_recv().ok();
            }
        }
        // Every ack queued so far goes out in this write (before a goodbye, if closing).
        while acks.len() < MAX_ACKS_PER_BATCH {
            match ack_rx.try_recv() {
                Ok(id) => acks.push(id),
                Err(_) => break,
            }
        }
        for chunk in acks.chunks(MAX_ACKS_PER_FRAME) {
            encode_into(
                &Frame::Ack(Ack {
                    ids: chunk.to_vec(),
                }),
                &limits,
                &mut buf,
            );
        }
        acks.clear();
        if let Some(reason) = &closing {
            encode_into(
                &Frame::Goodbye(Goodbye {
                    reason: reason.clone(),
                }),
                &limits,
                &mut buf,
            );
        }
        if send.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
        if closing.is_some() {
            let _ = send.finish();
            // Wait until the peer has the data (bounded by the caller's timeout on `done`).
            let _ = send.stopped().await;
            break;
        }
    }
    let _ = done.send(());
}

fn encode_into(frame: &Frame, limits: &Limits, buf: &mut BytesMut) {
    // Frames built by the node itself (acks, pings, goodbyes) are far below every limit.
    if let Err(e) = codec::encode(frame, limits, buf) {
        tracing::error!("could not encode a control frame: {e}");
    }
}
