//! The renderings of the comparison: text, Markdown and JSON.

use std::fmt::Write as _;

use super::{Entry, KindGroup, Value};
use crate::report::json::json_string;
use crate::report::us;
use crate::systems::Role;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Floor => "floor",
        Role::Shoal => "shoal",
        Role::Rival => "rival",
    }
}

/// What the value and ratio columns hold.
pub const LEGEND: &str = "value: p50 / p99 for latencies, msgs/s for throughput; \
    ratio: Shoal's row ÷ this row (latency: below 1 = Shoal faster; throughput: above 1 = \
    Shoal faster)";

/// The comparison as a fixed-width text table.
pub fn render_table(groups: &[KindGroup]) -> String {
    let width = |f: fn(&Entry) -> usize, header: &str| {
        groups
            .iter()
            .flat_map(|g| g.entries.iter().map(f))
            .chain(std::iter::once(header.len()))
            .max()
            .unwrap_or(0)
    };
    let kw = groups
        .iter()
        .map(|g| g.kind.len())
        .chain(std::iter::once(4))
        .max()
        .unwrap_or(4);
    let rw = width(|e| e.row.len(), "row");
    let vw = width(|e| e.value.text().chars().count(), "value");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<kw$}  {:<rw$}  {:<6}  {:>vw$}  Shoal ÷ row",
        "kind", "row", "role", "value"
    );
    for group in groups {
        for (i, e) in group.entries.iter().enumerate() {
            let kind = if i == 0 { group.kind.as_str() } else { "" };
            let value = e.value.text();
            let pad = vw.saturating_sub(value.chars().count());
            let _ = writeln!(
                out,
                "{kind:<kw$}  {:<rw$}  {:<6}  {}{value}  {}",
                e.row,
                role_name(e.role),
                " ".repeat(pad),
                group.ratio_text(e)
            );
        }
    }
    out
}

/// The comparison as GitHub-flavoured Markdown.
pub fn render_markdown(groups: &[KindGroup]) -> String {
    let mut out =
        String::from("| kind | row | role | value | Shoal ÷ row |\n|---|---|---|---:|---:|\n");
    for group in groups {
        for (i, e) in group.entries.iter().enumerate() {
            let kind = if i == 0 {
                format!("**{}**", group.kind)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {kind} | {} | {} | {} | {} |",
                e.row,
                role_name(e.role),
                e.value.text(),
                group.ratio_text(e)
            );
        }
    }
    out
}

fn json_number(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        _ => "null".to_owned(),
    }
}

/// The comparison as a JSON array: per kind, Shoal's row name (or `null`) and every row with
/// its system, role, variant, values (`p50_us`/`p99_us` or `msgs_per_sec`) and Shoal's
/// ratios to it (`shoal_ratio_p50`/`shoal_ratio_p99` or `shoal_ratio`; `null` for Shoal's
/// own row).
pub fn render_json(groups: &[KindGroup]) -> String {
    let mut out = String::from("[");
    for (i, group) in groups.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "    {{\"kind\": {}, \"shoal\": {}, \"rows\": [",
            json_string(&group.kind),
            group
                .shoal()
                .map_or_else(|| "null".to_owned(), |s| json_string(&s.row))
        );
        for (j, e) in group.entries.iter().enumerate() {
            out.push_str(if j == 0 { "\n      " } else { ",\n      " });
            let ratio = group.ratio(e);
            let values = match e.value {
                Value::Latency { p50, p99 } => format!(
                    "\"p50_us\": {:.3}, \"p99_us\": {:.3}, \"shoal_ratio_p50\": {}, \"shoal_ratio_p99\": {}",
                    us(p50),
                    us(p99),
                    json_number(ratio.map(|r| r.0)),
                    json_number(ratio.and_then(|r| r.1)),
                ),
                Value::Throughput(rate) => format!(
                    "\"msgs_per_sec\": {rate:.1}, \"shoal_ratio\": {}",
                    json_number(ratio.map(|r| r.0)),
                ),
            };
            let _ = write!(
                out,
                "{{\"name\": {}, \"system\": {}, \"role\": \"{}\", \"variant\": {}, {values}}}",
                json_string(&e.row),
                json_string(&e.system),
                role_name(e.role),
                json_string(&e.variant),
            );
        }
        out.push_str("]}");
    }
    out.push_str("\n  ]");
    out
}
