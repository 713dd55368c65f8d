//! Integration tests of the `shoal` command-line tool: runs the built binary on loopback only,
//! every command bounded by a timeout, every child process killed when its guard drops.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod cli_support;

use cli_support::{ChildGuard, SHOAL, TempDir, shoal};

/// A running `shoal serve`, its stdout lines delivered over a channel.
struct Server {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Server {
    /// Starts `shoal serve` on a free loopback port and waits for its `listening` line.
    fn start(ca: &str, service: &str) -> Self {
        Self::start_with(ca, service, &[])
    }

    /// [`Server::start`] with more `shoal serve` arguments.
    fn start_with(ca: &str, service: &str, extra: &[&str]) -> Self {
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
    fn next_line_with(&mut self, prefix: &str, limit: Duration) -> String {
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

    fn peer(&self) -> String {
        self.addr.to_string()
    }
}

/// A temp dir with a mesh CA and a certificate for `echo`.
fn mesh(name: &str) -> (TempDir, String) {
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

#[test]
fn ca_init_and_cert_issue_write_parseable_files() {
    let (dir, ca) = mesh("certs");
    let trusted = shoal::MeshCa::load(&ca).expect("CA loads");
    assert!(trusted.can_issue());
    let identity = shoal::Identity::load(dir.join("mesh/echo.pem"), dir.join("mesh/echo.key"))
        .expect("identity loads");
    assert_eq!(identity.service(), Some("echo"));

    // Refuses to replace the CA without --force; replaces it with --force.
    let again = shoal(&["ca", "init", "--dir", &ca], Duration::from_secs(20));
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stderr.starts_with("error: "), "{}", again.stderr);
    let before = std::fs::read_to_string(dir.path().join("mesh/ca.pem")).expect("ca.pem");
    let forced = shoal(
        &["ca", "init", "--dir", &ca, "--force"],
        Duration::from_secs(20),
    );
    assert!(forced.status.success(), "{}", forced.stderr);
    let after = std::fs::read_to_string(dir.path().join("mesh/ca.pem")).expect("ca.pem");
    assert_ne!(before, after);
    shoal::MeshCa::load(&ca).expect("the new CA loads");

    // Explicit output paths.
    let cert = dir.join("out/tool.crt");
    let key = dir.join("out/tool.pem-key");
    let out = shoal(
        &[
            "cert",
            "issue",
            "--ca",
            &ca,
            "--service",
            "tool",
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", out.stderr);
    let tool = shoal::Identity::load(&cert, &key).expect("tool identity loads");
    assert_eq!(tool.service(), Some("tool"));

    // A bad service name is an error, not a panic.
    let bad = shoal(
        &["cert", "issue", "--ca", &ca, "--service", "Not_A_Label"],
        Duration::from_secs(20),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stderr.starts_with("error: "), "{}", bad.stderr);
}

#[test]
fn serve_and_request_returns_the_echo() {
    let (_dir, ca) = mesh("request");
    let mut server = Server::start(&ca, "echo");
    let peer = server.peer();

    let out = shoal(
        &[
            "request",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--service",
            "echo",
            "--name",
            "echo",
            "--payload",
            "hello shoal",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "request failed: {}", out.stderr);
    assert_eq!(out.stdout, "hello shoal\n");

    let out = shoal(
        &[
            "send",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--service",
            "echo",
            "--name",
            "print",
            "--payload",
            "to print",
            "--count",
            "2",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "send failed: {}", out.stderr);
    let receipts: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(receipts.len(), 2, "{}", out.stdout);
    assert!(
        receipts
            .iter()
            .all(|r| r.starts_with("sent id ") && r.contains(" attempts 1 "))
    );
    let printed = server.next_line_with("received ", Duration::from_secs(10));
    assert!(printed.contains("\"to print\""), "{printed}");

    // A message nobody handles: an error and exit code 1.
    let out = shoal(
        &[
            "send",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--service",
            "echo",
            "--name",
            "nobody",
            "--timeout",
            "2000",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("error: "), "{}", out.stderr);

    // The wrong target service: a bounded wait and a clear error.
    let out = shoal(
        &[
            "request",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--service",
            "nope",
            "--name",
            "echo",
            "--wait",
            "500",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("no instance of `nope`"),
        "{}",
        out.stderr
    );

    let out = shoal(
        &["peers", "--ca", &ca, "--peer", &peer],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "peers failed: {}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("echo ") && l.contains(&peer))
    );
}

#[test]
fn publish_reaches_a_subscribed_server() {
    let (_dir, ca) = mesh("publish");
    let mut server = Server::start_with(&ca, "echo", &["--subscribe", "order.*"]);
    let peer = server.peer();
    let out = shoal(
        &[
            "publish",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--topic",
            "order.created",
            "--payload",
            "order 42",
            "--count",
            "2",
            "--partition-key",
            "customer-7",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "publish failed: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("published id ") && l.contains(" to echo@")),
        "{}",
        out.stdout
    );
    for _ in 0..2 {
        let printed =
            server.next_line_with("received event order.created", Duration::from_secs(10));
        assert!(printed.contains("\"order 42\""), "{printed}");
    }

    // Nobody subscribes to `invoice.*`: a clear error once the wait is over.
    let out = shoal(
        &[
            "publish",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--topic",
            "invoice.paid",
            "--wait",
            "500",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("fewer than 1 subscriber group"),
        "{}",
        out.stderr
    );
}

#[test]
fn ping_prints_percentiles() {
    let (_dir, ca) = mesh("ping");
    let server = Server::start(&ca, "echo");
    let peer = server.peer();
    for extra in [&[][..], &["--protocol"][..]] {
        let mut args = vec![
            "ping",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--service",
            "echo",
            "--count",
            "200",
        ];
        args.extend_from_slice(extra);
        let out = shoal(&args, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "ping {extra:?} failed: {}",
            out.stderr
        );
        for label in ["count", "p50", "p90", "p99", "p99.9", "max"] {
            let line = out
                .stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(label))
                .unwrap_or_else(|| panic!("no {label} line in:\n{}", out.stdout));
            let value: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unparseable line {line:?}"));
            if label == "count" {
                assert_eq!(value, 200);
            }
        }
    }
    drop(server);
}

#[cfg(unix)]
#[test]
fn serve_stops_gracefully_on_sigterm_and_prints_stats() {
    let (_dir, ca) = mesh("sigterm");
    let mut server = Server::start(&ca, "echo");
    let pid = server.child.0.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    server.next_line_with("stopping (SIGTERM)", Duration::from_secs(10));
    let stats = server.next_line_with("stats ", Duration::from_secs(10));
    assert!(stats.contains("handled=0"), "{stats}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.0.try_wait().expect("try_wait") {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn errors_exit_with_code_one() {
    let dir = TempDir::new("errors");
    let missing = dir.join("no-such-ca");
    let out = shoal(
        &[
            "request",
            "--ca",
            &missing,
            "--peer",
            "127.0.0.1:9",
            "--service",
            "echo",
            "--name",
            "echo",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}
