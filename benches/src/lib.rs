//! Shoal's benchmark harness: closed-loop round-trip latency scenarios, the raw floors they
//! are compared with (plain UDP, raw quinn over mutual TLS), and the reporting.
//!
//! # Adding a scenario
//!
//! 1. Write `fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>>` doing **one
//!    run**: build the two sides with [`runtime::run_pair`] (server side announces what the
//!    client needs; client side times round trips with [`measure::measure`]). Certificates
//!    come from [`certs::generate_pki`].
//! 2. Add one entry to [`SCENARIOS`].
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
pub mod quinn_echo;
pub mod report;
pub mod runtime;
pub mod shoal_scenarios;
pub mod udp_echo;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use affinity::Placement;
pub use error::{BenchError, BenchResult};
pub use report::{AggregatedReport, LatencyReport};

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
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            count: 20_000,
            warmup: 2_000,
            payload: 64,
            run_timeout: Duration::from_secs(120),
            placement: Placement::default(),
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

/// One run of a scenario: returns one or more report rows.
pub type ScenarioFn = fn(&BenchConfig) -> BenchResult<Vec<LatencyReport>>;

/// A named scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name used with `--scenario` and as the report row name.
    pub name: &'static str,
    /// One line on what it measures (shown by `--list`).
    pub about: &'static str,
    /// Performs one run.
    pub run: ScenarioFn,
}

/// Every scenario, in the order `--scenario all` runs them. Add new scenarios here.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: udp_echo::NAME,
        about: "raw UDP: one datagram echoed over loopback, no crypto, closed loop",
        run: udp_echo::run,
    },
    Scenario {
        name: quinn_echo::STREAM_NAME,
        about: "raw quinn (baseline): echo over ONE long-lived bidi stream, mutual TLS, \
                u32-length-prefixed frames",
        run: quinn_echo::run_stream,
    },
    Scenario {
        name: quinn_echo::DATAGRAM_NAME,
        about: "raw quinn datagrams: QUIC DATAGRAM frame echoed, mutual TLS",
        run: quinn_echo::run_datagram,
    },
    Scenario {
        name: shoal_scenarios::SEND_NAME,
        about: "Shoal point-to-point: send a command, resolve when the receiver's handler \
                finished and its ack came back",
        run: shoal_scenarios::run_send,
    },
    Scenario {
        name: shoal_scenarios::REQUEST_NAME,
        about: "Shoal request/response: request to an echo handler, resolve on the reply",
        run: shoal_scenarios::run_request,
    },
];

/// The scenario called `name`, if any.
pub fn find_scenario(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Runs `scenario` `runs` times (each run fresh: new sockets, certificates, connection) and
/// returns, per report row, the median across runs with every run kept.
/// `on_run(run_index, &reports)` is called after each run (progress output).
pub fn run_repeated(
    scenario: &Scenario,
    config: &BenchConfig,
    runs: usize,
    mut on_run: impl FnMut(usize, &[LatencyReport]),
) -> BenchResult<Vec<AggregatedReport>> {
    let mut rows: Vec<(String, Vec<LatencyReport>)> = Vec::new();
    for run in 0..runs {
        let reports = (scenario.run)(config).map_err(|e| e.context(format!("run {}", run + 1)))?;
        on_run(run, &reports);
        for report in reports {
            match rows.iter_mut().find(|(name, _)| *name == report.name) {
                Some((_, list)) => list.push(report),
                None => rows.push((report.name.clone(), vec![report])),
            }
        }
    }
    Ok(rows
        .into_iter()
        .filter_map(|(_, list)| AggregatedReport::from_runs(list))
        .collect())
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
    fn every_scenario_runs_on_loopback() {
        for scenario in SCENARIOS {
            let rows = run_repeated(scenario, &quick(), 2, |_, _| {})
                .unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
            assert_eq!(rows.len(), 1, "{}", scenario.name);
            let row = &rows[0];
            assert_eq!(row.median.name, scenario.name);
            assert_eq!(row.median.count, 300);
            assert_eq!(row.per_run.len(), 2);
            assert!(row.median.p50 > 0 && row.median.p50 <= row.median.max);
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
