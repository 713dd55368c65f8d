//! An AsyncAPI 3.0 document, indexed for comparison: channels with their messages,
//! operations with their messages and replies, `$ref`s followed within the document.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::rules::Usage;

/// The longest chain of `$ref`s followed before giving up (a loop, or a silly document).
const MAX_REF_HOPS: usize = 32;

/// A message's place: its channel's key and its key in that channel.
pub(crate) type MessageKey = (String, String);

/// One document, with `$ref` resolution.
#[derive(Clone, Copy)]
pub(crate) struct Doc<'a> {
    pub(crate) root: &'a Value,
}

impl<'a> Doc<'a> {
    /// `value`, or what its `$ref` (chain) points to. `Err` names a reference that leads
    /// outside the document or nowhere.
    pub(crate) fn resolve(&self, mut value: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..MAX_REF_HOPS {
            let Some(target) = value.get("$ref").and_then(Value::as_str) else {
                return Ok(value);
            };
            value = self
                .pointer(target)
                .ok_or_else(|| format!("`$ref: {target}` does not lead into this document"))?;
        }
        Err(format!("more than {MAX_REF_HOPS} `$ref`s in a row"))
    }

    fn pointer(&self, reference: &str) -> Option<&'a Value> {
        let fragment = reference.strip_prefix('#')?;
        if fragment.is_empty() {
            return Some(self.root);
        }
        self.root.pointer(fragment)
    }

    /// `value` resolved, or `Null` if its reference is broken.
    fn resolved(&self, value: &'a Value) -> &'a Value {
        self.resolve(value).unwrap_or(&Value::Null)
    }
}

/// A channel: its address and messages (resolved).
pub(crate) struct Channel<'a> {
    pub(crate) address: &'a Value,
    pub(crate) messages: BTreeMap<String, &'a Value>,
}

/// An operation.
pub(crate) struct Operation {
    pub(crate) action: Option<String>,
    pub(crate) channel: Option<String>,
    pub(crate) messages: BTreeSet<MessageKey>,
    pub(crate) reply: Option<Reply>,
}

/// An operation's reply.
pub(crate) struct Reply {
    pub(crate) address: Value,
    pub(crate) messages: BTreeSet<MessageKey>,
}

/// What the comparison needs of a document.
pub(crate) struct Index<'a> {
    pub(crate) doc: Doc<'a>,
    pub(crate) version: Option<&'a str>,
    pub(crate) default_content_type: Option<&'a str>,
    pub(crate) channels: BTreeMap<String, Channel<'a>>,
    pub(crate) operations: BTreeMap<String, Operation>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(root: &'a Value) -> Self {
        let doc = Doc { root };
        let mut channels = BTreeMap::new();
        for (key, channel) in entries(root.get("channels")) {
            let channel = doc.resolved(channel);
            let messages = entries(channel.get("messages"))
                .map(|(k, m)| (k.clone(), doc.resolved(m)))
                .collect();
            let address = channel.get("address").unwrap_or(&Value::Null);
            channels.insert(key.clone(), Channel { address, messages });
        }
        let mut index = Self {
            doc,
            version: root.pointer("/info/version").and_then(Value::as_str),
            default_content_type: root.get("defaultContentType").and_then(Value::as_str),
            channels,
            operations: BTreeMap::new(),
        };
        for (key, operation) in entries(root.get("operations")) {
            let operation = doc.resolved(operation);
            let op = index.operation(operation);
            index.operations.insert(key.clone(), op);
        }
        index
    }

    fn operation(&self, operation: &'a Value) -> Operation {
        let channel = operation.get("channel").and_then(channel_key);
        let messages = self.message_keys(operation.get("messages"), channel.as_deref());
        let reply = operation.get("reply").map(|reply| {
            let reply = self.doc.resolved(reply);
            let reply_channel = reply.get("channel").and_then(channel_key);
            let address = reply
                .get("address")
                .map(|a| self.doc.resolved(a))
                .map_or(Value::Null, |a| a.get("location").unwrap_or(a).clone());
            Reply {
                address,
                messages: self.message_keys(reply.get("messages"), reply_channel.as_deref()),
            }
        });
        Operation {
            action: operation
                .get("action")
                .and_then(Value::as_str)
                .map(str::to_owned),
            channel,
            messages,
            reply,
        }
    }

    /// The messages an operation (or reply) lists: `#/channels/C/messages/M` references,
    /// or every message of its channel when it lists none.
    fn message_keys(&self, list: Option<&Value>, channel: Option<&str>) -> BTreeSet<MessageKey> {
        let Some(list) = list.and_then(Value::as_array) else {
            return channel
                .and_then(|c| self.channels.get(c).map(|ch| (c, ch)))
                .map(|(c, ch)| {
                    ch.messages
                        .keys()
                        .map(|m| (c.to_owned(), m.clone()))
                        .collect()
                })
                .unwrap_or_default();
        };
        list.iter()
            .filter_map(|m| m.get("$ref").and_then(Value::as_str))
            .map(|r| message_ref_key(r, channel))
            .collect()
    }

    /// The operation `key` as written (resolved).
    pub(crate) fn raw_operation(&self, key: &str) -> Option<&'a Value> {
        let operation = self.doc.root.get("operations")?.get(key)?;
        self.doc.resolve(operation).ok()
    }

    /// Which way each message travels, by the operations of this document.
    pub(crate) fn usages(&self) -> BTreeMap<MessageKey, Usage> {
        let mut usages: BTreeMap<MessageKey, Usage> = BTreeMap::new();
        for op in self.operations.values() {
            let receive = op.action.as_deref() == Some("receive");
            for m in &op.messages {
                let usage = usages.entry(m.clone()).or_default();
                if receive {
                    usage.received = true;
                } else {
                    usage.sent = true;
                }
            }
            for m in op.reply.iter().flat_map(|r| &r.messages) {
                let usage = usages.entry(m.clone()).or_default();
                if receive {
                    usage.sent = true;
                } else {
                    usage.received = true;
                }
            }
        }
        usages
    }
}

/// The key/value pairs of an object (none for anything else).
pub(crate) fn entries(value: Option<&Value>) -> impl Iterator<Item = (&String, &Value)> {
    value.and_then(Value::as_object).into_iter().flatten()
}

/// `#/channels/C` → `C`.
fn channel_key(reference: &Value) -> Option<String> {
    let target = reference.get("$ref")?.as_str()?;
    let segments = segments(target);
    match segments.as_slice() {
        [channels, key] if channels == "channels" => Some(key.clone()),
        _ => Some(target.to_owned()),
    }
}

/// `#/channels/C/messages/M` → `(C, M)`; any other reference is kept whole, under the
/// operation's channel.
fn message_ref_key(reference: &str, channel: Option<&str>) -> MessageKey {
    let segments = segments(reference);
    match segments.as_slice() {
        [channels, c, messages, m] if channels == "channels" && messages == "messages" => {
            (c.clone(), m.clone())
        }
        _ => (channel.unwrap_or("?").to_owned(), reference.to_owned()),
    }
}

/// The decoded segments of a `#/a/b` reference.
fn segments(reference: &str) -> Vec<String> {
    reference
        .strip_prefix("#/")
        .unwrap_or(reference)
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// A JSON pointer segment, escaped.
pub(crate) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
