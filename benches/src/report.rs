//! Latency reports: percentiles from an HDR histogram, medians across runs, and the text,
//! Markdown and JSON renderings (with each row's ratio to a named baseline row).
//!
//! All values are **recorded and stored in nanoseconds** and **printed in microseconds**.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::error::{BenchError, BenchResult};

/// Highest value a latency histogram can hold: 60 s, in nanoseconds. Larger samples are
/// clamped to it (`saturating_record`), which only matters for a broken run.
pub const HISTOGRAM_MAX_NS: u64 = 60_000_000_000;

/// Significant decimal digits kept by the histograms (3 = 0.1 % value resolution).
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// A new, empty latency histogram in nanoseconds (1 ns ..= [`HISTOGRAM_MAX_NS`]).
pub fn new_histogram() -> BenchResult<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_NS, HISTOGRAM_SIGFIG)
        .map_err(|e| BenchError::msg(format!("creating histogram: {e:?}")))
}

/// Records one round-trip time in a histogram made by [`new_histogram`].
pub fn record(histogram: &mut Histogram<u64>, rtt: Duration) {
    let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
    histogram.saturating_record(ns);
}

/// Percentiles of one scenario's round-trip times (one run, or the median of several runs).
///
/// All latency fields are in **nanoseconds**; use [`us`] to print them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyReport {
    /// Row name, normally the scenario name (e.g. `"quinn-stream"`).
    pub name: String,
    /// Number of measured (recorded) round trips per run, warm-up excluded.
    pub count: u64,
    /// Round trips given up as lost (datagram scenarios only; summed across runs).
    pub lost: u64,
    /// How many runs this report summarises (1 for a single run).
    pub runs: usize,
    /// Median round-trip time, ns.
    pub p50: u64,
    /// 90th percentile, ns.
    pub p90: u64,
    /// 99th percentile, ns.
    pub p99: u64,
    /// 99.9th percentile, ns.
    pub p999: u64,
    /// Largest sample, ns.
    pub max: u64,
}

impl LatencyReport {
    /// A single-run report from a histogram recorded in nanoseconds.
    pub fn from_histogram(name: impl Into<String>, histogram: &Histogram<u64>) -> Self {
        Self {
            name: name.into(),
            count: histogram.len(),
            lost: 0,
            runs: 1,
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    /// The same report with `lost` set.
    #[must_use]
    pub fn with_lost(mut self, lost: u64) -> Self {
        self.lost = lost;
        self
    }

    /// Combines several runs of the same row: each percentile (and `max`, and `count`) is
    /// the median of the runs' values; `lost` is the sum; `runs` is the number of runs.
    /// The name is taken from the first run. `None` if `runs` is empty.
    pub fn median_of(runs: &[Self]) -> Option<Self> {
        let first = runs.first()?;
        let pick = |field: fn(&Self) -> u64| median(runs.iter().map(field).collect());
        Some(Self {
            name: first.name.clone(),
            count: pick(|r| r.count),
            lost: runs.iter().map(|r| r.lost).sum(),
            runs: runs.len(),
            p50: pick(|r| r.p50),
            p90: pick(|r| r.p90),
            p99: pick(|r| r.p99),
            p999: pick(|r| r.p999),
            max: pick(|r| r.max),
        })
    }

    /// `(p50 ratio, p99 ratio)` of this row to `baseline` (1.0 = same as the baseline).
    pub fn ratio_to(&self, baseline: &Self) -> (f64, f64) {
        (ratio(self.p50, baseline.p50), ratio(self.p99, baseline.p99))
    }

    /// One line for progress output, e.g. `p50 61.2 µs  p99 95.3 µs  p99.9 180.2 µs`.
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs  (n={}{})",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            us(self.max),
            self.count,
            if self.lost > 0 {
                format!(", lost {}", self.lost)
            } else {
                String::new()
            }
        )
    }
}

/// One result row with the individual runs it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatedReport {
    /// Medians across `per_run` (see [`LatencyReport::median_of`]).
    pub median: LatencyReport,
    /// Each run's own report, in run order.
    pub per_run: Vec<LatencyReport>,
}

impl AggregatedReport {
    /// Aggregates runs of one row. `None` if `per_run` is empty.
    pub fn from_runs(per_run: Vec<LatencyReport>) -> Option<Self> {
        let median = LatencyReport::median_of(&per_run)?;
        Some(Self { median, per_run })
    }
}

/// Nanoseconds to microseconds, for printing.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

fn ratio(value: u64, baseline: u64) -> f64 {
    if baseline == 0 {
        f64::NAN
    } else {
        value as f64 / baseline as f64
    }
}

/// Median of integer samples (mean of the two middle values for an even count, rounded
/// down); 0 for no samples.
pub fn median(mut values: Vec<u64>) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        // Average without overflow.
        let (a, b) = (values[mid - 1], values[mid]);
        a / 2 + b / 2 + (a % 2 + b % 2) / 2
    }
}

fn find<'a>(reports: &'a [LatencyReport], name: Option<&str>) -> Option<&'a LatencyReport> {
    let name = name?;
    reports.iter().find(|r| r.name == name)
}

fn ratio_cell(row: &LatencyReport, baseline: Option<&LatencyReport>) -> String {
    match baseline {
        Some(base) => {
            let (p50, p99) = row.ratio_to(base);
            format!("x{p50:.2} / x{p99:.2}")
        }
        None => "-".to_owned(),
    }
}

fn ratio_header(baseline: Option<&str>) -> String {
    match baseline {
        Some(name) => format!("p50 / p99 vs {name}"),
        None => "vs baseline".to_owned(),
    }
}

/// A fixed-width text table (µs), one row per report, with each row's p50 and p99 ratio to
/// the row named `baseline` (e.g. `x1.05 / x1.10` means 5 % / 10 % slower than it).
/// The ratio column shows `-` when there is no such row.
pub fn render_table(reports: &[LatencyReport], baseline: Option<&str>) -> String {
    let base = find(reports, baseline);
    let name_width = reports
        .iter()
        .map(|r| r.name.len())
        .chain(std::iter::once("scenario".len()))
        .max()
        .unwrap_or(8);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<name_width$}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {}",
        "scenario",
        "count",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        ratio_header(base.map(|b| b.name.as_str())),
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<name_width$}  {:>7}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}  {}{}",
            r.name,
            r.count,
            us(r.p50),
            us(r.p90),
            us(r.p99),
            us(r.p999),
            us(r.max),
            ratio_cell(r, base),
            if r.lost > 0 {
                format!("  (lost {})", r.lost)
            } else {
                String::new()
            },
        );
    }
    out
}

/// The same table as [`render_table`], as GitHub-flavoured Markdown.
pub fn render_markdown(reports: &[LatencyReport], baseline: Option<&str>) -> String {
    let base = find(reports, baseline);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | count | runs | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | {} |",
        ratio_header(base.map(|b| b.name.as_str()))
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            r.name,
            r.count,
            r.runs,
            us(r.p50),
            us(r.p90),
            us(r.p99),
            us(r.p999),
            us(r.max),
            ratio_cell(r, base),
        );
    }
    out
}

/// Where and how a set of results was measured; written at the top of the JSON output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
    /// Seconds since the Unix epoch at the start of the run.
    pub unix_time: u64,
    /// Logical CPUs available to the process (what `nproc` prints).
    pub nproc: usize,
    /// First `model name` line of `/proc/cpuinfo`, or `"unknown"`.
    pub cpu_model: String,
    /// Measured round trips per run.
    pub count: u64,
    /// Unrecorded warm-up round trips per run.
    pub warmup: u64,
    /// Payload bytes per message.
    pub payload: usize,
    /// Runs per scenario.
    pub runs: usize,
    /// How the runtimes were built (see [`crate::runtime::DESCRIPTION`]).
    pub runtime: String,
    /// CPU placement of the two sides, e.g. `split (server on CPU 0, client on CPU 1)`.
    pub placement: String,
}

impl RunInfo {
    /// Fills in date and host details around the run's settings.
    pub fn detect(config: &crate::BenchConfig, runs: usize) -> Self {
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            date: utc_date(unix_time),
            unix_time,
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpu_model(),
            count: config.count,
            warmup: config.warmup,
            payload: config.payload,
            runs,
            runtime: crate::runtime::DESCRIPTION.to_owned(),
            placement: config.placement.describe(),
        }
    }
}

/// The CPU model from `/proc/cpuinfo` (`"unknown"` elsewhere).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `YYYY-MM-DD` (UTC) for a Unix time, without a date crate (Howard Hinnant's
/// days-to-civil algorithm).
pub fn utc_date(unix_time: u64) -> String {
    let days = i64::try_from(unix_time / 86_400).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Escapes a string for a JSON string literal (quotes included).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".to_owned()
    }
}

fn json_report(r: &LatencyReport) -> String {
    format!(
        "{{\"name\": {}, \"count\": {}, \"lost\": {}, \"runs\": {}, \
         \"p50_us\": {:.3}, \"p90_us\": {:.3}, \"p99_us\": {:.3}, \"p999_us\": {:.3}, \"max_us\": {:.3}}}",
        json_string(&r.name),
        r.count,
        r.lost,
        r.runs,
        us(r.p50),
        us(r.p90),
        us(r.p99),
        us(r.p999),
        us(r.max),
    )
}

/// The whole result set as pretty-printed JSON (hand-written, no serde): run info,
/// baseline name, per row the medians (µs), ratios to the baseline and every run, then each
/// `(key, JSON value)` of `sections` as a further top-level field.
pub fn render_json(
    info: &RunInfo,
    results: &[AggregatedReport],
    baseline: Option<&str>,
    sections: &[(&str, String)],
) -> String {
    let medians: Vec<LatencyReport> = results.iter().map(|r| r.median.clone()).collect();
    let base = find(&medians, baseline);
    let mut out = String::new();
    out.push_str("{\n");
    let _ = writeln!(out, "  \"date\": {},", json_string(&info.date));
    let _ = writeln!(out, "  \"unix_time\": {},", info.unix_time);
    let _ = writeln!(
        out,
        "  \"host\": {{\"nproc\": {}, \"cpu_model\": {}}},",
        info.nproc,
        json_string(&info.cpu_model)
    );
    let _ = writeln!(
        out,
        "  \"settings\": {{\"count\": {}, \"warmup\": {}, \"payload_bytes\": {}, \"runs\": {}, \"runtime\": {}, \"placement\": {}}},",
        info.count,
        info.warmup,
        info.payload,
        info.runs,
        json_string(&info.runtime),
        json_string(&info.placement)
    );
    let _ = writeln!(
        out,
        "  \"baseline\": {},",
        base.map_or_else(|| "null".to_owned(), |b| json_string(&b.name))
    );
    let _ = write!(
        out,
        "  \"results\": {}",
        render_json_rows(results, baseline)
    );
    for (key, value) in sections {
        let _ = write!(out, ",\n  {}: {value}", json_string(key));
    }
    out.push_str("\n}\n");
    out
}

/// Latency rows as a JSON array: per row the medians (µs), the p50/p99 ratios to the row
/// named `baseline` (`null` without it) and every run.
pub fn render_json_rows(results: &[AggregatedReport], baseline: Option<&str>) -> String {
    let medians: Vec<LatencyReport> = results.iter().map(|r| r.median.clone()).collect();
    let base = find(&medians, baseline);
    let mut out = String::from("[");
    for (i, result) in results.iter().enumerate() {
        let m = &result.median;
        let (r50, r99) = base.map_or((f64::NAN, f64::NAN), |b| m.ratio_to(b));
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "    {{\"median\": {},\n     \"ratio_p50\": {}, \"ratio_p99\": {},\n     \"per_run\": [",
            json_report(m),
            json_number(r50),
            json_number(r99),
        );
        for (j, run) in result.per_run.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("\n       ");
            out.push_str(&json_report(run));
        }
        out.push_str("]}");
    }
    out.push_str("\n  ]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, p50: u64, p99: u64) -> LatencyReport {
        LatencyReport {
            name: name.to_owned(),
            count: 10,
            lost: 0,
            runs: 1,
            p50,
            p90: p50,
            p99,
            p999: p99,
            max: p99,
        }
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut h = new_histogram().expect("histogram");
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let r = LatencyReport::from_histogram("x", &h);
        assert_eq!(r.count, 1000);
        // 0.1 % resolution.
        assert!((499_000..=501_000).contains(&r.p50), "{}", r.p50);
        assert!((989_000..=991_000).contains(&r.p99), "{}", r.p99);
        assert!(r.max >= 999_000);
    }

    #[test]
    fn median_odd_even_and_runs() {
        assert_eq!(median(vec![]), 0);
        assert_eq!(median(vec![3, 1, 2]), 2);
        assert_eq!(median(vec![4, 1, 3, 2]), 2);
        assert_eq!(median(vec![u64::MAX, u64::MAX]), u64::MAX);
        let runs = [
            report("a", 100, 900),
            report("a", 300, 700),
            report("a", 200, 800),
        ];
        let m = LatencyReport::median_of(&runs).expect("non-empty");
        assert_eq!((m.p50, m.p99, m.runs), (200, 800, 3));
    }

    #[test]
    fn ratios_in_tables() {
        let rows = [report("raw", 50, 100), report("quinn", 100, 200)];
        let text = render_table(&rows, Some("quinn"));
        assert!(text.contains("x0.50 / x0.50"), "{text}");
        assert!(text.contains("x1.00 / x1.00"), "{text}");
        let md = render_markdown(&rows, Some("missing"));
        assert!(md.contains("| - |"), "{md}");
    }

    #[test]
    fn json_is_escaped_and_shaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let info = RunInfo::detect(&crate::BenchConfig::default(), 1);
        let agg = AggregatedReport::from_runs(vec![report("quinn", 100, 200)]).expect("one run");
        let json = render_json(&info, &[agg], Some("quinn"), &[("extra", "[]".to_owned())]);
        assert!(json.contains("\"ratio_p50\": 1.0000"), "{json}");
        assert!(json.contains("\"extra\": []"), "{json}");
        assert!(json.trim_end().ends_with('}'));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_600), "2026-01-01");
    }
}
