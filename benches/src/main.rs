//! `shoal-bench`: runs latency scenarios and prints p50/p90/p99/p99.9/max in µs with each
//! row's ratio to the baseline (raw quinn by default).
//!
//! ```text
//! cargo run --release -p shoal-benches -- --scenario all --runs 5
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_benches::report::{self, RunInfo};
use shoal_benches::{
    AggregatedReport, BenchConfig, BenchError, BenchResult, DEFAULT_BASELINE, LatencyReport,
    Placement, SCENARIOS, Scenario, find_scenario, run_repeated, runtime,
};

/// Closed-loop round-trip latency benchmarks for Shoal and its raw floors (127.0.0.1 only).
#[derive(Debug, Parser)]
#[command(name = "shoal-bench", version)]
struct Cli {
    /// Scenario to run, or `all`; repeat the flag for several. See `--list`.
    #[arg(long = "scenario", value_name = "NAME|all", default_value = "all")]
    scenarios: Vec<String>,

    /// Measured round trips per run of each scenario.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    count: u64,

    /// Unrecorded warm-up round trips per run (same connection, before measuring).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    warmup: u64,

    /// Payload bytes per message (datagram scenarios send at least 8).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    payload: usize,

    /// Runs per scenario; each percentile reported is the median across runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    runs: u64,

    /// Row the ratios are computed against.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_BASELINE)]
    baseline: String,

    /// Where the server and client threads run: `split` = pinned to two different CPUs,
    /// `same` = both pinned to one CPU, `any` = not pinned.
    #[arg(long, value_enum, default_value_t = Placement::Split)]
    placement: Placement,

    /// Time limit of one run of one scenario, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    run_timeout: u64,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Write the results as a Markdown table to this file.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,

    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shoal-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves `--scenario` values (in order, without duplicates).
fn selected(names: &[String]) -> BenchResult<Vec<&'static Scenario>> {
    let mut out: Vec<&'static Scenario> = Vec::new();
    for name in names {
        let batch: Vec<&'static Scenario> = if name == "all" {
            SCENARIOS.iter().collect()
        } else {
            let scenario = find_scenario(name).ok_or_else(|| {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                BenchError::msg(format!(
                    "unknown scenario `{name}` (known: {}, all)",
                    known.join(", ")
                ))
            })?;
            vec![scenario]
        };
        for scenario in batch {
            if !out.iter().any(|s| s.name == scenario.name) {
                out.push(scenario);
            }
        }
    }
    Ok(out)
}

/// Runs everything; `Ok(false)` if some scenario failed (the others still ran).
fn run(cli: &Cli) -> BenchResult<bool> {
    if cli.list {
        for s in SCENARIOS {
            println!("{:<16} {}", s.name, s.about);
        }
        return Ok(true);
    }
    let scenarios = selected(&cli.scenarios)?;
    let runs = usize::try_from(cli.runs).map_err(BenchError::msg)?;
    let config = BenchConfig {
        count: cli.count,
        warmup: cli.warmup,
        payload: cli.payload,
        run_timeout: Duration::from_secs(cli.run_timeout),
        placement: cli.placement,
    };
    let info = RunInfo::detect(&config, runs);
    eprintln!(
        "shoal-bench {}: {} CPU(s), {}; count {}, warm-up {}, payload {} B, {} run(s) per scenario",
        info.date, info.nproc, info.cpu_model, info.count, info.warmup, info.payload, runs
    );
    // Fail early (before any run) if the placement cannot be honoured.
    config.placement.cpus()?;
    eprintln!(
        "runtime: {}; placement: {}",
        runtime::DESCRIPTION,
        info.placement
    );

    let mut results: Vec<AggregatedReport> = Vec::new();
    let mut all_ok = true;
    for scenario in scenarios {
        let outcome = run_repeated(scenario, &config, runs, |run, reports: &[LatencyReport]| {
            for r in reports {
                eprintln!("  {} run {}/{}: {}", r.name, run + 1, runs, r.summary());
            }
        });
        match outcome {
            Ok(rows) => results.extend(rows),
            Err(e) => {
                all_ok = false;
                eprintln!("  {} FAILED: {e}", scenario.name);
            }
        }
    }

    let medians: Vec<LatencyReport> = results.iter().map(|r| r.median.clone()).collect();
    let baseline = Some(cli.baseline.as_str());
    println!();
    if runs > 1 {
        println!("Medians of {runs} runs (each percentile separately), µs:");
    } else {
        println!("Round-trip times, µs:");
    }
    print!("{}", report::render_table(&medians, baseline));
    if !medians.iter().any(|r| r.name == cli.baseline) {
        println!("(baseline `{}` was not run: no ratios)", cli.baseline);
    }

    if let Some(path) = &cli.json {
        std::fs::write(path, report::render_json(&info, &results, baseline))
            .map_err(|e| BenchError::from(e).context(format!("writing {}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &cli.markdown {
        let text = markdown_document(&info, &medians, baseline);
        std::fs::write(path, text)
            .map_err(|e| BenchError::from(e).context(format!("writing {}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(all_ok)
}

fn markdown_document(info: &RunInfo, medians: &[LatencyReport], baseline: Option<&str>) -> String {
    let mut text = format!(
        "Round-trip times in µs, {}; median of {} run(s) per percentile; \
         {} measured + {} warm-up round trips per run, {}-byte payload.\n\
         Host: `nproc` = {}, {}. Runtime: {}. Placement: {}.\n\n",
        info.date,
        info.runs,
        info.count,
        info.warmup,
        info.payload,
        info.nproc,
        info.cpu_model,
        info.runtime,
        info.placement
    );
    text.push_str(&report::render_markdown(medians, baseline));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_selection() {
        let all = selected(&["all".to_owned(), "udp-echo".to_owned()]).expect("known");
        assert_eq!(all.len(), SCENARIOS.len());
        let one = selected(&["quinn-stream".to_owned()]).expect("known");
        assert_eq!(one[0].name, "quinn-stream");
        assert!(selected(&["nope".to_owned()]).is_err());
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["shoal-bench"]).expect("parses");
        assert_eq!(cli.scenarios, vec!["all".to_owned()]);
        assert_eq!(
            (cli.count, cli.warmup, cli.payload, cli.runs),
            (20_000, 2_000, 64, 1)
        );
        let cli = Cli::try_parse_from([
            "shoal-bench",
            "--scenario",
            "udp-echo",
            "--scenario",
            "quinn-stream",
            "--runs",
            "3",
        ])
        .expect("parses");
        assert_eq!(cli.scenarios.len(), 2);
        assert_eq!(cli.runs, 3);
    }
}
