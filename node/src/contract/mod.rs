//! Typed contracts: typed messages with versions over the byte API, an AsyncAPI 3.0 document
//! written from the code, and a breaking-change check between two documents (feature
//! `contracts`).
//!
//! # Declare
//! A message type is a serde type with a name, a major version and a kind
//! ([`Contract`], derived with `#[derive(shoal::Contract)]`). A service's API is a
//! [`ServiceContract`]: what it accepts (and replies), publishes, subscribes to and sends.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use shoal::contract::{ServiceContract, schemars::JsonSchema};
//!
//! #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
//! #[shoal(name = "orders.PlaceOrder", version = 2, kind = "command")]
//! struct PlaceOrder { order_id: String, #[serde(default)] note: Option<String> }
//!
//! #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
//! #[shoal(name = "orders.OrderAccepted", version = 2, kind = "reply")]
//! struct OrderAccepted { order_id: String }
//!
//! #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
//! #[shoal(name = "orders.OrderPlaced", version = 1, kind = "event", key = "order_id")]
//! struct OrderPlaced { order_id: String }
//!
//! let contract = ServiceContract::new("orders", "1.4.0")
//!     .accepts::<PlaceOrder>().replies::<OrderAccepted>()
//!     .publishes::<OrderPlaced>("order.placed");
//! let doc = contract.asyncapi()?;                   // AsyncAPI 3.0, JSON
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert!(doc["operations"]["receive.orders.PlaceOrder.v2"]["reply"].is_object());
//! # Ok::<(), shoal::Error>(())
//! ```
//!
//! # Serve
//! [`Node::typed`](crate::Node::typed) binds the contract to a node: a [`TypedNode`] with
//! typed `handle`, `subscribe`, `send`, `request` and `publish`. Handlers are dispatched on
//! (message name, major version); a message no handler takes, or whose payload does not
//! decode, is refused with a permanent nack that says why (the sender dead-letters it) and is
//! counted in [`TypedNode::stats`]. Readers are tolerant: unknown fields are ignored, missing
//! optional fields take their defaults.
//!
//! # Evolve
//! Additive changes keep the major version. A breaking change is a new type with the same
//! name and the next version; serve both side by side (a handler each, or
//! [`TypedNode::upcast`] the old one into the new one's handler), and during a deprecation
//! window publish both versions in one call ([`TypedNode::publish`] with a tuple).
//!
//! # Check
//! [`ServiceContract::asyncapi_json`] writes the document; a service binary prints it with
//! [`print_spec_if_asked`] (`--print-spec`). [`diff::diff`] (and `shoal spec diff OLD NEW`)
//! compares two AsyncAPI 3.0 documents, direction-aware, and reports breaking changes.

mod codec;
pub mod diff;
mod message;
mod print;
mod service;
mod spec;
mod typed;

/// The schemars crate, re-exported: derive `JsonSchema` with the version this crate uses.
pub use schemars;

pub use self::codec::Codec;
pub use self::message::{Contract, MessageRef};
pub use self::print::{PRINT_SPEC_ARG, print_spec_from, print_spec_if_asked};
pub use self::service::ServiceContract;
pub use self::spec::{ASYNCAPI_VERSION, to_yaml};
pub use self::typed::{
    ContractStats, MESSAGE_HEADER, TypedNode, TypedReply, VERSIONS_HEADER, Version, Versions,
};
#[cfg(feature = "testing")]
pub(crate) use self::typed::{encode, finish};

#[cfg(test)]
mod tests;
