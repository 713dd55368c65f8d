//! Latency reports: percentiles from an HDR histogram, medians across runs, and the text and
//! Markdown renderings (with each row's ratio to a named baseline row, and optionally to a
//! peer row of its own, see [`PeerColumn`]); the JSON rendering is in [`json`], the rows of
//! latency at an offered rate in [`rate`].
//!
//! All values are **recorded and stored in nanoseconds** and **printed in microseconds**.

pub mod json;
pub mod rate;

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

pub use self::json::{json_string, render_json, render_json_rows};
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

    /// `[p50, p90, p99, p99.9, max]` in µs, for printing.
    pub fn percentiles_us(&self) -> [f64; 5] {
        [self.p50, self.p90, self.p99, self.p999, self.max].map(us)
    }

    /// One line for progress output, e.g. `p50 61.2 µs  p99 95.3 µs  p99.9 180.2 µs`.
    pub fn summary(&self) -> String {
        let [p50, p90, p99, p999, max] = self.percentiles_us();
        format!(
            "p50 {p50:.1} µs  p90 {p90:.1} µs  p99 {p99:.1} µs  p99.9 {p999:.1} µs  max {max:.1} µs  (n={}{})",
            self.count,
            if self.lost > 0 {
                format!(", lost {}", self.lost)
            } else {
                String::new()
            }
        )
    }
}

/// A result row whose runs combine into one row of medians (latency, throughput and
/// offered-rate rows alike).
pub trait MedianOf: Sized {
    /// The row of medians across `runs`; `None` if there are none.
    fn median_of(runs: &[Self]) -> Option<Self>;
}

impl MedianOf for LatencyReport {
    fn median_of(runs: &[Self]) -> Option<Self> {
        Self::median_of(runs)
    }
}

/// One result row with the individual runs it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregated<R> {
    /// Medians across `per_run` (see [`MedianOf`]).
    pub median: R,
    /// Each run's own report, in run order.
    pub per_run: Vec<R>,
}

impl<R: MedianOf> Aggregated<R> {
    /// Aggregates runs of one row. `None` if `per_run` is empty.
    pub fn from_runs(per_run: Vec<R>) -> Option<Self> {
        let median = R::median_of(&per_run)?;
        Some(Self { median, per_run })
    }
}

/// A latency row with its runs.
pub type AggregatedReport = Aggregated<LatencyReport>;

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

/// A second ratio column: each row against a peer row of its own (e.g. a Shoal row against
/// the raw quinn row with the same fan-out); `-` for rows without one.
#[derive(Debug, Clone, Copy)]
pub struct PeerColumn {
    /// Column header, e.g. `"p50 / p99 vs raw quinn, same N"`.
    pub header: &'static str,
    /// Name of a row's peer row, given the row's name (`None`: the row has no peer).
    pub peer_of: fn(&str) -> Option<String>,
}

impl PeerColumn {
    /// The peer of `row` among `reports`, if it has one and that row is there.
    fn find<'a>(
        &self,
        row: &LatencyReport,
        reports: &'a [LatencyReport],
    ) -> Option<&'a LatencyReport> {
        find(reports, (self.peer_of)(&row.name).as_deref())
    }

    /// The ratio cell of `row` against its peer among `reports`.
    fn cell(&self, row: &LatencyReport, reports: &[LatencyReport]) -> String {
        ratio_cell(row, self.find(row, reports))
    }
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
/// the row named `baseline` (e.g. `x1.05 / x1.10` means 5 % / 10 % slower than it), and with
/// `peer`, a further column of each row's ratios to its own peer row.
/// A ratio column shows `-` when there is no such row.
pub fn render_table(
    reports: &[LatencyReport],
    baseline: Option<&str>,
    peer: Option<PeerColumn>,
) -> String {
    let base = find(reports, baseline);
    let name_width = reports
        .iter()
        .map(|r| r.name.len())
        .chain(std::iter::once("scenario".len()))
        .max()
        .unwrap_or(8);
    let header = ratio_header(base.map(|b| b.name.as_str()));
    // The base ratio column is padded only when another column follows it.
    let ratio_width = if peer.is_some() { header.len() } else { 0 };
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<name_width$}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {header:<ratio_width$}",
        "scenario", "count", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs",
    );
    if let Some(peer) = peer {
        let _ = write!(out, "  {}", peer.header);
    }
    out.push('\n');
    for r in reports {
        let [p50, p90, p99, p999, max] = r.percentiles_us();
        let _ = write!(
            out,
            "{:<name_width$}  {:>7}  {p50:>9.1}  {p90:>9.1}  {p99:>9.1}  {p999:>9.1}  {max:>9.1}  {:<ratio_width$}",
            r.name,
            r.count,
            ratio_cell(r, base),
        );
        if let Some(peer) = peer {
            let _ = write!(out, "  {}", peer.cell(r, reports));
        }
        if r.lost > 0 {
            let _ = write!(out, "  (lost {})", r.lost);
        }
        out.push('\n');
    }
    out
}

/// The same table as [`render_table`], as GitHub-flavoured Markdown.
pub fn render_markdown(
    reports: &[LatencyReport],
    baseline: Option<&str>,
    peer: Option<PeerColumn>,
) -> String {
    let base = find(reports, baseline);
    let (peer_header, peer_rule) = peer.map_or((String::new(), ""), |p| {
        (format!(" {} |", p.header), "---:|")
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | count | runs | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | {} |{peer_header}",
        ratio_header(base.map(|b| b.name.as_str()))
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|{peer_rule}"
    );
    for r in reports {
        let [p50, p90, p99, p999, max] = r.percentiles_us();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {p50:.1} | {p90:.1} | {p99:.1} | {p999:.1} | {max:.1} | {} |{}",
            r.name,
            r.count,
            r.runs,
            ratio_cell(r, base),
            peer.map_or_else(String::new, |p| format!(" {} |", p.cell(r, reports))),
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
    /// How the runtimes were built (see [`crate::runtime::description`]).
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
            runtime: crate::runtime::description().to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn report(name: &str, p50: u64, p99: u64) -> LatencyReport {
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
        let text = render_table(&rows, Some("quinn"), None);
        assert!(text.contains("x0.50 / x0.50"), "{text}");
        assert!(text.contains("x1.00 / x1.00"), "{text}");
        let md = render_markdown(&rows, Some("missing"), None);
        assert!(md.contains("| - |"), "{md}");
    }

    #[test]
    fn peer_ratio_column() {
        let peer = PeerColumn {
            header: "vs peer",
            peer_of: |name| (name == "shoal").then(|| "raw".to_owned()),
        };
        let rows = [report("raw", 50, 100), report("shoal", 100, 300)];
        let text = render_table(&rows, Some("raw"), Some(peer));
        let shoal = text.lines().find(|l| l.starts_with("shoal")).expect("row");
        assert_eq!(shoal.matches("x2.00 / x3.00").count(), 2, "{text}");
        assert!(text.lines().next().is_some_and(|l| l.ends_with("vs peer")));
        let md = render_markdown(&rows, Some("raw"), Some(peer));
        assert!(md.contains("| x1.00 / x1.00 | - |"), "{md}");
        assert!(md.contains("|---:|---:|\n"), "{md}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_600), "2026-01-01");
    }
}
