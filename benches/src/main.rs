//! `shoal-bench`: runs the scenarios (every one with `--scenario all`, the default) and
//! prints their tables — round-trip, one-way, throughput, latency at an offered rate, set-up
//! times — each row with its ratio to the raw floor, then the comparison by kind (Shoal's
//! row beside the floor and every rival's row of the same kind). Progress goes to stderr.
//!
//! ```text
//! cargo run --release -p shoal-benches -- --scenario all --runs 3
//! cargo run --release -p shoal-benches -- --scenario shoal-publish --scenario quinn-fanout --runs 3
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal_benches::report::RunInfo;
use shoal_benches::results::{Labels, Results};
use shoal_benches::steal::{CpuTimes, stolen_since};
use shoal_benches::{
    BenchConfig, BenchError, BenchResult, DEFAULT_BASELINE, Placement, SCENARIOS, Scenario,
    find_scenario, measure, run_repeated_at, runtime,
};

/// Latency and throughput benchmarks for Shoal and its raw floors (127.0.0.1 only).
#[derive(Debug, Parser)]
#[command(name = "shoal-bench", version)]
struct Cli {
    /// Scenario to run, or `all` (every scenario); repeat the flag for several. See `--list`.
    #[arg(long = "scenario", value_name = "NAME|all", default_value = "all")]
    scenarios: Vec<String>,

    /// Only scenarios of this system (`udp`, `quinn`, `shoal`, `nats`, `zenoh`, `zmq`,
    /// `libp2p`); repeat the flag for several. Default: every system built in.
    #[arg(long = "system", value_name = "NAME")]
    systems: Vec<String>,

    /// Measured round trips (pub/sub: events) per run of each latency scenario.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    count: u64,

    /// Unrecorded warm-up round trips (pub/sub: events) per run (same connection, before
    /// measuring).
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

    /// The tokio runtime each side runs on: `current-thread`, or `multi-thread` (one worker
    /// thread per side, pinned with it: the scheduler of a service under `#[tokio::main]`).
    #[arg(long, value_enum, default_value_t = runtime::Flavor::CurrentThread)]
    runtime: runtime::Flavor,

    /// Measured window of each throughput row, in seconds (after a warm-up of a quarter of it).
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_duration_secs)]
    duration: f64,

    /// Offered rate of the `…-at-<rate>` scenarios, messages per second (latency measured
    /// from each message's intended send time).
    #[arg(long, value_name = "MSGS_PER_SEC", default_value_t = measure::DEFAULT_RATE, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: u64,

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

fn parse_duration_secs(s: &str) -> Result<f64, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.05..=3_600.0).contains(&secs) {
        Ok(secs)
    } else {
        Err("must be between 0.05 and 3600 seconds".to_owned())
    }
}

/// Resolves `--scenario` values (in order, without duplicates).
fn selected(names: &[String]) -> BenchResult<Vec<&'static Scenario>> {
    let mut out: Vec<&'static Scenario> = Vec::new();
    for name in names {
        let batch: Vec<&'static Scenario> = if name == "all" {
            SCENARIOS.iter().filter(|s| s.in_all).collect()
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

/// Keeps the scenarios of the named systems (all if none is named). Naming a system that is
/// unknown, or a rival this binary was built without, is an error that says which feature
/// builds it.
fn for_systems(
    scenarios: Vec<&'static Scenario>,
    systems: &[String],
) -> BenchResult<Vec<&'static Scenario>> {
    for name in systems {
        let system = shoal_benches::systems::find(name).ok_or_else(|| {
            let known: Vec<&str> = shoal_benches::systems::SYSTEMS
                .iter()
                .map(|s| s.name)
                .collect();
            BenchError::msg(format!(
                "unknown system `{name}` (known: {})",
                known.join(", ")
            ))
        })?;
        if !system.built {
            return Err(BenchError::msg(format!(
                "`{name}` is not built in: run with `--features {}` (benches/README.md says \
                 what it needs installed)",
                system.feature.unwrap_or(name)
            )));
        }
    }
    Ok(scenarios
        .into_iter()
        .filter(|s| systems.is_empty() || systems.iter().any(|n| n == s.system))
        .collect())
}

/// `95` → `"1m35s"`: elapsed time for progress lines.
fn elapsed(since: Instant) -> String {
    let secs = since.elapsed().as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// Runs everything; `Ok(false)` if some scenario failed (the others still ran; a scenario
/// that was skipped, e.g. for lack of root, does not count as failed).
fn run(cli: &Cli) -> BenchResult<bool> {
    if cli.list {
        for s in SCENARIOS {
            let note = if s.in_all { "" } else { " (not in `all`)" };
            println!("{:<22} [{}] {}{note}", s.name, s.system, s.about);
        }
        return Ok(true);
    }
    let scenarios = for_systems(selected(&cli.scenarios)?, &cli.systems)?;
    let runs = usize::try_from(cli.runs).map_err(BenchError::msg)?;
    let config = BenchConfig {
        count: cli.count,
        warmup: cli.warmup,
        payload: cli.payload,
        run_timeout: Duration::from_secs(cli.run_timeout),
        placement: cli.placement,
        duration: Duration::from_secs_f64(cli.duration),
    };
    runtime::set_flavor(cli.runtime);
    let info = RunInfo::detect(&config, runs);
    eprintln!(
        "shoal-bench {}: {} CPU(s), {}; count {}, warm-up {}, payload {} B, {} run(s) per scenario",
        info.date, info.nproc, info.cpu_model, info.count, info.warmup, info.payload, runs
    );
    eprintln!("{}", shoal_benches::systems::built_summary());
    // Fail early (before any run) if the placement cannot be honoured.
    config.placement.cpus()?;
    eprintln!(
        "runtime: {}; placement: {}",
        runtime::description(),
        info.placement
    );

    let started = Instant::now();
    let total = scenarios.len();
    let mut results = Results::default();
    let mut all_ok = true;
    for (i, scenario) in scenarios.into_iter().enumerate() {
        let step = format!("[{}/{total}] {}", i + 1, scenario.name);
        eprintln!(
            "{step}: run 1/{runs} starting, elapsed {}",
            elapsed(started)
        );
        let mut cpu = CpuTimes::now();
        let outcome = run_repeated_at(scenario, &config, cli.rate, runs, |run, rows| {
            for (name, summary) in rows.summaries() {
                eprintln!("  {name}: {summary}");
            }
            let next = if run + 1 < runs {
                format!("; run {}/{runs} starting", run + 2)
            } else {
                String::new()
            };
            eprintln!(
                "{step}: run {}/{runs} done{}{next}, elapsed {}",
                run + 1,
                stolen_since(cpu.as_ref())
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                elapsed(started)
            );
            cpu = CpuTimes::now();
        });
        match outcome {
            Ok(rows) => results.add(scenario, rows),
            Err(e) if e.is_skipped() => {
                eprintln!("{step} SKIPPED: {e}");
                results.not_run(scenario, e.to_string(), true);
            }
            Err(e) => {
                all_ok = false;
                eprintln!("{step} FAILED: {e}");
                results.not_run(scenario, e.to_string(), false);
            }
        }
    }
    eprintln!("all {total} scenario(s) done in {}", elapsed(started));

    let labels = Labels {
        baseline: cli.baseline.clone(),
        duration: config.duration,
        rate: cli.rate,
        command: command_line(),
    };
    let of_runs = if runs > 1 {
        format!("medians of {runs} runs (each percentile separately)")
    } else {
        "one run".to_owned()
    };
    print!("{}", results.render_text(&labels, &of_runs));

    if let Some(path) = &cli.json {
        write(path, &results.render_json(&info, &labels))?;
    }
    if let Some(path) = &cli.markdown {
        write(path, &results.render_markdown(&info, &labels))?;
    }
    Ok(all_ok)
}

/// How this program was started, for the Markdown report.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!(
        "cargo run --release -p shoal-benches --{}",
        args.iter().map(|a| format!(" {a}")).collect::<String>()
    )
}

fn write(path: &std::path::Path, text: &str) -> BenchResult<()> {
    std::fs::write(path, text)
        .map_err(|e| BenchError::from(e).context(format!("writing {}", path.display())))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_selection() {
        let all = selected(&["all".to_owned(), "udp-echo".to_owned()]).expect("known");
        assert_eq!(all.len(), SCENARIOS.len());
        for name in [
            "shoal-publish",
            "shoal-throughput",
            "shoal-at-rate",
            "discovery",
        ] {
            assert!(all.iter().any(|s| s.name == name), "{name}");
        }
        let one = selected(&["quinn-stream".to_owned()]).expect("known");
        assert_eq!(one[0].name, "quinn-stream");
        assert!(selected(&["nope".to_owned()]).is_err());
        let quinn = for_systems(all, &["quinn".to_owned()]).expect("known system");
        assert!(quinn.iter().all(|s| s.system == "quinn"));
        assert_eq!(quinn.len(), 6);
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["shoal-bench"]).expect("parses");
        assert_eq!(cli.scenarios, vec!["all".to_owned()]);
        assert_eq!(
            (cli.count, cli.warmup, cli.payload, cli.runs, cli.rate),
            (20_000, 2_000, 64, 1, 10_000)
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
