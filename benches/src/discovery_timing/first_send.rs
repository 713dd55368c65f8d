//! Measurement 1: start → first successful send.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::{MeshCa, Message, NodeEvent};
use shoal_discovery::in_root_netns;
use shoal_discovery::netns::Lan;

use super::node_thread::{Handler, NodeSetup, NodeThread};
use super::safety::DaemonAudit;
use super::{
    DIAL_WATCH, FIRST_SEND_TARGET, MESSAGE_NAME, SHUTDOWN_LIMIT, Series, check_interrupted, ms,
    series, shoal_err, sleep_checked,
};
use crate::error::{BenchError, BenchResult};
use crate::runtime;

/// Service of the long-lived node in measurement 1.
const TARGET_SERVICE: &str = "target";
/// Service of the fresh nodes in measurement 1.
const PROBE_SERVICE: &str = "probe";
/// Longest a fresh node may take to its first successful send before the round fails.
const FIRST_SEND_LIMIT: Duration = Duration::from_secs(10);

/// One fresh node's timings.
#[derive(Debug, Clone, Copy)]
struct StartSample {
    /// `NodeBuilder::start()` returned.
    started: Duration,
    /// `send("target")` resolved Ok (from just before `start()`).
    first_send: Option<Duration>,
    /// Attempts the first send took.
    attempts: u32,
    /// How long the graceful shutdown took.
    shutdown: Duration,
}

fn fresh_node_round(lan: &Lan, ca: MeshCa) -> BenchResult<StartSample> {
    let listen = SocketAddr::new(IpAddr::V4(lan.addr(1)), 0);
    lan.run_on(1, move || -> BenchResult<StartSample> {
        if in_root_netns() {
            return Err(BenchError::msg(
                "fresh-node thread is in the root network namespace",
            ));
        }
        let rt = runtime::build()?;
        rt.block_on(async move {
            let setup = NodeSetup {
                service: PROBE_SERVICE,
                ca: ca.clone(),
                listen,
                liveness: None,
                handler: Handler::None,
                eager: false,
            };
            let builder = setup.builder(ca.issue(PROBE_SERVICE).map_err(shoal_err)?);
            let t0 = Instant::now();
            let node = builder.start().await.map_err(shoal_err)?;
            let started = t0.elapsed();
            let sent = tokio::time::timeout(
                FIRST_SEND_LIMIT,
                node.send(TARGET_SERVICE, Message::command(MESSAGE_NAME, "hello")),
            )
            .await;
            let first_send = t0.elapsed();
            let (first_send, attempts) = match sent {
                Ok(Ok(receipt)) => (Some(first_send), receipt.attempts),
                Ok(Err(e)) => {
                    eprintln!("  first send failed: {e}");
                    (None, 0)
                }
                Err(_) => {
                    eprintln!("  first send did not resolve within {FIRST_SEND_LIMIT:?}");
                    (None, 0)
                }
            };
            let t1 = Instant::now();
            let _ = tokio::time::timeout(SHUTDOWN_LIMIT, node.shutdown()).await;
            Ok(StartSample {
                started,
                first_send,
                attempts,
                shutdown: t1.elapsed(),
            })
        })
    })?
}

/// The target's failed dials during measurement 1.
#[derive(Debug, Clone, Default)]
pub struct DialLog {
    /// `HandshakeFailed` events.
    pub failures: u64,
    /// Distinct addresses that failed.
    pub addrs: Vec<SocketAddr>,
    /// A few distinct reasons.
    pub reasons: Vec<String>,
}

/// What measurement 1 found; [`super::run`] turns it into part of the [`super::Outcome`].
pub(super) struct FirstSendResults {
    pub(super) target_peers_after: usize,
    pub(super) target_handshake_failures_later: u64,
    pub(super) dial_log: DialLog,
    pub(super) series: Vec<Series>,
    pub(super) retried: usize,
    pub(super) failed: usize,
    pub(super) target_handshake_failures: u64,
    pub(super) target_connections: u64,
}

/// How measurement 1 runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct FirstSendPlan {
    /// Fresh-node starts.
    pub(super) starts: usize,
    /// Print a line per start (the `discovery-timing` binary does; `shoal-bench` does not).
    pub(super) verbose: bool,
    /// Watch the target for [`DIAL_WATCH`] afterwards for redials of departed nodes.
    pub(super) watch_dials: bool,
}

pub(super) fn measure_first_send(
    lan: &Lan,
    ca: &MeshCa,
    plan: FirstSendPlan,
    audit: &DaemonAudit,
) -> BenchResult<FirstSendResults> {
    let starts = plan.starts;
    if plan.verbose {
        eprintln!("measurement 1: {starts} fresh nodes on h1, each sending to `target` on h0");
    }
    let target = NodeThread::start(
        "target",
        lan.host(0),
        NodeSetup {
            service: TARGET_SERVICE,
            ca: ca.clone(),
            listen: SocketAddr::new(IpAddr::V4(lan.addr(0)), 0),
            liveness: None,
            handler: Handler::Instant,
            eager: false,
        },
    )?;
    audit.check()?;
    // Record the target's failed dials (with their reasons) while the fresh nodes come and go.
    let dials = Arc::new(Mutex::new(DialLog::default()));
    let log = Arc::clone(&dials);
    target.call(Duration::from_secs(5), move |node| async move {
        let mut events = node.events();
        tokio::task::spawn_local(async move {
            for _ in 0..10_000_000 {
                match events.recv().await {
                    Ok(NodeEvent::HandshakeFailed { addr, reason }) => {
                        let mut log = log
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        log.failures += 1;
                        if !log.addrs.contains(&addr) {
                            log.addrs.push(addr);
                        }
                        if log.reasons.len() < 3 && !log.reasons.contains(&reason) {
                            log.reasons.push(reason);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    })?;
    // Let the target's own announcement go out before the first fresh node starts.
    sleep_checked(Duration::from_millis(200))?;

    let (mut first, mut started, mut shutdown) = (Vec::new(), Vec::new(), Vec::new());
    let (mut retried, mut failed) = (0, 0);
    for round in 0..starts {
        check_interrupted()?;
        let sample = fresh_node_round(lan, ca.clone())?;
        audit.check()?;
        started.push(sample.started);
        shutdown.push(sample.shutdown);
        match sample.first_send {
            Some(d) => {
                first.push(d);
                if sample.attempts > 1 {
                    retried += 1;
                }
                if !plan.verbose {
                    continue;
                }
                eprintln!(
                    "  start {}/{starts}: start() {:.1} ms, first send Ok after {:.1} ms ({} attempt(s)), shutdown {:.1} ms",
                    round + 1,
                    ms(sample.started),
                    ms(d),
                    sample.attempts,
                    ms(sample.shutdown)
                );
            }
            None => {
                failed += 1;
                eprintln!("  start {}/{starts}: first send FAILED", round + 1);
            }
        }
    }
    let stats = target.call(Duration::from_secs(5), |node| async move { node.stats() })?;
    let connected_now = target.call(
        Duration::from_secs(5),
        |node| async move { node.peers().len() },
    )?;
    // Every fresh node is gone now; see whether the target keeps dialling their addresses.
    if plan.watch_dials {
        eprintln!(
            "  watching the target for {:?} with no fresh node alive",
            DIAL_WATCH
        );
        sleep_checked(DIAL_WATCH)?;
    }
    let later = target.call(Duration::from_secs(5), |node| async move { node.stats() })?;
    drop(target);
    let log = dials
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(FirstSendResults {
        series: vec![
            series("start() → first send Ok", &first, Some(FIRST_SEND_TARGET))?,
            series("start() returned", &started, None)?,
            series("graceful shutdown()", &shutdown, None)?,
        ],
        retried,
        failed,
        target_handshake_failures: stats.handshake_failures,
        target_connections: stats.connections,
        target_peers_after: connected_now,
        target_handshake_failures_later: later.handshake_failures,
        dial_log: log,
    })
}
