//! What the command-line tests share: scratch folders, running `shoal` with a time limit, and
//! a running `shoal serve` whose stdout lines arrive over a channel.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A scratch folder under Cargo's target tmp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "shoal-cli-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a scratch file");
        path.display().to_string()
    }

    pub fn join(&self, p: &str) -> String {
        self.0.join(p).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The result of a finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `shoal args...` to completion, killing it (and failing the test) after `limit`.
pub fn shoal(args: &[&str], limit: Duration) -> Output {
    let mut child = ChildGuard(
        Command::new(SHOAL)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shoal"),
    );
    let stdout = drain(child.0.stdout.take().expect("stdout"));
    let stderr = drain(child.0.stderr.take().expect("stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "`shoal {}` did not finish within {limit:?}",
            args.join(" ")
        );
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Reads a pipe to the end on a thread, so a chatty child never blocks on a full pipe.
pub fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// Kills the child process when dropped (a failed assertion included).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `shoal serve`, its stdout lines delivered over a channel.
pub struct Server {
    pub child: ChildGuard,
    pub lines: mpsc::Receiver<String>,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `shoal serve` on a free loopback port and waits for its `listening` line.
    pub fn start(ca: &str, service: &str) -> Self {
        Self::start_with(ca, service, &[])
    }

    /// [`Server::start`] with more `shoal serve` arguments.
    pub fn start_with(ca: &str, service: &str, extra: &[&str]) -> Self {
        let mut child = ChildGuard(
            Command::new(SHOAL)
                .args(["serve", "--ca", ca, "--service", service])
                .args(["--listen", "127.0.0.1:0"])
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn shoal serve"),
        );
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Self {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = server.next_line_with("listening ", Duration::from_secs(10));
        // `listening <addr> node <id> service <name>`
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 6, "unexpected start line: {line}");
        assert_eq!((words[2], words[4], words[5]), ("node", "service", service));
        assert_eq!(words[3].len(), 32, "node id is 32 hex digits: {line}");
        server.addr = words[1].parse().expect("listen address");
        assert!(server.addr.ip().is_loopback());
        server
    }

    /// The next stdout line that starts with `prefix`, within `limit`.
    pub fn next_line_with(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?} within {limit:?}: {e}"),
            }
        }
    }

    pub fn peer(&self) -> String {
        self.addr.to_string()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to the server with `kill`.
    #[cfg(unix)]
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }
}

/// A temp dir with a mesh CA and a certificate for `echo`.
pub fn mesh(name: &str) -> (TempDir, String) {
    let dir = TempDir::new(name);
    let ca = dir.join("mesh");
    let out = shoal(&["ca", "init", "--dir", &ca], Duration::from_secs(20));
    assert!(out.status.success(), "ca init: {}", out.stderr);
    let out = shoal(
        &["cert", "issue", "--ca", &ca, "--service", "echo"],
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "cert issue: {}", out.stderr);
    (dir, ca)
}
