//! Nodes living on their own thread inside a namespace, driven through a channel.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal::{Identity, MeshCa, Message, Node, NodeId};
use shoal_discovery::netns;
use shoal_discovery::{InterfaceSelector, MdnsConfig, in_root_netns};
use tokio::sync::mpsc;

use super::{MESSAGE_NAME, SHUTDOWN_LIMIT, check_interrupted, shoal_err};
use crate::error::{BenchError, BenchResult};
use crate::runtime;

/// Longest a node thread waits to start its node.
const START_LIMIT: Duration = Duration::from_secs(15);
/// Longest any node thread lives (a safety bound; runs take about a minute).
const NODE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Most jobs a node thread runs (a safety bound).
const MAX_JOBS: usize = 100_000;

/// What a node does with `job` messages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Handler {
    None,
    Instant,
    Sleep(Duration),
}

/// How to build a node.
#[derive(Clone)]
pub(super) struct NodeSetup {
    pub(super) service: &'static str,
    pub(super) ca: MeshCa,
    pub(super) listen: SocketAddr,
    pub(super) liveness: Option<(Duration, Duration)>,
    pub(super) handler: Handler,
    /// Connect to every instance as soon as discovery announces it
    /// ([`shoal::NodeBuilder::connect_on_discovery`]) rather than on first use.
    pub(super) eager: bool,
}

impl NodeSetup {
    /// The builder, ready to start (identity issued, mDNS on `lan0`).
    pub(super) fn builder(&self, identity: Identity) -> shoal::NodeBuilder {
        let mut builder = Node::builder(self.service)
            .listen(self.listen)
            .identity(identity)
            .trust(self.ca.clone())
            .discovery(lan0_mdns().build())
            .connect_on_discovery(self.eager);
        if let Some((keep_alive, idle)) = self.liveness {
            builder = builder.liveness(keep_alive, idle);
        }
        builder
    }
}

/// mDNS on `lan0` only; root namespace refused (the default, kept).
fn lan0_mdns() -> MdnsConfig {
    MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)])
}

pub(super) fn install_handler(node: &Node, handler: Handler) {
    match handler {
        Handler::None => {}
        Handler::Instant => node.handle(MESSAGE_NAME, |_msg: Message| async { Ok(()) }),
        Handler::Sleep(d) => node.handle(MESSAGE_NAME, move |_msg: Message| async move {
            tokio::time::sleep(d).await;
            Ok(())
        }),
    }
}

type Job = Box<dyn FnOnce(Node) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A node on its own OS thread (inside a namespace) with its own `current_thread` runtime,
/// alive until this handle is dropped. Work is sent to it as jobs.
pub(super) struct NodeThread {
    label: String,
    pub(super) id: NodeId,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NodeThread {
    /// Starts the node on a new thread inside namespace `ns` and waits until it runs.
    pub(super) fn start(label: &str, ns: &str, setup: NodeSetup) -> BenchResult<Self> {
        check_interrupted()?;
        let identity = setup.ca.issue(setup.service).map_err(shoal_err)?;
        let (ready_tx, ready_rx) = std_mpsc::channel::<BenchResult<NodeId>>();
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
        let ns = ns.to_owned();
        let thread_label = label.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("{label}-waiter"))
            .spawn(move || {
                let ready = ready_tx.clone();
                let result = netns::run_in(&ns, move || {
                    node_thread_main(setup, identity, ready_tx, jobs_rx);
                });
                if let Err(e) = result {
                    let _ = ready.send(Err(BenchError::from(e)
                        .context(format!("{thread_label}: entering namespace {ns}"))));
                }
            })?;
        let mut handle = Self {
            label: label.to_owned(),
            id: NodeId::from_u128(0),
            jobs: Some(jobs_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(START_LIMIT) {
            Ok(Ok(id)) => handle.id = id,
            Ok(Err(e)) => return Err(e.context(format!("starting {label}"))),
            Err(_) => {
                return Err(BenchError::msg(format!(
                    "{label}: node did not start within {START_LIMIT:?}"
                )));
            }
        }
        Ok(handle)
    }

    /// Runs `f(node)` on the node's thread and waits (at most `limit`) for its result.
    pub(super) fn call<T, F, Fut>(&self, limit: Duration, f: F) -> BenchResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Node) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = std_mpsc::channel();
        self.submit(move |node| async move {
            let _ = tx.send(f(node).await);
        })?;
        rx.recv_timeout(limit)
            .map_err(|_| BenchError::msg(format!("{}: no answer within {limit:?}", self.label)))
    }

    /// Queues `f(node)` on the node's thread without waiting for it.
    pub(super) fn submit<F, Fut>(&self, f: F) -> BenchResult<()>
    where
        F: FnOnce(Node) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |node| Box::pin(f(node)));
        self.jobs
            .as_ref()
            .ok_or_else(|| BenchError::msg("node thread already stopped"))?
            .send(job)
            .map_err(|_| BenchError::msg(format!("{}: node thread is gone", self.label)))
    }

    /// Shuts the node down gracefully and joins its thread (bounded).
    fn stop(&mut self) {
        self.jobs = None;
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + SHUTDOWN_LIMIT + Duration::from_secs(5);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            eprintln!(
                "{}: node thread did not stop in time; leaving it",
                self.label
            );
        }
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body of a node thread, already inside its namespace.
fn node_thread_main(
    setup: NodeSetup,
    identity: Identity,
    ready: std_mpsc::Sender<BenchResult<NodeId>>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    if in_root_netns() {
        let _ = ready.send(Err(BenchError::msg(
            "node thread is in the root network namespace: refusing to start",
        )));
        return;
    }
    let rt = match runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let node = match setup.builder(identity).start().await {
            Ok(node) => node,
            Err(e) => {
                let _ = ready.send(Err(shoal_err(e)));
                return;
            }
        };
        install_handler(&node, setup.handler);
        let _ = ready.send(Ok(node.id()));
        let deadline = tokio::time::Instant::now() + NODE_LIFETIME;
        for _ in 0..MAX_JOBS {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job(node.clone()).await,
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, node.shutdown()).await;
    });
}
