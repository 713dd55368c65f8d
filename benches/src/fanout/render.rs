//! The fan-out rows as a text table (terminal) or Markdown, with ratios to the unicast path
//! and issue 14's targets checked.

use std::fmt::Write as _;

use super::{Latency, Path, Row};

/// Column headers of both renderings.
const HEADERS: [&str; 16] = [
    "row",
    "msgs/s per sub",
    "x unicast",
    "pub CPU µs/event",
    "x unicast",
    "sub CPU µs/event",
    "x unicast",
    "link B/event",
    "x unicast",
    "last sub p50 / p99 / p99.9 µs",
    "same, 1 % loss",
    "x unicast p99 (loss)",
    "datagrams",
    "repairs",
    "events/datagram",
    "demoted",
];

fn us(ns: u64) -> String {
    format!("{:.0}", ns as f64 / 1_000.0)
}

fn lat(l: Option<&Latency>) -> String {
    l.map_or_else(
        || "-".to_owned(),
        |l| {
            format!(
                "{} / {} / {} (n={})",
                us(l.p50),
                us(l.p99),
                us(l.p999),
                l.samples
            )
        },
    )
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    }
}

/// The unicast row with the same subscribers and size as `row`.
fn floor<'a>(rows: &'a [Row], row: &Row) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.path == Path::Unicast && r.subscribers == row.subscribers && r.size == row.size)
}

fn cells(rows: &[Row], row: &Row) -> Vec<String> {
    let f = floor(rows, row);
    vec![
        row.name.clone(),
        format!("{:.0}", row.per_sub_rate),
        ratio(row.per_sub_rate, f.map(|f| f.per_sub_rate)),
        format!("{:.1}", row.cpu_ns_per_event / 1_000.0),
        ratio(row.cpu_ns_per_event, f.map(|f| f.cpu_ns_per_event)),
        format!("{:.1}", row.sub_cpu_ns_per_event / 1_000.0),
        ratio(row.sub_cpu_ns_per_event, f.map(|f| f.sub_cpu_ns_per_event)),
        format!("{:.0}", row.bytes_per_event),
        ratio(row.bytes_per_event, f.map(|f| f.bytes_per_event)),
        lat(Some(&row.latency)),
        lat(row.lossy.as_ref()),
        format!(
            "{} ({})",
            ratio(row.latency.p99 as f64, f.map(|f| f.latency.p99 as f64)),
            ratio(
                row.lossy.map_or(f64::NAN, |l| l.p99 as f64),
                f.and_then(|f| f.lossy).map(|l| l.p99 as f64)
            )
        ),
        row.datagrams.to_string(),
        row.repairs.to_string(),
        row.events_per_datagram
            .map_or_else(|| "-".to_owned(), |e| format!("{e:.1}")),
        row.demotions.to_string(),
    ]
}

/// One line per target and payload size: the figure and whether this run meets it.
pub fn targets(rows: &[Row]) -> Vec<String> {
    let mut lines = Vec::new();
    let (Some(lone), Some(most)) = (
        rows.iter().map(|r| r.subscribers).min(),
        rows.iter().map(|r| r.subscribers).max(),
    ) else {
        return lines;
    };
    if lone == most {
        lines.push("targets not checked: they compare the fewest and the most subscribers".into());
        return lines;
    }
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let find = |path, n, size| {
        rows.iter()
            .find(|r| r.path == path && r.subscribers == n && r.size == size)
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for size in sizes {
        let (Some(m1), Some(mn), Some(un)) = (
            find(Path::Multicast, lone, size),
            find(Path::Multicast, most, size),
            find(Path::Unicast, most, size),
        ) else {
            continue;
        };
        let p99 = mn.latency.p99 as f64 / m1.latency.p99.max(1) as f64;
        let bytes = mn.bytes_per_event / m1.bytes_per_event.max(1.0);
        let cpu = mn.cpu_ns_per_event / m1.cpu_ns_per_event.max(1.0);
        let rate = mn.per_sub_rate / un.per_sub_rate.max(f64::MIN_POSITIVE);
        lines.push(format!(
            "{size} B: last of {most} p99 / lone p99 (multicast) = {p99:.2} (target <= 1.5: {})",
            verdict(p99 <= 1.5)
        ));
        lines.push(format!(
            "{size} B: publisher bytes/event {most} vs {lone} subscribers = {bytes:.2}, CPU/event = {cpu:.2} (target <= 1.2: {})",
            verdict(bytes <= 1.2 && cpu <= 1.2)
        ));
        lines.push(format!(
            "{size} B: msgs/s per subscriber at {most}, multicast / unicast = {rate:.2} (target >= 3: {})",
            verdict(rate >= 3.0)
        ));
    }
    lines
}

/// The rows as an aligned text table, then the targets.
pub fn render_text(rows: &[Row]) -> String {
    let table: Vec<Vec<String>> = rows.iter().map(|r| cells(rows, r)).collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .chain([HEADERS[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  "));
    };
    line(HEADERS.to_vec(), &mut out);
    for r in &table {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    for t in targets(rows) {
        let _ = writeln!(out, "{t}");
    }
    out
}

/// The rows as a Markdown table, then the targets as a list.
pub fn render_markdown(rows: &[Row]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADERS.join(" | "),
        "---|".repeat(HEADERS.len())
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", cells(rows, r).join(" | "));
    }
    out.push('\n');
    for t in targets(rows) {
        let _ = writeln!(out, "- {t}");
    }
    out
}
