//! NATS, the rival a user would pick for a broker-based request/reply and pub/sub bus:
//! Debian's `nats-server` (2.9) as a child process, the official `async-nats` client.
//!
//! # Set-up
//!
//! * **Server**: one `nats-server -a 127.0.0.1 -p <free port>` per scenario run
//!   ([`server::NatsServer`]), started before the run and killed (and reaped) when it ends,
//!   also on error or panic. Nothing but the loopback client port is opened: no cluster, no
//!   monitoring port, no leaf nodes, no gateways, no JetStream (all off unless configured).
//!   The server is its own process and is not pinned: on a 2-CPU machine it shares the CPUs
//!   with the two pinned benchmark threads.
//! * **Clients**: every connection (`connect`) binds its socket to `127.0.0.1`, ignores
//!   servers a server might advertise, never reconnects for long, and uses `no_echo`, the
//!   NATS option that stops a connection receiving its own publishes. `async-nats` needs no
//!   explicit flush for latency: its connection task writes every queued command as soon as
//!   it runs, and flushes when its queue is empty (the NATS docs' "Caches, Flush and Ping"
//!   advice is about clients that buffer until a flush). TCP_NODELAY is on (the client's
//!   default). The subscription buffer (`subscription_capacity`, 65,536 messages) and the
//!   command queue (`client_capacity`, 2,048) stay at the client's defaults (a larger
//!   subscription buffer, 1 M messages, did not raise the delivered rates in our runs); throughput rows count what
//!   reaches the subscriber, because a full subscription buffer drops messages silently.
//! * **Threads**: as everywhere ([`crate::runtime`]): the responder or subscriber
//!   connections on the server-side thread, the requester or publisher on the client-side
//!   thread, each a `current_thread` runtime.
//!
//! # Scenarios and rows
//!
//! * `nats-request` (round trip): a responder subscription on `bench.echo` replies with the
//!   request's payload; the client times `Client::request` (a reply inbox per request,
//!   multiplexed on one wildcard subscription) in a closed loop.
//! * `nats-publish` (one way): `nats-publish-1`, `nats-publish-8`, `nats-publish-8-last`,
//!   measured exactly like [`crate::pubsub`]'s rows (shared clock, stamp in the payload,
//!   next message after every subscriber acked); each subscriber is its own connection and
//!   acks on `bench.ack` after recording.
//! * `nats-throughput`: `nats-pubsub-<size>` (one publisher, one subscriber) and
//!   `nats-p2p-<size>` (one publisher, a queue group of two members, each its own
//!   connection: each message goes to one of them) for 64 B, 1 KiB and 64 KiB, counted as
//!   **delivered** to the subscriber(s) and compared with `quinn-batch-<size>`; `dropped`
//!   is what was published in the run but never delivered. The counting loops run outside
//!   tokio's cooperative budget so that they keep up (the `throughput` submodule says why).
//!
//! Before measuring, the publisher sends empty "sync" messages until every subscriber (every
//! queue member) has acked one: a subscription is only certain to be in force at the server
//! once a message published after it has come through.

mod latency;
pub mod server;
mod throughput;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Subscriber};
use futures_util::StreamExt as _;
use tokio::time::Instant;

use crate::error::{BenchError, BenchResult};

pub use latency::{FAN_OUTS, run_publish, run_request};
pub use throughput::{PAYLOADS, QUEUE_MEMBERS, run as run_throughput};

/// Scenario name (and row name) of the request/reply round trip.
pub const REQUEST_NAME: &str = "nats-request";
/// Scenario name of the one-way publish rows (`nats-publish-1`, `-8`, `-8-last`).
pub const PUBLISH_NAME: &str = "nats-publish";
/// Scenario name of the throughput rows (`nats-pubsub-<size>`, `nats-p2p-<size>`).
pub const THROUGHPUT_NAME: &str = "nats-throughput";

/// A set-up line: the server and client configuration every NATS scenario shares, then
/// `$what` (what this scenario adds).
macro_rules! setup {
    ($what:literal) => {
        concat!(
            "nats-server 2.9 `-a 127.0.0.1 -p <free port>` (no cluster, monitoring, leafnodes \
             or JetStream; its own unpinned process); async-nats 0.51 (ring; TLS off), TCP to \
             127.0.0.1, no_echo, TCP_NODELAY, writes as soon as queued (no flush needed), \
             default buffers (subscription 65,536 msgs, command queue 2,048); ",
            $what
        )
    };
}

/// Set-up line of `nats-request`.
pub const REQUEST_SETUP: &str =
    setup!("Client::request (reply inboxes multiplexed on one subscription), responder echoes");
/// Set-up line of `nats-publish`.
pub const PUBLISH_SETUP: &str = setup!(
    "core NATS publish (at most once), one connection per subscriber, each acks on another \
     subject after recording (not timed)"
);
/// Set-up line of `nats-throughput`.
pub const THROUGHPUT_SETUP: &str = setup!(
    "one publisher publishing as fast as its client accepts; counted when delivered to the \
     subscriber, whose loop drains its buffer each turn (tokio unconstrained); p2p = queue \
     group of 2 connections"
);

/// Subject of the request/reply scenario.
const ECHO_SUBJECT: &str = "bench.echo";
/// Subject the publish and throughput scenarios publish on.
const TOPIC: &str = crate::pubsub::TOPIC;
/// Subject subscribers ack on.
const ACK_SUBJECT: &str = "bench.ack";
/// Queue group of the p2p rows.
const QUEUE_GROUP: &str = "bench-workers";
/// How long a connection attempt, a request or an awaited ack may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the publisher keeps sending sync messages before giving up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two sync messages (also the most a request retry waits).
const SYNC_INTERVAL: Duration = Duration::from_millis(2);
/// Upper bound on the sync messages (or responder probes) of one run.
const MAX_SYNC: u64 = 5_000;
/// Sequence number the subscribers put in the ack of a sync message.
const SYNC_SEQ: u64 = u64::MAX;
/// Bytes of an ack: sequence number and subscriber index, both little-endian `u64`.
const ACK_LEN: usize = 16;

/// Connects to `url` with the options every benchmark connection uses (see the module
/// documentation), naming the connection `name` (shown by the server's monitoring, if on).
async fn connect(url: &str, name: &str) -> BenchResult<Client> {
    ConnectOptions::new()
        .name(name)
        .no_echo()
        .local_address(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .ignore_discovered_servers()
        .retain_servers_order()
        .max_reconnects(1)
        .connection_timeout(TIMEOUT)
        .request_timeout(Some(TIMEOUT))
        .connect(url)
        .await
        .map_err(|e| {
            BenchError::from(e).context(format!("nats: {name} failed to connect to {url}"))
        })
}

/// An ack: `seq` (the message's sequence number, or [`SYNC_SEQ`]) and the subscriber's index.
fn ack(seq: u64, member: usize) -> bytes::Bytes {
    let mut buf = [0u8; ACK_LEN];
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..].copy_from_slice(&(member as u64).to_le_bytes());
    bytes::Bytes::copy_from_slice(&buf)
}

/// `(seq, member)` of an ack, `None` if it is not one.
fn parse_ack(payload: &[u8]) -> Option<(u64, usize)> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let member = u64::from_le_bytes(payload.get(8..ACK_LEN)?.try_into().ok()?);
    Some((seq, usize::try_from(member).ok()?))
}

/// Sequence number in the first 8 bytes of a stamped message.
fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Publishes empty sync messages on `subject` until each of `members` subscribers has acked
/// one on `acks` (so every subscription, and `acks` itself, is in force at the server).
async fn sync_subscribers(
    client: &Client,
    subject: &'static str,
    acks: &mut Subscriber,
    members: usize,
) -> BenchResult<()> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut seen = vec![false; members];
    for _ in 0..MAX_SYNC {
        if seen.iter().all(|&s| s) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        client.publish(subject, bytes::Bytes::new()).await?;
        let wait = Instant::now() + SYNC_INTERVAL;
        while let Ok(Some(msg)) = tokio::time::timeout_at(wait, acks.next()).await {
            if let Some((SYNC_SEQ, member)) = parse_ack(&msg.payload)
                && let Some(slot) = seen.get_mut(member)
            {
                *slot = true;
            }
        }
    }
    if seen.iter().all(|&s| s) {
        return Ok(());
    }
    let acked = seen.iter().filter(|&&s| s).count();
    Err(BenchError::msg(format!(
        "nats: only {acked} of {members} subscribers answered sync messages on `{subject}` \
         within {SYNC_TIMEOUT:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BenchConfig, ScenarioResults, find_scenario, run_repeated};

    #[test]
    fn acks_round_trip() {
        assert_eq!(parse_ack(&ack(7, 3)), Some((7, 3)));
        assert_eq!(parse_ack(&ack(SYNC_SEQ, 0)), Some((SYNC_SEQ, 0)));
        assert_eq!(parse_ack(&[1, 2, 3]), None);
    }

    #[test]
    fn request_scenario_times_every_round_trip() {
        let scenario = find_scenario(REQUEST_NAME).expect("registered");
        let Ok(ScenarioResults::Latency(rows)) =
            run_repeated(scenario, &BenchConfig::quick(), 1, |_, _| {})
        else {
            panic!("nats-request failed or gave no latency rows");
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].median.name, REQUEST_NAME);
        assert_eq!(rows[0].median.count, BenchConfig::quick().count);
        assert!(rows[0].median.p50 > 0);
    }

    #[test]
    fn publish_scenario_records_every_subscriber() {
        let scenario = find_scenario(PUBLISH_NAME).expect("registered");
        let Ok(ScenarioResults::Latency(rows)) =
            run_repeated(scenario, &BenchConfig::quick(), 1, |_, _| {})
        else {
            panic!("nats-publish failed or gave no latency rows");
        };
        let count = BenchConfig::quick().count;
        let got: Vec<(&str, u64)> = rows
            .iter()
            .map(|r| (r.median.name.as_str(), r.median.count))
            .collect();
        assert_eq!(
            got,
            [
                ("nats-publish-1", count),
                ("nats-publish-8", 8 * count),
                ("nats-publish-8-last", count)
            ]
        );
    }

    #[test]
    fn throughput_scenario_counts_deliveries() {
        let scenario = find_scenario(THROUGHPUT_NAME).expect("registered");
        let Ok(ScenarioResults::Throughput(rows)) =
            run_repeated(scenario, &BenchConfig::quick(), 1, |_, _| {})
        else {
            panic!("nats-throughput failed or gave no throughput rows");
        };
        let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "nats-pubsub-64",
                "nats-p2p-64",
                "nats-pubsub-1024",
                "nats-p2p-1024",
                "nats-pubsub-65536",
                "nats-p2p-65536"
            ]
        );
        for row in &rows {
            let r = &row.median;
            assert!(r.messages > 0, "{}: nothing delivered", r.name);
            assert_eq!(
                r.baseline.as_deref(),
                Some(format!("quinn-batch-{}", r.payload).as_str())
            );
        }
    }
}
