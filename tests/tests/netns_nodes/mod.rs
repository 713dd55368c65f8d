//! Support for `discovery.rs`: nodes running inside network namespaces ([`NsNode`]), the
//! checks that no mDNS daemon thread is in the root namespace, event and send helpers, and
//! the crash test's victim process ([`Victim`], [`run_victim`]).
//!
//! Nothing here runs mDNS or opens a node socket in the root network namespace: every node is
//! started on a thread that entered a namespace the test created, and the victim process is
//! started with `ip netns exec` and refuses to run in the root namespace.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use shoal::{Identity, MeshCa, Message, Node, NodeBuilder, NodeEvent, NodeId, Receipt};
use shoal_discovery::netns;
use shoal_discovery::{InterfaceSelector, MdnsConfig, MdnsDiscovery, in_root_netns};
use shoal_tests::Mesh;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinSet;

/// Bound for a step that normally takes milliseconds: a start, a discovery, a connection, a
/// batch of sends.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// Bound for a node's graceful shutdown (its grace period is 2 s).
const STOP_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Nodes in namespaces.
// ---------------------------------------------------------------------------------------------

pub(crate) fn netns_or_skip(test: &str) -> bool {
    netns::can_create_netns_or_say_skipped(test)
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// mDNS on the host's LAN interface only.
fn mdns_on_lan0() -> MdnsDiscovery {
    MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]).build()
}

/// A node of `service` that listens on every address of its namespace (there are only `lo`
/// and `lan0`) and finds its peers only by mDNS on `lan0`: no static peers.
pub(crate) fn lan_node(mesh: &Mesh, service: &str) -> NodeBuilder {
    mesh.builder(service)
        .listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .discovery(mdns_on_lan0())
        .shutdown_grace(Duration::from_secs(2))
}

/// A node running inside a network namespace.
///
/// A thread enters the namespace ([`netns::run_in`]), builds a current-thread Tokio runtime
/// there and starts the node on it, so the node's UDP socket and its mDNS daemon thread belong
/// to the namespace. The runtime runs the node until [`NsNode::stop`] (or drop) asks for a
/// graceful shutdown. [`NsNode::node`] is a handle usable from any thread and runtime: a send
/// runs in the caller's task and hands its frames to the node's own tasks.
pub(crate) struct NsNode {
    pub(crate) node: Node,
    ns: String,
    stop: Option<oneshot::Sender<()>>,
    /// Disconnects when the namespace thread has finished.
    done: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsNode {
    pub(crate) fn start(ns: &str, builder: NodeBuilder) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Node, String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let ns_name = ns.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("node in {ns}"))
            .spawn(move || {
                let _done = done_tx;
                let entered = netns::run_in(&ns_name, move || {
                    assert!(
                        !in_root_netns(),
                        "refusing to start a node in the root network namespace"
                    );
                    runtime().block_on(async move {
                        let node = match tokio::time::timeout(STEP, builder.start()).await {
                            Ok(Ok(node)) => node,
                            Ok(Err(e)) => {
                                let _ = ready_tx.send(Err(e.to_string()));
                                return;
                            }
                            Err(_) => {
                                let _ = ready_tx.send(Err("start hung".into()));
                                return;
                            }
                        };
                        let _ = ready_tx.send(Ok(node.clone()));
                        // Drive the node until asked to stop (or until the test side is gone).
                        let _ = stop_rx.await;
                        let _ = tokio::time::timeout(STOP_WAIT, node.shutdown()).await;
                    });
                });
                if let Err(e) = entered {
                    eprintln!("could not enter namespace {ns_name}: {e}");
                }
            })
            .unwrap();
        let node = match ready_rx.recv_timeout(STEP) {
            Ok(Ok(node)) => node,
            Ok(Err(e)) => panic!("node in {ns} failed to start: {e}"),
            Err(e) => panic!("node in {ns} did not start: {e}"),
        };
        Self {
            node,
            ns: ns.to_owned(),
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
        }
    }

    fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (bounded) for the namespace thread to finish.
    fn join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        match self.done.recv_timeout(STOP_WAIT + Duration::from_secs(2)) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() && !std::thread::panicking() {
                    panic!("the node thread in {} panicked", self.ns);
                }
            }
            _ => eprintln!(
                "the node in {} did not stop in time; leaving its thread",
                self.ns
            ),
        }
    }

    /// Shuts the node down gracefully and waits for it (bounded).
    pub(crate) fn stop(mut self) {
        self.request_stop();
        self.join();
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        self.request_stop();
        self.join();
    }
}

/// Shuts several nodes down at once: all are asked first, then each is waited for.
pub(crate) fn stop_all(nodes: impl IntoIterator<Item = NsNode>) {
    let mut nodes: Vec<NsNode> = nodes.into_iter().collect();
    nodes.iter_mut().for_each(NsNode::request_stop);
    nodes.into_iter().for_each(NsNode::stop);
}

/// Every mdns-sd daemon thread of this process is outside the root namespace, and each of
/// `namespaces` has at least one (the daemon thread inherited its creator's namespace).
pub(crate) fn audit_mdns_threads(namespaces: &[&str]) {
    let root = netns::root_netns_inode().unwrap();
    let wanted: Vec<u64> = namespaces
        .iter()
        .map(|ns| netns::netns_inode(ns).unwrap())
        .collect();
    // A new thread names itself just after it starts: look again briefly (bounded).
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..200 {
        let threads = netns::mdns_daemon_thread_netns().unwrap();
        assert!(
            !threads.contains(&root),
            "an mDNS daemon thread runs in the root network namespace"
        );
        if wanted.iter().all(|ns| threads.contains(ns)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no mDNS daemon thread in some of {namespaces:?}: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no mDNS daemon thread in some of {namespaces:?}");
}

/// The next event `pred` accepts, within `within`; `None` on timeout or a closed channel.
pub(crate) async fn wait_event(
    events: &mut broadcast::Receiver<NodeEvent>,
    within: Duration,
    mut pred: impl FnMut(&NodeEvent) -> bool,
) -> Option<NodeEvent> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if pred(&event) => return Some(event),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    };
    tokio::time::timeout(within, wait).await.ok().flatten()
}

/// Discards the events already queued (bounded).
pub(crate) fn drain_events(events: &mut broadcast::Receiver<NodeEvent>) -> Vec<NodeEvent> {
    let mut seen = Vec::new();
    for _ in 0..100_000 {
        match events.try_recv() {
            Ok(event) => seen.push(event),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    seen
}

/// Joins every task of `tasks`, at most `within` in all.
async fn join_all<T: 'static>(mut tasks: JoinSet<T>, within: Duration) -> Vec<T> {
    let count = tasks.len();
    let collect = async {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            match tasks.join_next().await {
                Some(joined) => out.push(joined.unwrap()),
                None => break,
            }
        }
        out
    };
    tokio::time::timeout(within, collect)
        .await
        .unwrap_or_else(|_| panic!("{count} tasks did not finish within {within:?}"))
}

/// Sends `count` commands `name` to `service` at once and returns their receipts, panicking on
/// any failure.
pub(crate) async fn send_batch(
    node: &Node,
    service: &str,
    name: &str,
    count: usize,
) -> Vec<Receipt> {
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let node = node.clone();
        let (service, name) = (service.to_owned(), name.to_owned());
        tasks.spawn(async move {
            let sent = node
                .send(&service, Message::command(name, i.to_string()))
                .await;
            (i, sent)
        });
    }
    join_all(tasks, STEP)
        .await
        .into_iter()
        .map(|(i, sent)| sent.unwrap_or_else(|e| panic!("command {i} to `{service}` failed: {e}")))
        .collect()
}

pub(crate) fn count_by_node(receipts: &[Receipt]) -> HashMap<NodeId, usize> {
    let mut counts = HashMap::new();
    for receipt in receipts {
        *counts.entry(receipt.node).or_default() += 1;
    }
    counts
}

pub(crate) fn text(msg: &Message) -> String {
    String::from_utf8_lossy(msg.payload()).into_owned()
}

/// Payloads each instance's handler saw, by instance.
pub(crate) type Seen = Arc<Mutex<HashMap<NodeId, Vec<String>>>>;

/// Registers `job` (records the payload) and `quote` (answers with this instance's id).
pub(crate) fn serve_jobs_and_quotes(node: &Node, seen: &Seen) {
    let me = node.id();
    let seen = Arc::clone(seen);
    node.handle("job", move |msg: Message| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().entry(me).or_default().push(text(&msg));
            Ok(())
        }
    });
    node.handle("quote", move |msg: Message| async move {
        Ok(format!("{me} quotes {}", text(&msg)))
    });
}

// ---------------------------------------------------------------------------------------------
// The crash test's victim: a separate process.
// ---------------------------------------------------------------------------------------------

/// Name of the crash test: the victim process is this test binary running only that test.
pub(crate) const KILL_TEST: &str =
    "killed::killed_instance_is_detected_and_traffic_moves_without_loss";
/// Set (to `victim`) when this test binary runs as the crash test's victim process.
pub(crate) const CHILD_ENV: &str = "SHOAL_TEST_CHILD";
const CHILD_CA_PEM: &str = "SHOAL_TEST_CA_PEM";
const CHILD_CERT_PEM: &str = "SHOAL_TEST_CERT_PEM";
const CHILD_KEY_PEM: &str = "SHOAL_TEST_KEY_PEM";
/// The victim's line once its node runs: `<prefix><pid> <node id> <port>`.
const READY: &str = "SHOAL-VICTIM-READY ";
/// The longest a victim process lives.
const CHILD_MAX_LIFE: Duration = Duration::from_secs(60);
/// How long the `work` handler takes, in the victim and in the survivor.
pub(crate) const HANDLER_TIME: Duration = Duration::from_millis(1);

/// The victim: this test binary re-executed with `ip netns exec <host>` and [`CHILD_ENV`],
/// running a node of `work` (see [`run_victim`]).
pub(crate) struct Victim {
    child: Child,
    /// Closing it asks the victim to shut down.
    stdin: Option<ChildStdin>,
    /// The victim's stdout lines; disconnects when its stdout closes (it exited).
    lines: mpsc::Receiver<String>,
    pub(crate) node: NodeId,
    pub(crate) port: u16,
}

impl Victim {
    /// Starts a victim in namespace `ns` with a fresh `work` identity from `mesh`, and waits
    /// (bounded) for its node to run.
    pub(crate) fn spawn(ns: &str, mesh: &Mesh) -> Self {
        let identity = mesh.identity("work");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", KILL_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "victim")
            .env(CHILD_CA_PEM, mesh.ca.cert_pem())
            .env(CHILD_CERT_PEM, identity.cert_pem())
            .env(CHILD_KEY_PEM, identity.key_pem())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Ends at the victim's exit (EOF); the count bounds a runaway child.
            for line in BufReader::new(stdout).lines().take(100_000) {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        let mut victim = Self {
            child,
            stdin: None,
            lines,
            node: NodeId::from_u128(0),
            port: 0,
        };
        victim.stdin = victim.child.stdin.take();
        let deadline = Instant::now() + STEP;
        let ready = (0..10_000).find_map(|_| {
            let left = deadline.saturating_duration_since(Instant::now());
            match victim.lines.recv_timeout(left) {
                // The harness may have started the line ("test ... ").
                Ok(line) => line.split_once(READY).map(|(_, rest)| rest.to_owned()),
                Err(e) => panic!("the victim in {ns} did not report ready: {e}"),
            }
        });
        let ready = ready.unwrap();
        let fields: Vec<&str> = ready.split_whitespace().collect();
        let [pid, node, port] = fields[..] else {
            panic!("bad ready line {ready:?}");
        };
        // `ip netns exec` execs the command in place: the child is the node's process.
        assert_eq!(pid.parse::<u32>().unwrap(), victim.child.id());
        let child_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino();
        assert_eq!(
            child_ns,
            netns::netns_inode(ns).unwrap(),
            "the victim is in {ns}"
        );
        victim.node = NodeId::from_u128(u128::from_str_radix(node, 16).unwrap());
        victim.port = port.parse().unwrap();
        victim
    }

    /// `kill -9`: the process dies at once, its node says nothing to anyone.
    pub(crate) fn kill(&mut self) -> ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    /// Closes the victim's stdin, so it shuts down gracefully, and waits (bounded) for it.
    pub(crate) fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_WAIT;
        for _ in 0..100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprintln!("the victim did not exit in time; killing it");
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        self.child.wait().unwrap()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The victim process: a node of `work` with mDNS on `lan0`, whose handler takes about
/// [`HANDLER_TIME`]; prints [`READY`], then runs until stdin closes (at most
/// [`CHILD_MAX_LIFE`]) and shuts down gracefully.
pub(crate) fn run_victim() {
    assert!(
        !in_root_netns(),
        "the victim must run inside a test namespace (ip netns exec)"
    );
    let var = |key: &str| std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"));
    let ca = MeshCa::from_pem(&var(CHILD_CA_PEM)).unwrap();
    let identity = Identity::from_pem(&var(CHILD_CERT_PEM), &var(CHILD_KEY_PEM)).unwrap();
    runtime().block_on(async {
        let builder = Node::builder("work")
            .listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
            .identity(identity)
            .trust(ca)
            .discovery(mdns_on_lan0())
            .shutdown_grace(Duration::from_secs(1));
        let node = tokio::time::timeout(STEP, builder.start())
            .await
            .expect("victim start hung")
            .expect("victim start failed");
        node.handle("job", |_msg: Message| async {
            tokio::time::sleep(HANDLER_TIME).await;
            Ok(())
        });
        let (eof_tx, eof_rx) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..1_000_000 {
                match std::io::stdin().read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = eof_tx.send(());
        });
        println!(
            "{READY}{} {} {}",
            std::process::id(),
            node.id(),
            node.local_addr().port()
        );
        std::io::stdout().flush().unwrap();
        let _ = tokio::time::timeout(CHILD_MAX_LIFE, eof_rx).await;
        let _ = tokio::time::timeout(STOP_WAIT, node.shutdown()).await;
    });
}
