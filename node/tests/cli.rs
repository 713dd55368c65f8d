//! Integration tests of the `shoal` command-line tool: runs the built binary on loopback only,
//! every command bounded by a timeout, every child process killed when its guard drops.
#![cfg(feature = "cli")]

use std::thread;
use std::time::{Duration, Instant};

mod support;

use support::*;

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

/// `shoal request` of `echo` with `payload` to the `echo` server at `peer`, with `extra`
/// arguments, 30 s at most.
fn echo_request(ca: &str, peer: &str, payload: &str, extra: &[&str]) -> Output {
    let request = [
        "request",
        "--ca",
        ca,
        "--peer",
        peer,
        "--service",
        "echo",
        "--name",
        "echo",
        "--payload",
        payload,
    ];
    shoal(&[&request[..], extra].concat(), Duration::from_secs(30))
}

#[test]
fn serve_and_request_returns_the_echo() {
    let (_dir, ca) = mesh("request");
    let mut server = Server::start(&ca, "echo");
    let peer = server.peer();

    let out = echo_request(&ca, &peer, "hello shoal", &[]);
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

    // In the background: all of them sent at once, then delivered before the exit.
    let background = |name: &str, count: &str| {
        let args = [
            "send",
            "--ca",
            &ca,
            "--peer",
            &peer,
            "--service",
            "echo",
            "--name",
            name,
            "--count",
            count,
            "--timeout",
            "2000",
            "--background",
        ];
        shoal(&args, Duration::from_secs(30))
    };
    let out = background("print", "300");
    assert!(
        out.status.success(),
        "send --background failed: {}",
        out.stderr
    );
    assert!(
        out.stdout
            .starts_with("sent 300 in the background: delivered 300, dead-lettered 0 time "),
        "{}",
        out.stdout
    );
    // Nobody handles it: a dead letter, an error and exit code 1.
    let out = background("nobody", "1");
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("delivered 0, dead-lettered 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("1 of 1 messages were not delivered"),
        "{}",
        out.stderr
    );

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

    // In the background: all of them published at once, then delivered before the exit.
    let background = [
        "publish",
        "--ca",
        &ca,
        "--peer",
        &peer,
        "--topic",
        "order.shipped",
        "--payload",
        "shipped",
        "--count",
        "50",
        "--timeout",
        "2000",
        "--background",
    ];
    let out = shoal(&background, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "publish --background failed: {}",
        out.stderr
    );
    assert!(
        out.stdout
            .starts_with("sent 50 in the background: delivered 50, dead-lettered 0 time "),
        "{}",
        out.stdout
    );
    for _ in 0..50 {
        let printed =
            server.next_line_with("received event order.shipped", Duration::from_secs(10));
        assert!(printed.contains("\"shipped\""), "{printed}");
    }
    // Background and best-effort together make no sense: a usage error.
    let out = shoal(
        &[&background[..], &["--best-effort"]].concat(),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);

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
    server.signal("TERM");
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

/// `--close-idle-after 0` keeps connections, as its help says: the builder's `None`, not a
/// zero the node refuses at start.
#[test]
fn close_idle_after_zero_keeps_connections() {
    let (_dir, ca) = mesh("keep");
    let server = Server::start_with(&ca, "echo", &["--close-idle-after", "0"]);
    let peer = server.peer();
    let out = echo_request(&ca, &peer, "kept", &["--close-idle-after", "0"]);
    assert!(out.status.success(), "request failed: {}", out.stderr);
    assert_eq!(out.stdout, "kept\n");
}

#[cfg(unix)]
#[test]
fn busy_poll_reaches_the_node_and_serve_says_how_long_it_polled() {
    let (_dir, ca) = mesh("busy-poll");
    let mut server = Server::start_with(&ca, "echo", &["--busy-poll", "2ms"]);
    let peer = server.peer();
    let out = echo_request(&ca, &peer, "polled", &["--busy-poll", "500us"]);
    assert!(out.status.success(), "request failed: {}", out.stderr);
    assert_eq!(out.stdout, "polled\n");
    server.signal("TERM");
    server.next_line_with("stats ", Duration::from_secs(10));
    // `busy-poll window=2ms polled=0.004321s`: the request made the server poll.
    let line = server.next_line_with("busy-poll ", Duration::from_secs(10));
    let polled: f64 = line
        .strip_prefix("busy-poll window=2ms polled=")
        .and_then(|rest| rest.strip_suffix('s'))
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("unexpected busy-poll line: {line}"));
    assert!(polled > 0.0, "{line}");

    // A window that is not a duration is a usage error naming the flag.
    let out = echo_request(&ca, &peer, "polled", &["--busy-poll", "5 parsecs"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout);
    assert!(
        out.stderr.contains("--busy-poll <DURATION>"),
        "{}",
        out.stderr
    );
}

/// The default busy polling's window from the command line: a lone request never starts it
/// (one message at a time), and `serve` says so; with `--busy-poll` it is a usage error.
#[cfg(unix)]
#[test]
fn busy_poll_under_load_reaches_the_node_and_a_lone_request_does_not_start_it() {
    let (_dir, ca) = mesh("busy-poll-under-load");
    let mut server = Server::start_with(&ca, "echo", &["--busy-poll-under-load", "2ms"]);
    let peer = server.peer();
    let out = echo_request(&ca, &peer, "lone", &[]);
    assert!(out.status.success(), "request failed: {}", out.stderr);
    assert_eq!(out.stdout, "lone\n");
    server.signal("TERM");
    server.next_line_with("stats ", Duration::from_secs(10));
    let line = server.next_line_with("busy-poll ", Duration::from_secs(10));
    assert_eq!(line, "busy-poll under-load window=2ms polled=0.000000s");

    let both = ["--busy-poll", "1ms", "--busy-poll-under-load", "1ms"];
    let out = echo_request(&ca, &peer, "both", &both);
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
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

#[test]
fn serve_with_metrics_prints_the_endpoint_and_counts_what_it_handled() {
    use std::io::{Read, Write};
    let (_dir, ca) = mesh("metrics");
    let mut server = Server::start_with(&ca, "echo", &["--metrics", "127.0.0.1:0"]);
    let line = server.next_line_with("metrics ", Duration::from_secs(10));
    // `metrics http://<addr>/metrics`
    let addr: std::net::SocketAddr = line
        .strip_prefix("metrics http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected metrics line: {line}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{line}");
    let peer = server.peer();
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
            "hi",
            "--count",
            "2",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "send failed: {}", out.stderr);
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer
            .lines()
            .any(|l| l == r#"shoal_messages_handled_total{service="shoal-cli",message="print"} 2"#),
        "{answer}"
    );
}

#[test]
fn multicast_on_a_bad_interface_fails_with_a_clear_error() {
    let (_dir, ca) = mesh("multicast");
    let fails_with = |args: &[&str], error: &str| {
        let out = shoal(args, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
        assert!(out.stderr.contains(error), "{}", out.stderr);
    };
    let serve = ["serve", "--ca", &ca, "--service", "echo"];
    // The loopback interface is refused before any socket is opened on it.
    let loopback = "multicast on interface `lo`: the interface is a loopback interface";
    fails_with(&[&serve[..], &["--multicast", "lo"]].concat(), loopback);
    let publish = [
        "publish",
        "--ca",
        &ca,
        "--peer",
        "127.0.0.1:9",
        "--topic",
        "order.created",
    ];
    let group = [
        "--multicast",
        "no-such-if0",
        "--multicast-group",
        "239.255.1.2:7000",
    ];
    let unknown = "multicast on interface `no-such-if0`: no such interface";
    fails_with(&[&publish[..], &group].concat(), unknown);
    // A group without an interface is a usage error.
    let out = shoal(&[&serve[..], &group[2..]].concat(), Duration::from_secs(20));
    assert!(!out.status.success());
    assert!(out.stderr.contains("--multicast <IFACE>"), "{}", out.stderr);
}
