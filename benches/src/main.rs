//! `shoal-bench`: runs latency scenarios and prints p50/p90/p99/p99.9/max in µs with each
//! row's ratio to the baseline (raw quinn by default), and throughput scenarios (msgs/s and
//! MB/s, each row's ratio to raw quinn with the same payload).
//!
//! ```text
//! cargo run --release -p shoal-benches -- --scenario all --runs 5
//! cargo run --release -p shoal-benches -- --scenario pubsub --scenario pubsub-throughput --runs 3
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shoal_benches::report::{self, RunInfo};
use shoal_benches::{
    AggregatedReport, AggregatedThroughput, BenchConfig, BenchError, BenchResult, DEFAULT_BASELINE,
    LatencyReport, Measures, Placement, SCENARIOS, Scenario, ScenarioResults, ThroughputReport,
    find_scenario, pubsub, run_repeated, runtime, throughput,
};

/// Latency and throughput benchmarks for Shoal and its raw floors (127.0.0.1 only).
#[derive(Debug, Parser)]
#[command(name = "shoal-bench", version)]
struct Cli {
    /// Scenario to run, or `all` (every scenario but `pubsub` and `pubsub-throughput`);
    /// repeat the flag for several. See `--list`.
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

    /// Measured window of each throughput row, in seconds (after a warm-up of a quarter of it).
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_duration_secs)]
    duration: f64,

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

/// Runs everything; `Ok(false)` if some scenario failed (the others still ran).
fn run(cli: &Cli) -> BenchResult<bool> {
    if cli.list {
        for s in SCENARIOS {
            let note = if s.in_all { "" } else { " (not in `all`)" };
            println!("{:<18} {}{note}", s.name, s.about);
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
        runtime::DESCRIPTION,
        info.placement
    );

    let mut results = Results::default();
    let mut all_ok = true;
    for scenario in scenarios {
        let outcome = run_repeated(scenario, &config, runs, |run, rows| {
            for (name, summary) in rows.summaries() {
                eprintln!("  {name} run {}/{runs}: {summary}", run + 1);
            }
        });
        match outcome {
            Ok(rows) => results.add(scenario, rows),
            Err(e) => {
                all_ok = false;
                eprintln!("  {} FAILED: {e}", scenario.name);
            }
        }
    }

    let baseline = Some(cli.baseline.as_str());
    let round_trip = medians(&results.round_trip);
    let one_way = medians(&results.one_way);
    let throughput: Vec<ThroughputReport> = results
        .throughput
        .iter()
        .map(|r| r.median.clone())
        .collect();
    let (of_runs, each) = if runs > 1 {
        (
            format!("medians of {runs} runs"),
            " (each percentile separately)",
        )
    } else {
        ("one run".to_owned(), "")
    };
    if !round_trip.is_empty() {
        println!("\nRound-trip times, µs, {of_runs}{each}:");
        print!("{}", report::render_table(&round_trip, baseline, None));
        if !round_trip.iter().any(|r| r.name == cli.baseline) {
            println!("(baseline `{}` was not run: no ratios)", cli.baseline);
        }
    }
    if !one_way.is_empty() {
        println!("\nOne-way latency (send -> receiver's handler), µs, {of_runs}{each}:");
        print!(
            "{}",
            report::render_table(
                &one_way,
                Some(pubsub::ONEWAY_NAME),
                Some(pubsub::SAME_FAN_OUT)
            )
        );
    }
    if !throughput.is_empty() {
        println!(
            "\nThroughput over {:.1} s windows, {}:",
            cli.duration, of_runs
        );
        print!("{}", throughput::render_table(&throughput));
    }

    if !results.ran.is_empty() {
        println!("\nSet-up of each system:");
        for s in &results.ran {
            println!("  {:<22} [{}] {}", s.name, s.system, s.setup);
        }
    }

    if let Some(path) = &cli.json {
        let sections = [
            (
                "one_way",
                format!(
                    "{{\"baseline\": {}, \"results\": {}}}",
                    report::json_string(pubsub::ONEWAY_NAME),
                    report::render_json_rows(
                        &results.one_way,
                        Some(pubsub::ONEWAY_NAME),
                        Some(pubsub::SAME_FAN_OUT)
                    )
                ),
            ),
            (
                "throughput",
                throughput::render_json(&results.throughput, config.duration),
            ),
        ];
        let text = report::render_json(&info, &results.round_trip, baseline, &sections);
        std::fs::write(path, text)
            .map_err(|e| BenchError::from(e).context(format!("writing {}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &cli.markdown {
        let text = markdown_document(
            &info,
            &round_trip,
            baseline,
            &one_way,
            &throughput,
            &results.ran,
            cli,
        );
        std::fs::write(path, text)
            .map_err(|e| BenchError::from(e).context(format!("writing {}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(all_ok)
}

/// Aggregated rows, by table.
#[derive(Default)]
struct Results {
    /// Scenarios that produced rows, in run order.
    ran: Vec<&'static Scenario>,
    round_trip: Vec<AggregatedReport>,
    one_way: Vec<AggregatedReport>,
    throughput: Vec<AggregatedThroughput>,
}

impl Results {
    fn add(&mut self, scenario: &'static Scenario, rows: ScenarioResults) {
        self.ran.push(scenario);
        match (scenario.run, rows) {
            (Measures::OneWay(_), ScenarioResults::Latency(rows)) => self.one_way.extend(rows),
            (_, ScenarioResults::Latency(rows)) => self.round_trip.extend(rows),
            (_, ScenarioResults::Throughput(rows)) => self.throughput.extend(rows),
        }
    }
}

fn medians(rows: &[AggregatedReport]) -> Vec<LatencyReport> {
    rows.iter().map(|r| r.median.clone()).collect()
}

fn markdown_document(
    info: &RunInfo,
    round_trip: &[LatencyReport],
    baseline: Option<&str>,
    one_way: &[LatencyReport],
    throughput: &[ThroughputReport],
    ran: &[&Scenario],
    cli: &Cli,
) -> String {
    let mut text = format!(
        "{}; median of {} run(s) per value; {} measured + {} warm-up messages per latency \
         run, {}-byte payload.\n\
         Host: `nproc` = {}, {}. Runtime: {}. Placement: {}.\n",
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
    if !round_trip.is_empty() {
        text.push_str("\nRound-trip times in µs:\n\n");
        text.push_str(&report::render_markdown(round_trip, baseline, None));
    }
    if !one_way.is_empty() {
        text.push_str("\nOne-way latency (send -> receiver's handler) in µs:\n\n");
        text.push_str(&report::render_markdown(
            one_way,
            Some(pubsub::ONEWAY_NAME),
            Some(pubsub::SAME_FAN_OUT),
        ));
    }
    if !throughput.is_empty() {
        text.push_str(&format!(
            "\nThroughput, {:.1} s measured window per row:\n\n",
            cli.duration
        ));
        text.push_str(&throughput::render_markdown(throughput));
    }
    if !ran.is_empty() {
        text.push_str(
            "\nSet-up of each system:\n\n| scenario | system | set-up |\n|---|---|---|\n",
        );
        for s in ran {
            text.push_str(&format!("| {} | {} | {} |\n", s.name, s.system, s.setup));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_selection() {
        let all = selected(&["all".to_owned(), "udp-echo".to_owned()]).expect("known");
        assert_eq!(all.len(), SCENARIOS.iter().filter(|s| s.in_all).count());
        let more = selected(&["all".to_owned(), "pubsub-throughput".to_owned()]).expect("known");
        assert_eq!(more.len(), all.len() + 1);
        assert!(all.iter().all(|s| !s.name.starts_with("pubsub")));
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
