//! Measurement 2: kill -9 → PeerDown → traffic on the survivor.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::{MeshCa, NodeId};
use shoal_discovery::netns::Lan;
use tokio::sync::watch;

use super::load_generator::{DRAIN_LIMIT, Load, LoadState, Retried, generate_load, lock};
use super::node_thread::{Handler, NodeSetup, NodeThread};
use super::safety::DaemonAudit;
use super::victim::{PkiDir, Victim};
use super::{
    DEFAULT_LIVENESS, FAILOVER_TARGET, FailoverPass, Options, WORK_SERVICE, check_interrupted, ms,
    series, sleep_checked,
};
use crate::error::{BenchError, BenchResult};

/// Service of the sender in measurement 2.
const SENDER_SERVICE: &str = "sender";
/// Longest the sender waits to be connected to both `work` instances.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
/// Load before the kill, so the victim is busy when it dies.
const WARM_LOAD: Duration = Duration::from_millis(500);
/// Load kept up after the first retried ack, so every stuck message can move.
const SETTLE_LOAD: Duration = Duration::from_millis(300);
/// How long after the kill the victim must be detected before the round fails.
const DETECT_SLACK: Duration = Duration::from_secs(10);

/// One kill's results.
struct KillSample {
    peer_down: Duration,
    first_retried_ack: Duration,
    last_retried_ack: Duration,
    stuck: u64,
    after_kill: u64,
    victim_in_flight_at_kill: Option<usize>,
    rejoin: Duration,
    retried_before_kill: u64,
    sent: u64,
    retried: u64,
    lost: u64,
    failures: Vec<String>,
}

fn kill_round(
    lan: &Lan,
    sender: &NodeThread,
    survivor: NodeId,
    pki: &Path,
    liveness: Option<(Duration, Duration)>,
    options: &Options,
    audit: &DaemonAudit,
) -> BenchResult<KillSample> {
    let mut victim = Victim::spawn(lan, pki, liveness, options.handler)?;
    let victim_id = victim.id;
    audit.check()?;
    let connected_at = sender.call(
        CONNECT_LIMIT + Duration::from_secs(1),
        move |node| async move {
            let deadline = Instant::now() + CONNECT_LIMIT;
            for _ in 0..1_000_000 {
                let peers = node.peers();
                let has = |id: NodeId| peers.iter().any(|p| p.node == id);
                if has(victim_id) && has(survivor) {
                    return Ok(Instant::now());
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(BenchError::msg(format!(
                "sender not connected to both `work` instances within {CONNECT_LIMIT:?}"
            )))
        },
    )??;

    let state = Arc::new(Mutex::new(LoadState::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = Load {
        state: Arc::clone(&state),
        stop: stop_tx,
    };
    let concurrency = options.concurrency;
    let who = (victim_id, survivor);
    sender.submit(move |node| generate_load(node, concurrency, who, state, stop_rx))?;

    let result = (|| -> BenchResult<(Instant, Option<(usize, usize)>)> {
        sleep_checked(WARM_LOAD)?;
        let at_kill = {
            let s = lock(&load.state);
            if s.ok_victim == 0 {
                return Err(BenchError::msg(format!(
                    "the victim acked nothing during the warm-up (survivor acked {}, failed {})",
                    s.ok_survivor, s.failed
                )));
            }
            s.in_flight.back().map(|&(_, v, s)| (v, s))
        };
        let killed_at = victim.kill()?;
        let limit = killed_at + liveness.unwrap_or(DEFAULT_LIVENESS).1 + DETECT_SLACK;
        for _ in 0..1_000_000 {
            check_interrupted()?;
            let s = lock(&load.state);
            let moved = s
                .retried
                .iter()
                .any(|r| r.node == survivor && r.end > killed_at);
            if (s.peer_down.is_some() && moved) || s.done || Instant::now() >= limit {
                break;
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(2));
        }
        sleep_checked(SETTLE_LOAD)?;
        Ok((killed_at, at_kill))
    })();
    // Stop the load whatever happened, and wait for it to drain.
    let _ = load.stop.send(true);
    let drained_by = Instant::now() + DRAIN_LIMIT + Duration::from_secs(5);
    for _ in 0..1_000_000 {
        if lock(&load.state).done || Instant::now() >= drained_by {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (killed_at, at_kill) = result?;
    let s = lock(&load.state);
    if !s.done {
        return Err(BenchError::msg("the load generator did not drain in time"));
    }
    let peer_down = s
        .peer_down
        .ok_or_else(|| BenchError::msg("no PeerDown for the killed victim"))?;
    let moved: Vec<&Retried> = s
        .retried
        .iter()
        .filter(|r| r.node == survivor && r.end > killed_at)
        .collect();
    let first = moved
        .iter()
        .map(|r| r.end)
        .min()
        .ok_or_else(|| BenchError::msg("no retried message was acked by the survivor"))?;
    let last = moved.iter().map(|r| r.end).max().unwrap_or(first);
    let stuck = moved.iter().filter(|r| r.start <= killed_at).count() as u64;
    let retried_before_kill = s.retried.iter().filter(|r| r.end <= killed_at).count() as u64;
    let after_kill = moved.len() as u64 - stuck;
    let rejoin = connected_at.saturating_duration_since(victim.ready_at);
    eprintln!(
        "    victim {victim_id}: in sender's rotation {:.1} ms after READY; in flight at kill (victim, survivor) {at_kill:?}; \
         PeerDown after {:.0} ms ({}), first retried ack {:.0} ms, last {:.0} ms; retried: {stuck} sent before the kill, {after_kill} after; sent {}, lost {}",
        ms(rejoin),
        ms(peer_down.saturating_duration_since(killed_at)),
        s.peer_down_reason,
        ms(first.saturating_duration_since(killed_at)),
        ms(last.saturating_duration_since(killed_at)),
        s.launched,
        s.failed + s.unresolved,
    );
    Ok(KillSample {
        peer_down: peer_down.saturating_duration_since(killed_at),
        first_retried_ack: first.saturating_duration_since(killed_at),
        last_retried_ack: last.saturating_duration_since(killed_at),
        stuck,
        after_kill,
        victim_in_flight_at_kill: at_kill.map(|(v, _)| v),
        rejoin,
        retried_before_kill,
        sent: s.launched,
        retried: s.retried.len() as u64,
        lost: s.failed + s.unresolved,
        failures: s.failures.clone(),
    })
}

pub(super) fn measure_failover(
    lan: &Lan,
    ca: &MeshCa,
    liveness: Option<(Duration, Duration)>,
    options: &Options,
    audit: &DaemonAudit,
) -> BenchResult<FailoverPass> {
    let (keep_alive, idle) = liveness.unwrap_or(DEFAULT_LIVENESS);
    let name = format!(
        "{} (keep-alive {} ms, idle timeout {} ms)",
        if liveness.is_some() {
            "liveness(200 ms, 800 ms)"
        } else {
            "defaults"
        },
        keep_alive.as_millis(),
        idle.as_millis()
    );
    eprintln!("measurement 2, {name}: {} kill(s)", options.kills);
    let pki = PkiDir::create(ca)?;
    let survivor = NodeThread::start(
        "survivor",
        lan.host(1),
        NodeSetup {
            service: WORK_SERVICE,
            ca: ca.clone(),
            listen: SocketAddr::new(IpAddr::V4(lan.addr(1)), 0),
            liveness,
            handler: Handler::Sleep(options.handler),
            eager: false,
        },
    )?;
    let sender = NodeThread::start(
        "sender",
        lan.host(0),
        NodeSetup {
            service: SENDER_SERVICE,
            ca: ca.clone(),
            listen: SocketAddr::new(IpAddr::V4(lan.addr(0)), 0),
            liveness,
            handler: Handler::None,
            // The failover measurement needs a connection to both instances before the kill.
            eager: true,
        },
    )?;
    audit.check()?;

    let mut samples = Vec::new();
    for k in 0..options.kills {
        eprintln!("  kill {}/{}", k + 1, options.kills);
        samples.push(kill_round(
            lan,
            &sender,
            survivor.id,
            &pki.0,
            liveness,
            options,
            audit,
        )?);
    }
    let stats = sender.call(Duration::from_secs(5), |node| async move { node.stats() })?;
    drop(sender);
    drop(survivor);

    let pick = |f: fn(&KillSample) -> Duration| samples.iter().map(f).collect::<Vec<_>>();
    Ok(FailoverPass {
        series: vec![
            series(
                "kill → PeerDown on sender",
                &pick(|s| s.peer_down),
                Some(FAILOVER_TARGET),
            )?,
            series(
                "kill → first retried ack (survivor)",
                &pick(|s| s.first_retried_ack),
                Some(FAILOVER_TARGET),
            )?,
            series(
                "kill → last retried ack (survivor)",
                &pick(|s| s.last_retried_ack),
                None,
            )?,
            series(
                "restarted victim: READY → in sender's rotation",
                &pick(|s| s.rejoin),
                None,
            )?,
        ],
        name,
        kills: samples.len(),
        sent: samples.iter().map(|s| s.sent).sum(),
        retried: samples.iter().map(|s| s.retried).sum(),
        lost: samples.iter().map(|s| s.lost).sum(),
        failures: samples
            .iter()
            .flat_map(|s| s.failures.clone())
            .take(5)
            .collect(),
        retried_before_kill: samples.iter().map(|s| s.retried_before_kill).sum(),
        stuck_per_kill: samples.iter().map(|s| s.stuck).collect(),
        after_kill_per_kill: samples.iter().map(|s| s.after_kill).collect(),
        victim_in_flight_at_kill: samples.iter().map(|s| s.victim_in_flight_at_kill).collect(),
        sender_handshake_failures: stats.handshake_failures,
    })
}
