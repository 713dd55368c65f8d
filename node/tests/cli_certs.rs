//! The certificate lifecycle on the command line: `shoal cert rotate|revoke|show`, and a
//! running `shoal serve` following its files; `shoal serve --policy`. Loopback only, every
//! command bounded by a timeout.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `shoal args...` and expects success; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = shoal(args, LIMIT);
    assert!(
        out.status.success(),
        "`shoal {}` failed: {}",
        args.join(" "),
        out.stderr
    );
    out.stdout
}

/// The word after `key` in `text` (`serial ABC...` -> `ABC...`).
fn word_after<'a>(text: &'a str, key: &str) -> &'a str {
    text.split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .unwrap_or_else(|| panic!("no `{key}` in {text:?}"))
}

/// `shoal request` to the `echo` server at `peer`, as `as_service`, waiting at most `wait_ms`
/// for a connection.
fn request_within(ca: &str, peer: &str, as_service: &str, wait_ms: &str) -> Output {
    shoal(
        &[
            "request",
            "--ca",
            ca,
            "--peer",
            peer,
            "--service",
            "echo",
            "--as",
            as_service,
            "--name",
            "echo",
            "--payload",
            "hi",
            "--wait",
            wait_ms,
        ],
        LIMIT,
    )
}

fn request(ca: &str, peer: &str, as_service: &str) -> Output {
    request_within(ca, peer, as_service, "5000")
}

#[cfg(unix)]
#[test]
fn serve_follows_a_rotated_certificate_and_a_revocation_list() {
    let (_dir, ca) = mesh("rotate");
    let mut server = Server::start_with(&ca, "echo", &["--reload-every", "1"]);
    let peer = server.peer();
    ok(&["cert", "issue", "--ca", &ca, "--service", "client"]);
    let out = request(&ca, &peer, "client");
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "hi");

    // Rotation: the running server notices the new files and presents the new certificate.
    let echo_pem = format!("{ca}/echo.pem");
    let old = word_after(&ok(&["cert", "show", &echo_pem]), "serial").to_owned();
    let rotated = ok(&[
        "cert",
        "rotate",
        "--ca",
        &ca,
        "--service",
        "echo",
        "--days",
        "30",
    ]);
    let new = word_after(&rotated, "->").to_owned();
    assert_ne!(old, new);
    let line = server.next_line_with("reloaded certificate", LIMIT);
    assert_eq!(word_after(&line, "certificate"), new, "{line}");
    assert!(
        line.contains("service echo") && line.contains("trusting 1 CA(s)"),
        "{line}"
    );
    let out = request(&ca, &peer, "client");
    assert!(out.status.success(), "after rotation: {}", out.stderr);

    // Revocation: the client's certificate goes on the CA's list; on SIGHUP the server reads
    // it at once and refuses the client, saying why.
    let client_pem = format!("{ca}/client.pem");
    let revoked = ok(&["cert", "revoke", "--ca", &ca, "--cert", &client_pem]);
    assert!(revoked.contains("revokes 1 certificate(s)"), "{revoked}");
    server.signal("HUP");
    let line = server.next_line_with("revocations", LIMIT);
    assert_eq!(line, "revocations 1 certificate(s) revoked");
    // (The client reads ca.pem alone: given the CA folder it would enforce the folder's list
    // on itself and refuse to start with its own revoked certificate.)
    let own_refusal = request(&ca, &peer, "client");
    assert!(
        own_refusal.stderr.contains("this node's certificate"),
        "{}",
        own_refusal.stderr
    );
    let out = request_within(&format!("{ca}/ca.pem"), &peer, "client", "1000");
    assert_eq!(out.status.code(), Some(1), "a revoked client got through");
    assert!(
        out.stderr.contains("last failure") && out.stderr.contains("is revoked"),
        "{}",
        out.stderr
    );

    // Rotating with --revoke-old puts the replaced certificate on the list too.
    let rotated = ok(&[
        "cert",
        "rotate",
        "--ca",
        &ca,
        "--service",
        "echo",
        "--revoke-old",
    ]);
    assert!(rotated.contains(&format!("revoked {new}")), "{rotated}");
    let list = ok(&["cert", "show", &format!("{ca}/revoked.crl")]);
    assert!(list.contains("number 2 ") && list.contains(&new), "{list}");
    // The server takes the newest certificate, and still serves other clients.
    server.next_line_with("reloaded certificate", LIMIT);
    let out = request(&ca, &peer, "shoal-cli");
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn a_broken_certificate_file_is_refused_and_the_old_one_kept() {
    let (dir, ca) = mesh("broken");
    let mut server = Server::start_with(&ca, "echo", &["--reload-every", "1"]);
    std::fs::write(dir.path().join("mesh").join("echo.pem"), "garbage").unwrap();
    let line = server.next_line_with("reload refused:", LIMIT);
    assert!(line.contains("echo.pem"), "{line}");
    let out = request(&ca, &server.peer(), "shoal-cli");
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn serve_reads_a_policy_file_and_refuses_a_broken_one() {
    let (dir, ca) = mesh("policy");
    let good = dir.join("policy.toml");
    std::fs::write(
        &good,
        "[services.echo]\naccept = [{ from = \"shoal-cli\", messages = [\"echo\"] }]\n",
    )
    .unwrap();
    let mut server = Server::start_with(&ca, "echo", &["--policy", &good]);
    let peer = server.peer();
    let out = request(&ca, &peer, "shoal-cli");
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "hi");
    // Another service of the same mesh is refused by the policy, at once and with the reason.
    ok(&["cert", "issue", "--ca", &ca, "--service", "intruder"]);
    let out = request(&ca, &peer, "intruder");
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("not authorized: `echo` does not accept `echo` from `intruder`"),
        "{}",
        out.stderr
    );
    let line = server.next_line_with("refused ", LIMIT);
    assert!(line.contains("from `intruder`"), "{line}");
    drop(server);

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[services.echo]\naccpet = []\n").unwrap();
    let out = shoal(
        &[
            "serve",
            "--ca",
            &ca,
            "--service",
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            &bad,
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("invalid policy") && out.stderr.contains("accpet"),
        "{}",
        out.stderr
    );
}

#[test]
fn revoking_needs_the_ca_key_and_a_certificate() {
    let (dir, ca) = mesh("revoke-errors");
    let trust_only = dir.join("trust-only");
    std::fs::create_dir_all(&trust_only).unwrap();
    std::fs::copy(format!("{ca}/ca.pem"), format!("{trust_only}/ca.pem")).unwrap();
    let out = shoal(
        &["cert", "revoke", "--ca", &trust_only, "--serial", "0A"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("ca.key"), "{}", out.stderr);
    let out = shoal(&["cert", "revoke", "--ca", &ca, "--serial", "xyz"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("serial"), "{}", out.stderr);
    let out = shoal(
        &[
            "cert",
            "revoke",
            "--ca",
            &ca,
            "--cert",
            &format!("{ca}/ca.key"),
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("no certificate"), "{}", out.stderr);
}
