//! Throughput reports (messages per second over a bounded window), medians across runs, the
//! measuring window shared by every throughput row, and the text, Markdown and JSON
//! renderings (each row's ratio to the raw row it names as its baseline).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::report::json_string;

/// Messages per second of one throughput row (one run, or the median of several runs).
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputReport {
    /// Row name, e.g. `"quinn-batch-64"`.
    pub name: String,
    /// Payload bytes per message.
    pub payload: usize,
    /// Messages counted in the measured window (median across runs).
    pub messages: u64,
    /// Length of the measured window, seconds (median across runs).
    pub seconds: f64,
    /// Messages per second (median across runs).
    pub msgs_per_sec: f64,
    /// Messages given up by the sender (best-effort drops, whole run; summed across runs).
    pub dropped: u64,
    /// How many runs this report summarises.
    pub runs: usize,
    /// Row this one is compared with (a raw quinn row with the same payload), if any.
    pub baseline: Option<String>,
}

impl ThroughputReport {
    /// A single-run report: `window.messages` over `window.elapsed`.
    pub fn new(name: impl Into<String>, payload: usize, window: Window) -> Self {
        let seconds = window.elapsed.as_secs_f64();
        Self {
            name: name.into(),
            payload,
            messages: window.messages,
            seconds,
            msgs_per_sec: if seconds > 0.0 {
                window.messages as f64 / seconds
            } else {
                0.0
            },
            dropped: 0,
            runs: 1,
            baseline: None,
        }
    }

    /// The same report compared with the row named `baseline`.
    #[must_use]
    pub fn compared_with(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = Some(baseline.into());
        self
    }

    /// The same report with `dropped` set.
    #[must_use]
    pub fn with_dropped(mut self, dropped: u64) -> Self {
        self.dropped = dropped;
        self
    }

    /// Payload megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec * self.payload as f64 / 1e6
    }

    /// Combines runs of one row: medians of rate, count and window, summed drops. `None` if
    /// `runs` is empty.
    pub fn median_of(runs: &[Self]) -> Option<Self> {
        let first = runs.first()?;
        let pick = |field: fn(&Self) -> f64| median_f64(runs.iter().map(field).collect());
        Some(Self {
            name: first.name.clone(),
            payload: first.payload,
            messages: crate::report::median(runs.iter().map(|r| r.messages).collect()),
            seconds: pick(|r| r.seconds),
            msgs_per_sec: pick(|r| r.msgs_per_sec),
            dropped: runs.iter().map(|r| r.dropped).sum(),
            runs: runs.len(),
            baseline: first.baseline.clone(),
        })
    }

    /// One line for progress output.
    pub fn summary(&self) -> String {
        format!(
            "{} msgs/s  {:.1} MB/s  ({} msgs in {:.2} s, {} B{})",
            thousands(self.msgs_per_sec),
            self.mb_per_sec(),
            self.messages,
            self.seconds,
            self.payload,
            if self.dropped > 0 {
                format!(", dropped {}", self.dropped)
            } else {
                String::new()
            }
        )
    }
}

impl crate::report::MedianOf for ThroughputReport {
    fn median_of(runs: &[Self]) -> Option<Self> {
        Self::median_of(runs)
    }
}

/// One throughput row with the runs it was made from.
pub type AggregatedThroughput = crate::report::Aggregated<ThroughputReport>;

/// Messages counted over a measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Counter increase during the window.
    pub messages: u64,
    /// Actual length of the window.
    pub elapsed: Duration,
}

/// When a throughput run warms up, measures and stops.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Start of the measured window (the end of the warm-up).
    pub measure_at: Instant,
    /// End of the window: senders start nothing new after it.
    pub end_at: Instant,
}

impl Schedule {
    /// Starts now: a warm-up of a quarter of `duration` (at least 50 ms), then `duration`.
    pub fn starting_now(duration: Duration) -> Self {
        let measure_at = Instant::now() + (duration / 4).max(Duration::from_millis(50));
        Self {
            measure_at,
            end_at: measure_at + duration,
        }
    }

    /// `true` once the window has ended.
    pub fn over(&self) -> bool {
        Instant::now() >= self.end_at
    }

    /// Reads `counter` at the start and end of the window (each read stamped with the time it
    /// actually happened, so a late timer only shifts the window).
    pub async fn sample(&self, counter: &AtomicU64) -> Window {
        tokio::time::sleep_until(self.measure_at).await;
        let (first, started) = (counter.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep_until(self.end_at).await;
        let (last, ended) = (counter.load(Ordering::Relaxed), Instant::now());
        Window {
            messages: last.saturating_sub(first),
            elapsed: ended - started,
        }
    }
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `(ratio, baseline name)` of `row` to the row it names as its baseline, if that row is in
/// `rows`.
fn ratio<'a>(row: &ThroughputReport, rows: &'a [ThroughputReport]) -> Option<(f64, &'a str)> {
    let name = row.baseline.as_deref()?;
    let base = rows.iter().find(|r| r.name == name)?;
    (base.msgs_per_sec > 0.0).then(|| (row.msgs_per_sec / base.msgs_per_sec, base.name.as_str()))
}

fn ratio_cell(row: &ThroughputReport, rows: &[ThroughputReport]) -> String {
    match ratio(row, rows) {
        Some((r, name)) => format!("x{r:.3} of {name}"),
        None => "-".to_owned(),
    }
}

/// A fixed-width text table: one row per report, with its ratio to its baseline row.
pub fn render_table(rows: &[ThroughputReport]) -> String {
    let w = rows
        .iter()
        .map(|r| r.name.len())
        .chain(std::iter::once("scenario".len()))
        .max()
        .unwrap_or(8);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<w$}  {:>7}  {:>12}  {:>8}  {:>9}  vs raw quinn",
        "scenario", "payload", "msgs/s", "MB/s", "dropped"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w$}  {:>7}  {:>12}  {:>8.1}  {:>9}  {}",
            r.name,
            r.payload,
            thousands(r.msgs_per_sec),
            r.mb_per_sec(),
            r.dropped,
            ratio_cell(r, rows),
        );
    }
    out
}

/// The same table as [`render_table`], as GitHub-flavoured Markdown.
pub fn render_markdown(rows: &[ThroughputReport]) -> String {
    let mut out = String::from(
        "| scenario | payload B | runs | msgs/s | MB/s | dropped | vs raw quinn |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {} | {} |",
            r.name,
            r.payload,
            r.runs,
            thousands(r.msgs_per_sec),
            r.mb_per_sec(),
            r.dropped,
            ratio_cell(r, rows),
        );
    }
    out
}

fn json_row(r: &ThroughputReport) -> String {
    format!(
        "{{\"name\": {}, \"payload_bytes\": {}, \"runs\": {}, \"messages\": {}, \"seconds\": {:.4}, \
         \"msgs_per_sec\": {:.1}, \"mb_per_sec\": {:.3}, \"dropped\": {}, \"baseline\": {}}}",
        json_string(&r.name),
        r.payload,
        r.runs,
        r.messages,
        r.seconds,
        r.msgs_per_sec,
        r.mb_per_sec(),
        r.dropped,
        r.baseline
            .as_deref()
            .map_or_else(|| "null".to_owned(), json_string),
    )
}

/// The throughput rows as a JSON object: the measured window and, per row, the medians, the
/// ratio to its baseline row and every run.
pub fn render_json(results: &[AggregatedThroughput], duration: Duration) -> String {
    let medians: Vec<ThroughputReport> = results.iter().map(|r| r.median.clone()).collect();
    let mut out = format!(
        "{{\"window_seconds\": {:.3}, \"results\": [",
        duration.as_secs_f64()
    );
    for (i, result) in results.iter().enumerate() {
        let ratio = ratio(&result.median, &medians)
            .map_or_else(|| "null".to_owned(), |(r, _)| format!("{r:.4}"));
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "    {{\"median\": {},\n     \"ratio\": {ratio},\n     \"per_run\": [",
            json_row(&result.median)
        );
        for (j, run) in result.per_run.iter().enumerate() {
            out.push_str(if j == 0 { "\n       " } else { ",\n       " });
            out.push_str(&json_row(run));
        }
        out.push_str("]}");
    }
    out.push_str("\n  ]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, rate: f64, baseline: Option<&str>) -> ThroughputReport {
        let window = Window {
            messages: rate as u64,
            elapsed: Duration::from_secs(1),
        };
        let r = ThroughputReport::new(name, 64, window);
        match baseline {
            Some(b) => r.compared_with(b),
            None => r,
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(8_123_456.7), "8,123,457");
    }

    #[test]
    fn medians_ratios_and_renderings() {
        let runs = [
            row("s", 100.0, Some("q")),
            row("s", 300.0, Some("q")),
            row("s", 200.0, Some("q")),
        ];
        let m = ThroughputReport::median_of(&runs).expect("non-empty");
        assert_eq!((m.msgs_per_sec, m.runs), (200.0, 3));
        let rows = [row("q", 1_000.0, None), m.clone()];
        let text = render_table(&rows);
        assert!(text.contains("x0.200 of q"), "{text}");
        assert!(render_markdown(&rows).contains("| - |"));
        let agg = AggregatedThroughput::from_runs(runs.to_vec()).expect("runs");
        let base = AggregatedThroughput::from_runs(vec![rows[0].clone()]).expect("run");
        let json = render_json(&[base, agg], Duration::from_secs(2));
        assert!(json.contains("\"ratio\": 0.2000"), "{json}");
        assert!(json.ends_with('}'));
    }
}
