//! Everything one `shoal-bench` invocation measured, sorted into its tables, and the three
//! renderings of the whole: text for the terminal, Markdown and JSON.
//!
//! Tables, each only if one of its scenarios ran: round-trip times (ratios to
//! `--baseline`), one-way latency (ratios to `quinn-oneway` and to raw quinn with the same
//! number of receivers), throughput (ratios to raw quinn with the same payload), latency at
//! the offered rate (ratios to raw quinn at the same rate), set-up times (ratios to
//! `quinn-connect`), then the comparison by kind ([`crate::compare`]), the set-up of each
//! system, and the scenarios skipped or failed.

use std::fmt::Write as _;
use std::time::Duration;

use crate::report::rate::{self, AggregatedRate, RateReport};
use crate::report::{self, AggregatedReport, LatencyReport, RunInfo, json_string};
use crate::throughput::{self, AggregatedThroughput, ThroughputReport};
use crate::{Measures, Scenario, ScenarioResults, compare, connect, pubsub};

/// A scenario that did not produce rows, and why.
#[derive(Debug, Clone)]
pub struct NotRun {
    /// Scenario name.
    pub scenario: &'static str,
    /// The error message.
    pub reason: String,
    /// `true` if skipped (cannot run here), `false` if it failed.
    pub skipped: bool,
}

/// Aggregated rows, by table, plus what ran and what did not.
#[derive(Debug, Default)]
pub struct Results {
    /// Scenarios that produced rows, in run order.
    pub ran: Vec<&'static Scenario>,
    /// Round-trip rows.
    pub round_trip: Vec<AggregatedReport>,
    /// One-way rows.
    pub one_way: Vec<AggregatedReport>,
    /// Throughput rows.
    pub throughput: Vec<AggregatedThroughput>,
    /// Offered-rate rows.
    pub at_rate: Vec<AggregatedRate>,
    /// Set-up rows (connections, discovery).
    pub setup: Vec<AggregatedReport>,
    /// Scenarios skipped or failed.
    pub not_run: Vec<NotRun>,
}

/// How the tables are headed and compared.
#[derive(Debug, Clone)]
pub struct Labels {
    /// Row the round-trip ratios are computed against.
    pub baseline: String,
    /// Measured window of each throughput row.
    pub duration: Duration,
    /// Offered rate of the offered-rate rows, msgs/s.
    pub rate: u64,
    /// The command line, quoted in the Markdown.
    pub command: String,
}

fn medians(rows: &[AggregatedReport]) -> Vec<LatencyReport> {
    rows.iter().map(|r| r.median.clone()).collect()
}

impl Results {
    /// Files a scenario's rows under its table.
    pub fn add(&mut self, scenario: &'static Scenario, rows: ScenarioResults) {
        self.ran.push(scenario);
        match (scenario.run, rows) {
            (Measures::OneWay(_), ScenarioResults::Latency(rows)) => self.one_way.extend(rows),
            (Measures::SetUp(_), ScenarioResults::Latency(rows)) => self.setup.extend(rows),
            (_, ScenarioResults::Latency(rows)) => self.round_trip.extend(rows),
            (_, ScenarioResults::Throughput(rows)) => self.throughput.extend(rows),
            (_, ScenarioResults::Rate(rows)) => self.at_rate.extend(rows),
        }
    }

    /// Notes a scenario that produced no rows.
    pub fn not_run(&mut self, scenario: &'static Scenario, reason: String, skipped: bool) {
        self.not_run.push(NotRun {
            scenario: scenario.name,
            reason,
            skipped,
        });
    }

    fn throughput_medians(&self) -> Vec<ThroughputReport> {
        self.throughput.iter().map(|r| r.median.clone()).collect()
    }

    fn rate_medians(&self) -> Vec<RateReport> {
        self.at_rate.iter().map(|r| r.median.clone()).collect()
    }

    /// The comparison by kind over every table.
    pub fn comparison(&self) -> Vec<compare::KindGroup> {
        let latency: Vec<LatencyReport> = [&self.round_trip, &self.one_way, &self.setup]
            .into_iter()
            .flat_map(|rows| medians(rows))
            .collect();
        compare::build(&latency, &self.rate_medians(), &self.throughput_medians())
    }

    /// Every table as text, for the terminal (`of_runs` says e.g. "medians of 3 runs").
    pub fn render_text(&self, labels: &Labels, of_runs: &str) -> String {
        let mut out = String::new();
        let round_trip = medians(&self.round_trip);
        if !round_trip.is_empty() {
            let _ = writeln!(out, "\nRound-trip times, µs, {of_runs}:");
            out.push_str(&report::render_table(
                &round_trip,
                Some(&labels.baseline),
                None,
            ));
            if !round_trip.iter().any(|r| r.name == labels.baseline) {
                let _ = writeln!(
                    out,
                    "(baseline `{}` was not run: no ratios)",
                    labels.baseline
                );
            }
        }
        if !self.one_way.is_empty() {
            let _ = writeln!(
                out,
                "\nOne-way latency (send -> receiver's handler), µs, {of_runs}:"
            );
            out.push_str(&report::render_table(
                &medians(&self.one_way),
                Some(pubsub::ONEWAY_NAME),
                Some(pubsub::SAME_FAN_OUT),
            ));
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(
                out,
                "\nThroughput over {:.1} s windows, {of_runs}:",
                labels.duration.as_secs_f64()
            );
            out.push_str(&throughput::render_table(&self.throughput_medians()));
        }
        if !self.at_rate.is_empty() {
            let _ = writeln!(
                out,
                "\nLatency at {} msgs/s offered, from each message's intended send time, µs, \
                 {of_runs} (late and lost: all runs):",
                labels.rate
            );
            out.push_str(&rate::render_table(&self.rate_medians()));
        }
        if !self.setup.is_empty() {
            let _ = writeln!(out, "\nSet-up times, µs, {of_runs}:");
            out.push_str(&report::render_table(
                &medians(&self.setup),
                Some(connect::QUINN_NAME),
                None,
            ));
        }
        let comparison = self.comparison();
        if !comparison.is_empty() {
            let _ = writeln!(out, "\nComparison by kind ({}):", compare::LEGEND);
            out.push_str(&compare::render_table(&comparison));
        }
        if !self.ran.is_empty() {
            let _ = writeln!(out, "\nSet-up of each system:");
            for s in &self.ran {
                let _ = writeln!(out, "  {:<22} [{}] {}", s.name, s.system, s.setup);
            }
        }
        for n in &self.not_run {
            let what = if n.skipped { "SKIPPED" } else { "FAILED" };
            let _ = writeln!(out, "\n{} {what}: {}", n.scenario, n.reason);
        }
        out
    }

    /// Every table as one Markdown document.
    pub fn render_markdown(&self, info: &RunInfo, labels: &Labels) -> String {
        let mut text = format!(
            "{}; median of {} run(s) per value; {} measured + {} warm-up messages per latency \
             run, {}-byte payload; throughput windows of {:.1} s; offered rate {} msgs/s.\n\
             Host: `nproc` = {}, {}. Runtime: {}. Placement: {}.\nCommand: `{}`\n",
            info.date,
            info.runs,
            info.count,
            info.warmup,
            info.payload,
            labels.duration.as_secs_f64(),
            labels.rate,
            info.nproc,
            info.cpu_model,
            info.runtime,
            info.placement,
            labels.command,
        );
        let round_trip = medians(&self.round_trip);
        if !round_trip.is_empty() {
            text.push_str("\nRound-trip times in µs:\n\n");
            text.push_str(&report::render_markdown(
                &round_trip,
                Some(&labels.baseline),
                None,
            ));
        }
        if !self.one_way.is_empty() {
            text.push_str("\nOne-way latency (send -> receiver's handler) in µs:\n\n");
            text.push_str(&report::render_markdown(
                &medians(&self.one_way),
                Some(pubsub::ONEWAY_NAME),
                Some(pubsub::SAME_FAN_OUT),
            ));
        }
        if !self.throughput.is_empty() {
            let _ = write!(
                text,
                "\nThroughput, {:.1} s measured window per row:\n\n",
                labels.duration.as_secs_f64()
            );
            text.push_str(&throughput::render_markdown(&self.throughput_medians()));
        }
        if !self.at_rate.is_empty() {
            let _ = write!(
                text,
                "\nLatency at {} msgs/s offered, from each message's intended send time, in µs \
                 (late and lost: summed over the runs):\n\n",
                labels.rate
            );
            text.push_str(&rate::render_markdown(&self.rate_medians()));
        }
        if !self.setup.is_empty() {
            text.push_str("\nSet-up times in µs:\n\n");
            text.push_str(&report::render_markdown(
                &medians(&self.setup),
                Some(connect::QUINN_NAME),
                None,
            ));
        }
        let comparison = self.comparison();
        if !comparison.is_empty() {
            let _ = write!(text, "\nComparison by kind ({}):\n\n", compare::LEGEND);
            text.push_str(&compare::render_markdown(&comparison));
        }
        if !self.ran.is_empty() {
            text.push_str(
                "\nSet-up of each system:\n\n| scenario | system | set-up |\n|---|---|---|\n",
            );
            for s in &self.ran {
                let _ = writeln!(text, "| {} | {} | {} |", s.name, s.system, s.setup);
            }
        }
        if !self.not_run.is_empty() {
            text.push_str("\nNot measured:\n\n");
            for n in &self.not_run {
                let what = if n.skipped { "skipped" } else { "FAILED" };
                let _ = writeln!(text, "* `{}` {what}: {}", n.scenario, n.reason);
            }
        }
        text
    }

    /// Everything as one JSON document: run info and the round-trip rows at the top level
    /// (as before), then `one_way`, `throughput`, `at_rate`, `setup`, `comparison` and
    /// `not_run`.
    pub fn render_json(&self, info: &RunInfo, labels: &Labels) -> String {
        let rows_with = |rows: &[AggregatedReport], base: &str, peer| {
            format!(
                "{{\"baseline\": {}, \"results\": {}}}",
                json_string(base),
                report::render_json_rows(rows, Some(base), peer)
            )
        };
        let not_run: Vec<String> = self
            .not_run
            .iter()
            .map(|n| {
                format!(
                    "{{\"scenario\": {}, \"skipped\": {}, \"reason\": {}}}",
                    json_string(n.scenario),
                    n.skipped,
                    json_string(&n.reason)
                )
            })
            .collect();
        let sections = [
            (
                "one_way",
                rows_with(
                    &self.one_way,
                    pubsub::ONEWAY_NAME,
                    Some(pubsub::SAME_FAN_OUT),
                ),
            ),
            (
                "throughput",
                throughput::render_json(&self.throughput, labels.duration),
            ),
            (
                "at_rate",
                format!(
                    "{{\"rate\": {}, \"results\": {}}}",
                    labels.rate,
                    rate::render_json(&self.at_rate)
                ),
            ),
            ("setup", rows_with(&self.setup, connect::QUINN_NAME, None)),
            ("comparison", compare::render_json(&self.comparison())),
            ("not_run", format!("[{}]", not_run.join(", "))),
        ];
        report::render_json(info, &self.round_trip, Some(&labels.baseline), &sections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BenchConfig, find_scenario};

    fn latency(name: &str, p50: u64) -> AggregatedReport {
        let mut h = report::new_histogram().expect("histogram");
        report::record(&mut h, Duration::from_nanos(p50));
        AggregatedReport::from_runs(vec![LatencyReport::from_histogram(name, &h)]).expect("run")
    }

    #[test]
    fn every_table_and_the_comparison_are_rendered() {
        let mut results = Results::default();
        let scenario = |name| find_scenario(name).expect("registered");
        results.add(
            scenario("quinn-stream"),
            ScenarioResults::Latency(vec![latency("quinn-stream", 25_000)]),
        );
        results.add(
            scenario("shoal-request"),
            ScenarioResults::Latency(vec![latency("shoal-request", 30_000)]),
        );
        results.add(
            scenario("shoal-connect"),
            ScenarioResults::Latency(vec![latency("shoal-connect", 3_000_000)]),
        );
        let rate = RateReport::new(
            latency("shoal-request-at-10k", 40_000).median,
            10_000,
            10,
            1,
        );
        results.add(
            scenario("shoal-at-rate"),
            ScenarioResults::Rate(vec![AggregatedRate::from_runs(vec![rate]).expect("run")]),
        );
        results.not_run(scenario("discovery"), "needs root".into(), true);
        let labels = Labels {
            baseline: "quinn-stream".into(),
            duration: Duration::from_secs(2),
            rate: 10_000,
            command: "shoal-bench --scenario all".into(),
        };
        let text = results.render_text(&labels, "one run");
        for part in [
            "Round-trip times",
            "Set-up times",
            "Latency at 10000 msgs/s",
            "Comparison by kind",
            "x1.20 / x1.20",
            "discovery SKIPPED: needs root",
        ] {
            assert!(text.contains(part), "{part} missing in\n{text}");
        }
        assert!(!text.contains("One-way"), "{text}");
        let info = RunInfo::detect(&BenchConfig::default(), 1);
        let md = results.render_markdown(&info, &labels);
        assert!(
            md.contains("| **request** | shoal-request | shoal |"),
            "{md}"
        );
        assert!(md.contains("* `discovery` skipped: needs root"), "{md}");
        let json = results.render_json(&info, &labels);
        for key in [
            "\"one_way\": {",
            "\"at_rate\": {\"rate\": 10000",
            "\"setup\": {\"baseline\": \"quinn-connect\"",
            "\"comparison\": [",
            "\"not_run\": [{\"scenario\": \"discovery\", \"skipped\": true",
        ] {
            assert!(json.contains(key), "{key} missing in\n{json}");
        }
    }
}
