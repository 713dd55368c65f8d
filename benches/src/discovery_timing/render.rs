//! Output: the results as a fixed-width text table and as Markdown, with notes and the
//! safety checks.

use std::fmt::Write as _;
use std::time::Duration;

use super::{DIAL_WATCH, Options, Outcome, Series, ms};
use crate::report;

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1_000_000.0
}

/// The machine: `nproc` and the CPU model.
pub fn machine() -> String {
    format!(
        "nproc {}, CPU {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        report::cpu_model()
    )
}

fn verdict(s: &Series) -> String {
    match s.target {
        Some(target) => {
            let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let p50 = if s.report.p50 <= ns(target) {
                "ok"
            } else {
                "MISSED"
            };
            let max = if s.report.max <= ns(target) {
                "ok"
            } else {
                "MISSED"
            };
            format!("< {:.0} ms: p50 {p50}, max {max}", ms(target))
        }
        None => "-".to_owned(),
    }
}

fn rows(outcome: &Outcome) -> Vec<(String, &Series)> {
    let mut rows: Vec<(String, &Series)> = outcome
        .first_send
        .iter()
        .map(|s| ("1. fresh node on h1 → `target` on h0".to_owned(), s))
        .collect();
    for pass in &outcome.failover {
        for s in &pass.series {
            rows.push((format!("2. kill -9 of `work` on h2, {}", pass.name), s));
        }
    }
    rows
}

fn notes(outcome: &Outcome, options: &Options) -> Vec<String> {
    let mut notes = vec![format!(
        "measurement 1: {} start(s); first sends that needed more than one attempt: {}; failed: {}; \
         the long-lived `target` made {} connection(s); right after the last fresh node left it had \
         {} peer(s) and had counted {} failed handshake(s); {:?} later, with no fresh node alive, \
         {} failed handshake(s) to {} distinct departed address(es) ({}){}",
        options.starts,
        outcome.first_send_retried,
        outcome.first_send_failed,
        outcome.target_connections,
        outcome.target_peers_after,
        outcome.target_handshake_failures,
        DIAL_WATCH,
        outcome.target_handshake_failures_later,
        outcome.dial_log.addrs.len(),
        if outcome.target_handshake_failures_later > outcome.target_handshake_failures {
            "STILL redialling departed nodes' addresses"
        } else {
            "no redials once the departed nodes' goodbyes were in"
        },
        if outcome.dial_log.reasons.is_empty() {
            String::new()
        } else {
            format!("; e.g. \"{}\"", outcome.dial_log.reasons.join("\"; \""))
        }
    )];
    for pass in &outcome.failover {
        notes.push(format!(
            "measurement 2, {}: {} kill(s), {} commands in flight, handler {} µs; \
             {} sends, {} retried (per kill: in flight to the victim just before the kill {:?}; \
             retried and sent before the kill {:?}, sent to the dead victim after the kill {:?}), \
             {} retried before a kill, LOST {}{}; sender counted {} handshake failure(s)",
            pass.name,
            pass.kills,
            options.concurrency,
            options.handler.as_micros(),
            pass.sent,
            pass.retried,
            pass.victim_in_flight_at_kill
                .iter()
                .map(|n| n.map_or_else(|| "?".to_owned(), |n| n.to_string()))
                .collect::<Vec<_>>(),
            pass.stuck_per_kill,
            pass.after_kill_per_kill,
            pass.retried_before_kill,
            pass.lost,
            if pass.failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", pass.failures.join("; "))
            },
            pass.sender_handshake_failures
        ));
    }
    notes
}

/// The result table as fixed-width text (milliseconds), with notes and safety checks.
pub fn render_text(outcome: &Outcome, options: &Options) -> String {
    let rows = rows(outcome);
    let width = rows
        .iter()
        .map(|(_, s)| s.label.chars().count())
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    let mut group = String::new();
    for (heading, s) in &rows {
        if *heading != group {
            let _ = writeln!(out, "\n{heading}");
            let _ = writeln!(
                out,
                "  {:<width$}  {:>4}  {:>9}  {:>9}  {:>9}  {:>9}  target",
                "", "n", "min ms", "p50 ms", "p90 ms", "max ms"
            );
            group.clone_from(heading);
        }
        let pad = width - s.label.chars().count();
        let _ = writeln!(
            out,
            "  {}{}  {:>4}  {:>9.1}  {:>9.1}  {:>9.1}  {:>9.1}  {}",
            s.label,
            " ".repeat(pad),
            s.report.count,
            ms(s.min),
            ns_to_ms(s.report.p50),
            ns_to_ms(s.report.p90),
            ns_to_ms(s.report.max),
            verdict(s)
        );
    }
    push_notes(&mut out, outcome, options);
    out
}

/// The notes and safety lines that close both renderings.
fn push_notes(out: &mut String, outcome: &Outcome, options: &Options) {
    out.push('\n');
    for note in notes(outcome, options) {
        let _ = writeln!(out, "* {note}");
    }
    for line in &outcome.safety {
        let _ = writeln!(out, "* safety: {line}");
    }
}

/// The same as Markdown.
pub fn render_markdown(outcome: &Outcome, options: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}. Date {}. Command: `{}`\n",
        machine(),
        report::utc_date(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ),
        options.command
    );
    out.push_str("| measurement | series | n | min ms | p50 ms | p90 ms | max ms | target |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    for (heading, s) in rows(outcome) {
        let _ = writeln!(
            out,
            "| {heading} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            s.label,
            s.report.count,
            ms(s.min),
            ns_to_ms(s.report.p50),
            ns_to_ms(s.report.p90),
            ns_to_ms(s.report.max),
            verdict(s)
        );
    }
    push_notes(&mut out, outcome, options);
    out
}

/// Whether every target was met and nothing was lost.
pub fn all_targets_met(outcome: &Outcome) -> bool {
    let ok = |s: &Series| {
        s.target
            .is_none_or(|t| s.report.max <= u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
    };
    outcome.first_send.iter().all(ok)
        && outcome.first_send_failed == 0
        && outcome
            .failover
            .iter()
            .all(|p| p.lost == 0 && p.series.iter().all(ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery_timing::series;

    #[test]
    fn series_percentiles_in_ms() {
        let samples: Vec<Duration> = (1..=10).map(|i| Duration::from_millis(i * 100)).collect();
        let s = series("x", &samples, Some(Duration::from_millis(500))).expect("series");
        assert_eq!(s.report.count, 10);
        assert!((ns_to_ms(s.report.max) - 1000.0).abs() < 2.0);
        assert!(verdict(&s).contains("max MISSED"));
    }
}
