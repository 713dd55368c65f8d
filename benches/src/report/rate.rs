//! Reports of latency under a fixed offered rate ([`crate::measure::open_loop()`]): the
//! percentiles (from each message's intended send time), how many messages were offered,
//! how many went out late and how many were lost, and their text, Markdown and JSON
//! renderings with each row's ratio to a baseline row.

use std::fmt::Write as _;

use super::json::json_string;
use super::{LatencyReport, median};

/// One row of the "latency at an offered rate" table (one run, or the median of several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateReport {
    /// Percentiles from the intended send times (ns); `count` is the measured messages that
    /// were answered, `lost` those that were not (summed across runs).
    pub latency: LatencyReport,
    /// Offered rate, messages per second.
    pub rate: u64,
    /// Measured messages offered per run (warm-up excluded).
    pub offered: u64,
    /// Measured messages issued a whole interval or more after their due time (summed
    /// across runs): the sender could not keep up, which the latency includes.
    pub late: u64,
}

impl RateReport {
    /// A single-run report.
    pub fn new(latency: LatencyReport, rate: u64, offered: u64, late: u64) -> Self {
        Self {
            latency,
            rate,
            offered,
            late,
        }
    }

    /// Row name.
    pub fn name(&self) -> &str {
        &self.latency.name
    }

    /// Combines runs of one row: latency as [`LatencyReport::median_of`], `offered` the
    /// median, `late` the sum. `None` if `runs` is empty.
    pub fn median_of(runs: &[Self]) -> Option<Self> {
        let first = runs.first()?;
        let latencies: Vec<LatencyReport> = runs.iter().map(|r| r.latency.clone()).collect();
        Some(Self {
            latency: LatencyReport::median_of(&latencies)?,
            rate: first.rate,
            offered: median(runs.iter().map(|r| r.offered).collect()),
            late: runs.iter().map(|r| r.late).sum(),
        })
    }

    /// One line for progress output.
    pub fn summary(&self) -> String {
        format!(
            "{}; offered {} at {} msgs/s, late {}",
            self.latency.summary(),
            self.offered,
            self.rate,
            self.late
        )
    }
}

impl super::MedianOf for RateReport {
    fn median_of(runs: &[Self]) -> Option<Self> {
        Self::median_of(runs)
    }
}

/// An offered-rate row with its runs.
pub type AggregatedRate = super::Aggregated<RateReport>;

/// The row each row is compared with: the raw quinn stream at the same rate
/// (`quinn-stream-at-<rate>`), if it ran.
fn baseline_of<'a>(row: &RateReport, rows: &'a [RateReport]) -> Option<&'a RateReport> {
    let name = crate::measure::at_rate_name(crate::quinn_echo::STREAM_NAME, row.rate);
    rows.iter().find(|r| r.latency.name == name)
}

fn ratio_cell(row: &RateReport, rows: &[RateReport]) -> String {
    match baseline_of(row, rows) {
        Some(base) => {
            let (p50, p99) = row.latency.ratio_to(&base.latency);
            format!("x{p50:.2} / x{p99:.2}")
        }
        None => "-".to_owned(),
    }
}

/// Fixed-width text table (µs), each row with its p50 / p99 ratio to raw quinn at the same
/// rate.
pub fn render_table(rows: &[RateReport]) -> String {
    let w = rows
        .iter()
        .map(|r| r.name().len())
        .chain(std::iter::once("scenario".len()))
        .max()
        .unwrap_or(8);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<w$}  {:>8}  {:>7}  {:>7}  {:>6}  {:>6}  {:>9}  {:>9}  {:>9}  {:>9}  p50 / p99 vs quinn-stream at the same rate",
        "scenario",
        "msgs/s",
        "offered",
        "done",
        "late",
        "lost",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs"
    );
    for r in rows {
        let [p50, _, p99, p999, max] = r.latency.percentiles_us();
        let _ = writeln!(
            out,
            "{:<w$}  {:>8}  {:>7}  {:>7}  {:>6}  {:>6}  {p50:>9.1}  {p99:>9.1}  {p999:>9.1}  {max:>9.1}  {}",
            r.name(),
            r.rate,
            r.offered,
            r.latency.count,
            r.late,
            r.latency.lost,
            ratio_cell(r, rows),
        );
    }
    out
}

/// The same table as GitHub-flavoured Markdown.
pub fn render_markdown(rows: &[RateReport]) -> String {
    let mut out = String::from(
        "| scenario | msgs/s | runs | offered | done | late | lost | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p50 / p99 vs quinn-stream, same rate |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let [p50, p90, p99, p999, max] = r.latency.percentiles_us();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {p50:.1} | {p90:.1} | {p99:.1} | {p999:.1} | {max:.1} | {} |",
            r.name(),
            r.rate,
            r.latency.runs,
            r.offered,
            r.latency.count,
            r.late,
            r.latency.lost,
            ratio_cell(r, rows),
        );
    }
    out
}

fn json_row(r: &RateReport) -> String {
    let [p50, p90, p99, p999, max] = r.latency.percentiles_us();
    format!(
        "{{\"name\": {}, \"rate\": {}, \"runs\": {}, \"offered\": {}, \"count\": {}, \"late\": {}, \
         \"lost\": {}, \"p50_us\": {p50:.3}, \"p90_us\": {p90:.3}, \"p99_us\": {p99:.3}, \
         \"p999_us\": {p999:.3}, \"max_us\": {max:.3}}}",
        json_string(r.name()),
        r.rate,
        r.latency.runs,
        r.offered,
        r.latency.count,
        r.late,
        r.latency.lost,
    )
}

/// The rows as a JSON array: per row the medians, the baseline row's name and the p50 / p99
/// ratios to it (`null` without one), and every run.
pub fn render_json(results: &[AggregatedRate]) -> String {
    let medians: Vec<RateReport> = results.iter().map(|r| r.median.clone()).collect();
    let mut out = String::from("[");
    for (i, result) in results.iter().enumerate() {
        let m = &result.median;
        let base = baseline_of(m, &medians);
        let (r50, r99) = base.map_or((f64::NAN, f64::NAN), |b| m.latency.ratio_to(&b.latency));
        let num = |x: f64| {
            if x.is_finite() {
                format!("{x:.4}")
            } else {
                "null".to_owned()
            }
        };
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "    {{\"median\": {},\n     \"baseline\": {}, \"ratio_p50\": {}, \"ratio_p99\": {},\n     \"per_run\": [",
            json_row(m),
            base.map_or_else(|| "null".to_owned(), |b| json_string(b.name())),
            num(r50),
            num(r99),
        );
        for (j, run) in result.per_run.iter().enumerate() {
            out.push_str(if j == 0 { "\n       " } else { ",\n       " });
            out.push_str(&json_row(run));
        }
        out.push_str("]}");
    }
    out.push_str("\n  ]");
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::report;
    use super::*;

    fn row(name: &str, p50: u64, late: u64) -> RateReport {
        RateReport::new(report(name, p50, 2 * p50), 10_000, 100, late)
    }

    #[test]
    fn medians_and_ratios_to_quinn_at_the_same_rate() {
        let runs = [
            row("shoal-request-at-10k", 100, 1),
            row("shoal-request-at-10k", 300, 0),
            row("shoal-request-at-10k", 200, 2),
        ];
        let m = RateReport::median_of(&runs).expect("runs");
        assert_eq!((m.latency.p50, m.late, m.latency.runs), (200, 3, 3));
        let rows = [row("quinn-stream-at-10k", 100, 0), m];
        let text = render_table(&rows);
        assert!(text.contains("x2.00 / x2.00"), "{text}");
        let md = render_markdown(&rows);
        assert!(
            md.contains("| shoal-request-at-10k | 10000 | 3 | 100 | 10 | 3 | 0 |"),
            "{md}"
        );
        let agg: Vec<AggregatedRate> = rows
            .iter()
            .map(|r| AggregatedRate::from_runs(vec![r.clone()]).expect("run"))
            .collect();
        let json = render_json(&agg);
        assert!(
            json.contains("\"baseline\": \"quinn-stream-at-10k\", \"ratio_p50\": 2.0000"),
            "{json}"
        );
    }
}
