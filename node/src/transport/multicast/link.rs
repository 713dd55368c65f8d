//! [`GroupLink`]: the task that owns a [`GroupSocket`], reads the group's datagrams into a
//! bounded channel and sends the datagrams handed to it: all that waits at once, in as few
//! system calls as the kernel allows ([`GroupSocket::send_batch`]).
//!
//! The reader never waits for the consumer: when the inbound channel is full the datagram is
//! dropped and counted ([`LinkStats::dropped_full`]), as the network would drop it; the
//! protocol above finds the gap and asks for a repair. Send errors (a full socket buffer, the
//! interface going down) are counted and logged, never fatal: the same repair path covers them.
//!
//! The task ends when [`GroupLink::shutdown`] is called (after sending what was already handed
//! to it), when the [`GroupLink`] is dropped, or when the inbound channel's receiver is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::GroupSocket;
use super::socket::RecvBuffers;

/// The most datagrams taken from the queue for one [`GroupSocket::send_batch`].
const SEND_BATCH: usize = 64;

/// A datagram received from the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inbound {
    /// Who sent it (an address on the LAN).
    pub(crate) from: SocketAddr,
    /// Its bytes, whole.
    pub(crate) datagram: Bytes,
}

/// What a [`GroupLink`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LinkStats {
    /// Datagrams received from the group and passed on.
    pub(crate) received: u64,
    /// Datagrams received but dropped because the inbound channel was full.
    pub(crate) dropped_full: u64,
    /// Reads that failed (the socket reported an error).
    pub(crate) receive_errors: u64,
    /// Datagrams sent to the group.
    pub(crate) sent: u64,
    /// Datagrams that could not be sent (counted, not retried).
    pub(crate) send_errors: u64,
}

/// The counters behind [`LinkStats`], shared by the task and its handle.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    dropped_full: AtomicU64,
    receive_errors: AtomicU64,
    sent: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LinkStats {
        LinkStats {
            received: self.received.load(Ordering::Relaxed),
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            receive_errors: self.receive_errors.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

/// The handle of a running group task (see the [module docs](self)). Dropping it stops the
/// task without waiting; [`GroupLink::shutdown`] sends what is queued and waits.
#[derive(Debug)]
pub(crate) struct GroupLink {
    outbound: mpsc::Sender<Bytes>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl GroupLink {
    /// Starts the task on the current tokio runtime. Received datagrams go to `inbound`;
    /// up to `outbound_capacity` datagrams (at least 1) wait to be sent; `idle` is notified
    /// each time the task has sent every datagram it was handed.
    pub(crate) fn spawn(
        socket: GroupSocket,
        inbound: mpsc::Sender<Inbound>,
        outbound_capacity: usize,
        idle: Arc<Notify>,
    ) -> Self {
        let (outbound, queue) = mpsc::channel(outbound_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let task = Task {
            socket,
            inbound,
            queue,
            idle,
            counters: Arc::clone(&counters),
            cancel: cancel.clone(),
        };
        Self {
            outbound,
            counters,
            cancel,
            task: Some(tokio::spawn(task.run())),
        }
    }

    /// Queues `datagram` for the group, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// The datagram back if the task has ended.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the driver uses try_send; the tests wait")
    )]
    pub(crate) async fn send(&self, datagram: Bytes) -> Result<(), SendError<Bytes>> {
        self.outbound.send(datagram).await
    }

    /// Queues `datagram` for the group without waiting (for callers holding a lock).
    ///
    /// # Errors
    ///
    /// The datagram back if the queue is full or the task has ended.
    pub(crate) fn try_send(&self, datagram: Bytes) -> Result<(), TrySendError<Bytes>> {
        self.outbound.try_send(datagram)
    }

    /// What the task did so far.
    pub(crate) fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }

    /// Stops the task: sends the datagrams already queued, then closes the socket. Returns
    /// the final counts.
    pub(crate) async fn shutdown(mut self) -> LinkStats {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "multicast: the group task failed");
        }
        self.counters.snapshot()
    }
}

impl Drop for GroupLink {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The task's side: the socket and both channels.
struct Task {
    socket: GroupSocket,
    inbound: mpsc::Sender<Inbound>,
    queue: mpsc::Receiver<Bytes>,
    idle: Arc<Notify>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

impl Task {
    async fn run(mut self) {
        let mut buffers = RecvBuffers::new();
        let mut batch: Vec<Bytes> = Vec::with_capacity(SEND_BATCH);
        let mut scratch = Vec::new();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                next = self.queue.recv() => match next {
                    Some(datagram) => {
                        batch.push(datagram);
                        while batch.len() < SEND_BATCH
                            && let Ok(more) = self.queue.try_recv()
                        {
                            batch.push(more);
                        }
                        self.send(&mut batch, &mut scratch).await;
                        if self.queue.is_empty() {
                            self.idle.notify_one();
                        }
                    }
                    // Every sender is gone: only the handle holds one, so it was dropped.
                    None => return,
                },
                read = self.socket.recv_batch(&mut buffers, |from, datagram| {
                    pass_on(&self.inbound, &self.counters, from, datagram);
                }) => {
                    if let Err(e) = read {
                        Counters::bump(&self.counters.receive_errors);
                        tracing::debug!(error = %e, "multicast: group socket read failed");
                    }
                    if self.inbound.is_closed() {
                        tracing::debug!("multicast: inbound channel closed; group task ends");
                        return;
                    }
                },
            }
        }
        // Shut down: what was handed to us before goes out; nothing new is accepted.
        self.queue.close();
        while let Ok(datagram) = self.queue.try_recv() {
            batch.push(datagram);
        }
        self.send(&mut batch, &mut scratch).await;
    }

    /// Sends and empties `batch`.
    async fn send(&self, batch: &mut Vec<Bytes>, scratch: &mut Vec<u8>) {
        let done = self.socket.send_batch(batch, scratch).await;
        batch.clear();
        self.counters.sent.fetch_add(done.sent, Ordering::Relaxed);
        self.counters
            .send_errors
            .fetch_add(done.failed, Ordering::Relaxed);
    }
}

/// Hands a datagram on without waiting (a full channel drops and counts it).
fn pass_on(
    inbound: &mpsc::Sender<Inbound>,
    counters: &Counters,
    from: SocketAddr,
    datagram: &[u8],
) {
    let inbound_datagram = Inbound {
        from,
        datagram: Bytes::copy_from_slice(datagram),
    };
    match inbound.try_send(inbound_datagram) {
        Ok(()) => Counters::bump(&counters.received),
        Err(TrySendError::Full(_)) => Counters::bump(&counters.dropped_full),
        Err(TrySendError::Closed(_)) => {}
    }
}
