//! [`Pact`]: the example messages a consumer relies on, kept in a file beside its tests, in
//! the manner of Pact message contracts; the provider's tests check that its contract
//! accepts each ([`Pact::verify`]).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::conformance::{Conformance, Seen};
use crate::{Error, Message};

/// What a consumer does with an example message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "interaction", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Interaction {
    /// It subscribes to these events, which the provider publishes on `topic`.
    Event {
        /// The topic.
        topic: String,
    },
    /// It sends these commands (or documents) to the provider.
    Command,
    /// It gets these replies to its request `request` (version `request_version`).
    Reply {
        /// The request's message type.
        request: String,
        /// The request's version.
        request_version: u16,
    },
}

/// One example message a consumer relies on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// What it shows, for people (`an order with two lines`).
    pub description: String,
    /// How the consumer meets it.
    #[serde(flatten)]
    pub interaction: Interaction,
    /// Its message type (`orders.OrderPlaced`).
    pub message: String,
    /// Its major version.
    pub version: u16,
    /// The payload, as JSON (a CBOR payload has the same JSON form).
    pub payload: Value,
}

impl Example {
    /// The example as a message, to feed the consumer's own handlers in its tests: JSON, with
    /// its type and version (an event is named by its topic and carries the
    /// `shoal-message` header).
    pub fn to_message(&self) -> Message {
        let body = self.payload.to_string();
        let msg = match &self.interaction {
            Interaction::Event { topic } => {
                Message::event(topic.clone(), body).with_header("shoal-message", &self.message)
            }
            Interaction::Command => Message::command(self.message.clone(), body),
            Interaction::Reply { .. } => Message::document(self.message.clone(), body),
        };
        msg.with_version(self.version)
            .with_content_type("application/json")
    }
}

/// The examples one consumer relies on from one provider: written by the consumer's tests
/// (and committed), read by the provider's, which [`verify`](Self::verify) them against the
/// provider's document. A provider change that drops or retypes a field a consumer reads, or
/// stops accepting a command a consumer sends, fails the provider's build, not the
/// consumer's production.
///
/// What is checked, for each example:
/// - an **event** or a **reply** (the provider writes it): the provider's document declares
///   it where the example says, and its schema for it accepts the payload *strictly*: every
///   property the consumer's example has must be one the provider declares (objects that
///   say nothing of other properties take none), so a consumer cannot rely on a field the
///   provider does not promise;
/// - a **command** (the consumer writes it): the provider accepts that type and version,
///   and its schema accepts the payload (unknown fields are fine: readers are tolerant).
///
/// ```
/// use shoal::testing::Pact;
///
/// let pact = Pact::new("billing", "orders").event(
///     "an order of one chair",
///     "order.placed",
///     "orders.OrderPlaced",
///     1,
///     serde_json::json!({ "order_id": "o-1", "item": "chair", "quantity": 1 }),
/// );
/// let text = pact.to_json();
/// assert_eq!(Pact::from_json(&text).unwrap(), pact);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pact {
    /// The consumer's service name.
    pub consumer: String,
    /// The provider's service name.
    pub provider: String,
    /// The examples.
    pub messages: Vec<Example>,
}

impl Pact {
    /// No examples yet.
    pub fn new(consumer: impl Into<String>, provider: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            provider: provider.into(),
            messages: Vec::new(),
        }
    }

    /// Adds an event the consumer subscribes to.
    pub fn event(
        self,
        description: &str,
        topic: &str,
        message: &str,
        version: u16,
        payload: Value,
    ) -> Self {
        let topic = topic.to_owned();
        self.with(
            description,
            Interaction::Event { topic },
            message,
            version,
            payload,
        )
    }

    /// Adds a command the consumer sends.
    pub fn command(self, description: &str, message: &str, version: u16, payload: Value) -> Self {
        self.with(description, Interaction::Command, message, version, payload)
    }

    /// Adds a reply the consumer gets to its request `request` v`request_version`.
    pub fn reply(
        self,
        description: &str,
        (request, request_version): (&str, u16),
        message: &str,
        version: u16,
        payload: Value,
    ) -> Self {
        let interaction = Interaction::Reply {
            request: request.to_owned(),
            request_version,
        };
        self.with(description, interaction, message, version, payload)
    }

    /// Adds a typed example: `value` of type `T`, met as `interaction`.
    #[cfg(feature = "contracts")]
    pub fn typed<T: crate::contract::Contract>(
        self,
        description: &str,
        interaction: Interaction,
        value: &T,
    ) -> Result<Self, Error> {
        let payload = serde_json::to_value(value).map_err(|e| Error::Payload {
            message: format!("{} v{}", T::NAME, T::VERSION),
            reason: e.to_string(),
        })?;
        Ok(self.with(description, interaction, T::NAME, T::VERSION, payload))
    }

    fn with(
        mut self,
        description: &str,
        interaction: Interaction,
        message: &str,
        version: u16,
        payload: Value,
    ) -> Self {
        self.messages.push(Example {
            description: description.to_owned(),
            interaction,
            message: message.to_owned(),
            version,
            payload,
        });
        self
    }

    /// The pact as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// A pact from its JSON.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| Error::Conformance(format!("a pact file: {e}")))
    }

    /// Reads a pact file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| Error::Conformance(format!("{}: {e}", path.display())))
    }

    /// Writes the pact file (creating its folder).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, self.to_json()).map_err(io)
    }

    /// Checks every example against the provider's document (see the type's docs); fails
    /// with [`Error::Conformance`] naming each example the provider breaks and why.
    pub fn verify(&self, provider: &Conformance) -> Result<(), Error> {
        let failures: Vec<String> = self
            .messages
            .iter()
            .filter_map(|example| {
                check(provider, example).err().map(|why| {
                    format!(
                        "{} relies on \"{}\" ({} v{}): {why}",
                        self.consumer, example.description, example.message, example.version
                    )
                })
            })
            .collect();
        if failures.is_empty() {
            return Ok(());
        }
        Err(Error::Conformance(format!(
            "`{}` breaks {} example(s) of `{}`:\n{}",
            self.provider,
            failures.len(),
            self.consumer,
            failures.join("\n")
        )))
    }
}

/// Checks one example against the provider's document.
fn check(provider: &Conformance, example: &Example) -> Result<(), String> {
    let (seen, strict) = match &example.interaction {
        Interaction::Event { topic } => (Seen::Published(topic), true),
        Interaction::Command => (Seen::Received, false),
        Interaction::Reply {
            request,
            request_version,
        } => (Seen::Replied(request, *request_version), true),
    };
    let components = provider.components(seen, Some(&example.message), Some(example.version));
    if components.is_empty() {
        let what = match &example.interaction {
            Interaction::Event { topic } => format!("publishes it on `{topic}`"),
            Interaction::Command => "accepts it".to_owned(),
            Interaction::Reply {
                request,
                request_version,
            } => format!("answers {request} v{request_version} with it"),
        };
        return Err(format!("the provider's document no longer {what}"));
    }
    provider.validate_any(&components, &example.payload, strict)
}
