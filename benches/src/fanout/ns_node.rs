//! A Shoal node on its own thread inside a network namespace, with its own current-thread
//! runtime; work (such as the publisher's loop) is sent to it as jobs, so that it runs on the
//! node's thread and that thread's CPU time is the whole publisher's cost.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use shoal::{Node, NodeBuilder};
use shoal_discovery::{in_root_netns, netns};
use tokio::sync::mpsc;

use crate::error::{BenchError, BenchResult};
use crate::shoal_scenarios::shoal_err;

/// Longest a node takes to start.
const START_LIMIT: Duration = Duration::from_secs(15);
/// Longest a graceful shutdown is waited for (the nodes' grace is 2 s).
const STOP_LIMIT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce(Node) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A node running inside a namespace until dropped (then shut down gracefully, bounded).
pub(super) struct NsNode {
    /// A handle usable from any thread and runtime.
    pub(super) node: Node,
    /// The Linux thread id of the node's thread (its runtime runs every task of the node).
    pub(super) tid: i32,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NsNode {
    /// Starts `builder` on a new thread inside namespace `ns`; waits until the node runs.
    pub(super) fn start(ns: &str, builder: NodeBuilder) -> BenchResult<Self> {
        let (ready_tx, ready_rx) = std_mpsc::channel::<BenchResult<(Node, i32)>>();
        let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
        let ns_name = ns.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("fanout node in {ns}"))
            .spawn(move || {
                let ready = ready_tx.clone();
                let entered = netns::run_in(&ns_name, move || {
                    assert!(
                        !in_root_netns(),
                        "refusing to run a node in the root namespace"
                    );
                    let runtime = match crate::runtime::build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(BenchError::from(e)));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let node = match tokio::time::timeout(START_LIMIT, builder.start()).await {
                            Ok(Ok(node)) => node,
                            Ok(Err(e)) => return drop(ready_tx.send(Err(shoal_err(e)))),
                            Err(_) => {
                                return drop(ready_tx.send(Err(BenchError::msg("start hung"))));
                            }
                        };
                        // SAFETY: gettid has no preconditions.
                        let tid = unsafe { libc::gettid() };
                        let _ = ready_tx.send(Ok((node.clone(), tid)));
                        // Jobs until the handle is dropped (its sender closes the channel).
                        while let Some(job) = jobs_rx.recv().await {
                            job(node.clone()).await;
                        }
                        let _ = tokio::time::timeout(STOP_LIMIT, node.shutdown()).await;
                    });
                });
                if let Err(e) = entered {
                    let _ = ready.send(Err(BenchError::from(e).context("entering namespace")));
                }
            })?;
        match ready_rx.recv_timeout(START_LIMIT + Duration::from_secs(1)) {
            Ok(Ok((node, tid))) => Ok(Self {
                node,
                tid,
                jobs: Some(jobs_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e.context(format!("node in {ns}"))),
            Err(_) => Err(BenchError::msg(format!("node in {ns} did not start"))),
        }
    }

    /// Runs `job` on the node's thread and waits for its result.
    pub(super) async fn run<T, F, Fut>(&self, job: F) -> BenchResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Node) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let boxed: Job = Box::new(move |node| {
            Box::pin(async move {
                let _ = tx.send(job(node).await);
            })
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(boxed).ok())
            .ok_or_else(|| BenchError::msg("node thread has stopped"))?;
        rx.await
            .map_err(|_| BenchError::msg("node thread dropped a job"))
    }

    /// CPU time the node's thread has used so far (`/proc/self/task/<tid>/schedstat`, ns).
    pub(super) fn cpu_ns(&self) -> BenchResult<u64> {
        let path = format!("/proc/self/task/{}/schedstat", self.tid);
        let text = std::fs::read_to_string(&path)?;
        text.split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .ok_or_else(|| BenchError::msg(format!("unreadable {path}: {text:?}")))
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
