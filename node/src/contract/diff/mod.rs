//! The breaking-change check: compares two AsyncAPI 3.0 documents (any, not only Shoal's
//! own) and reports each change with a [`Level`] under a [`Rule`].
//!
//! It is **direction-aware**. Messages the service *receives* (receive operations, and
//! replies to its requests) must stay backward compatible: new code reads what old senders
//! send, so a new required field, a narrowed type, a tighter enum or constraint, a closed
//! model, or a field removed from a closed model breaks. Messages it *sends* must stay forward compatible: old receivers read what new
//! code sends, so a removed field, a required field made optional, a widened type or a new
//! enum value breaks. Removing a channel, an operation, a message version or a reply, or
//! changing an address or content type, breaks; adding any of them does not. A rename is a
//! removal plus an addition.
//!
//! ```
//! use serde_json::json;
//! use shoal::contract::diff::{Level, Rule, diff};
//!
//! let old = json!({
//!     "asyncapi": "3.0.0", "info": {"title": "orders", "version": "1.0.0"},
//!     "channels": {"orders": {"address": "orders", "messages": {"PlaceOrder": {
//!         "payload": {"type": "object", "properties": {"id": {"type": "string"}}}}}}},
//!     "operations": {"place": {"action": "receive", "channel": {"$ref": "#/channels/orders"}}}
//! });
//! let mut new = old.clone();
//! let payload = &mut new["channels"]["orders"]["messages"]["PlaceOrder"]["payload"];
//! payload["properties"]["coupon"] = json!({"type": "string"});
//! payload["required"] = json!(["coupon"]);
//!
//! let report = diff(&old, &new)?;
//! assert!(report.has_breaking());
//! let change = &report.changes[0];
//! assert_eq!((change.level, change.rule), (Level::Breaking, Rule::RequiredFieldAdded));
//! # Ok::<(), shoal::Error>(())
//! ```

mod allowlist;
mod document;
mod render;
mod rules;
mod schema;
mod shape;
mod structure;

use std::path::Path;

use serde_json::Value;

pub use self::allowlist::Allowlist;
pub use self::rules::{Level, Rule};
use crate::Error;

/// One change between two documents.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// How serious it is, given the message's direction.
    pub level: Level,
    /// The rule that caught it.
    pub rule: Rule,
    /// Where: a JSON pointer into the document, without the leading `/`
    /// (`channels/commands.orders/messages/orders.PlaceOrder.v2/payload/properties/note`).
    pub location: String,
    /// What changed, in words.
    pub message: String,
    /// Whether an allowlist entry accepted it (it then fails nothing).
    pub allowed: bool,
}

/// The changes between two documents, most serious first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Every change found.
    pub changes: Vec<Change>,
    /// Allowlist entries that matched no change (stale: remove them).
    pub unused_allowances: Vec<String>,
}

impl Report {
    /// How many changes of `level` are not allowlisted.
    pub fn count(&self, level: Level) -> usize {
        self.changes
            .iter()
            .filter(|c| c.level == level && !c.allowed)
            .count()
    }

    /// Whether any breaking change is not allowlisted (`shoal spec diff` then exits 1).
    pub fn has_breaking(&self) -> bool {
        self.count(Level::Breaking) > 0
    }

    /// Marks the changes `allowlist` accepts as allowed, and records its entries that
    /// matched nothing.
    pub fn allow(&mut self, allowlist: &Allowlist) {
        self.unused_allowances = allowlist.apply(&mut self.changes);
    }
}

/// Compares `old` with `new`, two AsyncAPI 3.x documents as JSON values.
pub fn diff(old: &Value, new: &Value) -> Result<Report, Error> {
    check_version(old, "old")?;
    check_version(new, "new")?;
    let (old, new) = (document::Index::new(old), document::Index::new(new));
    let mut compare = structure::Compare::new(&old, &new);
    compare.run();
    let mut changes = compare.changes;
    changes.sort_by(|a, b| {
        b.level
            .cmp(&a.level)
            .then_with(|| a.location.cmp(&b.location))
            .then_with(|| a.rule.cmp(&b.rule))
    });
    changes.dedup();
    Ok(Report {
        changes,
        unused_allowances: Vec::new(),
    })
}

/// Reads a document from JSON or YAML text; `name` names it in errors.
pub fn parse_document(text: &str, name: &str) -> Result<Value, Error> {
    let trimmed = text.trim_start();
    let parsed = if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        serde_norway::from_str(text).map_err(|e| e.to_string())
    };
    let doc = parsed.map_err(|reason| Error::Spec {
        document: name.to_owned(),
        reason: format!("not JSON or YAML: {reason}"),
    })?;
    check_version(&doc, name)?;
    Ok(doc)
}

/// Reads a document from a JSON or YAML file.
pub fn load_document(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_document(&text, &path.display().to_string())
}

fn check_version(doc: &Value, name: &str) -> Result<(), Error> {
    match doc.get("asyncapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.") => Ok(()),
        Some(v) => Err(Error::Spec {
            document: name.to_owned(),
            reason: format!("AsyncAPI {v}; the check reads AsyncAPI 3.x documents"),
        }),
        None => Err(Error::Spec {
            document: name.to_owned(),
            reason: "not an AsyncAPI document (no `asyncapi` version field)".into(),
        }),
    }
}

#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod tests;
