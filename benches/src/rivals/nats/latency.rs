//! `nats-request` (request/reply round trip) and `nats-publish` (one-way publish latency to
//! 1 and 8 subscribers), each run against its own `nats-server`.

use async_nats::client::RequestErrorKind;
use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::server::NatsServer;
use super::{
    ACK_SUBJECT, ECHO_SUBJECT, MAX_SYNC, PUBLISH_NAME, REQUEST_NAME, SYNC_INTERVAL, SYNC_SEQ,
    SYNC_TIMEOUT, TIMEOUT, TOPIC, ack, connect, parse_ack, seq_of, sync_subscribers,
};
use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::measure::{RoundTrip, measure};
use crate::pubsub::Probe;
use crate::report::LatencyReport;
use crate::runtime::{Announce, Shutdown, run_pair};

/// Subscriber counts of the `nats-publish` rows.
pub const FAN_OUTS: [usize; 2] = [1, 8];

/// One run of `nats-request`: a fresh server, a responder connection on the server-side
/// thread, a requesting connection timing `Client::request` on the client-side thread.
pub fn run_request(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let server = NatsServer::start()?;
    let config = *config;
    let (url, client_url) = (server.url(), server.url());
    let report = run_pair(
        REQUEST_NAME,
        &config,
        move |announce, shutdown| respond(url, config, announce, shutdown),
        move |()| request_loop(client_url, config),
    )?;
    drop(server);
    Ok(vec![report])
}

/// The responder: echoes every request's payload to its reply subject.
async fn respond(
    url: String,
    config: BenchConfig,
    announce: Announce<()>,
    shutdown: Shutdown,
) -> BenchResult<()> {
    let client = connect(&url, "bench-responder").await?;
    let mut requests = client.subscribe(ECHO_SUBJECT).await?;
    client.flush().await?;
    announce.send(())?;
    shutdown
        .run_until(async {
            for _ in 0..config.max_round_trips() + MAX_SYNC {
                let Some(msg) = requests.next().await else {
                    return Err(BenchError::msg("nats: responder subscription ended"));
                };
                if let Some(reply) = msg.reply {
                    client.publish(reply, msg.payload).await?;
                }
            }
            Ok(())
        })
        .await
}

/// The requester: waits until the responder's subscription is in force, then times closed-
/// loop requests.
async fn request_loop(url: String, config: BenchConfig) -> BenchResult<LatencyReport> {
    let client = connect(&url, "bench-requester").await?;
    let payload = Bytes::from(vec![0xA5u8; config.payload]);
    wait_for_responder(&client, &payload).await?;
    measure(REQUEST_NAME, &config, async |_attempt| {
        let reply = client.request(ECHO_SUBJECT, payload.clone()).await?;
        if reply.payload.len() == payload.len() {
            Ok(RoundTrip::Done)
        } else {
            Err(BenchError::msg("nats: echo reply has the wrong length"))
        }
    })
    .await
}

/// Retries a request while the server answers "no responders" (the responder's
/// subscription is not in force yet), for at most [`SYNC_TIMEOUT`].
async fn wait_for_responder(client: &Client, payload: &Bytes) -> BenchResult<()> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    for _ in 0..MAX_SYNC {
        match client.request(ECHO_SUBJECT, payload.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == RequestErrorKind::NoResponders && Instant::now() < deadline => {
                tokio::time::sleep(SYNC_INTERVAL).await;
            }
            Err(e) => return Err(BenchError::from(e).context("nats: first request")),
        }
    }
    Err(BenchError::msg("nats: the responder never answered"))
}

/// One run of `nats-publish`: for each of [`FAN_OUTS`], a fresh server, that many subscriber
/// connections on the server-side thread and a publishing connection on the client side.
pub fn run_publish(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let mut rows = Vec::new();
    for n in FAN_OUTS {
        rows.extend(publish_run(config, n)?);
    }
    Ok(rows)
}

fn publish_run(config: &BenchConfig, n: usize) -> BenchResult<Vec<LatencyReport>> {
    let name = format!("{PUBLISH_NAME}-{n}");
    let server = NatsServer::start()?;
    let config = *config;
    let (url, client_url) = (server.url(), server.url());
    let probe = Probe::new(&config, n)?;
    let (server_probe, client_probe) = (probe.clone(), probe.clone());
    let last = run_pair(
        &name,
        &config,
        move |announce, shutdown| subscribers(url, n, config, server_probe, announce, shutdown),
        move |()| publish_loop(client_url, n, client_probe),
    )?;
    drop(server);
    probe.rows(&name, &last)
}

/// `n` subscriber connections: each records every stamped message in `probe` and acks it
/// (sync messages, which are empty, are acked with [`SYNC_SEQ`]).
async fn subscribers(
    url: String,
    n: usize,
    config: BenchConfig,
    probe: Probe,
    announce: Announce<()>,
    shutdown: Shutdown,
) -> BenchResult<()> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let client = connect(&url, &format!("bench-subscriber-{i}")).await?;
        let messages = client.subscribe(TOPIC).await?;
        client.flush().await?;
        let probe = probe.clone();
        let bound = config.warmup + config.count + MAX_SYNC;
        tasks.push(tokio::spawn(async move {
            subscriber(client, messages, i, probe, bound).await
        }));
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

async fn subscriber(
    client: Client,
    mut messages: Subscriber,
    i: usize,
    probe: Probe,
    bound: u64,
) -> BenchResult<()> {
    for _ in 0..bound {
        let Some(msg) = messages.next().await else {
            return Err(BenchError::msg(format!(
                "nats: subscriber {i}: subscription ended"
            )));
        };
        let seq = if msg.payload.is_empty() {
            SYNC_SEQ
        } else {
            probe
                .arrived(i, &msg.payload)
                .and_then(|()| seq_of(&msg.payload))
                .ok_or_else(|| BenchError::msg("nats: message without a stamp"))?
        };
        client.publish(ACK_SUBJECT, ack(seq, i)).await?;
    }
    Ok(())
}

/// The publisher: syncs with the `n` subscribers, then runs the closed loop, each message
/// done when all `n` acked it. Returns the time until the last subscriber got each message.
async fn publish_loop(url: String, n: usize, probe: Probe) -> BenchResult<Histogram<u64>> {
    let client = connect(&url, "bench-publisher").await?;
    let mut acks = client.subscribe(ACK_SUBJECT).await?;
    client.flush().await?;
    sync_subscribers(&client, TOPIC, &mut acks, n).await?;
    probe
        .closed_loop(&[], async |seq, buf| {
            client.publish(TOPIC, Bytes::copy_from_slice(buf)).await?;
            wait_for_acks(&mut acks, seq, n).await
        })
        .await
}

/// Waits until `n` acks of message `seq` arrived (stale sync acks are skipped).
async fn wait_for_acks(acks: &mut Subscriber, seq: u64, n: usize) -> BenchResult<()> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = 0;
    while got < n {
        match tokio::time::timeout_at(deadline, acks.next()).await {
            Ok(Some(msg)) => {
                if parse_ack(&msg.payload).is_some_and(|(s, _)| s == seq) {
                    got += 1;
                }
            }
            Ok(None) => return Err(BenchError::msg("nats: ack subscription ended")),
            Err(_) => {
                return Err(BenchError::msg(format!(
                    "nats: message {seq}: {got} of {n} acks within {TIMEOUT:?}"
                )));
            }
        }
    }
    Ok(())
}
