//! The victim of measurement 2: an instance of `work` in its own process (this binary
//! re-executed under `ip netns exec` with the hidden `--child-victim` flag), so that
//! `SIGKILL` takes it down like `kill -9`. Holds the parent's handle on it ([`Victim`]), the
//! private folder with its certificates ([`PkiDir`]) and the code the process runs
//! ([`victim_main`]).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal::{Identity, MeshCa, NodeId};
use shoal_discovery::in_root_netns;
use shoal_discovery::netns::{self, Lan};

use super::node_thread::{Handler, NodeSetup, install_handler};
use super::{SHUTDOWN_LIMIT, WORK_SERVICE, check_interrupted, shoal_err};
use crate::error::{BenchError, BenchResult};
use crate::runtime;

/// Longest the victim process waits to print that it is ready.
const VICTIM_READY_LIMIT: Duration = Duration::from_secs(15);
/// Longest the victim process lives if nobody kills it (it also stops when stdin closes).
const VICTIM_LIFETIME: Duration = Duration::from_secs(180);

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

/// The victim: this binary re-executed inside `h2` with `--child-victim`.
pub(super) struct Victim {
    child: Child,
    stdin: Option<ChildStdin>,
    pub(super) id: NodeId,
    /// When its `READY` line was read.
    pub(super) ready_at: Instant,
    reader: Option<JoinHandle<()>>,
}

impl Victim {
    pub(super) fn spawn(
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
    pub(super) fn kill(&mut self) -> BenchResult<Instant> {
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
pub(super) struct PkiDir(pub(super) PathBuf);

impl PkiDir {
    pub(super) fn create(ca: &MeshCa) -> BenchResult<Self> {
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
    let rt = runtime::build()?;
    rt.block_on(async move {
        let setup = NodeSetup {
            service: WORK_SERVICE,
            ca,
            listen: args.listen,
            liveness: args.liveness,
            handler: Handler::Sleep(args.handler),
            eager: false,
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
