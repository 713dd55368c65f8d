//! `shoal spec` and `shoal spec diff`: the example's release 2.0.0 document against its last
//! release's, breaking documents, report formats, allowlists, exit codes, and printing a
//! document from a file or from a program's `--print-spec`.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Output, TempDir, shoal};

/// The example's documents (examples/typed_orders).
fn example(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/typed_orders")
        .join(file)
        .display()
        .to_string()
}

/// Runs `shoal args...`, at most 30 s.
fn run(args: &[&str]) -> Output {
    shoal(args, Duration::from_secs(30))
}

#[test]
fn the_examples_release_2_breaks_nothing_of_its_last_release() {
    let out = run(&[
        "spec",
        "diff",
        &example("asyncapi-1.0.0.json"),
        &example("asyncapi.json"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("info     operation-added"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("0 breaking, 0 warning(s), 9 info\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_breaking_change_fails_with_a_report_unless_allowed() {
    // Going back from 2.0.0 to 1.0.0 removes v2: breaking.
    let (new, old) = (example("asyncapi-1.0.0.json"), example("asyncapi.json"));
    let out = run(&["spec", "diff", &old, &new]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.contains(
            "breaking operation-removed           operations/receive.orders.PlaceOrder.v2"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("warning  major-version-not-bumped"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.starts_with("error: breaking changes from "),
        "{}",
        out.stderr
    );

    let json = run(&["spec", "diff", &old, &new, "--format", "json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["breaking"], 5);
    assert_eq!(report["changes"][0]["level"], "breaking");

    let scratch = TempDir::new("allow");
    let allowlist = scratch.write(
        "allow.txt",
        "# going back on purpose\n* channels/*\n* operations/*\n",
    );
    let allowed = run(&["spec", "diff", &old, &new, "--allowlist", &allowlist]);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}{}",
        allowed.stdout,
        allowed.stderr
    );
    assert!(allowed.stdout.contains("(allowed)"));
    // The version warning is not allowlisted: --fail-on warning fails on it.
    let strict = run(&[
        "spec",
        "diff",
        &old,
        &new,
        "--allowlist",
        &allowlist,
        "--fail-on",
        "warning",
    ]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(
        strict.stderr.contains("breaking changes or warnings"),
        "{}",
        strict.stderr
    );
}

#[test]
fn unreadable_documents_are_errors_that_name_the_file() {
    let scratch = TempDir::new("bad");
    let v2 = scratch.write(
        "v2.yaml",
        "asyncapi: 2.6.0\ninfo: {title: t, version: '1'}\n",
    );
    let out = run(&["spec", "diff", &v2, &example("asyncapi.json")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("v2.yaml: AsyncAPI 2.6.0; the check reads AsyncAPI 3.x"),
        "{}",
        out.stderr
    );
    let out = run(&[
        "spec",
        "diff",
        "/nonexistent/old.json",
        &example("asyncapi.json"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("could not access /nonexistent/old.json"),
        "{}",
        out.stderr
    );
    let allowlist = scratch.write("allow.txt", "no-such-rule x\n");
    let out = run(&[
        "spec",
        "diff",
        &example("asyncapi.json"),
        &example("asyncapi.json"),
        "--allowlist",
        &allowlist,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("line 1: unknown rule `no-such-rule`"),
        "{}",
        out.stderr
    );
}

#[test]
fn spec_prints_a_document_as_json_or_yaml() {
    let out = run(&["spec", &example("asyncapi.json"), "--format", "yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("asyncapi: 3.0.0\ninfo:\n  title: orders\n"),
        "{}",
        out.stdout
    );
    let scratch = TempDir::new("yaml");
    let yaml = scratch.write("doc.yaml", &out.stdout);
    let back = run(&["spec", &yaml]);
    let committed = std::fs::read_to_string(example("asyncapi.json")).unwrap();
    assert_eq!(
        back.stdout, committed,
        "YAML to JSON gives the canonical document back"
    );
}

#[cfg(unix)]
#[test]
fn spec_exec_runs_a_program_with_print_spec() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = TempDir::new("exec");
    let script = scratch.write(
        "service.sh",
        &format!(
            "#!/bin/sh\n[ \"$1\" = \"--flag\" ] && [ \"$2\" = \"--print-spec\" ] || exit 3\ncat '{}'\n",
            example("asyncapi.json")
        ),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&["spec", "--exec", &script, "--", "--flag"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let committed = std::fs::read_to_string(example("asyncapi.json")).unwrap();
    assert_eq!(out.stdout, committed);

    let failing = run(&["spec", "--exec", &script]);
    assert_eq!(failing.status.code(), Some(1));
    assert!(
        failing
            .stderr
            .contains("--print-spec failed (exit status: 3)"),
        "{}",
        failing.stderr
    );

    let hanging = scratch.write("hang.sh", "#!/bin/sh\nexec sleep 30\n");
    std::fs::set_permissions(&hanging, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&["spec", "--exec", &hanging, "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("did not exit within 1s: does it handle --print-spec"),
        "{}",
        out.stderr
    );
}
