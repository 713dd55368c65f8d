//! [`Contract`]: what makes a Rust type a typed message.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::MessageKind;

/// A typed message: a serde type with a message name, a major version and a kind.
///
/// Implement it with `#[derive(shoal::Contract)]` and a `#[shoal(...)]` attribute:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use shoal::contract::{Contract, schemars::JsonSchema};
///
/// /// Places an order (doc comments become the schema's description).
/// #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// #[shoal(name = "orders.PlaceOrder", version = 2, kind = "command", key = "customer")]
/// struct PlaceOrder {
///     order_id: String,
///     customer: String,
///     /// Added in v2: optional, so v1 senders need not send it.
///     #[serde(default)]
///     note: Option<String>,
/// }
///
/// assert_eq!((PlaceOrder::NAME, PlaceOrder::VERSION), ("orders.PlaceOrder", 2));
/// let order = PlaceOrder { order_id: "o-1".into(), customer: "c-7".into(), note: None };
/// assert_eq!(order.partition_key().as_deref(), Some("c-7"));
/// ```
///
/// **Versions.** `VERSION` is the *major* version: compatible changes (an optional field
/// added, a field the receiver does not read removed) keep it, and readers stay tolerant
/// (serde ignores unknown fields unless told `deny_unknown_fields`; give new fields
/// `#[serde(default)]` or make them `Option`). An incompatible change is a new major version:
/// a new type with the same `NAME`, served side by side with the old one (see
/// [`TypedNode::upcast`](crate::contract::TypedNode::upcast)).
pub trait Contract: Serialize + DeserializeOwned + JsonSchema + Send + 'static {
    /// The message type's name, the same in every version (e.g. `orders.PlaceOrder`).
    const NAME: &'static str;
    /// The major version, from 1.
    const VERSION: u16;
    /// Command, event, document or reply.
    const KIND: MessageKind;

    /// The field whose value is the partition key, if any (`#[shoal(key = "field")]`), for
    /// the document (`x-shoal-partition-key`).
    const KEY_FIELD: Option<&'static str> = None;

    /// The partition key of this message, if messages like it must be handled in order per
    /// key ([`crate::Message::with_key`]). `#[shoal(key = "field")]` takes a field's value.
    fn partition_key(&self) -> Option<String> {
        None
    }
}

/// Which version of which message type a value is: what handlers are dispatched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageRef {
    /// The message type's name.
    pub name: &'static str,
    /// Its major version.
    pub version: u16,
}

impl MessageRef {
    /// The message type `T`.
    pub fn of<T: Contract>() -> Self {
        Self {
            name: T::NAME,
            version: T::VERSION,
        }
    }
}

impl std::fmt::Display for MessageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// A message type as a contract holds it: its identity, and how to write its schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MessageType {
    pub(crate) id: MessageRef,
    pub(crate) kind: MessageKind,
    pub(crate) key_field: Option<&'static str>,
    /// The JSON Schema of the payload, from the generator's settings (which say draft-07 and
    /// whether it describes serialising or deserialising).
    pub(crate) schema: fn(&mut SchemaGenerator) -> Schema,
}

impl MessageType {
    pub(crate) fn of<T: Contract>() -> Self {
        Self {
            id: MessageRef::of::<T>(),
            kind: T::KIND,
            key_field: T::KEY_FIELD,
            schema: |generator| generator.root_schema_for::<T>(),
        }
    }
}

/// The lower-case name of a kind, as contracts and documents spell it.
pub(crate) fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Command => "command",
        MessageKind::Event => "event",
        MessageKind::Document => "document",
        MessageKind::Reply => "reply",
        _ => "message",
    }
}
