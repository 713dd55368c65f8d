//! `shoal peers`: dial the given peers, wait briefly, and list the live ones, then the instances
//! discovery announced (connected or not).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use clap::Args;
use shoal::NodeEvent;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::common::{ClientArgs, micros};
use crate::{CliError, CliResult};

/// `shoal peers`
#[derive(Debug, Args)]
pub(crate) struct PeersArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Also explain why this service has (or has no) reachable instance: what discovery
    /// announced, and the last error reaching each address. Repeatable.
    #[arg(long = "service", value_name = "NAME")]
    diagnose: Vec<String>,
}

/// Runs `shoal peers`: waits until every `--peer` address is connected (at most `--wait`, 1 s
/// by default), then prints a table `SERVICE NODE ADDRESS RTT IN_FLIGHT` of the connected
/// peers, grouped by service, and, when discovery announced instances, a second table
/// `DISCOVERED SERVICE NODE ADDRESSES MULTICAST CONNECTED` (MULTICAST: the group and port the
/// instance advertises, `-` for none). This probe connects to every instance
/// discovery announces (a service connects on first use), so the first table shows which of
/// them are reachable. Addresses that did not connect are reported on stderr; it fails if
/// nothing was found.
pub(crate) async fn run(args: PeersArgs) -> CliResult {
    let (node, mut events) = args
        .client
        .start_with(|b| b.connect_on_discovery(true))
        .await?;
    let wanted: BTreeSet<SocketAddr> = args.client.node.peers.iter().copied().collect();
    let deadline = Instant::now() + args.client.wait_or(1_000);
    let mut failures: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let mut listening = true;
    loop {
        let connected: BTreeSet<SocketAddr> = node.peers().iter().map(|p| p.addr).collect();
        // With mDNS there is no list to complete: listen for the whole wait.
        if wanted.is_subset(&connected)
            && args.client.node.mdns.is_empty()
            && args.client.node.dns_sd.is_empty()
        {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            event = events.recv(), if listening => match event {
                Ok(NodeEvent::HandshakeFailed { addr, reason }) => {
                    failures.insert(addr, reason);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => listening = false,
            },
        }
    }

    let peers = node.peers();
    let discovered = node.discovered();
    let diagnoses: Vec<_> = args.diagnose.iter().map(|s| node.diagnose(s)).collect();
    node.shutdown().await;
    for diagnosis in &diagnoses {
        say!("{diagnosis}");
    }
    if !peers.is_empty() {
        say!(
            "{:<20} {:<32} {:<22} {:>10} IN_FLIGHT",
            "SERVICE",
            "NODE",
            "ADDRESS",
            "RTT"
        );
        // `Node::peers` is sorted by service, so instances of one service are listed together.
        for p in &peers {
            say!(
                "{:<20} {:<32} {:<22} {:>10} {}",
                p.service,
                p.node.to_string(),
                p.addr.to_string(),
                micros(p.rtt),
                p.in_flight
            );
        }
    }
    if !discovered.is_empty() {
        say!(
            "{:<10} {:<20} {:<32} {:<22} {:<21} CONNECTED",
            "DISCOVERED",
            "SERVICE",
            "NODE",
            "ADDRESSES",
            "MULTICAST"
        );
        for d in &discovered {
            let addrs: Vec<String> = d.addrs.iter().map(ToString::to_string).collect();
            let group = d
                .multicast
                .map_or_else(|| "-".to_owned(), |g| g.to_string());
            say!(
                "{:<10} {:<20} {:<32} {:<22} {:<21} {}",
                format!("{:?}", d.source).to_lowercase(),
                d.service,
                d.node.to_string(),
                addrs.join(","),
                group,
                if d.connected { "yes" } else { "no" }
            );
        }
    }
    let connected: BTreeSet<SocketAddr> = peers.iter().map(|p| p.addr).collect();
    for addr in wanted.difference(&connected) {
        match failures.get(addr) {
            Some(reason) => eprintln!("not connected: {addr}: {reason}"),
            None => eprintln!("not connected: {addr}: no answer yet"),
        }
    }
    if peers.is_empty() && discovered.is_empty() && diagnoses.is_empty() {
        return Err(CliError::new(format!(
            "no live peers within {} ms",
            args.client.wait_or(1_000).as_millis()
        )));
    }
    Ok(())
}
