//! One connection's IO: a reader that decodes frames and hands them to the engine, a writer
//! that writes what the engine has for the connection, and the close codes.
//!
//! Each side of a connection writes on one long-lived unidirectional stream. On a quiet
//! connection (the engine says so: nothing written on it for a few microseconds) the task
//! that queued a message or an ack writes it itself, at once, without a hop to another task;
//! the peer's handler and the caller's reply are one task switch nearer. On a busy one the
//! connection's writer task takes everything queued in one go when its turn comes, after the
//! tasks ready now, so under load many messages and all pending acks leave in one write:
//! batching without added latency. (A current-thread runtime runs a woken task after the
//! tasks queued already; on a multi-thread runtime, which runs the task woken last first,
//! the writer yields once to get there: [`Driver::yield_before_write`].)
//!
//! An idle connection holds at most a small buffer of its own. The writer hands each write's
//! bytes to QUIC as they are (no copy), built in a buffer it reuses for the next write once
//! QUIC has let go of them, unless the write was larger than [`KEEP_ARENA`]; the reader takes
//! the chunks QUIC has received and keeps only the part of a frame still incomplete. A mesh
//! node holds hundreds of connections, most of them quiet, so per-connection buffers sized
//! for bursts would be most of its memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::engine::{CloseReason, ConnId};
use crate::identity::CertificateInfo;
use crate::runtime::Driver;
use crate::sync::lock;
use frames::Frames;

mod frames;

/// Most bytes gathered for one write.
const MAX_WRITE: usize = 256 * 1024;

/// The largest write buffer a connection keeps for its next write ([`Outgoing::arena`]):
/// after a larger write, the next allocates a buffer of its own again.
const KEEP_ARENA: usize = 4 * 1024;

/// Most chunks taken from QUIC in one read (a chunk is at most a packet's worth under load):
/// what arrived together goes to the engine together.
const READ_CHUNKS: usize = 32;

/// Application close codes, visible to the peer with a reason text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum CloseCode {
    /// A graceful shutdown, or the end of a connection after the peer's goodbye.
    Shutdown = 0,
    /// The peer broke the protocol.
    Protocol = 1,
    /// Another connection to the same node won.
    Duplicate = 2,
    /// The node stopped at once.
    Killed = 3,
    /// The peer did not read what was written to it.
    NotReading = 4,
    /// The peer's certificate was revoked.
    Revoked = 5,
    /// The peer's certificate expired while it was connected.
    Expired = 6,
}

impl CloseCode {
    /// The code for a close the engine asked for.
    pub(crate) fn of(reason: &CloseReason) -> Self {
        match reason {
            CloseReason::Shutdown => Self::Shutdown,
            CloseReason::Protocol(_) => Self::Protocol,
            CloseReason::Duplicate => Self::Duplicate,
            CloseReason::NotReading => Self::NotReading,
        }
    }

    /// Whether `error` is the peer closing the connection with this code.
    pub(crate) fn closed_by_peer(self, error: &quinn::ConnectionError) -> bool {
        matches!(error, quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from(self))
    }
}

impl From<CloseCode> for quinn::VarInt {
    fn from(code: CloseCode) -> Self {
        Self::from_u32(code as u32)
    }
}

/// The IO side of one admitted connection.
#[derive(Debug)]
pub(crate) struct ConnIo {
    pub(crate) conn: quinn::Connection,
    /// What the peer's certificate says, parsed once at the handshake: revocation and expiry
    /// are checked against it for every live connection whenever something changes
    /// (`cert_lifecycle`), so parsing it there each time would cost every change one parse
    /// per peer.
    pub(crate) peer_certificate: CertificateInfo,
    /// The stream this side writes on, with what QUIC has not taken yet.
    out: std::sync::Mutex<Outgoing>,
    writer: Notify,
    resume: Notify,
    paused: AtomicBool,
    /// A close the engine asked for after what is queued is written.
    close_after_flush: std::sync::Mutex<Option<CloseReason>>,
}

/// The writing half: whoever holds it (the writer task, or a task that queued something on an
/// idle connection) takes what the engine has queued and hands it to QUIC.
#[derive(Debug)]
struct Outgoing {
    /// Taken by the writer to finish it.
    stream: Option<quinn::SendStream>,
    /// Bytes taken from the engine that QUIC has not taken yet (its flow control blocked):
    /// they go before anything else.
    pending: Bytes,
    /// Where each write is built. The write is split off and handed to QUIC, which keeps it
    /// until the peer acknowledges it; once QUIC has let go of every earlier write, the next
    /// is built in the same allocation. One request after another then allocates nothing to
    /// write (a buffer of its own for each write cost an allocation for it and another to
    /// share it).
    arena: BytesMut,
    /// The engine's goodbye was taken: the writer finishes the stream once it is written.
    finish: bool,
    /// Writing failed: the connection is going away.
    failed: bool,
}

impl ConnIo {
    pub(crate) fn new(
        conn: quinn::Connection,
        peer_certificate: CertificateInfo,
        send: quinn::SendStream,
    ) -> Arc<Self> {
        Arc::new(Self {
            conn,
            peer_certificate,
            out: std::sync::Mutex::new(Outgoing {
                stream: Some(send),
                pending: Bytes::new(),
                arena: BytesMut::new(),
                finish: false,
                failed: false,
            }),
            writer: Notify::new(),
            resume: Notify::new(),
            paused: AtomicBool::new(false),
            close_after_flush: std::sync::Mutex::new(None),
        })
    }

    /// The engine has something for this connection to write.
    pub(crate) fn wake_writer(&self) {
        self.writer.notify_one();
    }

    /// The engine has something for this idle connection: written here and now, in the task
    /// that queued it, rather than in the writer's next turn. Left to the writer when it (or
    /// another task) is writing already, when QUIC blocks, and for the stream's end.
    pub(crate) fn write_now(&self, driver: &Arc<Driver>, conn: ConnId) {
        let Ok(mut out) = self.out.try_lock() else {
            // The holder takes what is queued before it lets go; the writer's next turn
            // covers the moment it is letting go.
            return self.wake_writer();
        };
        if !out.pending.is_empty() || out.finish || out.failed {
            drop(out);
            return self.wake_writer();
        }
        let mut cx = Context::from_waker(Waker::noop());
        let done = flush(&mut out, driver, conn, &mut cx).is_ready();
        // Blocked: the writer polls again with a waker of its own.
        if !done || out.finish || out.failed {
            drop(out);
            self.wake_writer();
        }
    }

    /// Stops or resumes reading (the peer's handlers are all busy). Called under the driver's
    /// lock, in the engine's order (`runtime::State::take_effects`); a resume wakes the reader.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if !paused {
            self.resume.notify_one();
        }
    }

    /// Closes the connection, at once or after writing what is queued.
    pub(crate) fn close(&self, reason: &CloseReason, flush: bool) {
        if flush {
            *lock(&self.close_after_flush) = Some(reason.clone());
            self.wake_writer();
        } else {
            self.conn
                .close(CloseCode::of(reason).into(), reason.to_string().as_bytes());
        }
    }

    /// Resolves when the connection is closed, whoever closed it.
    pub(crate) async fn closed(&self) {
        self.conn.closed().await;
    }
}

/// Runs a connection until it ends, then tells the engine. Spawns its writer.
pub(crate) async fn run(
    driver: Arc<Driver>,
    conn: ConnId,
    io: Arc<ConnIo>,
    recv: quinn::RecvStream,
    buf: BytesMut,
) {
    let writer = {
        let (driver, io) = (Arc::clone(&driver), Arc::clone(&io));
        tokio::spawn(async move { write_loop(&driver, conn, &io).await })
    };
    let ended = tokio::select! {
        // Frames already received (acks above all) are handed over before a close is acted on.
        biased;
        ended = read_loop(&driver, conn, &io, recv, buf) => Some(ended),
        _ = io.conn.closed() => None,
    };
    // A connection that lost a duplicate race was never the peer's lasting one. Read before
    // our own close below, which would overwrite the reason.
    let duplicate = io
        .conn
        .close_reason()
        .is_some_and(|e| CloseCode::Duplicate.closed_by_peer(&e));
    // Whatever ended the read loop (a protocol error, the peer finishing its stream after a
    // goodbye), the connection is of no further use.
    if let Some(ended) = &ended {
        let code = match ended {
            ReadEnd::Protocol(_) => CloseCode::Protocol,
            _ => CloseCode::Shutdown,
        };
        io.conn.close(code.into(), ended.to_string().as_bytes());
    }
    let error = io.conn.closed().await;
    writer.abort();
    let duplicate = duplicate || CloseCode::Duplicate.closed_by_peer(&error);
    let reason = ended.map_or_else(|| error.to_string(), |e| e.to_string());
    driver.call(|engine, now| engine.connection_lost(conn, &reason, duplicate, now));
    driver.detach(conn);
}

/// Why a read loop ended.
#[derive(Debug)]
enum ReadEnd {
    /// The peer finished its stream (after its goodbye).
    Finished,
    /// The peer broke the protocol.
    Protocol(String),
    /// Reading failed.
    Failed(String),
}

impl std::fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Finished => f.write_str("peer closed its stream"),
            Self::Protocol(reason) => write!(f, "protocol error: {reason}"),
            Self::Failed(reason) => write!(f, "read failed: {reason}"),
        }
    }
}

/// Reads frames until the stream ends or breaks the protocol: every frame that arrived in one
/// read goes to the engine in one call. `rest` is what the handshake read past the hello.
async fn read_loop(
    driver: &Arc<Driver>,
    conn: ConnId,
    io: &ConnIo,
    mut recv: quinn::RecvStream,
    rest: BytesMut,
) -> ReadEnd {
    let limits = driver.config.limits.clone();
    let mut frames = Vec::new();
    let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
    // Test kit (feature `testing`): a node a `TestMesh` built passes what it reads through
    // the mesh's fault plan before the engine sees it. `None` for every other node: one
    // branch per read.
    #[cfg(feature = "testing")]
    let mut faults = crate::testing::ConnFaults::attach(driver, conn);
    let mut incoming = Frames::default();
    let mut fatal = incoming.take(rest.freeze(), &limits, &mut frames);
    loop {
        // The fault plan takes the frames it has faults for (and hands them to the engine
        // itself: dropped, duplicated, held back); what it leaves goes on as usual.
        #[cfg(feature = "testing")]
        if let Some(faults) = &mut faults {
            faults.deliver(driver, conn, &mut frames);
        }
        if !frames.is_empty() {
            driver.call(|engine, now| {
                for frame in frames.drain(..) {
                    match frame {
                        Ok(frame) => engine.handle_frame(conn, frame, now),
                        Err(e) => engine.malformed(conn, &e),
                    }
                }
            });
        }
        if let Some(reason) = fatal {
            return ReadEnd::Protocol(reason);
        }
        while io.paused.load(Ordering::Acquire) {
            io.resume.notified().await;
        }
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                fatal = chunks[..n]
                    .iter_mut()
                    .find_map(|chunk| incoming.take(std::mem::take(chunk), &limits, &mut frames));
            }
            Ok(None) => return ReadEnd::Finished,
            Err(e) => return ReadEnd::Failed(e.to_string()),
        }
    }
}

/// Writes what the engine has for the connection whenever it has something (and a task that
/// queued it could not: [`ConnIo::write_now`]), finishes the stream after the goodbye, and
/// closes the connection when the engine asked for that after the last write.
async fn write_loop(driver: &Arc<Driver>, conn: ConnId, io: &ConnIo) {
    loop {
        // Flushed, under one lock: whether writing failed, and the stream if it is to finish.
        let (failed, finish) = std::future::poll_fn(|cx| {
            let mut out = lock(&io.out);
            std::task::ready!(flush(&mut out, driver, conn, cx));
            let finish = if out.finish { out.stream.take() } else { None };
            Poll::Ready((out.failed, finish))
        })
        .await;
        if failed {
            return;
        }
        if let Some(mut stream) = finish {
            let _ = stream.finish();
            // Wait until the peer has the data (bounded by the connection's end).
            let _ = stream.stopped().await;
            return;
        }
        if let Some(reason) = lock(&io.close_after_flush).take() {
            io.conn
                .close(CloseCode::of(&reason).into(), reason.to_string().as_bytes());
            return;
        }
        io.writer.notified().await;
        if driver.yield_before_write {
            // Woken by a task on a busy connection: the tasks ready now (callers queuing more,
            // handlers finishing) run first, and their messages leave in this write.
            tokio::task::yield_now().await;
        }
    }
}

/// Hands QUIC what is pending and then what the engine has queued, until the engine says
/// that was all (ready), the goodbye was taken or writing failed (ready, flagged in `out`),
/// or QUIC blocks (pending: `cx` is woken when it can take more).
fn flush(out: &mut Outgoing, driver: &Arc<Driver>, conn: ConnId, cx: &mut Context<'_>) -> Poll<()> {
    // Whether the engine may have more to write: not asked yet, or it said so. Once what it
    // gave is written and it said that was all, asking again would only lock it for nothing
    // (a task that queues something meanwhile, on another thread, wakes the writer).
    let mut more = true;
    loop {
        while !out.pending.is_empty() {
            let Some(stream) = out.stream.as_mut() else {
                out.failed = true;
                break;
            };
            // QUIC keeps these bytes until the peer acknowledges them (no copy); it takes
            // what fits and leaves the rest in `pending`.
            let polled = {
                let write = stream.write_chunks(std::slice::from_mut(&mut out.pending));
                std::pin::pin!(write).poll(cx)
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    out.failed = true;
                    out.pending = Bytes::new();
                }
            }
        }
        if out.finish || out.failed || !more {
            return Poll::Ready(());
        }
        // The engine reserves room for what is queued.
        let written =
            driver.call(|engine, now| engine.poll_transmit(conn, &mut out.arena, MAX_WRITE, now));
        if !out.arena.is_empty() {
            out.pending = out.arena.split().freeze();
            // A small write's buffer is kept for the next; a large one's is not, so an idle
            // connection does not hold a burst's allocation.
            if out.pending.len() + out.arena.capacity() > KEEP_ARENA {
                out.arena = BytesMut::new();
            }
        }
        out.finish = written.finish;
        more = written.more;
    }
}
