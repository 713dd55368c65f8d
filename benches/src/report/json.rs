//! The JSON rendering of latency results (hand-written, no serde): run info, medians in µs,
//! ratios to the baseline row (and to each row's peer, see [`PeerColumn`]), every run.

use std::fmt::Write as _;

use super::{AggregatedReport, LatencyReport, PeerColumn, RunInfo, find};

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
    let [p50, p90, p99, p999, max] = r.percentiles_us();
    format!(
        "{{\"name\": {}, \"count\": {}, \"lost\": {}, \"runs\": {}, \
         \"p50_us\": {p50:.3}, \"p90_us\": {p90:.3}, \"p99_us\": {p99:.3}, \"p999_us\": {p999:.3}, \"max_us\": {max:.3}}}",
        json_string(&r.name),
        r.count,
        r.lost,
        r.runs,
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
        render_json_rows(results, baseline, None)
    );
    for (key, value) in sections {
        let _ = write!(out, ",\n  {}: {value}", json_string(key));
    }
    out.push_str("\n}\n");
    out
}

/// Latency rows as a JSON array: per row the medians (µs), the p50/p99 ratios to the row
/// named `baseline` (`null` without it), with `peer` also the peer row's name and the
/// ratios to it (`"peer"`, `"peer_ratio_p50"`, `"peer_ratio_p99"`; `null` without one),
/// and every run.
pub fn render_json_rows(
    results: &[AggregatedReport],
    baseline: Option<&str>,
    peer: Option<PeerColumn>,
) -> String {
    let medians: Vec<LatencyReport> = results.iter().map(|r| r.median.clone()).collect();
    let base = find(&medians, baseline);
    // `"<prefix>ratio_p50": …, "<prefix>ratio_p99": …` of `m` against `to`.
    let ratios = |prefix: &str, m: &LatencyReport, to: Option<&LatencyReport>| {
        let (r50, r99) = to.map_or((f64::NAN, f64::NAN), |b| m.ratio_to(b));
        format!(
            "\"{prefix}ratio_p50\": {}, \"{prefix}ratio_p99\": {},",
            json_number(r50),
            json_number(r99)
        )
    };
    let mut out = String::from("[");
    for (i, result) in results.iter().enumerate() {
        let m = &result.median;
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "    {{\"median\": {},\n     {}",
            json_report(m),
            ratios("", m, base),
        );
        if let Some(peer) = peer {
            let to = peer.find(m, &medians);
            let _ = write!(
                out,
                "\n     \"peer\": {}, {}",
                to.map_or_else(|| "null".to_owned(), |p| json_string(&p.name)),
                ratios("peer_", m, to),
            );
        }
        out.push_str("\n     \"per_run\": [");
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
    use super::super::tests::report;
    use super::*;

    #[test]
    fn json_is_escaped_and_shaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        let info = RunInfo::detect(&crate::BenchConfig::default(), 1);
        let agg = AggregatedReport::from_runs(vec![report("quinn", 100, 200)]).expect("one run");
        let json = render_json(&info, &[agg], Some("quinn"), &[("extra", "[]".to_owned())]);
        assert!(json.contains("\"ratio_p50\": 1.0000"), "{json}");
        assert!(json.contains("\"extra\": []"), "{json}");
        assert!(json.trim_end().ends_with('}'));
        assert!(!json.contains("peer"), "{json}");
    }

    #[test]
    fn json_rows_with_peers() {
        let peer = PeerColumn {
            header: "vs peer",
            peer_of: |name| (name == "shoal").then(|| "raw".to_owned()),
        };
        let rows = [report("raw", 50, 100), report("shoal", 100, 300)]
            .map(|r| AggregatedReport::from_runs(vec![r]).expect("one run"));
        let json = render_json_rows(&rows, Some("raw"), Some(peer));
        assert!(
            json.contains(
                "\"peer\": \"raw\", \"peer_ratio_p50\": 2.0000, \"peer_ratio_p99\": 3.0000,"
            ),
            "{json}"
        );
        assert!(
            json.contains("\"peer\": null, \"peer_ratio_p50\": null"),
            "{json}"
        );
    }
}
