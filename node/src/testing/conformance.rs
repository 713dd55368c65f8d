//! [`Conformance`]: checks messages against a service's AsyncAPI document: the message must
//! be one the document declares for where it was seen, and its payload must satisfy the
//! declared JSON Schema (validated with the `jsonschema` crate, draft-07 as AsyncAPI's
//! payloads are, `$ref`s resolved inside the document).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::recording::Channel;
use crate::sync::lock;
use crate::{Error, Message};

/// Where a message was seen, from the service's point of view.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Seen<'a> {
    /// The service published it on `topic`.
    Published(&'a str),
    /// The service sent it to `service`.
    SentTo(&'a str),
    /// The service answered request `request` (version `version`) with it.
    Replied(&'a str, u16),
    /// The service received it (a command or document sent to it).
    Received,
}

/// A service's AsyncAPI 3 document, ready to check messages against (see
/// [`TestMesh::check_conformance`](super::TestMesh::check_conformance) and
/// [`Pact::verify`](super::Pact::verify)).
///
/// ```
/// # #[cfg(feature = "contracts")] {
/// use serde::{Deserialize, Serialize};
/// use shoal::contract::{ServiceContract, schemars::JsonSchema};
/// use shoal::testing::Conformance;
///
/// #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// #[shoal(name = "invoice.Created", version = 1, kind = "event")]
/// struct InvoiceCreated { order: String, cents: u64 }
///
/// let contract = ServiceContract::new("invoice", "1.0.0").publishes::<InvoiceCreated>("invoice.created");
/// let conformance = Conformance::of(&contract)?;
/// let good = shoal::Message::event("invoice.created", r#"{"order":"o-1","cents":250}"#)
///     .with_header("shoal-message", "invoice.Created");
/// assert!(conformance.check_published("invoice.created", &good).is_ok());
/// let bad = shoal::Message::event("invoice.created", r#"{"order":"o-1"}"#)
///     .with_header("shoal-message", "invoice.Created");
/// let why = conformance.check_published("invoice.created", &bad).unwrap_err();
/// assert!(why.contains("cents"), "{why}");
/// # }
/// # Ok::<(), shoal::Error>(())
/// ```
pub struct Conformance {
    doc: Value,
    service: String,
    /// Validators by the pointer of their message component (and strictness).
    validators: Mutex<HashMap<(String, bool), Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for Conformance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conformance")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Conformance {
    /// The document of `contract` (see [`ServiceContract::asyncapi`](crate::contract::ServiceContract::asyncapi)).
    #[cfg(feature = "contracts")]
    pub fn of(contract: &crate::contract::ServiceContract) -> Result<Self, Error> {
        Self::from_document(contract.asyncapi()?)
    }

    /// A document read from JSON or YAML text (a committed `asyncapi.json`, or what
    /// `--print-spec` printed).
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let doc = serde_json::from_str(text).map_err(|e| spec_error(&e.to_string()))?;
        Self::from_document(doc)
    }

    /// A document as JSON. Fails unless it is AsyncAPI 3.
    pub fn from_document(doc: Value) -> Result<Self, Error> {
        let version = doc.get("asyncapi").and_then(Value::as_str).unwrap_or("");
        if !version.starts_with("3.") {
            return Err(spec_error(&format!(
                "not an AsyncAPI 3 document (asyncapi: {version:?})"
            )));
        }
        let service = doc
            .pointer("/info/x-shoal-service")
            .or_else(|| doc.pointer("/info/title"))
            .and_then(Value::as_str)
            .unwrap_or("the service")
            .to_owned();
        Ok(Self {
            doc,
            service,
            validators: Mutex::default(),
        })
    }

    /// Checks an event the service published on `topic`.
    pub fn check_published(&self, topic: &str, msg: &Message) -> Result<(), String> {
        self.check_message(Seen::Published(topic), msg)
    }

    /// Checks a message the probe recorded.
    pub(crate) fn check(&self, channel: &Channel, msg: &Message) -> Result<(), String> {
        let seen = match channel {
            Channel::Published { topic } => Seen::Published(topic),
            Channel::Sent { to } => Seen::SentTo(to),
            Channel::Reply { request, version } => Seen::Replied(request, *version),
        };
        self.check_message(seen, msg)
    }

    fn check_message(&self, seen: Seen<'_>, msg: &Message) -> Result<(), String> {
        // An event's type is in its header; a command's is its name; a reply has none.
        let name = match seen {
            Seen::Published(_) => msg.header("shoal-message"),
            Seen::SentTo(_) | Seen::Received => Some(msg.name()),
            Seen::Replied(..) => None,
        };
        let version = match seen {
            Seen::Replied(..) => None,
            _ => Some(msg.version()),
        };
        let components = self.components(seen, name, version);
        let Some(first) = components.first() else {
            return Err(self.not_declared(seen, name.unwrap_or(msg.name()), msg.version()));
        };
        let content_type = match msg.content_type() {
            "" => self.content_type(first),
            declared => declared.to_owned(),
        };
        let payload = decode(&content_type, msg.payload())?;
        self.validate_any(&components, &payload, false)
    }

    /// Validates `payload` against the payload schema of any of `components`.
    pub(crate) fn validate_any(
        &self,
        components: &[String],
        payload: &Value,
        strict: bool,
    ) -> Result<(), String> {
        let mut first_error = None;
        for pointer in components {
            let validator = self.validator(pointer, strict)?;
            let errors: Vec<String> = validator
                .iter_errors(payload)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            if errors.is_empty() {
                return Ok(());
            }
            first_error.get_or_insert_with(|| {
                let name = pointer.rsplit('/').next().unwrap_or(pointer);
                format!("the payload does not fit {name}: {}", errors.join("; "))
            });
        }
        Err(first_error.unwrap_or_else(|| "nothing to check against".into()))
    }

    /// The pointers of the message components declared for `seen`, of type `name` (any if
    /// `None`) and version `version` (any if `None`).
    pub(crate) fn components(
        &self,
        seen: Seen<'_>,
        name: Option<&str>,
        version: Option<u16>,
    ) -> Vec<String> {
        let fits = |pointer: &String| {
            let c = self.doc.pointer(pointer);
            let field = |key| c.and_then(|c| c.get(key));
            name.is_none_or(|n| field("name").and_then(Value::as_str) == Some(n))
                && version.is_none_or(|v| {
                    field("x-shoal-version").and_then(Value::as_u64) == Some(u64::from(v))
                })
        };
        let mut found: Vec<String> = Vec::new();
        for op in self.operations() {
            let action = op.get("action").and_then(Value::as_str);
            let channel = op.get("channel").and_then(|c| self.resolve(c));
            let field = |key| {
                channel
                    .as_ref()
                    .and_then(|(_, c)| c.get(key))
                    .and_then(Value::as_str)
            };
            let messages = self.message_refs(op.get("messages"));
            let candidates = match seen {
                Seen::Published(topic) => {
                    let on_topic = field("x-shoal-delivery") == Some("publish-subscribe")
                        && field("address") == Some(topic);
                    if action == Some("send") && on_topic {
                        messages
                    } else {
                        continue;
                    }
                }
                Seen::SentTo(service) => {
                    let to = field("x-shoal-delivery") == Some("point-to-point")
                        && field("address") == Some(service);
                    if action == Some("send") && to {
                        messages
                    } else {
                        continue;
                    }
                }
                Seen::Received => {
                    let own = field("x-shoal-delivery") == Some("point-to-point");
                    if action == Some("receive") && own {
                        messages
                    } else {
                        continue;
                    }
                }
                Seen::Replied(request, request_version) => {
                    let answers = action == Some("receive")
                        && messages.iter().any(|p| {
                            let c = self.doc.pointer(p);
                            c.and_then(|c| c.get("name")).and_then(Value::as_str) == Some(request)
                                && c.and_then(|c| c.get("x-shoal-version"))
                                    .and_then(Value::as_u64)
                                    == Some(u64::from(request_version))
                        });
                    if !answers {
                        continue;
                    }
                    self.message_refs(op.get("reply").and_then(|r| r.get("messages")))
                }
            };
            for pointer in candidates {
                if fits(&pointer) && !found.contains(&pointer) {
                    found.push(pointer);
                }
            }
        }
        found
    }

    fn operations(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.doc
            .get("operations")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|ops| ops.values())
            .filter_map(Value::as_object)
    }

    /// The pointers of the components a list of message references ends at.
    fn message_refs(&self, list: Option<&Value>) -> Vec<String> {
        list.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| self.resolve(m).map(|(pointer, _)| pointer))
            .collect()
    }

    /// Follows `$ref`s (inside the document) from `value`; the pointer and value it ends at.
    fn resolve<'a>(&'a self, value: &'a Value) -> Option<(String, &'a Value)> {
        let mut pointer = String::new();
        let mut here = value;
        for _ in 0..8 {
            let Some(target) = here.get("$ref").and_then(Value::as_str) else {
                return Some((pointer, here));
            };
            pointer = target.strip_prefix('#')?.to_owned();
            here = self.doc.pointer(&pointer)?;
        }
        None
    }

    /// The content type declared for a component (or the document's default).
    pub(crate) fn content_type(&self, pointer: &str) -> String {
        self.doc
            .pointer(pointer)
            .and_then(|c| c.get("contentType"))
            .or_else(|| self.doc.get("defaultContentType"))
            .and_then(Value::as_str)
            .unwrap_or("application/json")
            .to_owned()
    }

    fn not_declared(&self, seen: Seen<'_>, name: &str, version: u16) -> String {
        let service = &self.service;
        match seen {
            Seen::Published(topic) => {
                format!("`{service}`'s document publishes no {name} v{version} on `{topic}`")
            }
            Seen::SentTo(to) => {
                format!("`{service}`'s document sends no {name} v{version} to `{to}`")
            }
            Seen::Replied(request, v) => {
                format!("`{service}`'s document declares no reply to {request} v{v}")
            }
            Seen::Received => format!("`{service}`'s document accepts no {name} v{version}"),
        }
    }

    /// A validator for the payload of the component at `pointer`. The schema is the whole
    /// document with a root `$ref` to the payload, so the payload's own `$ref`s into the
    /// document resolve; draft-07 ignores the document's other keys. `strict`: objects that
    /// do not say otherwise take no properties they do not declare (for consumers' examples,
    /// see [`Pact`](super::Pact)).
    fn validator(&self, pointer: &str, strict: bool) -> Result<Arc<jsonschema::Validator>, String> {
        let key = (pointer.to_owned(), strict);
        if let Some(v) = lock(&self.validators).get(&key) {
            return Ok(Arc::clone(v));
        }
        let mut schema = self.doc.clone();
        if strict && let Some(components) = schema.get_mut("components") {
            for group in ["messages", "schemas"] {
                if let Some(Value::Object(items)) = components.get_mut(group) {
                    for item in items.values_mut() {
                        match item.get_mut("payload") {
                            Some(payload) => close_objects(payload),
                            None => close_objects(item),
                        }
                    }
                }
            }
        }
        if let Value::Object(root) = &mut schema {
            root.insert("$ref".into(), Value::from(format!("#{pointer}/payload")));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .build(&schema)
            .map_err(|e| format!("the schema at {pointer} does not compile: {e}"))?;
        let validator = Arc::new(validator);
        lock(&self.validators).insert(key, Arc::clone(&validator));
        Ok(validator)
    }
}

fn spec_error(reason: &str) -> Error {
    Error::Conformance(format!("the AsyncAPI document: {reason}"))
}

/// A payload as JSON, read by its content type.
pub(crate) fn decode(content_type: &str, payload: &[u8]) -> Result<Value, String> {
    match content_type {
        "application/json" => serde_json::from_slice(payload)
            .map_err(|e| format!("the payload is not the JSON its content type says: {e}")),
        #[cfg(feature = "contracts")]
        "application/cbor" => ciborium::from_reader(payload)
            .map_err(|e| format!("the payload is not the CBOR its content type says: {e}")),
        other => Err(format!(
            "the payload is `{other}`, which the kit cannot read (JSON; CBOR with the \
             `contracts` feature)"
        )),
    }
}

/// Makes every object schema under `schema` refuse properties it does not declare, unless it
/// says what to do with them.
fn close_objects(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    if map.get("properties").is_some_and(Value::is_object)
        && !map.contains_key("additionalProperties")
    {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties", "patternProperties", "definitions", "$defs"] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            children.values_mut().for_each(close_objects);
        }
    }
    for key in ["items", "additionalProperties", "not", "if", "then", "else"] {
        match map.get_mut(key) {
            Some(Value::Array(children)) => children.iter_mut().for_each(close_objects),
            Some(child) => close_objects(child),
            None => {}
        }
    }
    // Not `allOf`: its branches describe one object together, each naming only some of its
    // properties.
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(children)) = map.get_mut(key) {
            children.iter_mut().for_each(close_objects);
        }
    }
}
