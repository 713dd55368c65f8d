//! `discovery-timing`: how long mDNS discovery and failover take, end to end, between Shoal
//! nodes on a LAN made of Linux network namespaces.
//!
//! Two measurements (see `benches/README.md` and the `discovery-timing` binary); the first
//! one is also the `discovery` scenario of `shoal-bench` ([`run_scenario`], row
//! `shoal-discover`):
//!
//! 1. **Start → first send.** Host `h0` runs a long-lived node of service `target` with mDNS
//!    on `lan0`. For each of `--starts` rounds a fresh node is started on host `h1` (mDNS on
//!    `lan0`, no static peers) and the time from just before [`shoal::NodeBuilder::start`] to
//!    the moment `send("target", ..)` resolves `Ok` is recorded; then the fresh node shuts
//!    down gracefully.
//! 2. **Kill → failover.** Hosts `h1` and `h2` each run an instance of `work` (handler takes
//!    about 1 ms); a sender on `h0` keeps a bounded number of commands in flight. The `h2`
//!    instance is a separate **process** (this binary re-executed under `ip netns exec` with
//!    the hidden `--child-victim` flag) killed with `SIGKILL`, so it sends nothing when it
//!    dies, like `kill -9`. Recorded per kill: kill → the sender's
//!    [`NodeEvent::PeerDown`](shoal::NodeEvent::PeerDown) for the victim, kill → the first
//!    (and last) successful ack from the survivor of a message that had to be retried, and the
//!    sends that failed. Repeated
//!    `--kills` times with the default liveness settings and again with
//!    `liveness(200 ms, 800 ms)`.
//!
//! # Never on the real network
//!
//! Every socket of every node, and every mDNS daemon, is created on a thread that entered a
//! namespace of the [`Lan`] this program builds (or in the victim process, started inside
//! one). [`shoal_discovery::MdnsDiscovery`] keeps its default of refusing the root
//! namespace. The program checks, while it runs, that no mDNS daemon thread of this process
//! and no thread of a victim process is in the root namespace, and compares the root
//! namespace's links, addresses, routes and multicast memberships before and after. Without
//! the rights to create namespaces it explains why and fails.
//!
//! # Layout
//!
//! - `node_thread`: a node on its own thread inside a namespace, driven through a channel.
//! - `first_send`: measurement 1.
//! - `failover`: measurement 2, with its `load_generator` and the `victim` process.
//! - `safety`: the checks on the root namespace.
//! - `render`: the results as a text table and as Markdown.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal::{Error as ShoalError, MeshCa};
use shoal_discovery::netns::Lan;

use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::report::{self, LatencyReport};

mod failover;
mod first_send;
mod load_generator;
mod node_thread;
mod render;
mod safety;
mod victim;

pub use first_send::DialLog;
pub use render::{all_targets_met, machine, render_markdown, render_text};
pub use victim::{VictimArgs, victim_main};

use failover::measure_failover;
use first_send::{FirstSendPlan, FirstSendResults, measure_first_send};
use safety::{DaemonAudit, root_snapshot};

/// Hosts of the LAN: `h0` (target / sender), `h1` (fresh nodes / survivor), `h2` (victim).
const HOSTS: usize = 3;
/// Service of the two instances in measurement 2.
const WORK_SERVICE: &str = "work";
/// Message name handled by `target` and `work`.
const MESSAGE_NAME: &str = "job";

/// Target for measurement 1 (start → first send).
pub const FIRST_SEND_TARGET: Duration = Duration::from_millis(500);
/// Target for measurement 2 (kill → traffic moved).
pub const FAILOVER_TARGET: Duration = Duration::from_secs(2);
/// The fast liveness pass: keep-alive and idle timeout.
pub const FAST_LIVENESS: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_millis(800));
/// The node's default liveness (documented on `NodeBuilder::liveness`), for the report.
pub const DEFAULT_LIVENESS: (Duration, Duration) = (
    shoal::NodeBuilder::DEFAULT_KEEP_ALIVE,
    shoal::NodeBuilder::DEFAULT_IDLE_TIMEOUT,
);

/// Longest a graceful shutdown is waited for.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);
/// How long the target is watched after measurement 1, with no fresh node alive.
const DIAL_WATCH: Duration = Duration::from_secs(6);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What to run (the binary's command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// Fresh-node starts in measurement 1.
    pub starts: usize,
    /// Kills per liveness setting in measurement 2.
    pub kills: usize,
    /// Commands the sender keeps in flight in measurement 2.
    pub concurrency: usize,
    /// How long the `work` handler takes.
    pub handler: Duration,
    /// Where to write the Markdown report, if anywhere.
    pub markdown: Option<PathBuf>,
    /// The command line, as printed in the report.
    pub command: String,
}

/// One measured series, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Series {
    /// Row label.
    pub label: String,
    /// Percentiles (ns) from the HDR histogram.
    pub report: LatencyReport,
    /// The smallest sample.
    pub min: Duration,
    /// The target the row is judged against, if any.
    pub target: Option<Duration>,
}

/// Everything one failover pass (one liveness setting) found.
#[derive(Debug, Clone)]
pub struct FailoverPass {
    /// Pass name, e.g. `defaults (250 ms / 1.5 s)`.
    pub name: String,
    /// kill → PeerDown, kill → first retried ack, kill → last retried ack.
    pub series: Vec<Series>,
    /// Kills done.
    pub kills: usize,
    /// Messages sent in all rounds.
    pub sent: u64,
    /// Messages that needed more than one attempt (all rounds).
    pub retried: u64,
    /// Messages that failed or never resolved (must be 0).
    pub lost: u64,
    /// Some failure reasons, if any.
    pub failures: Vec<String>,
    /// Messages retried although they started before the kill and the victim was fine: noise.
    pub retried_before_kill: u64,
    /// Retried messages per kill: how many were stuck on the victim.
    pub stuck_per_kill: Vec<u64>,
    /// Retried messages per kill that were sent to the victim after it was killed.
    pub after_kill_per_kill: Vec<u64>,
    /// The sender's messages in flight to the victim just before each kill (sampled every
    /// 2 ms).
    pub victim_in_flight_at_kill: Vec<Option<usize>>,
    /// Handshake failures the sender counted (redials of dead victims' addresses).
    pub sender_handshake_failures: u64,
}

/// All results of one program run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Start → first Ok send (and its parts).
    pub first_send: Vec<Series>,
    /// First sends that needed more than one attempt.
    pub first_send_retried: usize,
    /// Rounds whose first send failed (must be 0).
    pub first_send_failed: usize,
    /// Handshake failures the long-lived target counted during measurement 1.
    pub target_handshake_failures: u64,
    /// Connections the long-lived target made during measurement 1.
    pub target_connections: u64,
    /// Peers the target still had right after the last fresh node shut down.
    pub target_peers_after: usize,
    /// The target's handshake failures a few seconds after the last fresh node left.
    pub target_handshake_failures_later: u64,
    /// The target's failed dials, with reasons.
    pub dial_log: DialLog,
    /// One entry per liveness setting.
    pub failover: Vec<FailoverPass>,
    /// Safety checks done and their results, one line each.
    pub safety: Vec<String>,
}

/// Scenario name of measurement 1 in `shoal-bench`.
pub const SCENARIO_NAME: &str = "discovery";
/// Row of the `discovery` scenario: a fresh node's `start()` → its first `send` acked by a
/// service it found by mDNS.
pub const DISCOVER_NAME: &str = "shoal-discover";
/// Row of the `discovery` scenario: how long `start()` itself took.
pub const DISCOVER_START_NAME: &str = "shoal-discover-start";
/// Hosts the `discovery` scenario needs: `h0` (target) and `h1` (fresh nodes).
const SCENARIO_HOSTS: usize = 2;

/// Fresh-node starts per run of the `discovery` scenario: `--count` / 1000, between 3 and
/// 100 (20 by default).
pub fn scenario_starts(config: &BenchConfig) -> usize {
    usize::try_from((config.count / 1_000).clamp(3, 100)).unwrap_or(20)
}

/// One run of the `discovery` scenario: measurement 1 only ([`scenario_starts`] fresh
/// nodes), on a LAN of two namespaces built for the run and removed after it, with the same
/// safety checks as [`run`]. Rows [`DISCOVER_NAME`] and [`DISCOVER_START_NAME`].
///
/// Without the rights to create namespaces (not root, or a container without
/// `CAP_SYS_ADMIN`) it fails with a [`BenchError::skipped`] error saying so, having started
/// nothing: mDNS never runs outside namespaces this function made. Ctrl-C during the run
/// stops it after cleaning up, then ends the process as Ctrl-C normally would.
///
/// # Errors
///
/// Skipped as above; a node that cannot start; a first send that failed; a safety check.
pub fn run_scenario(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    install_interrupt_handler();
    let result = scenario_run(config);
    restore_default_signals();
    if INTERRUPTED.swap(false, Ordering::SeqCst) {
        // SAFETY: raising a signal whose default action was just restored has no
        // preconditions; it ends the process like the Ctrl-C the user pressed.
        unsafe {
            libc::raise(libc::SIGINT);
        }
    }
    result
}

fn scenario_run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    let before = safety::check_before_run()?;
    let audit = DaemonAudit::new()?;
    let ca = MeshCa::generate("discovery-timing").map_err(shoal_err)?;
    let plan = FirstSendPlan {
        starts: scenario_starts(config),
        verbose: false,
        watch_dials: false,
    };
    let result = {
        let lan = Lan::new(SCENARIO_HOSTS)?;
        let measured = measure_first_send(&lan, &ca, plan, &audit)
            .and_then(|first| Ok((first, root_snapshot()?)));
        drop(lan);
        measured
    };
    let during = result.as_ref().ok().map(|(_, during)| during.as_str());
    safety::check_after_run(&before, during, &audit)?;
    let (first, _) = result?;
    if first.failed > 0 {
        return Err(BenchError::msg(format!(
            "{DISCOVER_NAME}: {} of {} first sends failed",
            first.failed, plan.starts
        )));
    }
    // Series 0 is start → first send, series 1 is start() alone (see `measure_first_send`).
    let row = |i: usize, name: &str| {
        first.series.get(i).map(|s| LatencyReport {
            name: name.to_owned(),
            ..s.report.clone()
        })
    };
    [row(0, DISCOVER_NAME), row(1, DISCOVER_START_NAME)]
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| BenchError::msg("measurement 1 returned too few series"))
}

/// Puts back the default action of SIGINT and SIGTERM.
fn restore_default_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: restoring the default disposition has no preconditions.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// Asks the running measurement to stop early (SIGINT/SIGTERM); cleanup still runs.
pub fn install_interrupt_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
}

fn check_interrupted() -> BenchResult<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(BenchError::msg("interrupted"))
    } else {
        Ok(())
    }
}

/// Sleeps `d` in small steps, failing early if interrupted.
fn sleep_checked(d: Duration) -> BenchResult<()> {
    let end = Instant::now() + d;
    for _ in 0..100_000 {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    Ok(())
}

fn shoal_err(e: ShoalError) -> BenchError {
    BenchError::msg(e)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn series(label: &str, samples: &[Duration], target: Option<Duration>) -> BenchResult<Series> {
    let mut histogram = report::new_histogram()?;
    for d in samples {
        report::record(&mut histogram, *d);
    }
    Ok(Series {
        label: label.to_owned(),
        report: LatencyReport::from_histogram(label, &histogram),
        min: samples.iter().min().copied().unwrap_or_default(),
        target,
    })
}

// ---------------------------------------------------------------------------------------------
// The whole run.
// ---------------------------------------------------------------------------------------------

/// Builds the LAN, runs both measurements and checks that nothing was left behind or touched
/// the root namespace.
///
/// # Errors
///
/// If namespaces cannot be created, a node cannot start, a measurement round fails, or a
/// safety check finds something wrong.
pub fn run(options: &Options) -> BenchResult<Outcome> {
    let before = safety::check_before_run()?;
    let audit = DaemonAudit::new()?;
    let ca = MeshCa::generate("discovery-timing").map_err(shoal_err)?;

    let result = {
        let lan = Lan::new(HOSTS)?;
        eprintln!(
            "LAN {}: {} hosts ({}), bridge {}",
            lan.prefix(),
            HOSTS,
            lan.hosts().join(", "),
            lan.bridge()
        );
        let measured = (|| -> BenchResult<(FirstSendResults, Vec<FailoverPass>, String)> {
            let plan = FirstSendPlan {
                starts: options.starts,
                verbose: true,
                watch_dials: true,
            };
            let first = measure_first_send(&lan, &ca, plan, &audit)?;
            let mut passes = Vec::new();
            passes.push(measure_failover(&lan, &ca, None, options, &audit)?);
            let during = root_snapshot()?;
            passes.push(measure_failover(
                &lan,
                &ca,
                Some(FAST_LIVENESS),
                options,
                &audit,
            )?);
            Ok((first, passes, during))
        })();
        drop(lan);
        measured
    };

    // Safety checks run even if a measurement failed.
    let during = result.as_ref().ok().map(|(_, _, during)| during.as_str());
    let safety = safety::check_after_run(&before, during, &audit)?;
    let (first, failover, _) = result?;
    Ok(Outcome {
        first_send: first.series,
        first_send_retried: first.retried,
        first_send_failed: first.failed,
        target_handshake_failures: first.target_handshake_failures,
        target_connections: first.target_connections,
        target_peers_after: first.target_peers_after,
        target_handshake_failures_later: first.target_handshake_failures_later,
        dial_log: first.dial_log,
        failover,
        safety,
    })
}
