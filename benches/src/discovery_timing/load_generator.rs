//! The load of measurement 2: a bounded number of sends to `work` kept in flight from the
//! sender, every outcome recorded, and the victim's `PeerDown` noted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal::{Error as ShoalError, Message, Node, NodeEvent, NodeId, Receipt};
use tokio::sync::watch;

use super::{MESSAGE_NAME, WORK_SERVICE};

/// Longest the load generator waits for the sends in flight when stopped (the retry
/// deadline is 30 s).
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(40);
/// Longest one load phase runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(60);
/// Most messages one load phase sends.
const MAX_MESSAGES: u64 = 2_000_000;
/// How often the load generator samples the messages in flight per instance.
const IN_FLIGHT_SAMPLE: Duration = Duration::from_millis(2);

/// A message that needed more than one attempt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retried {
    pub(super) start: Instant,
    pub(super) end: Instant,
    pub(super) node: NodeId,
}

/// What the load generator saw; shared with the main thread.
#[derive(Debug, Default)]
pub(super) struct LoadState {
    pub(super) launched: u64,
    pub(super) ok_victim: u64,
    pub(super) ok_survivor: u64,
    pub(super) ok_other: u64,
    pub(super) failed: u64,
    pub(super) unresolved: u64,
    pub(super) failures: Vec<String>,
    pub(super) retried: Vec<Retried>,
    pub(super) peer_down: Option<Instant>,
    pub(super) peer_down_reason: String,
    /// Recent samples of (when, in flight to the victim, in flight to the survivor).
    pub(super) in_flight: std::collections::VecDeque<(Instant, usize, usize)>,
    pub(super) done: bool,
}

impl LoadState {
    fn record(
        &mut self,
        start: Instant,
        end: Instant,
        result: &Result<Receipt, ShoalError>,
        who: (NodeId, NodeId),
    ) {
        let (victim, survivor) = who;
        match result {
            Ok(receipt) => {
                if receipt.node == victim {
                    self.ok_victim += 1;
                } else if receipt.node == survivor {
                    self.ok_survivor += 1;
                } else {
                    self.ok_other += 1;
                }
                if receipt.attempts > 1 && self.retried.len() < 1_000_000 {
                    self.retried.push(Retried {
                        start,
                        end,
                        node: receipt.node,
                    });
                }
            }
            Err(e) => {
                self.failed += 1;
                if self.failures.len() < 5 {
                    self.failures.push(e.to_string());
                }
            }
        }
    }
}

/// The running load of one round.
pub(super) struct Load {
    pub(super) state: Arc<Mutex<LoadState>>,
    pub(super) stop: watch::Sender<bool>,
}

pub(super) fn lock(state: &Mutex<LoadState>) -> std::sync::MutexGuard<'_, LoadState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps `concurrency` sends to `work` in flight until stopped, recording every outcome, and
/// records when the victim's `PeerDown` arrives.
pub(super) async fn generate_load(
    node: Node,
    concurrency: usize,
    who: (NodeId, NodeId),
    state: Arc<Mutex<LoadState>>,
    mut stop: watch::Receiver<bool>,
) {
    let victim = who.0;
    let mut events = node.events();
    let down_state = Arc::clone(&state);
    let watcher = tokio::task::spawn_local(async move {
        for _ in 0..1_000_000 {
            match events.recv().await {
                Ok(NodeEvent::PeerDown { node, reason, .. }) if node == victim => {
                    let now = Instant::now();
                    let mut s = lock(&down_state);
                    s.peer_down = Some(now);
                    s.peer_down_reason = reason;
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });

    let sample_state = Arc::clone(&state);
    let sample_node = node.clone();
    let survivor = who.1;
    let sampler = tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(IN_FLIGHT_SAMPLE);
        for _ in 0..1_000_000 {
            tick.tick().await;
            let peers = sample_node.peers();
            let of = |id: NodeId| {
                peers
                    .iter()
                    .find(|p| p.node == id)
                    .map_or(0, |p| p.in_flight)
            };
            let sample = (Instant::now(), of(victim), of(survivor));
            let mut s = lock(&sample_state);
            if s.in_flight.len() >= 16 {
                s.in_flight.pop_front();
            }
            s.in_flight.push_back(sample);
        }
    });

    let mut set = tokio::task::JoinSet::new();
    let hard_stop = tokio::time::Instant::now() + LOAD_LIMIT;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut launched = 0u64;
    for _ in 0..(MAX_MESSAGES * 3) {
        if drain_deadline.is_none() {
            while set.len() < concurrency && launched < MAX_MESSAGES {
                let node = node.clone();
                set.spawn_local(async move {
                    let start = Instant::now();
                    let result = node
                        .send(WORK_SERVICE, Message::command(MESSAGE_NAME, "w"))
                        .await;
                    (start, Instant::now(), result)
                });
                launched += 1;
            }
        }
        if set.is_empty() {
            break;
        }
        let limit = drain_deadline.unwrap_or(hard_stop);
        tokio::select! {
            joined = set.join_next() => {
                if let Some(Ok((start, end, result))) = joined {
                    lock(&state).record(start, end, &result, who);
                }
            }
            _ = stop.changed(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
            }
            () = tokio::time::sleep_until(limit) => {
                if drain_deadline.is_some() {
                    break;
                }
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
            }
        }
    }
    let unresolved = set.len() as u64;
    set.abort_all();
    watcher.abort();
    sampler.abort();
    let mut s = lock(&state);
    s.launched = launched;
    s.unresolved = unresolved;
    s.done = true;
}
