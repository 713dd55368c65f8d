//! The AsyncAPI 3.0 document of a [`ServiceContract`], written from the service's own point
//! of view.
//!
//! - **Channels.** `commands.<service>` is a service's command channel (address: the
//!   service's name, `x-shoal-delivery: point-to-point`): one for the service itself, one
//!   for each service it sends to. `replies.<service>` holds the replies to requests of
//!   that channel (address `null`: each reply goes to its request's return address).
//!   `events.<topic>` is a topic or subscription pattern (`x-shoal-delivery:
//!   publish-subscribe`).
//! - **Messages** are keyed `<name>.v<major>` (in a channel that carries one both ways, the
//!   second way's key is `<name>.v<major>.received` or `.sent`), with `contentType`, a JSON
//!   Schema draft-07 payload (for reading, on messages the service receives; for writing,
//!   on messages it sends), `correlationId` on requests and replies, the `shoal-message`
//!   header on events, and `x-shoal-version`, `x-shoal-kind`, `x-shoal-partition-key` and
//!   `x-shoal-deprecated`.
//! - **Operations**, one per declared message and version: `receive.<name>.v<major>`
//!   (accepted, with a `reply` whose address is `$message.header#/reply_to`),
//!   `send.<service>.<name>.v<major>`, `publish.<name>.v<major>` and
//!   `subscribe.<name>.v<major>` (with `x-shoal-group`, or `x-shoal-every-instance`).

mod schemas;

use serde_json::{Map, Value, json};

pub(crate) use self::schemas::Direction;
use self::schemas::Schemas;
use crate::Group;
use crate::contract::codec::Codec;
use crate::contract::message::{MessageRef, MessageType, kind_name};
use crate::contract::service::{Entry, Role, ServiceContract};
use crate::error::Error;

/// The AsyncAPI version written.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

impl ServiceContract {
    /// The AsyncAPI 3.0 document of this contract, as JSON (see [`crate::contract`] for its
    /// layout). Fails if the contract is invalid ([`ServiceContract::validate`]).
    pub fn asyncapi(&self) -> Result<Value, Error> {
        self.validate()?;
        let mut doc = Document {
            contract: self,
            channels: Map::new(),
            operations: Map::new(),
            messages: Map::new(),
            uses: Vec::new(),
            schemas: Schemas::default(),
        };
        for entry in &self.entries {
            doc.add(entry)?;
        }
        Ok(doc.finish())
    }

    /// [`asyncapi`](Self::asyncapi) as pretty-printed JSON, the canonical form, with a final
    /// newline.
    pub fn asyncapi_json(&self) -> Result<String, Error> {
        let doc = self.asyncapi()?;
        let mut text = serde_json::to_string_pretty(&doc)
            .map_err(|e| Error::Contract(format!("the document did not serialise: {e}")))?;
        text.push('\n');
        Ok(text)
    }

    /// [`asyncapi`](Self::asyncapi) as YAML.
    pub fn asyncapi_yaml(&self) -> Result<String, Error> {
        to_yaml(&self.asyncapi()?)
    }
}

/// A JSON document as YAML.
pub fn to_yaml(doc: &Value) -> Result<String, Error> {
    serde_norway::to_string(doc)
        .map_err(|e| Error::Contract(format!("the document did not serialise as YAML: {e}")))
}

/// Channel and operation keys: the characters AsyncAPI allows in component keys, with a
/// pattern's wildcards spelt out (`orders.*` becomes `orders._`, `orders.>` `orders.__`).
fn key(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c.to_string(),
            '*' => "_".into(),
            '>' => "__".into(),
            _ => "-".into(),
        })
        .collect()
}

fn message_key(id: MessageRef) -> String {
    key(&format!("{}.v{}", id.name, id.version))
}

fn reference(pointer: &str) -> Value {
    json!({ "$ref": format!("#/{pointer}") })
}

struct Document<'a> {
    contract: &'a ServiceContract,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    messages: Map<String, Value>,
    /// The component written for each use of a message type: one per codec and direction
    /// (a type sent as CBOR and received as JSON has two).
    uses: Vec<((MessageRef, Codec, Direction), String)>,
    schemas: Schemas,
}

/// What a message is in one operation.
struct Use {
    direction: Direction,
    correlation: Option<&'static str>,
    event: bool,
    deprecated: bool,
}

impl Document<'_> {
    fn add(&mut self, entry: &Entry) -> Result<(), Error> {
        let service = self.contract.service.clone();
        let codec = entry.codec(self.contract);
        let id = entry.message.id;
        let (direction, reply_direction) = match entry.role {
            Role::Accepts | Role::Subscribes { .. } => (Direction::Receive, Direction::Send),
            Role::Sends { .. } | Role::Publishes { .. } => (Direction::Send, Direction::Receive),
        };
        let request = Use {
            direction,
            correlation: entry.reply.map(|_| "$message.header#/id"),
            event: matches!(entry.role, Role::Publishes { .. } | Role::Subscribes { .. }),
            deprecated: entry.deprecated,
        };
        let (channel, operation_key, action, mut extensions) = match &entry.role {
            Role::Accepts => (
                self.command_channel(&service)?,
                format!("receive.{}", message_key(id)),
                "receive",
                Map::new(),
            ),
            Role::Sends { service: to } => (
                self.command_channel(to)?,
                format!("send.{}.{}", key(to), message_key(id)),
                "send",
                Map::new(),
            ),
            Role::Publishes { topic } => (
                self.event_channel(topic)?,
                format!("publish.{}", message_key(id)),
                "send",
                Map::new(),
            ),
            Role::Subscribes { pattern, group } => {
                let mut ext = Map::new();
                match group {
                    Group::Service => {
                        ext.insert("x-shoal-group".into(), json!(service));
                    }
                    Group::Named(name) => {
                        ext.insert("x-shoal-group".into(), json!(name));
                    }
                    Group::EveryInstance => {
                        ext.insert("x-shoal-every-instance".into(), json!(true));
                    }
                }
                (
                    self.event_channel(pattern)?,
                    format!("subscribe.{}", message_key(id)),
                    "receive",
                    ext,
                )
            }
        };
        let message = self.message(&channel, &entry.message, codec, &request);
        let mut operation = Map::new();
        operation.insert("action".into(), json!(action));
        operation.insert("channel".into(), reference(&format!("channels/{channel}")));
        operation.insert("title".into(), json!(format!("{action} {id}")));
        operation.insert("messages".into(), json!([message]));
        if let Some(reply) = &entry.reply {
            let target = match &entry.role {
                Role::Sends { service: to } => to.clone(),
                _ => service.clone(),
            };
            let reply_channel = self.reply_channel(&target)?;
            let reply_use = Use {
                direction: reply_direction,
                correlation: Some("$message.header#/correlation_id"),
                event: false,
                // The operation says it; one reply type may answer several requests.
                deprecated: false,
            };
            let reply_message = self.message(&reply_channel, reply, codec, &reply_use);
            operation.insert(
                "reply".into(),
                json!({
                    "address": {
                        "description": "The requester's return address (its service and node).",
                        "location": "$message.header#/reply_to",
                    },
                    "channel": reference(&format!("channels/{reply_channel}")),
                    "messages": [reply_message],
                }),
            );
        }
        if entry.deprecated {
            extensions.insert("x-shoal-deprecated".into(), json!(true));
        }
        operation.extend(extensions);
        self.operations
            .insert(key(&operation_key), Value::Object(operation));
        Ok(())
    }

    /// Adds `message` to `channel` (and the components) once; returns the operation's
    /// reference to it.
    fn message(
        &mut self,
        channel: &str,
        message: &MessageType,
        codec: Codec,
        usage: &Use,
    ) -> Value {
        let key = message_key(message.id);
        let this_use = (message.id, codec, usage.direction);
        let component = match self.uses.iter().find(|(u, _)| *u == this_use) {
            Some((_, component)) => component.clone(),
            None if !self.uses.iter().any(|((id, _, _), _)| *id == message.id) => key.clone(),
            None => {
                let direction = way(usage.direction);
                let codec_name = codec.content_type().trim_start_matches("application/");
                format!("{key}.{direction}.{codec_name}")
            }
        };
        if !self.messages.contains_key(&component) {
            self.uses.push((this_use, component.clone()));
            let pointer = format!("/components/messages/{component}/payload");
            let payload = self.schemas.payload(message, usage.direction, &pointer);
            let mut object = Map::new();
            object.insert("name".into(), json!(message.id.name));
            object.insert("title".into(), json!(message.id.to_string()));
            if let Some(text) = payload.get("description").and_then(Value::as_str) {
                object.insert("summary".into(), json!(first_line(text)));
            }
            object.insert("contentType".into(), json!(codec.content_type()));
            if usage.event {
                object.insert("headers".into(), event_headers(message.id));
            }
            object.insert("payload".into(), payload);
            if let Some(location) = usage.correlation {
                object.insert("correlationId".into(), json!({ "location": location }));
            }
            object.insert("x-shoal-version".into(), json!(message.id.version));
            object.insert("x-shoal-kind".into(), json!(kind_name(message.kind)));
            if let Some(field) = message.key_field {
                object.insert("x-shoal-partition-key".into(), json!(field));
            }
            if usage.deprecated {
                object.insert("x-shoal-deprecated".into(), json!(true));
            }
            self.messages
                .insert(component.clone(), Value::Object(object));
        }
        let target = reference(&format!("components/messages/{component}"));
        let Some(messages) = self
            .channels
            .get_mut(channel)
            .and_then(|c| c.get_mut("messages"))
            .and_then(Value::as_object_mut)
        else {
            return reference(&format!("channels/{channel}/messages/{key}"));
        };
        // One message type both sent and received on one channel (an event the service
        // publishes and subscribes to) has two schemas, one to write and one to read: the
        // second use gets its own key, `<name>.v<major>.received` (or `.sent`).
        let direction = way(usage.direction);
        let channel_key = [key.clone(), format!("{key}.{direction}"), component]
            .into_iter()
            .find(|k| messages.get(k).is_none_or(|m| *m == target))
            .unwrap_or(key);
        messages.insert(channel_key.clone(), target);
        reference(&format!("channels/{channel}/messages/{channel_key}"))
    }

    fn command_channel(&mut self, service: &str) -> Result<String, Error> {
        let description = if service == self.contract.service {
            "Commands and documents to this service, each handled by one of its instances."
                .to_owned()
        } else {
            format!("Commands and documents to `{service}`, each handled by one of its instances.")
        };
        self.channel(
            format!("commands.{}", key(service)),
            json!({
                "address": service,
                "description": description,
                "messages": {},
                "x-shoal-delivery": "point-to-point",
                "x-shoal-service": service,
            }),
        )
    }

    fn reply_channel(&mut self, service: &str) -> Result<String, Error> {
        self.channel(
            format!("replies.{}", key(service)),
            json!({
                "address": null,
                "description": format!(
                    "Replies to requests to `{service}`, sent to each request's return address."
                ),
                "messages": {},
                "x-shoal-delivery": "reply",
            }),
        )
    }

    fn event_channel(&mut self, topic: &str) -> Result<String, Error> {
        self.channel(
            format!("events.{}", key(topic)),
            json!({
                "address": topic,
                "description": "Events on this topic, a copy to each subscriber group.",
                "messages": {},
                "x-shoal-delivery": "publish-subscribe",
            }),
        )
    }

    /// Adds a channel once; two addresses that map to one key are an error.
    fn channel(&mut self, key: String, channel: Value) -> Result<String, Error> {
        match self.channels.get(&key) {
            Some(existing) if existing.get("address") != channel.get("address") => {
                Err(Error::Contract(format!(
                    "`{}` and `{}` both become channel `{key}` in the document; rename one",
                    existing["address"], channel["address"]
                )))
            }
            Some(_) => Ok(key),
            None => {
                self.channels.insert(key.clone(), channel);
                Ok(key)
            }
        }
    }

    fn finish(self) -> Value {
        let contract = self.contract;
        let mut info = Map::new();
        info.insert("title".into(), json!(contract.service));
        info.insert("version".into(), json!(contract.version));
        if let Some(text) = &contract.description {
            info.insert("description".into(), json!(text));
        }
        info.insert("x-shoal-service".into(), json!(contract.service));
        let mut components = Map::new();
        components.insert("messages".into(), Value::Object(self.messages));
        if !self.schemas.components.is_empty() {
            components.insert("schemas".into(), Value::Object(self.schemas.components));
        }
        json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": contract.codec.content_type(),
            "channels": self.channels,
            "operations": self.operations,
            "components": components,
        })
    }
}

/// The headers schema of a typed event.
fn event_headers(id: MessageRef) -> Value {
    json!({
        "type": "object",
        "properties": {
            "shoal-message": {
                "description": "The message type (an event's name is its topic).",
                "const": id.name,
            },
            "shoal-versions": {
                "description": "Set when several versions of one event are published \
                                together: the versions, comma-separated.",
                "type": "string",
            },
        },
    })
}

/// `received` or `sent`, as message keys say it.
fn way(direction: Direction) -> &'static str {
    match direction {
        Direction::Receive => "received",
        Direction::Send => "sent",
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim()
}
