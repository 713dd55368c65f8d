//! A [`Report`] as text for people and as JSON for tools.

use serde_json::json;

use super::Report;
use super::rules::Level;

impl Report {
    /// One line per change (level, rule, location, what), then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let allowed = if c.allowed { " (allowed)" } else { "" };
            out.push_str(&format!(
                "{:<8} {:<27} {}: {}{allowed}\n",
                c.level.name(),
                c.rule.id(),
                c.location,
                c.message
            ));
        }
        for entry in &self.unused_allowances {
            out.push_str(&format!("note: allowlist entry matched nothing: {entry}\n"));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// `2 breaking, 0 warnings, 5 info (1 allowed)`, or `no changes`.
    pub fn summary(&self) -> String {
        if self.changes.is_empty() {
            return "no changes".into();
        }
        let allowed = self.changes.iter().filter(|c| c.allowed).count();
        let mut text = format!(
            "{} breaking, {} warning(s), {} info",
            self.count(Level::Breaking),
            self.count(Level::Warning),
            self.count(Level::Info)
        );
        if allowed > 0 {
            text.push_str(&format!(" ({allowed} allowed)"));
        }
        text
    }

    /// The report as JSON: counts (not counting allowed changes), every change, and the
    /// allowlist entries that matched nothing.
    pub fn to_json(&self) -> serde_json::Value {
        let changes: Vec<_> = self
            .changes
            .iter()
            .map(|c| {
                json!({
                    "level": c.level.name(),
                    "rule": c.rule.id(),
                    "location": c.location,
                    "message": c.message,
                    "allowed": c.allowed,
                })
            })
            .collect();
        json!({
            "breaking": self.count(Level::Breaking),
            "warnings": self.count(Level::Warning),
            "info": self.count(Level::Info),
            "changes": changes,
            "unused_allowances": self.unused_allowances,
        })
    }
}
