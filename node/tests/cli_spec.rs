//! `shoal spec` and `shoal spec diff`: the example's release 2.0.0 document against its last
//! release's, breaking documents, report formats, allowlists, exit codes, and printing a
//! document from a file or from a program's `--print-spec`.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// The example's documents (examples/typed_orders).
fn example(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/typed_orders")
        .join(file)
        .display()
        .to_string()
}

/// A scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("shoal-spec-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `shoal args...`, killing it after 30 s.
fn shoal(args: &[&str]) -> Output {
    let mut child = Command::new(SHOAL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`shoal {}` did not finish", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn the_examples_release_2_breaks_nothing_of_its_last_release() {
    let out = shoal(&[
        "spec",
        "diff",
        &example("asyncapi-1.0.0.json"),
        &example("asyncapi.json"),
    ]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("info     operation-added"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("0 breaking, 0 warning(s), 10 info\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_breaking_change_fails_with_a_report_unless_allowed() {
    // Going back from 2.0.0 to 1.0.0 removes v2: breaking.
    let (new, old) = (example("asyncapi-1.0.0.json"), example("asyncapi.json"));
    let out = shoal(&["spec", "diff", &old, &new]);
    assert_eq!(out.code, Some(1));
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

    let json = shoal(&["spec", "diff", &old, &new, "--format", "json"]);
    assert_eq!(json.code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["breaking"], 5);
    assert_eq!(report["changes"][0]["level"], "breaking");

    let scratch = Scratch::new("allow");
    let allowlist = scratch.write(
        "allow.txt",
        "# going back on purpose\n* channels/*\n* operations/*\n",
    );
    let allowed = shoal(&["spec", "diff", &old, &new, "--allowlist", &allowlist]);
    assert_eq!(
        allowed.code,
        Some(0),
        "{}{}",
        allowed.stdout,
        allowed.stderr
    );
    assert!(allowed.stdout.contains("(allowed)"));
    // The version warning is not allowlisted: --fail-on warning fails on it.
    let strict = shoal(&[
        "spec",
        "diff",
        &old,
        &new,
        "--allowlist",
        &allowlist,
        "--fail-on",
        "warning",
    ]);
    assert_eq!(strict.code, Some(1));
    assert!(
        strict.stderr.contains("breaking changes or warnings"),
        "{}",
        strict.stderr
    );
}

#[test]
fn unreadable_documents_are_errors_that_name_the_file() {
    let scratch = Scratch::new("bad");
    let v2 = scratch.write(
        "v2.yaml",
        "asyncapi: 2.6.0\ninfo: {title: t, version: '1'}\n",
    );
    let out = shoal(&["spec", "diff", &v2, &example("asyncapi.json")]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("v2.yaml: AsyncAPI 2.6.0; the check reads AsyncAPI 3.x"),
        "{}",
        out.stderr
    );
    let out = shoal(&[
        "spec",
        "diff",
        "/nonexistent/old.json",
        &example("asyncapi.json"),
    ]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("could not access /nonexistent/old.json"),
        "{}",
        out.stderr
    );
    let allowlist = scratch.write("allow.txt", "no-such-rule x\n");
    let out = shoal(&[
        "spec",
        "diff",
        &example("asyncapi.json"),
        &example("asyncapi.json"),
        "--allowlist",
        &allowlist,
    ]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("line 1: unknown rule `no-such-rule`"),
        "{}",
        out.stderr
    );
}

#[test]
fn spec_prints_a_document_as_json_or_yaml() {
    let out = shoal(&["spec", &example("asyncapi.json"), "--format", "yaml"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("asyncapi: 3.0.0\ninfo:\n  title: orders\n"),
        "{}",
        out.stdout
    );
    let scratch = Scratch::new("yaml");
    let yaml = scratch.write("doc.yaml", &out.stdout);
    let back = shoal(&["spec", &yaml]);
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
    let scratch = Scratch::new("exec");
    let script = scratch.write(
        "service.sh",
        &format!(
            "#!/bin/sh\n[ \"$1\" = \"--flag\" ] && [ \"$2\" = \"--print-spec\" ] || exit 3\ncat '{}'\n",
            example("asyncapi.json")
        ),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = shoal(&["spec", "--exec", &script, "--", "--flag"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let committed = std::fs::read_to_string(example("asyncapi.json")).unwrap();
    assert_eq!(out.stdout, committed);

    let failing = shoal(&["spec", "--exec", &script]);
    assert_eq!(failing.code, Some(1));
    assert!(
        failing
            .stderr
            .contains("--print-spec failed (exit status: 3)"),
        "{}",
        failing.stderr
    );

    let hanging = scratch.write("hang.sh", "#!/bin/sh\nexec sleep 30\n");
    std::fs::set_permissions(&hanging, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = shoal(&["spec", "--exec", &hanging, "--timeout", "1"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("did not exit within 1s: does it handle --print-spec"),
        "{}",
        out.stderr
    );
}
