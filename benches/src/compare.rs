//! The comparison table: for each **kind** of row (request, publish-1, pubsub-1024, ...),
//! Shoal's row, the raw floor and every rival's row of that kind, with Shoal's ratio to each.
//!
//! Rows are paired by name. A row is `<variant>-<kind>`, the variant being the system's name,
//! possibly followed by a transport or mode (`zenoh-tcp-ll`, `shoal-best-effort`):
//!
//! | kind | row names | measure |
//! |---|---|---|
//! | `request` | `<variant>-request` | round trip, closed loop |
//! | `publish-<n>`, `publish-<n>-last` | `<variant>-publish-8`, `<variant>-publish-8-last` | one-way latency |
//! | `pubsub-<payload>`, `p2p-<payload>` | `<system>-pubsub[-<mode>]-<payload>`, `<system>-p2p[-<mode>]-<payload>` | msgs/s |
//! | `request-at-<rate>` | `<variant>[-request]-at-<rate>` | latency at an offered rate |
//! | `connect` | `<variant>-connect` | connection set-up |
//! | `discover` | `<variant>-discover` | time to find a new peer |
//!
//! The harness's own rows that predate the convention are mapped by name ([`classify`]):
//! `quinn-stream` and `udp-echo` are floors of `request`, `shoal-send` a second Shoal row
//! of it; `quinn-oneway` / `quinn-fanout-<n>[-last]` floors of `publish-…`; `quinn-batch-<p>`
//! the floor of both `pubsub-<p>` and `p2p-<p>`; `shoal-connect-send` a second Shoal row of
//! `connect`.
//!
//! Whose row is whose comes from the first segment of the variant ([`crate::systems`]):
//! floors (`udp`, `quinn`), Shoal, or a rival (anything else). Shoal's row of a kind is the
//! one whose variant is exactly `shoal`; other Shoal variants are listed after the rivals.
//! Ratios are always **Shoal ÷ row**: for latencies below 1 means Shoal is faster, for
//! throughput above 1 means Shoal is faster.

use crate::report::rate::RateReport;
use crate::report::{LatencyReport, us};
use crate::systems::{self, Role};
use crate::throughput::{ThroughputReport, thousands};

mod render;

pub use self::render::{LEGEND, render_json, render_markdown, render_table};

/// A row's place in the comparison: its kind and its variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// E.g. `"request"`, `"publish-8-last"`, `"pubsub-1024"`, `"request-at-10k"`.
    pub kind: String,
    /// E.g. `"shoal"`, `"shoal-send"`, `"quinn"`, `"zenoh-tcp-ll"`.
    pub variant: String,
}

fn classified(kind: impl Into<String>, variant: impl Into<String>) -> Classified {
    Classified {
        kind: kind.into(),
        variant: variant.into(),
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The kinds a row belongs to (none if it is not comparable; two for `quinn-batch-<p>`,
/// which is the floor of both `pubsub-<p>` and `p2p-<p>`).
pub fn classify(row: &str) -> Vec<Classified> {
    // The harness's own rows named before the convention.
    match row {
        "udp-echo" => return vec![classified("request", "udp")],
        "quinn-stream" => return vec![classified("request", "quinn-stream")],
        "shoal-send" => return vec![classified("request", "shoal-send")],
        "quinn-oneway" => return vec![classified("publish-1", "quinn")],
        "shoal-connect-send" => return vec![classified("connect", "shoal-send")],
        _ => {}
    }
    if let Some(rest) = row.strip_prefix("quinn-fanout-") {
        let (n, last) = rest
            .strip_suffix("-last")
            .map_or((rest, ""), |n| (n, "-last"));
        if is_number(n) {
            return vec![classified(format!("publish-{n}{last}"), "quinn")];
        }
    }
    if let Some(p) = row.strip_prefix("quinn-batch-")
        && is_number(p)
    {
        return vec![
            classified(format!("pubsub-{p}"), "quinn"),
            classified(format!("p2p-{p}"), "quinn"),
        ];
    }
    classify_by_convention(row).into_iter().collect()
}

/// `<variant>-<kind>` as in the module docs.
fn classify_by_convention(row: &str) -> Option<Classified> {
    if let Some(rest) = row.strip_suffix("-last") {
        let (variant, n) = rest.rsplit_once("-publish-")?;
        return is_number(n).then(|| classified(format!("publish-{n}-last"), variant));
    }
    if let Some((variant, n)) = row.rsplit_once("-publish-")
        && is_number(n)
    {
        return Some(classified(format!("publish-{n}"), variant));
    }
    for pattern in ["pubsub", "p2p"] {
        if let Some((system, rest)) = row.split_once(&format!("-{pattern}-")) {
            let (mode, payload) = rest.rsplit_once('-').unwrap_or(("", rest));
            if !is_number(payload) || system.is_empty() {
                continue;
            }
            let variant = if mode.is_empty() {
                system.to_owned()
            } else {
                format!("{system}-{mode}")
            };
            return Some(classified(format!("{pattern}-{payload}"), variant));
        }
    }
    if let Some((variant, rate)) = row.rsplit_once("-at-") {
        let variant = variant.strip_suffix("-request").unwrap_or(variant);
        if !variant.is_empty() && rate_value(rate).is_some() {
            return Some(classified(format!("request-at-{rate}"), variant));
        }
    }
    for kind in ["request", "connect", "discover"] {
        if let Some(variant) = row.strip_suffix(&format!("-{kind}"))
            && !variant.is_empty()
        {
            return Some(classified(kind, variant));
        }
    }
    None
}

/// `"10k"` → 10000, `"2m"` → 2000000, `"1500"` → 1500 (see [`crate::measure::rate_label`]).
fn rate_value(label: &str) -> Option<u64> {
    let (digits, factor) = match label.as_bytes().last()? {
        b'k' => (&label[..label.len() - 1], 1_000),
        b'm' => (&label[..label.len() - 1], 1_000_000),
        _ => (label, 1),
    };
    is_number(digits).then(|| digits.parse::<u64>().ok().map(|n| n * factor))?
}

/// Sort key of a kind: the order of the table (request, publish, pubsub, p2p,
/// request-at, connect, discover; numbers ascending, `-last` after its plain row).
fn kind_order(kind: &str) -> (usize, u64, bool) {
    let last = kind.ends_with("-last");
    let base = kind.strip_suffix("-last").unwrap_or(kind);
    let number = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    if base == "request" {
        (0, 0, last)
    } else if let Some(n) = base.strip_prefix("publish-") {
        (1, number(n), last)
    } else if let Some(p) = base.strip_prefix("pubsub-") {
        (2, number(p), last)
    } else if let Some(p) = base.strip_prefix("p2p-") {
        (3, number(p), last)
    } else if let Some(r) = base.strip_prefix("request-at-") {
        (4, rate_value(r).unwrap_or(u64::MAX), last)
    } else if base == "connect" {
        (5, 0, last)
    } else {
        (6, 0, last)
    }
}

/// What a row measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A latency (round trip, one way, offered rate, set-up): p50 and p99 in ns.
    Latency {
        /// Median, ns.
        p50: u64,
        /// 99th percentile, ns.
        p99: u64,
    },
    /// A throughput, messages per second.
    Throughput(f64),
}

impl Value {
    /// Shoal's value divided by this one: `(p50, Some(p99))` for latencies, `(msgs/s, None)`
    /// for throughputs; `None` if the kinds of value differ or a divisor is zero.
    pub fn shoal_ratio(&self, shoal: &Self) -> Option<(f64, Option<f64>)> {
        match (shoal, self) {
            (Self::Latency { p50: s50, p99: s99 }, Self::Latency { p50, p99 })
                if *p50 > 0 && *p99 > 0 =>
            {
                Some((*s50 as f64 / *p50 as f64, Some(*s99 as f64 / *p99 as f64)))
            }
            (Self::Throughput(s), Self::Throughput(r)) if *r > 0.0 => Some((s / r, None)),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Latency { p50, p99 } => format!("{:.1} / {:.1} µs", us(*p50), us(*p99)),
            Self::Throughput(rate) => format!("{} msgs/s", thousands(*rate)),
        }
    }
}

/// One row in a kind's group.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The row's name.
    pub row: String,
    /// Its variant (see [`Classified`]).
    pub variant: String,
    /// The system, the variant's first segment.
    pub system: String,
    /// Floor, Shoal or rival.
    pub role: Role,
    /// What it measured.
    pub value: Value,
}

/// Every row of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct KindGroup {
    /// The kind, e.g. `"pubsub-1024"`.
    pub kind: String,
    /// Shoal's row first (if any), then the floors, the rivals, and Shoal's other variants.
    pub entries: Vec<Entry>,
}

impl KindGroup {
    /// Shoal's row of this kind (variant `shoal`), if it ran.
    pub fn shoal(&self) -> Option<&Entry> {
        self.entries
            .first()
            .filter(|e| e.role == Role::Shoal && e.variant == systems::SHOAL)
    }

    /// Shoal's ratio to `entry` (see [`Value::shoal_ratio`]); `None` for Shoal's own row or
    /// without one.
    pub fn ratio(&self, entry: &Entry) -> Option<(f64, Option<f64>)> {
        let shoal = self.shoal()?;
        if shoal.row == entry.row {
            return None;
        }
        entry.value.shoal_ratio(&shoal.value)
    }

    fn ratio_text(&self, entry: &Entry) -> String {
        match (self.ratio(entry), self.shoal()) {
            (Some((r, Some(r99))), _) => format!("x{r:.2} / x{r99:.2}"),
            (Some((r, None)), _) => format!("x{r:.3}"),
            (None, Some(shoal)) if shoal.row == entry.row => "(Shoal)".to_owned(),
            (None, _) => "-".to_owned(),
        }
    }
}

/// Groups rows by kind. `latency` takes the round-trip, one-way and set-up rows alike; rows
/// that fit no kind are left out. Kinds come in table order, and each group's entries in the
/// order described on [`KindGroup::entries`], otherwise as given.
pub fn build(
    latency: &[LatencyReport],
    rate: &[RateReport],
    throughput: &[ThroughputReport],
) -> Vec<KindGroup> {
    let latency_value = |r: &LatencyReport| Value::Latency {
        p50: r.p50,
        p99: r.p99,
    };
    let rows = latency
        .iter()
        .map(|r| (r.name.as_str(), latency_value(r)))
        .chain(rate.iter().map(|r| (r.name(), latency_value(&r.latency))))
        .chain(
            throughput
                .iter()
                .map(|r| (r.name.as_str(), Value::Throughput(r.msgs_per_sec))),
        );
    let mut groups: Vec<KindGroup> = Vec::new();
    for (row, value) in rows {
        for Classified { kind, variant } in classify(row) {
            let system = variant.split('-').next().unwrap_or_default().to_owned();
            let role = systems::find(&system).map_or(Role::Rival, |s| s.role);
            let entry = Entry {
                row: row.to_owned(),
                variant,
                system,
                role,
                value,
            };
            match groups.iter_mut().find(|g| g.kind == kind) {
                Some(group) => group.entries.push(entry),
                None => groups.push(KindGroup {
                    kind,
                    entries: vec![entry],
                }),
            }
        }
    }
    for group in &mut groups {
        // Stable: keeps the given order within each rank.
        group.entries.sort_by_key(|e| match e.role {
            Role::Shoal if e.variant == systems::SHOAL => 0,
            Role::Floor => 1,
            Role::Rival => 2,
            Role::Shoal => 3,
        });
    }
    groups.sort_by(|a, b| {
        kind_order(&a.kind)
            .cmp(&kind_order(&b.kind))
            .then_with(|| a.kind.cmp(&b.kind))
    });
    groups
}

#[cfg(test)]
mod tests;
