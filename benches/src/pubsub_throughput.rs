//! Sustained throughput at 64 B, 1 KiB and 64 KiB ([`PAYLOADS`]), publish/subscribe and
//! point-to-point, against raw quinn's batched throughput on one stream with the same
//! payload, all in the same run.
//!
//! Each row warms up, then counts messages over a window of `--duration` seconds
//! ([`Schedule`]); senders start nothing new after the window, every loop is also bounded
//! in count, and the whole row by `--run-timeout`. Same threads and runtimes as every
//! scenario ([`crate::runtime`]): receiver on one thread, sender on another.
//!
//! Scenario `quinn-batch`, rows `quinn-batch-<size>` — the floor of every throughput row:
//! one uni stream, mutual TLS; the client writes batches of about 64 KiB of frames (`u32`
//! length + payload) with one `write_all` each; the server parses the frames and counts them
//! as they arrive.
//!
//! Scenario `shoal-throughput`, per payload (`<size>` = payload bytes):
//! * `shoal-pubsub-<size>` — reliable `publish` to one subscriber node, [`RELIABLE_WINDOW`]
//!   publishes in flight (that many spawned tasks, each publishing and awaiting its receipt
//!   in a loop; tasks measured ~15 % faster than one `FuturesUnordered` of the loops);
//!   counts events **acked** (receipt resolved: the subscriber's handler ran) per second.
//! * `shoal-pubsub-batch-<size>` — reliable `publish_batch` of [`batch_events`] events,
//!   [`BATCH_WINDOW`] batches in flight; counts events acked per second.
//! * `shoal-pubsub-background-<size>` — reliable `Node::publish_background` (acked, retried
//!   and dead-lettered as a plain publish, but the call returns once the node holds the
//!   event; until stop 50 the row called `publish_with` with [`PublishOptions::background`],
//!   the same delivery through a future), one loop publishing as fast as it
//!   can, yielding every [`BEST_EFFORT_BATCH`] publishes, and waiting for room
//!   (`Node::wait_for_background_room`) whenever the node refuses one with `Error::Backlog`
//!   (it holds as many as it may; the event is not counted);
//!   counts events **handled** by the subscriber per second. Zenoh's and NATS's rows are
//!   of this kind: reliable transport, nothing awaited per message.
//! * `shoal-pubsub-best-effort-<size>` — best-effort `publish_with`, one loop publishing as
//!   fast as it can and yielding every [`BEST_EFFORT_BATCH`] publishes and on every drop;
//!   counts events **handled** by the subscriber per second; drops (whole run) in the
//!   `dropped` column.
//! * `shoal-p2p-<size>` and `shoal-p2p-request-<size>` — point-to-point: reliable `send` of
//!   a command (counted when acked: the receiver's handler ran) and `request` (counted when
//!   the reply, carrying the payload back, arrived), [`RELIABLE_WINDOW`] in flight; and
//!   `shoal-p2p-background-<size>`, `send_background` from one loop, counted when handled;
//!   see [`p2p`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shoal::{MeshCa, Message, Node, PublishOptions};

use crate::error::{BenchError, BenchResult};
use crate::pubsub::{TOPIC, serve_subscribers, start_publisher, start_subscribers};
use crate::quinn_echo::{self, closed_by_peer};
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::shoal_scenarios::shoal_err;
use crate::throughput::{Schedule, ThroughputReport, Window};
use crate::{BenchConfig, certs};

pub mod p2p;

/// Payload sizes measured (`--payload` does not apply here).
pub const PAYLOADS: [usize; 3] = [64, 1024, 65536];
/// Reliable publishes kept in flight (below the node's default of 1024 unacked per peer;
/// 256 gave the highest rates of 32, 64, 128, 256, 512 and 1000 on a 2-vCPU VM).
pub const RELIABLE_WINDOW: usize = 256;
/// Most events per `publish_batch` in the batch rows (see [`batch_events`]).
pub const BATCH_EVENTS: usize = 256;
/// Most payload bytes per `publish_batch`: a batch is one frame, and frames are limited
/// (4 MiB by default).
pub const BATCH_BYTES: usize = 1024 * 1024;
/// Batches kept in flight in the batch rows.
pub const BATCH_WINDOW: usize = 8;
/// Best-effort publishes between two yields to the runtime.
pub const BEST_EFFORT_BATCH: u64 = 64;
/// Bytes per raw quinn `write_all` (rounded down to whole frames, at least one).
pub const QUINN_BATCH_BYTES: usize = 64 * 1024;
/// Upper bound on the messages any one sending loop sends.
const MAX_MESSAGES: u64 = 1_000_000_000;
/// Scenario name of the raw quinn rows.
pub const QUINN_SCENARIO: &str = "quinn-batch";
/// Scenario name of Shoal's throughput rows.
pub const SHOAL_SCENARIO: &str = "shoal-throughput";

/// Name of the raw quinn row for `payload`.
pub fn quinn_name(payload: usize) -> String {
    format!("quinn-batch-{payload}")
}

/// Events per `publish_batch` for `payload`: [`BATCH_EVENTS`], fewer for large payloads so
/// a batch stays within [`BATCH_BYTES`] (16 at 64 KiB).
pub fn batch_events(payload: usize) -> usize {
    (BATCH_BYTES / payload.max(1)).clamp(1, BATCH_EVENTS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reliable,
    ReliableBatch,
    Background,
    BestEffort,
}

/// One run of `quinn-batch`: `quinn-batch-<size>` for each of [`PAYLOADS`].
pub fn run_quinn_batch(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    PAYLOADS
        .into_iter()
        .map(|payload| run_quinn(config, payload))
        .collect()
}

/// One run of `shoal-throughput`: for each of [`PAYLOADS`], the three pub/sub rows and the
/// two point-to-point rows (three at 64 B: the keyed `send` too), each compared with
/// `quinn-batch-<size>`.
pub fn run_shoal_throughput(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    let mut rows = Vec::new();
    for payload in PAYLOADS {
        for mode in [
            Mode::Reliable,
            Mode::ReliableBatch,
            Mode::Background,
            Mode::BestEffort,
        ] {
            rows.push(run_shoal(config, payload, mode)?.compared_with(quinn_name(payload)));
        }
        for mode in [
            p2p::Mode::Send,
            p2p::Mode::BackgroundSend,
            p2p::Mode::KeyedSend,
            p2p::Mode::Request,
        ] {
            // The keyed row only where per-message costs show (64 B).
            if mode == p2p::Mode::KeyedSend && payload != PAYLOADS[0] {
                continue;
            }
            rows.push(p2p::run(config, payload, mode)?.compared_with(quinn_name(payload)));
        }
    }
    Ok(rows)
}

/// Counts length-prefixed frames in a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
struct FrameCounter {
    header: [u8; 4],
    header_len: usize,
    body_left: usize,
}

impl FrameCounter {
    /// Consumes `data`; returns the frames completed in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut frames = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                frames += u64::from(self.body_left == 0);
                continue;
            }
            let n = (4 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 4 {
                self.header_len = 0;
                self.body_left = usize::try_from(u32::from_be_bytes(self.header)).unwrap_or(0);
                frames += u64::from(self.body_left == 0);
            }
        }
        frames
    }
}

fn run_quinn(config: &BenchConfig, payload: usize) -> BenchResult<ThroughputReport> {
    let config = *config;
    let name = quinn_name(payload);
    let pki = certs::generate_pki()?;
    let server_cfg = quinn_echo::server_config(&pki)?;
    let client_cfg = quinn_echo::client_config(&pki)?;
    let received = Arc::new(AtomicU64::new(0));
    let server_received = Arc::clone(&received);
    let window = run_pair(
        &name,
        &config,
        move |announce, shutdown| quinn_server(announce, shutdown, server_cfg, server_received),
        move |addr| quinn_client(addr, client_cfg, config, payload, received),
    )?;
    Ok(ThroughputReport::new(name, payload, window))
}

async fn quinn_server(
    announce: Announce<SocketAddr>,
    shutdown: Shutdown,
    server_cfg: quinn::ServerConfig,
    received: Arc<AtomicU64>,
) -> BenchResult<()> {
    let endpoint = crate::raw_endpoint::server(server_cfg)?;
    announce.send(endpoint.local_addr()?)?;
    let result = shutdown
        .run_until(async {
            let connection = quinn_echo::first_connection(&endpoint).await?;
            let mut recv = match connection.accept_uni().await {
                Ok(stream) => stream,
                Err(e) if closed_by_peer(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut counter = FrameCounter::default();
            for _ in 0..MAX_MESSAGES {
                match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => {
                        received.fetch_add(counter.feed(&chunk.bytes), Ordering::Relaxed);
                    }
                    Ok(None) => return Ok(()),
                    Err(quinn::ReadError::ConnectionLost(e)) if closed_by_peer(&e) => {
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await;
    endpoint.close(0u32.into(), b"done");
    result
}

async fn quinn_client(
    server: SocketAddr,
    client_cfg: quinn::ClientConfig,
    config: BenchConfig,
    payload: usize,
    received: Arc<AtomicU64>,
) -> BenchResult<Window> {
    let mut endpoint = crate::raw_endpoint::client()?;
    endpoint.set_default_client_config(client_cfg);
    let connection = endpoint.connect(server, certs::SERVER_NAME)?.await?;
    let prefix = u32::try_from(payload).map_err(|_| BenchError::msg("payload too large"))?;
    let frames = (QUINN_BATCH_BYTES / (4 + payload)).max(1);
    let mut batch = Vec::with_capacity(frames * (4 + payload));
    for _ in 0..frames {
        batch.extend_from_slice(&prefix.to_be_bytes());
        batch.resize(batch.len() + payload, 0xA5);
    }
    let schedule = Schedule::starting_now(config.duration);
    let send = async {
        let mut send = connection.open_uni().await?;
        for _ in 0..MAX_MESSAGES / frames as u64 {
            if schedule.over() {
                break;
            }
            send.write_all(&batch).await?;
            // Lets the window's timer run even if the stream never blocks.
            tokio::task::yield_now().await;
        }
        let _ = send.finish();
        Ok::<_, BenchError>(())
    };
    let (sent, window) = tokio::join!(send, schedule.sample(&received));
    connection.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    sent?;
    Ok(window)
}

fn run_shoal(config: &BenchConfig, payload: usize, mode: Mode) -> BenchResult<ThroughputReport> {
    let config = *config;
    let name = match mode {
        Mode::Reliable => format!("shoal-pubsub-{payload}"),
        Mode::ReliableBatch => format!("shoal-pubsub-batch-{payload}"),
        Mode::Background => format!("shoal-pubsub-background-{payload}"),
        Mode::BestEffort => format!("shoal-pubsub-best-effort-{payload}"),
    };
    let ca = MeshCa::generate("shoal bench").map_err(shoal_err)?;
    let server_ca = ca.clone();
    let handled = Arc::new(AtomicU64::new(0));
    let server_handled = Arc::clone(&handled);
    let (window, dropped) = run_pair(
        &name,
        &config,
        move |announce, shutdown| async move {
            let nodes = start_subscribers(&server_ca, 1, |_| {
                let handled = Arc::clone(&server_handled);
                move |_msg: Message| {
                    handled.fetch_add(1, Ordering::Relaxed);
                    async { Ok(()) }
                }
            })
            .await?;
            serve_subscribers(nodes, announce, shutdown).await
        },
        move |addrs| publisher(ca, addrs, config, payload, mode, handled),
    )?;
    Ok(ThroughputReport::new(name, payload, window).with_dropped(dropped))
}

/// The publishing side; returns the window and the best-effort copies dropped.
async fn publisher(
    ca: MeshCa,
    subscribers: Vec<SocketAddr>,
    config: BenchConfig,
    payload: usize,
    mode: Mode,
    handled: Arc<AtomicU64>,
) -> BenchResult<(Window, u64)> {
    let node = start_publisher(ca, &subscribers).await?;
    let body = Bytes::from(vec![0xA5u8; payload]);
    let schedule = Schedule::starting_now(config.duration);
    let dropped = AtomicU64::new(0);
    let result = match mode {
        Mode::Reliable => {
            let publish = move |node: Node, body: Bytes, _| async move {
                let event = Message::event(TOPIC, body);
                node.publish(event).await.map_err(shoal_err)?;
                Ok(1)
            };
            acked_loops(RELIABLE_WINDOW, &node, &body, schedule, publish).await
        }
        Mode::ReliableBatch => {
            let events = batch_events(payload);
            let publish = move |node: Node, body: Bytes, _| async move {
                let batch = (0..events)
                    .map(|_| Message::event(TOPIC, body.clone()))
                    .collect();
                node.publish_batch(batch).await.map_err(shoal_err)?;
                Ok(events as u64)
            };
            acked_loops(BATCH_WINDOW, &node, &body, schedule, publish).await
        }
        Mode::Background => {
            let send = one_loop(schedule, async || {
                let event = Message::event(TOPIC, body.clone());
                room_if_refused(&node, node.publish_background(event)).await
            });
            let (sent, window) = tokio::join!(send, schedule.sample(&handled));
            sent.map(|()| window)
        }
        Mode::BestEffort => {
            let send = one_loop(schedule, async || {
                let event = Message::event(TOPIC, body.clone());
                // A copy dropped on a full queue: let the node deliver some.
                match node
                    .publish_with(event, PublishOptions::best_effort())
                    .await
                {
                    Ok(receipt) if !receipt.dropped.is_empty() => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(shoal_err(e)),
                }
                Ok(())
            });
            let (sent, window) = tokio::join!(send, schedule.sample(&handled));
            sent.map(|()| window)
        }
    };
    node.shutdown().await;
    Ok((result?, dropped.load(Ordering::Relaxed)))
}

/// What a background call of the one-loop rows returned: a call refused because the node
/// holds as many as it may (not sent, and not counted) waits until the node delivered half.
pub(crate) async fn room_if_refused(
    node: &Node,
    called: Result<shoal::MessageId, shoal::Error>,
) -> BenchResult<()> {
    match called {
        Ok(_) => Ok(()),
        Err(shoal::Error::Backlog { .. }) => {
            node.wait_for_background_room().await;
            Ok(())
        }
        Err(e) => Err(shoal_err(e)),
    }
}

/// Calls `send` from one loop as fast as it can until the window is over (at most
/// [`MAX_MESSAGES`] times), yielding to the runtime every [`BEST_EFFORT_BATCH`] calls: the
/// loop of the rows that await nothing per message.
pub(crate) async fn one_loop(
    schedule: Schedule,
    mut send: impl AsyncFnMut() -> BenchResult<()>,
) -> BenchResult<()> {
    for i in 0..MAX_MESSAGES {
        if i % BEST_EFFORT_BATCH == 0 {
            if schedule.over() {
                break;
            }
            tokio::task::yield_now().await;
        }
        send().await?;
    }
    Ok(())
}

/// Runs `loops` tasks that each repeat `publish` (which returns the events it got acked, and
/// is given the task's number) until the window is over, and measures the acked events per
/// second.
pub(crate) async fn acked_loops<F, Fut>(
    loops: usize,
    node: &Node,
    body: &Bytes,
    schedule: Schedule,
    publish: F,
) -> BenchResult<Window>
where
    F: Fn(Node, Bytes, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = BenchResult<u64>> + Send,
{
    let acked = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..loops)
        .map(|task| {
            let (node, body, acked, publish) = (
                node.clone(),
                body.clone(),
                Arc::clone(&acked),
                publish.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..MAX_MESSAGES {
                    if schedule.over() {
                        break;
                    }
                    let n = publish(node.clone(), body.clone(), task).await?;
                    acked.fetch_add(n, Ordering::Relaxed);
                }
                Ok::<_, BenchError>(())
            })
        })
        .collect();
    let drive = async {
        for handle in handles {
            handle.await??;
        }
        Ok(())
    };
    let (done, window) = tokio::join!(drive, schedule.sample(&acked));
    done.map(|()| window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_within_the_frame_limit() {
        assert_eq!(batch_events(64), BATCH_EVENTS);
        assert_eq!(batch_events(1024), BATCH_EVENTS);
        assert_eq!(batch_events(65536), 16);
        assert_eq!(batch_events(8 * 1024 * 1024), 1);
    }

    #[test]
    fn frames_are_counted_across_pieces() {
        let mut stream = Vec::new();
        for len in [3u32, 0, 70_000, 1] {
            stream.extend_from_slice(&len.to_be_bytes());
            stream.resize(stream.len() + len as usize, 7);
        }
        for piece in [1, 2, 5, 4096, stream.len()] {
            let mut counter = FrameCounter::default();
            let total: u64 = stream.chunks(piece).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 4, "pieces of {piece}");
        }
    }
}
