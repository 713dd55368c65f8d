//! [`TestMesh`]: in-process nodes on loopback with one ephemeral CA, a recording probe, the
//! mesh's faults, and the waits a test needs (instances up, idle, expectations).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::conformance::Conformance;
use super::faults::{Fault, FaultId, Peer, Rules};
use super::hook::NodeHooks;
use super::recording::{Channel, Recorded, Recording};
use crate::engine::Lifecycle;
use crate::runtime::Driver;
use crate::sync::{lock, read, write};
use crate::{Error, MeshCa, Message, Node, NodeBuilder};

/// The environment variable that sets the seed of every [`TestMesh`] that was not given one
/// in code: set it to the seed a failure printed to draw the same faults again.
pub const SEED_ENV: &str = "SHOAL_TEST_SEED";

/// What the mesh's nodes and the test share.
pub(crate) struct Shared {
    pub(crate) ca: MeshCa,
    pub(crate) seed: u64,
    pub(crate) rules: Rules,
    /// Notified after every call into the engine of any node of the mesh.
    pub(crate) activity: Notify,
    pub(crate) recording: Recording,
    conformance: RwLock<Option<Arc<Conformance>>>,
    pub(crate) started: tokio::time::Instant,
    pub(crate) timeout: Duration,
    pub(crate) quiet: Duration,
    /// A folder for the test's databases, removed with the mesh.
    dir: std::path::PathBuf,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Shared {
    /// Records what came in on `channel`, checked against the contract when there is one.
    pub(crate) fn record(&self, channel: Channel, message: Message) {
        let conformance = read(&self.conformance).clone();
        let violation = conformance.and_then(|c| c.check(&channel, &message).err());
        self.recording.push(Recorded {
            channel,
            message,
            at: self.started.elapsed(),
            violation,
        });
    }
}

/// Configures a [`TestMesh`]. Every setting has a default.
#[derive(Clone, Debug)]
pub struct TestMeshBuilder {
    seed: Option<u64>,
    probe: String,
    timeout: Duration,
    quiet: Duration,
}

impl Default for TestMeshBuilder {
    fn default() -> Self {
        Self {
            seed: None,
            probe: "probe".into(),
            timeout: Duration::from_secs(10),
            quiet: Duration::from_millis(200),
        }
    }
}

impl TestMeshBuilder {
    /// The seed every fault's draws come from. Default: [`SEED_ENV`] when set, else random
    /// (each failure report names the seed it ran with).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The probe's service name. Default `probe`.
    pub fn probe_name(mut self, name: impl Into<String>) -> Self {
        self.probe = name.into();
        self
    }

    /// How long `expect`, `wait_idle`, `wait_for` and `kill` wait by default. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long `expect_none` watches by default. Default 200 ms.
    pub fn quiet_window(mut self, window: Duration) -> Self {
        self.quiet = window;
        self
    }

    /// Generates the CA and starts the probe.
    pub async fn start(self) -> Result<TestMesh, Error> {
        let seed = self
            .seed
            .or_else(|| std::env::var(SEED_ENV).ok()?.trim().parse().ok())
            .unwrap_or_else(rand::random);
        tracing::info!(
            seed,
            "test mesh starting ({SEED_ENV}={seed} replays its faults)"
        );
        let dir = std::env::temp_dir().join(format!(
            "shoal-test-mesh-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            ca: MeshCa::generate("shoal test mesh")?,
            seed,
            rules: Rules::default(),
            activity: Notify::new(),
            recording: Recording::default(),
            conformance: RwLock::new(None),
            started: tokio::time::Instant::now(),
            timeout: self.timeout,
            quiet: self.quiet,
            dir,
        });
        let nodes = Mutex::new(Vec::new());
        let next = AtomicU64::new(0);
        let probe = new_builder(&shared, &nodes, &next, &self.probe)?
            .start()
            .await?;
        Ok(TestMesh {
            shared,
            nodes,
            next,
            probe,
            subscriptions: Mutex::new(Vec::new()),
            stand_ins: Mutex::new(Vec::new()),
        })
    }
}

/// A builder for a node of the mesh, with its hooks registered.
fn new_builder(
    shared: &Arc<Shared>,
    nodes: &Mutex<Vec<Arc<NodeHooks>>>,
    next: &AtomicU64,
    service: &str,
) -> Result<NodeBuilder, Error> {
    let hooks = NodeHooks::new(
        Arc::clone(shared),
        service,
        next.fetch_add(1, Ordering::Relaxed),
    );
    let peers: Vec<SocketAddr> = live(nodes)
        .iter()
        .filter_map(|(_, d)| d.endpoint.local_addr().ok())
        .collect();
    lock(nodes).push(Arc::clone(&hooks));
    Ok(Node::builder(service)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .identity(shared.ca.issue(service)?)
        .trust(shared.ca.clone())
        .peers(peers)
        .test_hooks(hooks))
}

/// The nodes of the mesh that run: not aborted, not shut down (or shutting down), not
/// dropped. A node that ran `shutdown()` but is still held by the test is not one of them: it
/// no longer learns the mesh's subscriptions, so waiting on it would never end.
fn live(nodes: &Mutex<Vec<Arc<NodeHooks>>>) -> Vec<(Arc<NodeHooks>, Arc<Driver>)> {
    lock(nodes)
        .iter()
        .filter_map(|h| {
            let driver = h.driver()?;
            let running = driver.read(|e| e.lifecycle()) == Lifecycle::Running;
            running.then(|| (Arc::clone(h), driver))
        })
        .collect()
}

/// A test mesh: in-process nodes on loopback (QUIC over 127.0.0.1) sharing one ephemeral CA,
/// with a **probe** node that sends, requests and publishes to the services under test and
/// records everything they publish, send and reply (see the [module docs](super)).
///
/// The services under test are started by the test's own code, from
/// [`TestMesh::builder`]: a [`NodeBuilder`] with an identity from the mesh's CA, the other
/// nodes as static peers, and the mesh's hooks (faults, idle watch) attached.
pub struct TestMesh {
    pub(crate) shared: Arc<Shared>,
    nodes: Mutex<Vec<Arc<NodeHooks>>>,
    next: AtomicU64,
    pub(crate) probe: Node,
    /// The probe's subscriptions (pattern, group), kept alive with the mesh.
    pub(crate) subscriptions: Mutex<Vec<(shoal_proto::Subscription, crate::Subscription)>>,
    /// The services the mesh stands in for.
    pub(crate) stand_ins: Mutex<Vec<String>>,
}

impl std::fmt::Debug for TestMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestMesh")
            .field("seed", &self.shared.seed)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl TestMesh {
    /// A mesh with default settings: a new CA and a probe named `probe`.
    pub async fn start() -> Result<Self, Error> {
        TestMeshBuilder::default().start().await
    }

    /// Configures a mesh.
    pub fn configure() -> TestMeshBuilder {
        TestMeshBuilder::default()
    }

    /// A builder for a node of `service` in this mesh: its certificate from the mesh's CA,
    /// listening on 127.0.0.1 (a free port), dialling every running node of the mesh, with the
    /// mesh's fault plan and idle watch attached. Configure the rest (handlers, outbox,
    /// retry policy, ...) in the service's own code and `start` it. Restarting a killed
    /// instance is the same: a new builder, the same database.
    pub fn builder(&self, service: &str) -> Result<NodeBuilder, Error> {
        new_builder(&self.shared, &self.nodes, &self.next, service)
    }

    /// The mesh's CA (to issue certificates for nodes built some other way).
    pub fn ca(&self) -> &MeshCa {
        &self.shared.ca
    }

    /// A folder of the mesh's own for the test's files (an outbox or inbox database that a
    /// killed instance's restart opens again): new for each mesh, removed when the mesh is
    /// dropped.
    pub fn dir(&self) -> &std::path::Path {
        &self.shared.dir
    }

    /// The seed the faults draw from.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// The probe's node, for anything the mesh's own methods do not offer.
    pub fn probe(&self) -> &Node {
        &self.probe
    }

    /// How long the mesh has run (tokio's clock).
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    // ---------------------------------------------------------------------------------------
    // Faults

    /// Injects `fault` into what the mesh's nodes read, from now until healed.
    pub fn inject(&self, fault: Fault) -> FaultId {
        tracing::info!(%fault, "test mesh: fault injected");
        self.shared.rules.add(fault)
    }

    /// Cuts `a` off from `b` ([`Fault::partition`]); [`heal`](Self::heal) ends it.
    pub fn partition(&self, a: impl Into<Peer>, b: impl Into<Peer>) -> FaultId {
        self.inject(Fault::partition(a, b))
    }

    /// Removes an injected fault; says whether it was still there.
    pub fn heal(&self, fault: FaultId) -> bool {
        self.shared.rules.remove(fault)
    }

    /// Removes every injected fault.
    pub fn heal_all(&self) {
        self.shared.rules.clear();
    }

    /// How often an injected fault hit (0 once healed).
    pub fn hits(&self, fault: FaultId) -> u32 {
        self.shared.rules.hit_count(fault).unwrap_or(0)
    }

    // ---------------------------------------------------------------------------------------
    // Conformance

    /// Checks every message the probe records from now on against `contract` (the AsyncAPI
    /// document of the service under test): each must be one the document says the service
    /// sends, publishes or replies, with a payload its schema accepts. Violations are kept
    /// with the recorded message ([`Recorded::violation`]); [`verify`](Self::verify) fails on
    /// any.
    pub fn check_conformance(&self, contract: Conformance) {
        *write(&self.shared.conformance) = Some(Arc::new(contract));
    }

    /// The recorded messages that broke the contract checked.
    pub fn violations(&self) -> Vec<Recorded> {
        self.shared.recording.violations()
    }

    /// Fails with [`Error::Conformance`] if any recorded message broke the contract.
    pub fn verify(&self) -> Result<(), Error> {
        let violations = self.violations();
        if violations.is_empty() {
            return Ok(());
        }
        Err(Error::Conformance(
            violations
                .iter()
                .map(|r| format!("{r}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ))
    }

    // ---------------------------------------------------------------------------------------

    pub(crate) fn live(&self) -> Vec<(Arc<NodeHooks>, Arc<Driver>)> {
        live(&self.nodes)
    }
}
