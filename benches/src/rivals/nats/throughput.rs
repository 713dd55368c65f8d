//! `nats-throughput`: sustained publish → subscriber rates, one subscriber (`nats-pubsub-*`)
//! or a queue group of two (`nats-p2p-*`), counted as delivered at the subscriber(s).
//!
//! The publisher publishes as fast as its client takes messages (core NATS has no flow
//! control to subscribers: a subscriber that falls behind loses messages). Each subscriber
//! connection's counting loop runs under [`tokio::task::unconstrained`]: async-nats's
//! connection task reads and parses up to tokio's cooperative budget of socket reads per
//! turn (about 100,000 64-byte messages) into the subscription buffer, while a budgeted
//! `next()` loop takes only 128 per turn, so the buffer overflowed and most messages were
//! parsed only to be dropped (measured: `nats-p2p-64` at about 2,500 delivered msgs/s).
//! Unconstrained, the loop empties the buffer whenever it runs, which is how a subscriber
//! that wants to keep up would be written; it gave the highest delivered rates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::server::NatsServer;
use super::{ACK_SUBJECT, QUEUE_GROUP, SYNC_SEQ, TOPIC, ack, connect, sync_subscribers};
use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::pubsub_throughput::quinn_name;
use crate::runtime::{Announce, Shutdown, run_pair};
use crate::throughput::{Schedule, ThroughputReport, Window};

/// Payload sizes measured (`--payload` does not apply here).
pub const PAYLOADS: [usize; 3] = [64, 1024, 65536];
/// Members of the queue group in the p2p rows.
pub const QUEUE_MEMBERS: usize = 2;
/// Publishes between two checks of the window's end (and yields to the runtime).
const PUBLISH_BATCH: u64 = 64;
/// Upper bound on the messages one run publishes or one subscriber receives.
const MAX_MESSAGES: u64 = 1_000_000_000;
/// After the window: how long deliveries may keep trickling in before what is missing
/// counts as dropped, and how long the count must stay still to be final.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
const SETTLE_QUIET: Duration = Duration::from_millis(100);

/// Pattern of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Every message to the one subscriber.
    PubSub,
    /// Every message to one member of a queue group of [`QUEUE_MEMBERS`].
    Queue,
}

impl Pattern {
    fn members(self) -> usize {
        match self {
            Self::PubSub => 1,
            Self::Queue => QUEUE_MEMBERS,
        }
    }

    fn row(self, payload: usize) -> String {
        match self {
            Self::PubSub => format!("nats-pubsub-{payload}"),
            Self::Queue => format!("nats-p2p-{payload}"),
        }
    }
}

/// One run: per payload of [`PAYLOADS`], the pub/sub row then the queue row, each against
/// a fresh server and compared with raw quinn's batched throughput of the same payload.
pub fn run(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    let mut rows = Vec::new();
    for payload in PAYLOADS {
        for pattern in [Pattern::PubSub, Pattern::Queue] {
            rows.push(run_row(config, payload, pattern)?.compared_with(quinn_name(payload)));
        }
    }
    Ok(rows)
}

fn run_row(
    config: &BenchConfig,
    payload: usize,
    pattern: Pattern,
) -> BenchResult<ThroughputReport> {
    let name = pattern.row(payload);
    let server = NatsServer::start()?;
    let config = *config;
    let (url, client_url) = (server.url(), server.url());
    let delivered = Arc::new(AtomicU64::new(0));
    let server_delivered = Arc::clone(&delivered);
    let (window, dropped) = run_pair(
        &name,
        &config,
        move |announce, shutdown| subscribers(url, pattern, server_delivered, announce, shutdown),
        move |()| publisher(client_url, config, payload, pattern, delivered),
    )?;
    drop(server);
    Ok(ThroughputReport::new(name, payload, window).with_dropped(dropped))
}

/// The subscriber connections (one, or the queue members): each counts every non-empty
/// message in `delivered` and acks the empty sync messages.
async fn subscribers(
    url: String,
    pattern: Pattern,
    delivered: Arc<AtomicU64>,
    announce: Announce<()>,
    shutdown: Shutdown,
) -> BenchResult<()> {
    let mut tasks = Vec::new();
    for i in 0..pattern.members() {
        let client = connect(&url, &format!("bench-subscriber-{i}")).await?;
        let messages = match pattern {
            Pattern::PubSub => client.subscribe(TOPIC).await?,
            Pattern::Queue => {
                client
                    .queue_subscribe(TOPIC, QUEUE_GROUP.to_owned())
                    .await?
            }
        };
        client.flush().await?;
        let delivered = Arc::clone(&delivered);
        // Outside tokio's cooperative budget, so each time it runs it drains everything the
        // connection task has buffered (see the module documentation).
        let counter = tokio::task::unconstrained(count(client, messages, i, delivered));
        tasks.push(tokio::spawn(counter));
    }
    announce.send(())?;
    shutdown
        .run_until(async {
            for task in tasks {
                task.await??;
            }
            Ok(())
        })
        .await
}

async fn count(
    client: Client,
    mut messages: Subscriber,
    i: usize,
    delivered: Arc<AtomicU64>,
) -> BenchResult<()> {
    for _ in 0..MAX_MESSAGES {
        let Some(msg) = messages.next().await else {
            return Ok(());
        };
        if msg.payload.is_empty() {
            client.publish(ACK_SUBJECT, ack(SYNC_SEQ, i)).await?;
        } else {
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The publisher: syncs with the subscriber(s), then publishes `payload`-byte messages as
/// fast as the client takes them until the window ends. Returns the window's deliveries
/// and the messages published but never delivered.
async fn publisher(
    url: String,
    config: BenchConfig,
    payload: usize,
    pattern: Pattern,
    delivered: Arc<AtomicU64>,
) -> BenchResult<(Window, u64)> {
    let client = connect(&url, "bench-publisher").await?;
    let mut acks = client.subscribe(ACK_SUBJECT).await?;
    client.flush().await?;
    sync_subscribers(&client, TOPIC, &mut acks, pattern.members()).await?;
    drop(acks);
    let body = Bytes::from(vec![0xA5u8; payload]);
    let schedule = Schedule::starting_now(config.duration);
    let mut published = 0u64;
    let send = async {
        for i in 0..MAX_MESSAGES {
            if i % PUBLISH_BATCH == 0 {
                if schedule.over() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            client.publish(TOPIC, body.clone()).await?;
            published += 1;
        }
        client.flush().await?;
        Ok::<_, BenchError>(())
    };
    let (sent, window) = tokio::join!(send, schedule.sample(&delivered));
    sent?;
    let total = settle(&delivered, published).await;
    Ok((window, published.saturating_sub(total)))
}

/// Waits until all `published` messages were delivered, or the count stopped moving for
/// [`SETTLE_QUIET`], or [`SETTLE_TIMEOUT`] passed; returns the final count.
async fn settle(delivered: &AtomicU64, published: u64) -> u64 {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = delivered.load(Ordering::Relaxed);
    while last < published && Instant::now() < deadline {
        tokio::time::sleep(SETTLE_QUIET).await;
        let now = delivered.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    last
}
