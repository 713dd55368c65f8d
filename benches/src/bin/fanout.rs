//! `fanout`: one publisher to N subscribers on a LAN of network namespaces, multicast fan-out
//! beside the unicast path in the same run (issue 14). Needs root (else says "skipped" and
//! exits 0); see `shoal_benches::fanout` and benches/README.md.
//!
//! ```text
//! sudo cargo run --release -p shoal-benches --bin fanout -- [--subscribers 1,4,16]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_benches::fanout::{self, Options};

/// Measures multicast fan-out against unicast publish between Shoal nodes in namespaces.
#[derive(Debug, Parser)]
#[command(name = "fanout", version)]
struct Cli {
    /// Subscriber counts, one set of rows each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    subscribers: Vec<usize>,

    /// Payload sizes in bytes (at least 16).
    #[arg(long, value_delimiter = ',', default_value = "64,1024")]
    sizes: Vec<usize>,

    /// Most events per throughput pass.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    events: u64,

    /// Most events per latency pass (one in flight).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    latency_events: u64,

    /// Publishes in flight in a throughput pass.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4_096))]
    window: u64,

    /// Longest any one pass runs, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,

    /// Also write the table as Markdown to this file.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = Options {
        subscribers: cli.subscribers,
        sizes: cli.sizes,
        events: cli.events,
        latency_events: cli.latency_events,
        window: usize::try_from(cli.window).unwrap_or(64),
        seconds: Duration::from_secs(cli.seconds),
    };
    match fanout::run(&options) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(rows)) => {
            print!("{}", fanout::render_text(&rows));
            if let Some(path) = cli.markdown
                && let Err(e) = std::fs::write(&path, fanout::render_markdown(&rows))
            {
                eprintln!("fanout: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fanout: {}", e.message());
            ExitCode::FAILURE
        }
    }
}
