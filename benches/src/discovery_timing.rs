//! `discovery-timing`: how long mDNS discovery and failover take, end to end, between Shoal
//! nodes on a LAN made of Linux network namespaces.
//!
//! Two measurements (see `benches/README.md` and the `discovery-timing` binary):
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
//!    [`NodeEvent::PeerDown`] for the victim, kill → the first (and last) successful ack from
//!    the survivor of a message that had to be retried, and the sends that failed. Repeated
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

use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal::{Error as ShoalError, Identity, MeshCa, Message, Node, NodeEvent, NodeId, Receipt};
use shoal_discovery::netns::{self, Lan};
use shoal_discovery::{InterfaceSelector, MdnsConfig, in_root_netns};
use tokio::sync::{mpsc, watch};

use crate::error::{BenchError, BenchResult};
use crate::report::{self, LatencyReport};
use crate::runtime;

/// Hosts of the LAN: `h0` (target / sender), `h1` (fresh nodes / survivor), `h2` (victim).
const HOSTS: usize = 3;
/// Service of the long-lived node in measurement 1.
const TARGET_SERVICE: &str = "target";
/// Service of the fresh nodes in measurement 1.
const PROBE_SERVICE: &str = "probe";
/// Service of the two instances in measurement 2.
const WORK_SERVICE: &str = "work";
/// Service of the sender in measurement 2.
const SENDER_SERVICE: &str = "sender";
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

/// Longest a fresh node may take to its first successful send before the round fails.
const FIRST_SEND_LIMIT: Duration = Duration::from_secs(10);
/// Longest a graceful shutdown is waited for.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);
/// Longest a node thread waits to start its node.
const START_LIMIT: Duration = Duration::from_secs(15);
/// Longest any node thread lives (a safety bound; runs take about a minute).
const NODE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Most jobs a node thread runs (a safety bound).
const MAX_JOBS: usize = 100_000;
/// Longest the victim process waits to print that it is ready.
const VICTIM_READY_LIMIT: Duration = Duration::from_secs(15);
/// Longest the victim process lives if nobody kills it (it also stops when stdin closes).
const VICTIM_LIFETIME: Duration = Duration::from_secs(180);
/// Longest the sender waits to be connected to both `work` instances.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
/// Load before the kill, so the victim is busy when it dies.
const WARM_LOAD: Duration = Duration::from_millis(500);
/// Load kept up after the first retried ack, so every stuck message can move.
const SETTLE_LOAD: Duration = Duration::from_millis(300);
/// Longest the load generator waits for the sends in flight when stopped (the retry
/// deadline is 30 s).
const DRAIN_LIMIT: Duration = Duration::from_secs(40);
/// Longest one load phase runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(60);
/// Most messages one load phase sends.
const MAX_MESSAGES: u64 = 2_000_000;
/// How long the target is watched after measurement 1, with no fresh node alive.
const DIAL_WATCH: Duration = Duration::from_secs(6);
/// How often the load generator samples the messages in flight per instance.
const IN_FLIGHT_SAMPLE: Duration = Duration::from_millis(2);
/// How long after the kill the victim must be detected before the round fails.
const DETECT_SLACK: Duration = Duration::from_secs(10);

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

/// Settings of the victim process (the hidden `--child-victim` mode).
#[derive(Debug, Clone)]
pub struct VictimArgs {
    /// The namespace the process must find itself in.
    pub netns: String,
    /// Folder with `ca.pem`, `node.pem` and `node.key`.
    pub pki_dir: PathBuf,
    /// QUIC listen address (on `lan0` of the namespace).
    pub listen: SocketAddr,
    /// Keep-alive and idle timeout, if not the node's defaults.
    pub liveness: Option<(Duration, Duration)>,
    /// How long the `work` handler takes.
    pub handler: Duration,
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

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1_000_000.0
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
// Safety checks on the root namespace.
// ---------------------------------------------------------------------------------------------

/// The root namespace's links, addresses, routes and multicast memberships (the output of
/// `ip` run from this thread, which must be in the root namespace).
fn root_snapshot() -> BenchResult<String> {
    if !in_root_netns() {
        return Err(BenchError::msg(
            "the main thread is not in the root network namespace: cannot check it",
        ));
    }
    let mut out = String::new();
    for args in [
        &["-o", "link", "show"][..],
        &["-o", "addr", "show"],
        &["route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
        &["maddr", "show"],
    ] {
        let output = Command::new("ip").args(args).output()?;
        let _ = writeln!(out, "$ ip {}", args.join(" "));
        out.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    Ok(out)
}

/// Why [`netns::can_create_netns`] said no, as far as can be told.
fn why_no_netns() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return format!("not running as root (effective uid {euid}); run it with sudo");
    }
    match Command::new("ip").arg("-V").output() {
        Err(e) => format!("`ip` (iproute2) cannot be run: {e}"),
        Ok(_) => "`ip netns add` failed or the new namespace could not be entered \
                  (a container without CAP_SYS_ADMIN?)"
            .to_owned(),
    }
}

/// Lines of `after` not in `before` and the other way round.
fn snapshot_diff(before: &str, after: &str) -> Vec<String> {
    let mut diff = Vec::new();
    for line in before.lines().filter(|l| !after.lines().any(|a| a == *l)) {
        diff.push(format!("- {line}"));
    }
    for line in after.lines().filter(|l| !before.lines().any(|b| b == *l)) {
        diff.push(format!("+ {line}"));
    }
    diff
}

/// Whether the root namespace has joined the mDNS multicast groups.
fn root_joined_mdns_group(snapshot: &str) -> bool {
    let mdns_lines = snapshot
        .lines()
        .filter(|l| l.contains("224.0.0.251") || l.contains("ff02::fb"));
    mdns_lines.count() > 0
}

/// Namespaces of this process still listed by `ip netns list`.
fn our_namespaces() -> BenchResult<Vec<String>> {
    let output = Command::new("ip").args(["netns", "list"]).output()?;
    let mine = format!("shoal-{}-", std::process::id());
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&mine))
        .map(str::to_owned)
        .collect())
}

/// Counts and checks the mDNS daemon threads of this process: none may be in the root
/// namespace.
#[derive(Debug)]
struct DaemonAudit {
    root: u64,
    checks: AtomicU64,
    max_seen: AtomicU64,
}

impl DaemonAudit {
    fn new() -> BenchResult<Self> {
        Ok(Self {
            root: netns::root_netns_inode()?,
            checks: AtomicU64::new(0),
            max_seen: AtomicU64::new(0),
        })
    }

    fn check(&self) -> BenchResult<()> {
        let threads = netns::mdns_daemon_thread_netns()?;
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.max_seen
            .fetch_max(threads.len() as u64, Ordering::Relaxed);
        if threads.contains(&self.root) {
            return Err(BenchError::msg(
                "an mDNS daemon thread runs in the root network namespace: stopping",
            ));
        }
        Ok(())
    }

    fn summary(&self) -> String {
        format!(
            "mDNS daemon threads of this process checked {} times (up to {} at once): none in the root namespace",
            self.checks.load(Ordering::Relaxed),
            self.max_seen.load(Ordering::Relaxed)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes living on their own thread inside a namespace, driven through a channel.
// ---------------------------------------------------------------------------------------------

/// What a node does with `job` messages.
#[derive(Debug, Clone, Copy)]
enum Handler {
    None,
    Instant,
    Sleep(Duration),
}

/// How to build a node.
#[derive(Clone)]
struct NodeSetup {
    service: &'static str,
    ca: MeshCa,
    listen: SocketAddr,
    liveness: Option<(Duration, Duration)>,
    handler: Handler,
}

impl NodeSetup {
    /// The builder, ready to start (identity issued, mDNS on `lan0`).
    fn builder(&self, identity: Identity) -> shoal::NodeBuilder {
        let mut builder = Node::builder(self.service)
            .listen(self.listen)
            .identity(identity)
            .trust(self.ca.clone())
            .discovery(lan0_mdns().build());
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

fn install_handler(node: &Node, handler: Handler) {
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
struct NodeThread {
    label: String,
    id: NodeId,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NodeThread {
    /// Starts the node on a new thread inside namespace `ns` and waits until it runs.
    fn start(label: &str, ns: &str, setup: NodeSetup) -> BenchResult<Self> {
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
    fn call<T, F, Fut>(&self, limit: Duration, f: F) -> BenchResult<T>
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
    fn submit<F, Fut>(&self, f: F) -> BenchResult<()>
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
    let rt = match runtime::current_thread() {
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

// ---------------------------------------------------------------------------------------------
// Measurement 1: start → first successful send.
// ---------------------------------------------------------------------------------------------

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
        let rt = runtime::current_thread()?;
        rt.block_on(async move {
            let setup = NodeSetup {
                service: PROBE_SERVICE,
                ca: ca.clone(),
                listen,
                liveness: None,
                handler: Handler::None,
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

struct FirstSendResults {
    target_peers_after: usize,
    target_handshake_failures_later: u64,
    dial_log: DialLog,
    series: Vec<Series>,
    retried: usize,
    failed: usize,
    target_handshake_failures: u64,
    target_connections: u64,
}

fn measure_first_send(
    lan: &Lan,
    ca: &MeshCa,
    starts: usize,
    audit: &DaemonAudit,
) -> BenchResult<FirstSendResults> {
    eprintln!("measurement 1: {starts} fresh nodes on h1, each sending to `target` on h0");
    let target = NodeThread::start(
        "target",
        lan.host(0),
        NodeSetup {
            service: TARGET_SERVICE,
            ca: ca.clone(),
            listen: SocketAddr::new(IpAddr::V4(lan.addr(0)), 0),
            liveness: None,
            handler: Handler::Instant,
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
    eprintln!(
        "  watching the target for {:?} with no fresh node alive",
        DIAL_WATCH
    );
    sleep_checked(DIAL_WATCH)?;
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

// ---------------------------------------------------------------------------------------------
// Measurement 2: kill -9 → PeerDown → traffic on the survivor.
// ---------------------------------------------------------------------------------------------

/// A message that needed more than one attempt.
#[derive(Debug, Clone, Copy)]
struct Retried {
    start: Instant,
    end: Instant,
    node: NodeId,
}

/// What the load generator saw; shared with the main thread.
#[derive(Debug, Default)]
struct LoadState {
    launched: u64,
    ok_victim: u64,
    ok_survivor: u64,
    ok_other: u64,
    failed: u64,
    unresolved: u64,
    failures: Vec<String>,
    retried: Vec<Retried>,
    peer_down: Option<Instant>,
    peer_down_reason: String,
    /// Recent samples of (when, in flight to the victim, in flight to the survivor).
    in_flight: std::collections::VecDeque<(Instant, usize, usize)>,
    done: bool,
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
struct Load {
    state: Arc<Mutex<LoadState>>,
    stop: watch::Sender<bool>,
}

fn lock(state: &Mutex<LoadState>) -> std::sync::MutexGuard<'_, LoadState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps `concurrency` sends to `work` in flight until stopped, recording every outcome, and
/// records when the victim's `PeerDown` arrives.
async fn generate_load(
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

/// The victim: this binary re-executed inside `h2` with `--child-victim`.
struct Victim {
    child: Child,
    stdin: Option<ChildStdin>,
    id: NodeId,
    /// When its `READY` line was read.
    ready_at: Instant,
    reader: Option<JoinHandle<()>>,
}

impl Victim {
    fn spawn(
        lan: &Lan,
        pki: &Path,
        liveness: Option<(Duration, Duration)>,
        handler: Duration,
    ) -> BenchResult<Self> {
        check_interrupted()?;
        let exe = std::env::current_exe()?;
        let ns = lan.host(2);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&exe)
            .arg("--child-victim")
            .arg("--victim-netns")
            .arg(ns)
            .arg("--victim-pki")
            .arg(pki)
            .arg("--victim-listen")
            .arg(SocketAddr::new(IpAddr::V4(lan.addr(2)), 0).to_string())
            .arg("--victim-handler-us")
            .arg(handler.as_micros().to_string());
        if let Some((keep_alive, idle)) = liveness {
            cmd.arg("--victim-keep-alive-ms")
                .arg(keep_alive.as_millis().to_string())
                .arg("--victim-idle-timeout-ms")
                .arg(idle.as_millis().to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let mut victim = Self {
            child,
            stdin,
            id: NodeId::from_u128(0),
            ready_at: Instant::now(),
            reader: None,
        };
        let Some(stdout) = stdout else {
            return Err(BenchError::msg("victim has no stdout pipe"));
        };
        let (tx, rx) = std_mpsc::channel::<(String, Instant)>();
        victim.reader = Some(
            std::thread::Builder::new()
                .name("victim-stdout".into())
                .spawn(move || {
                    for line in BufReader::new(stdout).lines().take(10_000) {
                        let Ok(line) = line else { break };
                        if line.starts_with("READY ") {
                            let _ = tx.send((line, Instant::now()));
                        }
                    }
                })?,
        );
        let (line, ready_at) = rx.recv_timeout(VICTIM_READY_LIMIT).map_err(|_| {
            BenchError::msg(format!(
                "victim process did not report ready within {VICTIM_READY_LIMIT:?}"
            ))
        })?;
        victim.id = line
            .trim_start_matches("READY ")
            .trim()
            .parse()
            .map_err(|e| BenchError::msg(format!("victim sent a bad node id ({line}): {e}")))?;
        victim.ready_at = ready_at;
        victim.verify(ns, &exe)?;
        Ok(victim)
    }

    /// The victim is this binary (not an `ip` wrapper that SIGKILL would miss), and every one
    /// of its threads is in namespace `ns`.
    fn verify(&self, ns: &str, exe: &Path) -> BenchResult<()> {
        let pid = self.child.id();
        let proc_exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        if proc_exe != exe {
            return Err(BenchError::msg(format!(
                "victim pid {pid} runs {} instead of {}",
                proc_exe.display(),
                exe.display()
            )));
        }
        let expected = netns::netns_inode(ns)?;
        let root = netns::root_netns_inode()?;
        let mut threads = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.take(10_000) {
            let task = task?;
            let ino = std::fs::metadata(task.path().join("ns/net"))?.ino();
            if ino == root || ino != expected {
                return Err(BenchError::msg(format!(
                    "victim thread {:?} is not in namespace {ns}",
                    task.file_name()
                )));
            }
            threads += 1;
        }
        if threads == 0 {
            return Err(BenchError::msg("victim has no threads to check"));
        }
        Ok(())
    }

    /// SIGKILL, then reap. Returns the instant just before the signal was sent.
    fn kill(&mut self) -> BenchResult<Instant> {
        let at = Instant::now();
        self.child.kill()?;
        self.child.wait()?;
        self.stdin = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(at)
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A private folder (mode 0700) with the victim's certificates, removed on drop.
struct PkiDir(PathBuf);

impl PkiDir {
    fn create(ca: &MeshCa) -> BenchResult<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "shoal-discovery-timing-{}-{nanos}",
            std::process::id()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let dir = Self(path);
        std::fs::write(dir.0.join("ca.pem"), ca.cert_pem())?;
        let identity = ca.issue(WORK_SERVICE).map_err(shoal_err)?;
        identity
            .save(dir.0.join("node.pem"), dir.0.join("node.key"))
            .map_err(shoal_err)?;
        Ok(dir)
    }
}

impl Drop for PkiDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

fn measure_failover(
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
    if !netns::can_create_netns() {
        return Err(BenchError::msg(format!(
            "cannot create network namespaces: {}. mDNS must never run in the root namespace, \
             so nothing was measured",
            why_no_netns()
        )));
    }
    if !in_root_netns() {
        return Err(BenchError::msg(
            "run this from the root network namespace (it builds its own namespaces)",
        ));
    }
    let before = root_snapshot()?;
    if root_joined_mdns_group(&before) {
        eprintln!("note: the root namespace already had the mDNS group joined before this run");
    }
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
            let first = measure_first_send(&lan, &ca, options.starts, &audit)?;
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
    let mut safety = Vec::new();
    let mut problems = Vec::new();
    safety.push(audit.summary());
    let left = our_namespaces()?;
    if left.is_empty() {
        safety.push(format!(
            "`ip netns list` after the run: none of this process's namespaces (shoal-{}-*) left",
            std::process::id()
        ));
    } else {
        problems.push(format!("namespaces left behind: {}", left.join(", ")));
    }
    let after = root_snapshot()?;
    let diff = snapshot_diff(&before, &after);
    if diff.is_empty() {
        safety.push(
            "root namespace: links, addresses, routes and multicast memberships identical before and after"
                .to_owned(),
        );
    } else {
        problems.push(format!("root namespace changed:\n{}", diff.join("\n")));
    }
    if let Ok((_, _, during)) = &result {
        let diff = snapshot_diff(&before, during);
        if diff.is_empty() && !root_joined_mdns_group(during) {
            safety.push(
                "root namespace while nodes ran: unchanged, mDNS group (224.0.0.251) not joined"
                    .to_owned(),
            );
        } else if !diff.is_empty() {
            problems.push(format!(
                "root namespace changed while nodes ran:\n{}",
                diff.join("\n")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(BenchError::msg(format!(
            "SAFETY CHECK FAILED: {}",
            problems.join("; ")
        )));
    }
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

// ---------------------------------------------------------------------------------------------
// The victim process.
// ---------------------------------------------------------------------------------------------

/// The hidden `--child-victim` mode: an instance of `work` in namespace `args.netns`, which
/// prints `READY <node id>` and runs until killed, until its stdin closes, or at most
/// 180 s.
///
/// # Errors
///
/// If the process is not in the namespace it was told, or the node cannot start.
pub fn victim_main(args: &VictimArgs) -> BenchResult<()> {
    let mine = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let expected = netns::netns_inode(&args.netns)?;
    if in_root_netns() || mine != expected {
        return Err(BenchError::msg(format!(
            "victim is not in namespace {}: refusing to start",
            args.netns
        )));
    }
    let ca = MeshCa::load_cert(args.pki_dir.join("ca.pem")).map_err(shoal_err)?;
    let identity = Identity::load(args.pki_dir.join("node.pem"), args.pki_dir.join("node.key"))
        .map_err(shoal_err)?;
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("victim-stdin".into())
        .spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
            let _ = eof_tx.send(());
        })?;
    let rt = runtime::current_thread()?;
    rt.block_on(async move {
        let setup = NodeSetup {
            service: WORK_SERVICE,
            ca,
            listen: args.listen,
            liveness: args.liveness,
            handler: Handler::Sleep(args.handler),
        };
        let node = setup.builder(identity).start().await.map_err(shoal_err)?;
        install_handler(&node, setup.handler);
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "READY {}", node.id())?;
            out.flush()?;
        }
        tokio::select! {
            _ = eof_rx => {}
            () = tokio::time::sleep(VICTIM_LIFETIME) => {}
        }
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, node.shutdown()).await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Output.
// ---------------------------------------------------------------------------------------------

/// The machine: `nproc` and the CPU model.
pub fn machine() -> String {
    format!(
        "nproc {}, CPU {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        report::cpu_model()
    )
}

fn verdict(s: &Series) -> String {
    match s.target {
        Some(target) => {
            let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let p50 = if s.report.p50 <= ns(target) {
                "ok"
            } else {
                "MISSED"
            };
            let max = if s.report.max <= ns(target) {
                "ok"
            } else {
                "MISSED"
            };
            format!("< {:.0} ms: p50 {p50}, max {max}", ms(target))
        }
        None => "-".to_owned(),
    }
}

fn rows(outcome: &Outcome) -> Vec<(String, &Series)> {
    let mut rows: Vec<(String, &Series)> = outcome
        .first_send
        .iter()
        .map(|s| ("1. fresh node on h1 → `target` on h0".to_owned(), s))
        .collect();
    for pass in &outcome.failover {
        for s in &pass.series {
            rows.push((format!("2. kill -9 of `work` on h2, {}", pass.name), s));
        }
    }
    rows
}

fn notes(outcome: &Outcome, options: &Options) -> Vec<String> {
    let mut notes = vec![format!(
        "measurement 1: {} start(s); first sends that needed more than one attempt: {}; failed: {}; \
         the long-lived `target` made {} connection(s); right after the last fresh node left it had \
         {} peer(s) and had counted {} failed handshake(s); {:?} later, with no fresh node alive, \
         {} failed handshake(s) to {} distinct departed address(es) ({}){}",
        options.starts,
        outcome.first_send_retried,
        outcome.first_send_failed,
        outcome.target_connections,
        outcome.target_peers_after,
        outcome.target_handshake_failures,
        DIAL_WATCH,
        outcome.target_handshake_failures_later,
        outcome.dial_log.addrs.len(),
        if outcome.target_handshake_failures_later > outcome.target_handshake_failures {
            "STILL redialling departed nodes' addresses"
        } else {
            "no redials once the departed nodes' goodbyes were in"
        },
        if outcome.dial_log.reasons.is_empty() {
            String::new()
        } else {
            format!("; e.g. \"{}\"", outcome.dial_log.reasons.join("\"; \""))
        }
    )];
    for pass in &outcome.failover {
        notes.push(format!(
            "measurement 2, {}: {} kill(s), {} commands in flight, handler {} µs; \
             {} sends, {} retried (per kill: in flight to the victim just before the kill {:?}; \
             retried and sent before the kill {:?}, sent to the dead victim after the kill {:?}), \
             {} retried before a kill, LOST {}{}; sender counted {} handshake failure(s)",
            pass.name,
            pass.kills,
            options.concurrency,
            options.handler.as_micros(),
            pass.sent,
            pass.retried,
            pass.victim_in_flight_at_kill
                .iter()
                .map(|n| n.map_or_else(|| "?".to_owned(), |n| n.to_string()))
                .collect::<Vec<_>>(),
            pass.stuck_per_kill,
            pass.after_kill_per_kill,
            pass.retried_before_kill,
            pass.lost,
            if pass.failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", pass.failures.join("; "))
            },
            pass.sender_handshake_failures
        ));
    }
    notes
}

/// The result table as fixed-width text (milliseconds), with notes and safety checks.
pub fn render_text(outcome: &Outcome, options: &Options) -> String {
    let rows = rows(outcome);
    let width = rows
        .iter()
        .map(|(_, s)| s.label.chars().count())
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    let mut group = String::new();
    for (heading, s) in &rows {
        if *heading != group {
            let _ = writeln!(out, "\n{heading}");
            let _ = writeln!(
                out,
                "  {:<width$}  {:>4}  {:>9}  {:>9}  {:>9}  {:>9}  target",
                "", "n", "min ms", "p50 ms", "p90 ms", "max ms"
            );
            group.clone_from(heading);
        }
        let pad = width - s.label.chars().count();
        let _ = writeln!(
            out,
            "  {}{}  {:>4}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}  {}",
            s.label,
            " ".repeat(pad),
            s.report.count,
            ms(s.min),
            ns_to_ms(s.report.p50),
            ns_to_ms(s.report.p90),
            ns_to_ms(s.report.max),
            verdict(s)
        );
    }
    out.push('\n');
    for note in notes(outcome, options) {
        let _ = writeln!(out, "* {note}");
    }
    for line in &outcome.safety {
        let _ = writeln!(out, "* safety: {line}");
    }
    out
}

/// The same as Markdown.
pub fn render_markdown(outcome: &Outcome, options: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. Date {}. Command: `{}`\n",
        machine(),
        report::utc_date(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
        options.command
    );
    out.push_str("| measurement | series | n | min ms | p50 ms | p90 ms | max ms | target |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    for (heading, s) in rows(outcome) {
        let _ = writeln!(
            out,
            "| {heading} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            s.label,
            s.report.count,
            ms(s.min),
            ns_to_ms(s.report.p50),
            ns_to_ms(s.report.p90),
            ns_to_ms(s.report.max),
            verdict(s)
        );
    }
    out.push('\n');
    for note in notes(outcome, options) {
        let _ = writeln!(out, "* {note}");
    }
    for line in &outcome.safety {
        let _ = writeln!(out, "* safety: {line}");
    }
    out
}

/// Whether every target was met and nothing was lost.
pub fn all_targets_met(outcome: &Outcome) -> bool {
    let ok = |s: &Series| {
        s.target
            .is_none_or(|t| s.report.max <= u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
    };
    outcome.first_send.iter().all(ok)
        && outcome.first_send_failed == 0
        && outcome
            .failover
            .iter()
            .all(|p| p.lost == 0 && p.series.iter().all(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_diff_lists_added_and_removed_lines() {
        let diff = snapshot_diff("a\nb\n", "b\nc\n");
        assert_eq!(diff, vec!["- a".to_owned(), "+ c".to_owned()]);
        assert!(snapshot_diff("x\n", "x\n").is_empty());
    }

    #[test]
    fn mdns_group_is_spotted() {
        assert!(root_joined_mdns_group("4: eth0\n    inet  224.0.0.251\n"));
        assert!(!root_joined_mdns_group("4: eth0\n    inet  224.0.0.1\n"));
    }

    #[test]
    fn series_percentiles_in_ms() {
        let samples: Vec<Duration> = (1..=10).map(|i| Duration::from_millis(i * 100)).collect();
        let s = series("x", &samples, Some(Duration::from_millis(500))).expect("series");
        assert_eq!(s.report.count, 10);
        assert!((ns_to_ms(s.report.max) - 1000.0).abs() < 2.0);
        assert!(verdict(&s).contains("max MISSED"));
    }
}
