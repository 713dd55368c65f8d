//! Safety checks on the root namespace: before the run (namespaces can be made, this is the
//! root namespace), while it runs (no mDNS daemon thread in the root namespace) and after it
//! (no namespace left behind, the root namespace's links, addresses, routes and multicast
//! memberships unchanged).

use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_discovery::{in_root_netns, netns};

use crate::error::{BenchError, BenchResult};

/// The root namespace's links, addresses, routes and multicast memberships (the output of
/// `ip` run from this thread, which must be in the root namespace).
pub(super) fn root_snapshot() -> BenchResult<String> {
    if !in_root_netns() {
        return Err(BenchError::msg(
            "the main thread is not in the root network namespace: cannot check it",
        ));
    }
    let mut out = String::new();
    for args in [
        &["-o", "link", "show"][..],
        &["-o", "addr", "show"],
        &["route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
        &["maddr", "show"],
    ] {
        let output = Command::new("ip").args(args).output()?;
        let _ = writeln!(out, "$ ip {}", args.join(" "));
        out.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    Ok(out)
}

/// Why [`netns::can_create_netns`] said no, as far as can be told.
fn why_no_netns() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return format!("not running as root (effective uid {euid}); run it with sudo");
    }
    match Command::new("ip").arg("-V").output() {
        Err(e) => format!("`ip` (iproute2) cannot be run: {e}"),
        Ok(_) => "`ip netns add` failed or the new namespace could not be entered \
                  (a container without CAP_SYS_ADMIN?)"
            .to_owned(),
    }
}

/// Lines of `after` not in `before` and the other way round.
fn snapshot_diff(before: &str, after: &str) -> Vec<String> {
    let mut diff = Vec::new();
    for line in before.lines().filter(|l| !after.lines().any(|a| a == *l)) {
        diff.push(format!("- {line}"));
    }
    for line in after.lines().filter(|l| !before.lines().any(|b| b == *l)) {
        diff.push(format!("+ {line}"));
    }
    diff
}

/// Whether the root namespace has joined the mDNS multicast groups.
fn root_joined_mdns_group(snapshot: &str) -> bool {
    let mdns_lines = snapshot
        .lines()
        .filter(|l| l.contains("224.0.0.251") || l.contains("ff02::fb"));
    mdns_lines.count() > 0
}

/// Namespaces of this process still listed by `ip netns list`.
fn our_namespaces() -> BenchResult<Vec<String>> {
    let output = Command::new("ip").args(["netns", "list"]).output()?;
    let mine = format!("shoal-{}-", std::process::id());
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&mine))
        .map(str::to_owned)
        .collect())
}

/// Counts and checks the mDNS daemon threads of this process: none may be in the root
/// namespace.
#[derive(Debug)]
pub(super) struct DaemonAudit {
    root: u64,
    checks: AtomicU64,
    max_seen: AtomicU64,
}

impl DaemonAudit {
    pub(super) fn new() -> BenchResult<Self> {
        Ok(Self {
            root: netns::root_netns_inode()?,
            checks: AtomicU64::new(0),
            max_seen: AtomicU64::new(0),
        })
    }

    pub(super) fn check(&self) -> BenchResult<()> {
        let threads = netns::mdns_daemon_thread_netns()?;
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.max_seen
            .fetch_max(threads.len() as u64, Ordering::Relaxed);
        if threads.contains(&self.root) {
            return Err(BenchError::msg(
                "an mDNS daemon thread runs in the root network namespace: stopping",
            ));
        }
        Ok(())
    }

    pub(super) fn summary(&self) -> String {
        format!(
            "mDNS daemon threads of this process checked {} times (up to {} at once): none in the root namespace",
            self.checks.load(Ordering::Relaxed),
            self.max_seen.load(Ordering::Relaxed)
        )
    }
}

/// Checks that namespaces can be created and that this is the root namespace, and returns
/// the root namespace's snapshot to compare with after the run.
pub(super) fn check_before_run() -> BenchResult<String> {
    if !netns::can_create_netns() {
        return Err(BenchError::skipped(format!(
            "needs root to create network namespaces ({}); mDNS must never run in the root \
             namespace, so nothing was measured",
            why_no_netns()
        )));
    }
    if !in_root_netns() {
        return Err(BenchError::msg(
            "run this from the root network namespace (it builds its own namespaces)",
        ));
    }
    let before = root_snapshot()?;
    if root_joined_mdns_group(&before) {
        eprintln!("note: the root namespace already had the mDNS group joined before this run");
    }
    Ok(before)
}

/// The checks after the run (also after a failed one): the daemon audit's summary, no
/// namespace of this process left behind, the root namespace unchanged (and, if the run got
/// that far, unchanged while the nodes ran, `during`). Returns one line per check passed.
///
/// # Errors
///
/// If a check failed, or a snapshot could not be taken.
pub(super) fn check_after_run(
    before: &str,
    during: Option<&str>,
    audit: &DaemonAudit,
) -> BenchResult<Vec<String>> {
    let mut safety = Vec::new();
    let mut problems = Vec::new();
    safety.push(audit.summary());
    let left = our_namespaces()?;
    if left.is_empty() {
        safety.push(format!(
            "`ip netns list` after the run: none of this process's namespaces (shoal-{}-*) left",
            std::process::id()
        ));
    } else {
        problems.push(format!("namespaces left behind: {}", left.join(", ")));
    }
    let after = root_snapshot()?;
    let diff = snapshot_diff(before, &after);
    if diff.is_empty() {
        safety.push(
            "root namespace: links, addresses, routes and multicast memberships identical before and after"
                .to_owned(),
        );
    } else {
        problems.push(format!("root namespace changed:\n{}", diff.join("\n")));
    }
    if let Some(during) = during {
        let diff = snapshot_diff(before, during);
        if diff.is_empty() && !root_joined_mdns_group(during) {
            safety.push(
                "root namespace while nodes ran: unchanged, mDNS group (224.0.0.251) not joined"
                    .to_owned(),
            );
        } else if !diff.is_empty() {
            problems.push(format!(
                "root namespace changed while nodes ran:\n{}",
                diff.join("\n")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(BenchError::msg(format!(
            "SAFETY CHECK FAILED: {}",
            problems.join("; ")
        )));
    }
    Ok(safety)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_diff_lists_added_and_removed_lines() {
        let diff = snapshot_diff("a\nb\n", "b\nc\n");
        assert_eq!(diff, vec!["- a".to_owned(), "+ c".to_owned()]);
        assert!(snapshot_diff("x\n", "x\n").is_empty());
    }

    #[test]
    fn mdns_group_is_spotted() {
        assert!(root_joined_mdns_group("4: eth0\n    inet  224.0.0.251\n"));
        assert!(!root_joined_mdns_group("4: eth0\n    inet  224.0.0.1\n"));
    }
}
