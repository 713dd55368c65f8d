//! [`Allowlist`]: breaking changes accepted on purpose.

use std::path::Path;

use super::Change;
use super::rules::Rule;
use crate::Error;

/// Changes accepted on purpose: they are reported, marked allowed, and fail nothing.
///
/// The file has one entry per line, `RULE LOCATION`, with `#` comments:
///
/// ```text
/// # v1 of PlaceOrder is retired in 3.0.0 (announced in 2.1.0)
/// message-removed   channels/commands.orders/messages/orders.PlaceOrder.v1
/// operation-removed operations/receive.orders.PlaceOrder.v1
/// *                 channels/replies.orders/*      # any rule, anything under this prefix
/// ```
///
/// `RULE` is a rule id ([`Rule::id`]) or `*`; `LOCATION` is a change's location as the report
/// prints it, or a prefix of it followed by `*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    rule: Option<Rule>,
    location: String,
    prefix: bool,
    text: String,
}

impl Entry {
    fn matches(&self, change: &Change) -> bool {
        self.rule.is_none_or(|r| r == change.rule)
            && if self.prefix {
                change.location.starts_with(&self.location)
            } else {
                change.location == self.location
            }
    }
}

impl Allowlist {
    /// Parses an allowlist; `name` names it in errors. An unknown rule id is an error (a typo
    /// would otherwise allow nothing, silently).
    pub fn parse(text: &str, name: &str) -> Result<Self, Error> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let bad = |reason: String| Error::Spec {
                document: name.to_owned(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let mut words = content.split_whitespace();
            let (Some(rule), Some(location), None) = (words.next(), words.next(), words.next())
            else {
                return Err(bad(format!("expected `RULE LOCATION`, found `{content}`")));
            };
            let rule = match rule {
                "*" => None,
                id => Some(Rule::from_id(id).ok_or_else(|| bad(format!("unknown rule `{id}`")))?),
            };
            let (location, prefix) = match location.strip_suffix('*') {
                Some(prefix) => (prefix.to_owned(), true),
                None => (location.to_owned(), false),
            };
            entries.push(Entry {
                rule,
                location,
                prefix,
                text: content.to_owned(),
            });
        }
        Ok(Self { entries })
    }

    /// Reads an allowlist file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Marks the changes an entry matches as allowed; returns the entries that matched none.
    pub(crate) fn apply(&self, changes: &mut [Change]) -> Vec<String> {
        let mut used = vec![false; self.entries.len()];
        for change in changes.iter_mut() {
            for (entry, used) in self.entries.iter().zip(used.iter_mut()) {
                if entry.matches(change) {
                    change.allowed = true;
                    *used = true;
                }
            }
        }
        self.entries
            .iter()
            .zip(used)
            .filter(|(_, used)| !used)
            .map(|(entry, _)| entry.text.clone())
            .collect()
    }
}
