//! nftables inside a namespace, for tests and benchmarks that drop packets (this kernel has no
//! `netem`): `meta l4proto udp numgen random mod 100 < 5 drop` makes a 5 % lossy host, `udp
//! dport 7451 drop` blocks one port. A namespace's rules go with it when it is deleted.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// Whether the `nft` command runs here.
pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Loads `ruleset` (nft's file syntax, or one command such as `delete table inet t`) into
/// namespace `ns` with `ip netns exec <ns> nft -f -`.
///
/// # Errors
///
/// If `nft` cannot run or refuses the ruleset (its message in the error).
pub fn nft(ns: &str, ruleset: &str) -> io::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Adds the nftables table `inet TABLE` (`table`) with an input chain holding `rule` to
/// namespace `ns`: what reaches the namespace's sockets passes through it. Delete it with
/// [`nft`] and `delete table inet TABLE`.
///
/// # Errors
///
/// As [`nft`].
pub fn nft_input_rule(ns: &str, table: &str, rule: &str) -> io::Result<()> {
    nft(
        ns,
        &format!(
            "table inet {table} {{\n chain input {{\n  type filter hook input priority 0; \
             policy accept;\n  {rule}\n }}\n}}\n"
        ),
    )
}
