//! Comparing the structure of two documents: channels, operations, messages, replies,
//! content types, correlation ids, and each message's payload and headers.

use std::collections::BTreeMap;

use serde_json::Value;

use super::document::{Index, MessageKey, escape};
use super::rules::{Rule, Usage};
use super::schema::SchemaDiff;
use super::{Change, Level};

/// Collects the changes between two indexed documents.
pub(crate) struct Compare<'a, 'b> {
    old: &'b Index<'a>,
    new: &'b Index<'a>,
    usages: BTreeMap<MessageKey, Usage>,
    pub(crate) changes: Vec<Change>,
}

impl<'a, 'b> Compare<'a, 'b> {
    pub(crate) fn new(old: &'b Index<'a>, new: &'b Index<'a>) -> Self {
        // A message's direction is taken from both documents: a change that breaks either
        // way it was (or is) used counts.
        let mut usages = old.usages();
        for (key, usage) in new.usages() {
            let entry = usages.entry(key).or_default();
            entry.received |= usage.received;
            entry.sent |= usage.sent;
        }
        Self {
            old,
            new,
            usages,
            changes: Vec::new(),
        }
    }

    fn push(&mut self, rule: Rule, usage: Usage, location: String, message: String) {
        self.changes.push(Change {
            level: rule.level(usage),
            rule,
            location,
            message,
            allowed: false,
        });
    }

    fn fixed(&mut self, rule: Rule, location: String, message: String) {
        self.push(rule, Usage::default(), location, message);
    }

    pub(crate) fn run(&mut self) {
        self.channels();
        self.operations();
        self.version();
    }

    fn channels(&mut self) {
        let (old, new) = (self.old, self.new);
        for (key, channel) in &old.channels {
            let at = format!("channels/{}", escape(key));
            let Some(now) = new.channels.get(key) else {
                self.fixed(Rule::ChannelRemoved, at, format!("channel `{key}` removed"));
                continue;
            };
            if channel.address != now.address {
                let message = format!(
                    "address of `{key}` was {}, is now {}",
                    channel.address, now.address
                );
                self.fixed(Rule::AddressChanged, format!("{at}/address"), message);
            }
            for (m, message) in &channel.messages {
                let at = format!("{at}/messages/{}", escape(m));
                match now.messages.get(m) {
                    None => self.fixed(
                        Rule::MessageRemoved,
                        at,
                        format!("message `{m}` removed from channel `{key}`"),
                    ),
                    Some(current) => {
                        let usage = self
                            .usages
                            .get(&(key.clone(), m.clone()))
                            .copied()
                            .unwrap_or_default();
                        self.message(message, current, usage, &at);
                    }
                }
            }
            for m in now.messages.keys() {
                if !channel.messages.contains_key(m) {
                    self.fixed(
                        Rule::MessageAdded,
                        format!("{at}/messages/{}", escape(m)),
                        format!("message `{m}` added to channel `{key}`"),
                    );
                }
            }
        }
        for key in new.channels.keys() {
            if !old.channels.contains_key(key) {
                let at = format!("channels/{}", escape(key));
                self.fixed(Rule::ChannelAdded, at, format!("channel `{key}` added"));
            }
        }
    }

    /// Reports `new` as newly deprecated if it is and `old` was not.
    fn deprecation(&mut self, old: &Value, new: &Value, at: &str, what: &str) {
        let deprecated = |v: &Value| {
            ["deprecated", "x-shoal-deprecated"]
                .iter()
                .any(|k| v.get(k) == Some(&Value::Bool(true)))
        };
        if deprecated(new) && !deprecated(old) {
            self.fixed(
                Rule::Deprecated,
                at.to_owned(),
                format!("{what} is now deprecated"),
            );
        }
    }

    fn message(&mut self, old: &'a Value, new: &'a Value, usage: Usage, at: &str) {
        self.deprecation(old, new, at, "the message");
        let content_type = |index: &Index<'a>, m: &'a Value| {
            m.get("contentType")
                .and_then(Value::as_str)
                .or(index.default_content_type)
                .unwrap_or("(none)")
                .to_owned()
        };
        let (was, is) = (content_type(self.old, old), content_type(self.new, new));
        if was != is {
            let message = format!("content type was {was}, is now {is}");
            self.fixed(
                Rule::ContentTypeChanged,
                format!("{at}/contentType"),
                message,
            );
        }
        let correlation = |index: &Index<'a>, m: &'a Value| {
            m.get("correlationId")
                .and_then(|c| index.doc.resolve(c).ok())
                .map(|c| c.get("location").unwrap_or(c).clone())
        };
        if let Some(was) = correlation(self.old, old) {
            let is = correlation(self.new, new);
            if is.as_ref() != Some(&was) {
                let is = is.map_or("none".to_owned(), |v| v.to_string());
                let message = format!("correlation id was at {was}, is now {is}");
                self.fixed(
                    Rule::CorrelationIdChanged,
                    format!("{at}/correlationId"),
                    message,
                );
            }
        }
        for part in ["payload", "headers"] {
            let (Some(o), Some(n)) = (old.get(part), new.get(part)) else {
                if old.get(part).is_some() != new.get(part).is_some() && part == "payload" {
                    let message = "payload schema added or removed".to_owned();
                    self.fixed(Rule::SchemaNotCompared, format!("{at}/{part}"), message);
                }
                continue;
            };
            let path = format!("{at}/{part}");
            let (o, n) = match (json_schema(o), json_schema(n)) {
                (Some(o), Some(n)) => (o, n),
                _ => {
                    if o != n {
                        let message =
                            "the schema is not JSON Schema (schemaFormat); not compared".to_owned();
                        self.fixed(Rule::SchemaNotCompared, path, message);
                    }
                    continue;
                }
            };
            let mut diff = SchemaDiff::new(self.old.doc, self.new.doc);
            diff.compare(o, n, &path);
            for finding in diff.findings {
                self.push(finding.rule, usage, finding.location, finding.message);
            }
        }
    }

    fn operations(&mut self) {
        let (old, new) = (self.old, self.new);
        for (key, op) in &old.operations {
            let at = format!("operations/{}", escape(key));
            let Some(now) = new.operations.get(key) else {
                self.fixed(
                    Rule::OperationRemoved,
                    at,
                    format!("operation `{key}` removed"),
                );
                continue;
            };
            if let (Some(was), Some(is)) = (old.raw_operation(key), new.raw_operation(key)) {
                self.deprecation(was, is, &at, "the operation");
            }
            if op.action != now.action {
                let message = format!(
                    "action was {}, is now {}",
                    op.action.as_deref().unwrap_or("none"),
                    now.action.as_deref().unwrap_or("none")
                );
                self.fixed(Rule::ActionChanged, format!("{at}/action"), message);
            }
            if op.channel != now.channel {
                let message = format!(
                    "channel was `{}`, is now `{}`",
                    op.channel.as_deref().unwrap_or("none"),
                    now.channel.as_deref().unwrap_or("none")
                );
                self.fixed(
                    Rule::OperationChannelChanged,
                    format!("{at}/channel"),
                    message,
                );
            }
            self.listed(&op.messages, &now.messages, &format!("{at}/messages"));
            match (&op.reply, &now.reply) {
                (Some(_), None) => self.fixed(
                    Rule::ReplyRemoved,
                    format!("{at}/reply"),
                    format!("operation `{key}` no longer replies"),
                ),
                (None, Some(_)) => self.fixed(
                    Rule::ReplyAdded,
                    format!("{at}/reply"),
                    format!("operation `{key}` now replies"),
                ),
                (Some(was), Some(is)) => {
                    if was.address != is.address {
                        let message =
                            format!("reply address was {}, is now {}", was.address, is.address);
                        self.fixed(
                            Rule::ReplyAddressChanged,
                            format!("{at}/reply/address"),
                            message,
                        );
                    }
                    self.listed(&was.messages, &is.messages, &format!("{at}/reply/messages"));
                }
                (None, None) => {}
            }
        }
        for key in new.operations.keys() {
            if !old.operations.contains_key(key) {
                let at = format!("operations/{}", escape(key));
                self.fixed(Rule::OperationAdded, at, format!("operation `{key}` added"));
            }
        }
    }

    /// Messages an operation or reply lists, old against new.
    fn listed(
        &mut self,
        old: &std::collections::BTreeSet<MessageKey>,
        new: &std::collections::BTreeSet<MessageKey>,
        at: &str,
    ) {
        for (c, m) in old.difference(new) {
            let message = format!("no longer lists message `{m}` of channel `{c}`");
            self.fixed(Rule::MessageRemoved, at.to_owned(), message);
        }
        for (c, m) in new.difference(old) {
            let message = format!("now lists message `{m}` of channel `{c}`");
            self.fixed(Rule::MessageAdded, at.to_owned(), message);
        }
    }

    /// A breaking change should come with a new major version (semantic versioning).
    fn version(&mut self) {
        let breaking = self.changes.iter().any(|c| c.level == Level::Breaking);
        let major = |v: Option<&str>| {
            v.and_then(|v| {
                v.trim_start_matches('v')
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        };
        if let (true, Some(was), Some(is)) =
            (breaking, major(self.old.version), major(self.new.version))
            && is <= was
        {
            let message = format!(
                "breaking changes, but info.version went from {} to {} (same major version)",
                self.old.version.unwrap_or_default(),
                self.new.version.unwrap_or_default()
            );
            self.fixed(Rule::MajorVersionNotBumped, "info/version".into(), message);
        }
    }
}

/// The JSON Schema of a payload or headers: the schema itself, or the `schema` of a
/// multi-format schema whose `schemaFormat` is AsyncAPI's own or JSON Schema. `None` for
/// other formats (Avro, Protobuf, RAML...).
fn json_schema(value: &Value) -> Option<&Value> {
    let Some(format) = value.get("schemaFormat") else {
        return Some(value);
    };
    let format = format.as_str()?.to_ascii_lowercase();
    let readable = format.contains("vnd.aai.asyncapi")
        || format.contains("schema+json")
        || format.contains("schema+yaml");
    if readable { value.get("schema") } else { None }
}
