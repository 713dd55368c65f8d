//! What the fan-out bench does with the LAN's links: the bytes a host sent, and the loss rule.

use std::process::Command;

use shoal_discovery::netns::{self, HOST_IF};

use super::{LOSS_RULE, LOSS_TABLE};
use crate::error::{BenchError, BenchResult};

/// `tx_bytes` of `lan0` in namespace `ns` (`ip -n NS -s -j link show lan0`).
pub(super) fn tx_bytes(ns: &str) -> BenchResult<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", HOST_IF])
        .output()?;
    if !out.status.success() {
        return Err(BenchError::msg(format!(
            "ip -s link in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    links[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .ok_or_else(|| BenchError::msg(format!("no tx bytes for {HOST_IF} in {ns}")))
}

/// Adds (or deletes) the [`LOSS_RULE`] in namespace `ns`'s input chain.
pub(super) fn nft_loss(ns: &str, on: bool) -> BenchResult<()> {
    if on {
        netns::nft_input_rule(ns, LOSS_TABLE, LOSS_RULE)?;
    } else {
        netns::nft(ns, &format!("delete table inet {LOSS_TABLE}"))?;
    }
    Ok(())
}
