//! Shoal's benchmark harness: closed-loop round-trip latency scenarios, publish/subscribe
//! one-way latency and throughput scenarios, the raw floors they are compared with (plain
//! UDP, raw quinn over mutual TLS), and the reporting.
//!
//! # Adding a scenario
//!
//! 1. Write `fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>>` doing **one
//!    run**: build the two sides with [`runtime::run_pair`] (server side announces what the
//!    client needs; client side times round trips with [`measure::measure`]). Certificates
//!    come from [`certs::generate_pki`]. Throughput scenarios return
//!    [`ThroughputReport`]s instead (see [`pubsub_throughput`]).
//! 2. Add one entry to [`SCENARIOS`], saying which table its rows go to ([`Measures`]).
//!
//! The harness repeats the run `--runs` times, takes medians, prints the ratio to the
//! baseline row and writes JSON/Markdown; nothing else needs touching.
//!
//! All sockets are on `127.0.0.1` ([`LOOPBACK`]).

pub mod affinity;
pub mod certs;
pub mod discovery_timing;
pub mod error;
pub mod measure;
pub mod outbox;
pub mod pubsub;
pub mod pubsub_throughput;
pub mod quinn_echo;
pub mod report;
pub mod rivals;
pub mod runtime;
pub mod shoal_scenarios;
pub mod systems;
pub mod throughput;
pub mod udp_echo;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use affinity::Placement;
pub use error::{BenchError, BenchResult};
pub use report::{AggregatedReport, LatencyReport};
pub use throughput::{AggregatedThroughput, ThroughputReport};

/// Where every scenario binds: `127.0.0.1`, any free port.
pub const LOOPBACK: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// Row that ratios are computed against by default: raw quinn over one long-lived stream.
pub const DEFAULT_BASELINE: &str = quinn_echo::STREAM_NAME;

/// Settings of one scenario run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    /// Recorded round trips per run.
    pub count: u64,
    /// Unrecorded round trips before recording starts (same connection).
    pub warmup: u64,
    /// Application payload bytes per message (datagram scenarios use at least 8).
    pub payload: usize,
    /// Time limit of one run, both sides included; exceeding it fails the run.
    pub run_timeout: Duration,
    /// CPUs the server-side and client-side threads are pinned to.
    pub placement: Placement,
    /// Measured window of each throughput row (after a warm-up of a quarter of it).
    pub duration: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            count: 20_000,
            warmup: 2_000,
            payload: 64,
            run_timeout: Duration::from_secs(120),
            placement: Placement::default(),
            duration: Duration::from_secs(2),
        }
    }
}

impl BenchConfig {
    /// Most round trips a run may lose before it fails: 1 % of all round trips, at least 10.
    pub fn max_lost(&self) -> u64 {
        ((self.count + self.warmup) / 100).max(10)
    }

    /// Upper bound on the requests a server loop ever has to answer in one run (warm-up,
    /// measured, lost and retried, plus slack). Server loops use it as their count bound.
    pub fn max_round_trips(&self) -> u64 {
        self.warmup + self.count + self.max_lost() + 16
    }
}

/// Bytes per datagram in datagram scenarios: the payload, but at least the 8-byte attempt
/// number that matches replies to requests.
pub fn datagram_len(payload: usize) -> usize {
    payload.max(8)
}

/// One run of a latency scenario: returns one or more report rows.
pub type ScenarioFn = fn(&BenchConfig) -> BenchResult<Vec<LatencyReport>>;

/// One run of a throughput scenario: returns one or more throughput rows.
pub type ThroughputFn = fn(&BenchConfig) -> BenchResult<Vec<ThroughputReport>>;

/// What a scenario measures, which decides the table its rows go to.
#[derive(Debug, Clone, Copy)]
pub enum Measures {
    /// Round-trip times; ratios to `--baseline` (default [`DEFAULT_BASELINE`]).
    RoundTrip(ScenarioFn),
    /// One-way latencies; ratios to [`pubsub::ONEWAY_NAME`].
    OneWay(ScenarioFn),
    /// Messages per second; each row's ratio to the raw row it names.
    Throughput(ThroughputFn),
}

/// A named scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name used with `--scenario` (and, for single-row scenarios, the report row name).
    pub name: &'static str,
    /// The system it measures ([`systems::SYSTEMS`]), selected with `--system`.
    pub system: &'static str,
    /// How the system is configured for this scenario, printed with the results (rivals
    /// are set up as their own documentation recommends for low latency).
    pub setup: &'static str,
    /// One line on what it measures (shown by `--list`).
    pub about: &'static str,
    /// Performs one run.
    pub run: Measures,
    /// Whether `--scenario all` runs it (the pub/sub scenarios take longer than all the
    /// others together, so they run only when named).
    pub in_all: bool,
}

/// Every scenario, in the order `--scenario all` runs them. Add new scenarios here.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: udp_echo::NAME,
        system: systems::UDP,
        setup: "tokio UdpSocket, one datagram per message, no crypto",
        about: "raw UDP: one datagram echoed over loopback, no crypto, closed loop",
        run: Measures::RoundTrip(udp_echo::run),
        in_all: true,
    },
    Scenario {
        name: quinn_echo::STREAM_NAME,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring), mutual TLS, one long-lived bidi stream, u32 length prefix",
        about: "raw quinn (baseline): echo over ONE long-lived bidi stream, mutual TLS, \
                u32-length-prefixed frames",
        run: Measures::RoundTrip(quinn_echo::run_stream),
        in_all: true,
    },
    Scenario {
        name: quinn_echo::DATAGRAM_NAME,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring), mutual TLS, QUIC DATAGRAM frames",
        about: "raw quinn datagrams: QUIC DATAGRAM frame echoed, mutual TLS",
        run: Measures::RoundTrip(quinn_echo::run_datagram),
        in_all: true,
    },
    Scenario {
        name: shoal_scenarios::SEND_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: static peer on 127.0.0.1, mutual TLS, ack after the handler ran",
        about: "Shoal point-to-point: send a command, resolve when the receiver's handler \
                finished and its ack came back",
        run: Measures::RoundTrip(shoal_scenarios::run_send),
        in_all: true,
    },
    Scenario {
        name: shoal_scenarios::REQUEST_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: static peer on 127.0.0.1, mutual TLS, reply in the ack's write",
        about: "Shoal request/response: request to an echo handler, resolve on the reply",
        run: Measures::RoundTrip(shoal_scenarios::run_request),
        in_all: true,
    },
    Scenario {
        name: PUBSUB_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: reliable publish, one group per subscriber node",
        about: "one-way publish -> handler latency to 1, 4, 16 subscriber nodes (closed loop \
                on the reliable ack), with raw quinn one-way to 1, 4, 16 receivers \
                (quinn-oneway, the baseline; quinn-fanout-4, -16)",
        run: Measures::OneWay(pubsub::run),
        in_all: false,
    },
    Scenario {
        name: PUBSUB_THROUGHPUT_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: reliable (256 in flight, or publish_batch of 256) and best-effort",
        about: "events/s to one subscriber (reliable, 256 in flight; best-effort), 64 B and \
                1 KiB, against raw quinn batched frames on one stream",
        run: Measures::Throughput(pubsub_throughput::run),
        in_all: false,
    },
    Scenario {
        name: OUTBOX_LATENCY_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults, outbox in a SQLite file (WAL, synchronous=NORMAL) in the temp dir",
        about: "transactional outbox: commit of one message until the receiver's handler ran, \
                beside a direct send until the handler ran",
        run: Measures::RoundTrip(outbox::run_latency),
        in_all: true,
    },
    Scenario {
        name: OUTBOX_THROUGHPUT_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults, outbox in a SQLite file (WAL, synchronous=NORMAL) in the temp dir",
        about: "transactional outbox: messages handled per second, committed in transactions \
                of 1, 10 and 100 messages",
        run: Measures::Throughput(outbox::run_throughput),
        in_all: false,
    },
    #[cfg(feature = "nats")]
    Scenario {
        name: rivals::nats::REQUEST_NAME,
        system: systems::NATS,
        setup: rivals::nats::REQUEST_SETUP,
        about: "NATS request/reply through nats-server: Client::request to an echoing \
                responder subscription, closed loop",
        run: Measures::RoundTrip(rivals::nats::run_request),
        in_all: true,
    },
    #[cfg(feature = "nats")]
    Scenario {
        name: rivals::nats::PUBLISH_NAME,
        system: systems::NATS,
        setup: rivals::nats::PUBLISH_SETUP,
        about: "NATS one-way publish -> subscriber latency to 1 and 8 subscriber connections \
                (closed loop on the subscribers' acks)",
        run: Measures::OneWay(rivals::nats::run_publish),
        in_all: true,
    },
    #[cfg(feature = "nats")]
    Scenario {
        name: rivals::nats::THROUGHPUT_NAME,
        system: systems::NATS,
        setup: rivals::nats::THROUGHPUT_SETUP,
        about: "NATS msgs/s delivered to one subscriber (pubsub) and to a 2-member queue \
                group (p2p), 64 B, 1 KiB, 64 KiB",
        run: Measures::Throughput(rivals::nats::run_throughput),
        in_all: true,
    },
    #[cfg(feature = "zmq")]
    Scenario {
        name: rivals::zmq::REQUEST_NAME,
        system: systems::ZMQ,
        setup: rivals::zmq::REQUEST_SETUP,
        about: "ZeroMQ (libzmq) REQ/REP: request echoed by the REP socket, closed loop",
        run: Measures::RoundTrip(rivals::zmq::run_request),
        in_all: true,
    },
    #[cfg(feature = "zmq")]
    Scenario {
        name: rivals::zmq::PUBLISH_NAME,
        system: systems::ZMQ,
        setup: rivals::zmq::PUBLISH_SETUP,
        about: "ZeroMQ PUB/SUB one-way latency to 1 and 8 SUB sockets (closed loop on \
                PUSH/PULL acks)",
        run: Measures::OneWay(rivals::zmq::run_publish),
        in_all: true,
    },
    #[cfg(feature = "zmq")]
    Scenario {
        name: rivals::zmq::THROUGHPUT_NAME,
        system: systems::ZMQ,
        setup: rivals::zmq::THROUGHPUT_SETUP,
        about: "ZeroMQ msgs/s delivered PUB -> SUB and PUSH -> PULL, 64 B, 1 KiB, 64 KiB",
        run: Measures::Throughput(rivals::zmq::run_throughput),
        in_all: true,
    },
    #[cfg(feature = "zenoh")]
    Scenario {
        name: rivals::zenoh::request::NAME,
        system: systems::ZENOH,
        setup: rivals::zenoh::REQUEST_SETUP,
        about: "Zenoh put/subscriber ping-pong (z_ping/z_pong), tcp, tcp-ll, quic, quic-ll",
        run: Measures::RoundTrip(rivals::zenoh::request::run),
        in_all: true,
    },
    #[cfg(feature = "zenoh")]
    Scenario {
        name: rivals::zenoh::publish::NAME,
        system: systems::ZENOH,
        setup: rivals::zenoh::PUBLISH_SETUP,
        about: "Zenoh one-way put -> subscriber latency to 1 and 8 subscriber sessions \
                (closed loop on an untimed ack), every variant",
        run: Measures::OneWay(rivals::zenoh::publish::run),
        in_all: true,
    },
    #[cfg(feature = "zenoh")]
    Scenario {
        name: rivals::zenoh::throughput::NAME,
        system: systems::ZENOH,
        setup: rivals::zenoh::THROUGHPUT_SETUP,
        about: "Zenoh put -> subscriber msgs/s counted at the subscriber, tcp and quic, \
                64 B, 1 KiB, 64 KiB",
        run: Measures::Throughput(rivals::zenoh::throughput::run),
        in_all: true,
    },
    #[cfg(feature = "libp2p")]
    Scenario {
        name: rivals::libp2p::REQUEST_NAME,
        system: systems::LIBP2P,
        setup: rivals::libp2p::SETUP,
        about: "rust-libp2p request-response over QUIC: request of --payload bytes echoed \
                back, one new QUIC stream per request, closed loop",
        run: Measures::RoundTrip(rivals::libp2p::run_request),
        in_all: true,
    },
    #[cfg(feature = "libp2p")]
    Scenario {
        name: rivals::libp2p::THROUGHPUT_NAME,
        system: systems::LIBP2P,
        setup: rivals::libp2p::SETUP,
        about: "rust-libp2p request-response over QUIC, 64 requests in flight, empty \
                responses: requests/s answered (libp2p-p2p-64, -1024, -65536) against \
                quinn-batch-<payload>",
        run: Measures::Throughput(rivals::libp2p::run_throughput),
        in_all: true,
    },
];

/// Scenario name of the outbox latency rows.
pub const OUTBOX_LATENCY_NAME: &str = "outbox-latency";
/// Scenario name of the outbox throughput rows.
pub const OUTBOX_THROUGHPUT_NAME: &str = "outbox-throughput";

/// Scenario name of the pub/sub one-way latency rows.
pub const PUBSUB_NAME: &str = "pubsub";
/// Scenario name of the pub/sub throughput rows.
pub const PUBSUB_THROUGHPUT_NAME: &str = "pubsub-throughput";

/// The scenario called `name`, if any.
pub fn find_scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The rows of one run of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum RunRows {
    /// Latency rows (round-trip or one-way).
    Latency(Vec<LatencyReport>),
    /// Throughput rows.
    Throughput(Vec<ThroughputReport>),
}

impl RunRows {
    /// `(row name, one-line summary)` per row, for progress output.
    pub fn summaries(&self) -> Vec<(String, String)> {
        match self {
            Self::Latency(rows) => rows.iter().map(|r| (r.name.clone(), r.summary())).collect(),
            Self::Throughput(rows) => rows.iter().map(|r| (r.name.clone(), r.summary())).collect(),
        }
    }
}

/// Every row of a scenario aggregated across runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioResults {
    /// Latency rows (round-trip or one-way, as the scenario's [`Measures`] says).
    Latency(Vec<AggregatedReport>),
    /// Throughput rows.
    Throughput(Vec<AggregatedThroughput>),
}

/// Runs `scenario` `runs` times (each run fresh: new sockets, certificates, connection) and
/// returns, per report row, the median across runs with every run kept.
/// `on_run(run_index, &rows)` is called after each run (progress output).
pub fn run_repeated(
    scenario: &Scenario,
    config: &BenchConfig,
    runs: usize,
    mut on_run: impl FnMut(usize, &RunRows),
) -> BenchResult<ScenarioResults> {
    let context = |run: usize| move |e: BenchError| e.context(format!("run {}", run + 1));
    match scenario.run {
        Measures::RoundTrip(run_fn) | Measures::OneWay(run_fn) => {
            let rows = repeat(
                runs,
                |r| run_fn(config).map_err(context(r)),
                |r| &r.name,
                |run, rows| {
                    on_run(run, &RunRows::Latency(rows.to_vec()));
                },
            )?;
            Ok(ScenarioResults::Latency(
                rows.into_iter()
                    .filter_map(AggregatedReport::from_runs)
                    .collect(),
            ))
        }
        Measures::Throughput(run_fn) => {
            let rows = repeat(
                runs,
                |r| run_fn(config).map_err(context(r)),
                |r| &r.name,
                |run, rows| {
                    on_run(run, &RunRows::Throughput(rows.to_vec()));
                },
            )?;
            Ok(ScenarioResults::Throughput(
                rows.into_iter()
                    .filter_map(AggregatedThroughput::from_runs)
                    .collect(),
            ))
        }
    }
}

/// Runs `one_run` `runs` times and groups the rows by name (first-seen order), each group in
/// run order.
fn repeat<R: Clone>(
    runs: usize,
    mut one_run: impl FnMut(usize) -> BenchResult<Vec<R>>,
    name: impl Fn(&R) -> &String,
    mut on_run: impl FnMut(usize, &[R]),
) -> BenchResult<Vec<Vec<R>>> {
    let mut rows: Vec<(String, Vec<R>)> = Vec::new();
    for run in 0..runs {
        let reports = one_run(run)?;
        on_run(run, &reports);
        for report in reports {
            match rows.iter_mut().find(|(n, _)| n == name(&report)) {
                Some((_, list)) => list.push(report),
                None => rows.push((name(&report).clone(), vec![report])),
            }
        }
    }
    Ok(rows.into_iter().map(|(_, list)| list).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> BenchConfig {
        BenchConfig {
            count: 300,
            warmup: 30,
            payload: 64,
            run_timeout: Duration::from_secs(30),
            placement: Placement::Any,
            duration: Duration::from_millis(200),
        }
    }

    #[test]
    fn scenario_names_are_unique_and_baseline_exists() {
        for (i, a) in SCENARIOS.iter().enumerate() {
            assert!(SCENARIOS[i + 1..].iter().all(|b| b.name != a.name));
        }
        assert!(find_scenario(DEFAULT_BASELINE).is_some());
    }

    #[test]
    fn every_round_trip_scenario_runs_on_loopback() {
        for scenario in SCENARIOS {
            // Rivals give one row per variant and are tested in their own modules.
            let rival =
                systems::find(scenario.system).is_some_and(|s| s.role == systems::Role::Rival);
            if rival || !matches!(scenario.run, Measures::RoundTrip(_)) {
                continue;
            }
            let results = run_repeated(scenario, &quick(), 2, |_, _| {})
                .unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
            let ScenarioResults::Latency(rows) = results else {
                panic!("{}: latency rows expected", scenario.name);
            };
            assert!(!rows.is_empty(), "{}", scenario.name);
            if rows.len() == 1 {
                assert_eq!(rows[0].median.name, scenario.name);
            }
            for row in &rows {
                assert_eq!(row.median.count, 300, "{}", row.median.name);
                assert_eq!(row.per_run.len(), 2);
                assert!(row.median.p50 > 0 && row.median.p50 <= row.median.max);
            }
        }
    }

    #[test]
    fn pubsub_rows_include_the_baseline_and_every_fan_out() {
        let scenario = find_scenario(PUBSUB_NAME).expect("registered");
        let config = BenchConfig {
            count: 100,
            warmup: 10,
            ..quick()
        };
        let Ok(ScenarioResults::Latency(rows)) = run_repeated(scenario, &config, 1, |_, _| {})
        else {
            panic!("pubsub failed or gave no latency rows");
        };
        let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
        assert_eq!(
            names,
            [
                pubsub::ONEWAY_NAME,
                "quinn-fanout-4",
                "quinn-fanout-4-last",
                "quinn-fanout-16",
                "quinn-fanout-16-last",
                "shoal-publish-1",
                "shoal-publish-4",
                "shoal-publish-4-last",
                "shoal-publish-16",
                "shoal-publish-16-last"
            ]
        );
        // Every receiver recorded every measured message.
        for (row, count) in [(3, 16 * 100), (4, 100), (8, 16 * 100), (9, 100)] {
            assert_eq!(rows[row].median.count, count, "{}", rows[row].median.name);
        }
    }

    #[test]
    fn throughput_rows_are_measured_and_compared() {
        let scenario = find_scenario(PUBSUB_THROUGHPUT_NAME).expect("registered");
        let Ok(ScenarioResults::Throughput(rows)) = run_repeated(scenario, &quick(), 1, |_, _| {})
        else {
            panic!("pubsub-throughput failed or gave no throughput rows");
        };
        let names: Vec<&str> = rows.iter().map(|r| r.median.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "quinn-batch-64",
                "shoal-reliable-64",
                "shoal-reliable-batch-64",
                "shoal-best-effort-64",
                "quinn-batch-1024",
                "shoal-reliable-1024",
                "shoal-reliable-batch-1024",
                "shoal-best-effort-1024"
            ]
        );
        for row in &rows {
            assert!(row.median.messages > 0, "{}", row.median.name);
        }
        for row in &rows[1..4] {
            assert_eq!(row.median.baseline.as_deref(), Some("quinn-batch-64"));
        }
    }

    #[test]
    fn zero_payload_and_large_payload_work() {
        let tiny = BenchConfig {
            payload: 0,
            ..quick()
        };
        let big = BenchConfig {
            payload: 100_000,
            count: 50,
            warmup: 5,
            ..quick()
        };
        for config in [tiny, big] {
            let rows = quinn_echo::run_stream(&config).expect("stream echo");
            assert_eq!(rows[0].count, config.count);
        }
        let err = quinn_echo::run_datagram(&big).expect_err("too large for a datagram");
        assert!(err.message().contains("datagram limit"), "{err}");
    }
}
