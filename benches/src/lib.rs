//! Shoal's benchmark harness: closed-loop round-trip latency, publish/subscribe one-way
//! latency, pub/sub and point-to-point throughput, latency at a fixed offered rate,
//! connection set-up and discovery scenarios; the raw floors they are compared with (plain
//! UDP, raw quinn over mutual TLS); the rivals (behind cargo features, [`rivals`]); and the
//! reporting, including a comparison by kind of row ([`compare`]).
//!
//! # Adding a scenario
//!
//! 1. Write `fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>>` doing **one
//!    run**: build the two sides with [`runtime::run_pair`] (server side announces what the
//!    client needs; client side times round trips with [`measure::measure`]). Certificates
//!    come from [`certs::generate_pki`]. Throughput scenarios return
//!    [`ThroughputReport`]s instead (see [`pubsub_throughput`]); offered-rate scenarios
//!    return [`RateReport`]s made with [`measure::open_loop()`].
//! 2. Add one entry to [`SCENARIOS`], saying which table its rows go to ([`Measures`]).
//! 3. Name the rows `<variant>-<kind>` (e.g. `nats-request`, `zenoh-tcp-ll-publish-8`,
//!    `zmq-pubsub-1024`) so that [`compare`] puts them beside Shoal's row of that kind.
//!
//! The harness repeats the run `--runs` times, takes medians, prints the ratio to the
//! baseline row and writes JSON/Markdown; nothing else needs touching.
//!
//! All sockets are on `127.0.0.1` ([`LOOPBACK`]), but `shoal-flood`'s flooder, on `127.0.0.2`
//! ([`flood::FLOODER`]).

pub mod affinity;
pub mod busy_poll;
pub mod certs;
pub mod compare;
pub mod connect;
pub mod discovery_timing;
pub mod error;
pub mod fanout;
pub mod flood;
pub mod measure;
pub mod outbox;
pub mod pubsub;
pub mod pubsub_throughput;
pub mod quinn_echo;
pub mod raw_endpoint;
pub mod report;
pub mod results;
pub mod rivals;
pub mod runtime;
mod scenarios;
pub mod shoal_scenarios;
pub mod steal;
pub mod systems;
pub mod throughput;
pub mod typed_request;
pub mod udp_echo;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use affinity::Placement;
pub use error::{BenchError, BenchResult};
pub use report::rate::{AggregatedRate, RateReport};
pub use report::{Aggregated, AggregatedReport, LatencyReport, MedianOf};
pub use throughput::{AggregatedThroughput, ThroughputReport};

pub use scenarios::SCENARIOS;

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

impl BenchConfig {
    /// Tiny counts and short windows, for the tests that run each scenario once on loopback.
    #[cfg(test)]
    pub(crate) fn quick() -> Self {
        Self {
            count: 300,
            warmup: 30,
            payload: 64,
            run_timeout: Duration::from_secs(60),
            placement: Placement::Any,
            duration: Duration::from_millis(200),
        }
    }
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

/// One run of an offered-rate scenario at `rate` messages per second (`--rate`): returns
/// one or more rows made with [`measure::open_loop()`] (or [`measure::RateRecorder`]).
pub type RateFn = fn(&BenchConfig, u64) -> BenchResult<Vec<RateReport>>;

/// What a scenario measures, which decides the table its rows go to.
#[derive(Debug, Clone, Copy)]
pub enum Measures {
    /// Round-trip times; ratios to `--baseline` (default [`DEFAULT_BASELINE`]).
    RoundTrip(ScenarioFn),
    /// One-way latencies; ratios to [`pubsub::ONEWAY_NAME`].
    OneWay(ScenarioFn),
    /// Messages per second; each row's ratio to the raw row it names.
    Throughput(ThroughputFn),
    /// Latency at a fixed offered rate, from each message's intended send time, with late
    /// and lost messages; ratios to raw quinn at the same rate (rows `<variant>-at-<rate>`).
    AtRate(RateFn),
    /// Set-up times (a new connection, a newly discovered peer); ratios to
    /// [`connect::QUINN_NAME`].
    SetUp(ScenarioFn),
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
    /// Whether `--scenario all` runs it. Every scenario of the suite has `true`; `false` is
    /// for diagnostic scenarios that should run only when named.
    pub in_all: bool,
}

/// Scenario name of the outbox latency rows.
pub const OUTBOX_LATENCY_NAME: &str = "outbox-latency";
/// Scenario name of the outbox throughput rows.
pub const OUTBOX_THROUGHPUT_NAME: &str = "outbox-throughput";
/// Scenario name of the outbox offered-rate rows.
pub const OUTBOX_AT_RATE_NAME: &str = "outbox-at-rate";

/// Scenario name of raw quinn at the offered rate.
pub const QUINN_AT_RATE_NAME: &str = "quinn-stream-at-rate";
/// Scenario name of Shoal's rows at the offered rate.
pub const SHOAL_AT_RATE_NAME: &str = "shoal-at-rate";

/// The scenario called `name`, if any.
pub fn find_scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The rows of one run of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum RunRows {
    /// Latency rows (round-trip, one-way or set-up).
    Latency(Vec<LatencyReport>),
    /// Throughput rows.
    Throughput(Vec<ThroughputReport>),
    /// Offered-rate rows.
    Rate(Vec<RateReport>),
}

impl RunRows {
    /// `(row name, one-line summary)` per row, for progress output.
    pub fn summaries(&self) -> Vec<(String, String)> {
        match self {
            Self::Latency(rows) => rows.iter().map(|r| (r.name.clone(), r.summary())).collect(),
            Self::Throughput(rows) => rows.iter().map(|r| (r.name.clone(), r.summary())).collect(),
            Self::Rate(rows) => rows
                .iter()
                .map(|r| (r.name().to_owned(), r.summary()))
                .collect(),
        }
    }
}

/// Every row of a scenario aggregated across runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioResults {
    /// Latency rows (round-trip, one-way or set-up, as the scenario's [`Measures`] says).
    Latency(Vec<AggregatedReport>),
    /// Throughput rows.
    Throughput(Vec<AggregatedThroughput>),
    /// Offered-rate rows.
    Rate(Vec<AggregatedRate>),
}

/// Runs `scenario` `runs` times (each run fresh: new sockets, certificates, connection) and
/// returns, per report row, the median across runs with every run kept.
/// `on_run(run_index, &rows)` is called after each run (progress output). Offered-rate
/// scenarios run at [`measure::DEFAULT_RATE`]; see [`run_repeated_at`].
pub fn run_repeated(
    scenario: &Scenario,
    config: &BenchConfig,
    runs: usize,
    on_run: impl FnMut(usize, &RunRows),
) -> BenchResult<ScenarioResults> {
    run_repeated_at(scenario, config, measure::DEFAULT_RATE, runs, on_run)
}

/// [`run_repeated`], with offered-rate scenarios at `rate` messages per second.
pub fn run_repeated_at(
    scenario: &Scenario,
    config: &BenchConfig,
    rate: u64,
    runs: usize,
    mut on_run: impl FnMut(usize, &RunRows),
) -> BenchResult<ScenarioResults> {
    // "Skipped" says why the scenario cannot run here at all, whichever run found out.
    let context = |run: usize| {
        move |e: BenchError| {
            if e.is_skipped() {
                e
            } else {
                e.context(format!("run {}", run + 1))
            }
        }
    };
    match scenario.run {
        Measures::RoundTrip(run_fn) | Measures::OneWay(run_fn) | Measures::SetUp(run_fn) => {
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
        Measures::AtRate(run_fn) => {
            let rows = repeat(
                runs,
                |r| run_fn(config, rate).map_err(context(r)),
                |r| &r.latency.name,
                |run, rows| {
                    on_run(run, &RunRows::Rate(rows.to_vec()));
                },
            )?;
            Ok(ScenarioResults::Rate(
                rows.into_iter()
                    .filter_map(AggregatedRate::from_runs)
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
mod tests;
