//! Child processes for crash tests: the test binary runs itself again as the child (one of
//! its tests, selected by an environment variable), so a SIGKILL leaves exactly what a crash
//! leaves.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal::{Identity, MeshCa};

/// Bound on each wait for a child's progress line.
pub const CHILD_WAIT: Duration = Duration::from_secs(60);

/// A child process of this test binary and its stdout lines; killed when dropped.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Runs the test `test` of this binary alone, with these environment variables.
    pub fn spawn(test: &str, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Ends when the child exits; the count bounds a runaway child.
            for line in BufReader::new(stdout).lines().take(1_000_000) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (at most [`CHILD_WAIT`]) for a line that satisfies `done`, and returns it.
    pub fn wait_for(&mut self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + CHILD_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if done(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("child gave no expected line within {CHILD_WAIT:?}: {e}"),
            }
        }
    }

    /// The lines not read yet, up to the child's end: call it once the child exited (or was
    /// killed). Bounded by [`CHILD_WAIT`].
    pub fn rest(&mut self) -> Vec<String> {
        let deadline = Instant::now() + CHILD_WAIT;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return rest,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the child's output did not end within {CHILD_WAIT:?}")
                }
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The environment variables that carry a mesh identity to a child.
const CA_VAR: &str = "SHOAL_CHILD_CA";
const CERT_VAR: &str = "SHOAL_CHILD_CERT";
const KEY_VAR: &str = "SHOAL_CHILD_KEY";

/// Environment entries for [`Proc::spawn`] that hand the child `ca` (to trust) and `identity`
/// (to present); the child reads them back with [`credentials`].
pub fn credentials_env(ca: &MeshCa, identity: &Identity) -> [(&'static str, String); 3] {
    [
        (CA_VAR, ca.cert_pem()),
        (CERT_VAR, identity.cert_pem()),
        (KEY_VAR, identity.key_pem()),
    ]
}

/// In a child: the CA and identity its parent handed over with [`credentials_env`].
pub fn credentials() -> (MeshCa, Identity) {
    let var = |key: &str| std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set"));
    let ca = MeshCa::from_pem(&var(CA_VAR)).unwrap();
    let identity = Identity::from_pem(&var(CERT_VAR), &var(KEY_VAR)).unwrap();
    (ca, identity)
}

/// `n` from a progress line `"<what> <n>"`.
pub fn progress(line: &str, what: &str) -> Option<u64> {
    line.strip_prefix(what)?.trim().parse().ok()
}

/// A directory removed when dropped.
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// A fresh directory under the system's temporary folder.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "shoal-test-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
