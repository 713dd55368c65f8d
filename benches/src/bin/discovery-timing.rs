//! `discovery-timing`: time from a node starting to its first send to a service found by
//! mDNS, and from `kill -9` of an instance to traffic moving to another one. Runs entirely in
//! network namespaces it creates (needs root); see `shoal_benches::discovery_timing`.
//!
//! ```text
//! cargo run --release -p shoal-benches --bin discovery-timing -- [--starts 20] [--kills 5]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_benches::discovery_timing::{self, Options, VictimArgs};

/// Measures mDNS discovery and kill -9 failover between Shoal nodes in network namespaces.
#[derive(Debug, Parser)]
#[command(name = "discovery-timing", version)]
struct Cli {
    /// Fresh-node starts for "start → first send".
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    starts: u64,

    /// Kills per liveness setting for "kill → failover".
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    kills: u64,

    /// Commands the sender keeps in flight during the kills.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_024))]
    concurrency: u64,

    /// How long the `work` handler takes, in microseconds.
    #[arg(long, value_name = "US", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    handler_us: u64,

    /// Also write the results as Markdown to this file.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,

    /// Internal: run as the victim process (started by this program under `ip netns exec`).
    #[arg(long, hide = true)]
    child_victim: bool,
    /// Internal: the namespace the victim must be in.
    #[arg(long, hide = true)]
    victim_netns: Option<String>,
    /// Internal: the victim's certificate folder.
    #[arg(long, hide = true)]
    victim_pki: Option<PathBuf>,
    /// Internal: the victim's listen address.
    #[arg(long, hide = true)]
    victim_listen: Option<SocketAddr>,
    /// Internal: the victim's handler time, µs.
    #[arg(long, hide = true, default_value_t = 1_000)]
    victim_handler_us: u64,
    /// Internal: the victim's keep-alive, ms.
    #[arg(long, hide = true)]
    victim_keep_alive_ms: Option<u64>,
    /// Internal: the victim's idle timeout, ms.
    #[arg(long, hide = true)]
    victim_idle_timeout_ms: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.child_victim {
        return victim(&cli);
    }
    discovery_timing::install_interrupt_handler();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options {
        starts: usize::try_from(cli.starts).unwrap_or(20),
        kills: usize::try_from(cli.kills).unwrap_or(5),
        concurrency: usize::try_from(cli.concurrency).unwrap_or(64),
        handler: Duration::from_micros(cli.handler_us),
        markdown: cli.markdown.clone(),
        command: format!(
            "cargo run --release -p shoal-benches --bin discovery-timing --{}",
            args.iter().map(|a| format!(" {a}")).collect::<String>()
        ),
    };
    println!("discovery-timing: {}", discovery_timing::machine());
    println!("command: {}", options.command);
    let outcome = match discovery_timing::run(&options) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("discovery-timing: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", discovery_timing::render_text(&outcome, &options));
    if let Some(path) = &options.markdown {
        if let Err(e) = std::fs::write(path, discovery_timing::render_markdown(&outcome, &options))
        {
            eprintln!("discovery-timing: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("wrote {}", path.display());
    }
    if discovery_timing::all_targets_met(&outcome) {
        println!("all targets met, nothing lost");
    } else {
        println!(
            "some targets MISSED (see the table); exit status 0 all the same: the run itself worked"
        );
    }
    ExitCode::SUCCESS
}

fn victim(cli: &Cli) -> ExitCode {
    let (Some(netns), Some(pki_dir), Some(listen)) = (
        cli.victim_netns.clone(),
        cli.victim_pki.clone(),
        cli.victim_listen,
    ) else {
        eprintln!("--child-victim needs --victim-netns, --victim-pki and --victim-listen");
        return ExitCode::from(2);
    };
    let liveness = match (cli.victim_keep_alive_ms, cli.victim_idle_timeout_ms) {
        (Some(k), Some(i)) => Some((Duration::from_millis(k), Duration::from_millis(i))),
        _ => None,
    };
    let args = VictimArgs {
        netns,
        pki_dir,
        listen,
        liveness,
        handler: Duration::from_micros(cli.victim_handler_us),
    };
    match discovery_timing::victim_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("discovery-timing victim: {e}");
            ExitCode::FAILURE
        }
    }
}
