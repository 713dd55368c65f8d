//! # Shoal: a brokerless messaging mesh, embedded in each service
//!
//! Every service links this crate and starts a [`Node`]. Nodes connect to each other directly
//! over QUIC with mutual TLS (every node holds a certificate from the mesh's own CA), and
//! deliver messages point-to-point with acknowledgements, retries, a dedup window and
//! dead letters, as request/response, or as events to every subscriber group, in order per
//! partition key.
//!
//! ```
//! use std::time::Duration;
//! use shoal::{MeshCa, Message, Node};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One CA for the mesh; one certificate per service instance.
//! let ca = MeshCa::generate("example mesh")?;
//!
//! let pricing = Node::builder("pricing").identity(ca.issue("pricing")?).trust(ca.clone()).start().await?;
//! pricing.handle("quote", |msg: Message| async move {
//!     Ok(format!("price for {} is 25", String::from_utf8_lossy(msg.payload())))
//! });
//!
//! let shop = Node::builder("shop")
//!     .identity(ca.issue("shop")?)
//!     .trust(ca.clone())
//!     .peer(pricing.local_addr()) // static peer; mDNS discovery finds peers on a LAN
//!     .start()
//!     .await?;
//! let reply = shop.request("pricing", Message::command("quote", "book"), Duration::from_secs(5)).await?;
//! assert_eq!(reply.payload(), "price for book is 25");
//!
//! let receipt = shop.send("pricing", Message::command("quote", "pen")).await?; // resolves on ack
//! assert_eq!(receipt.attempts, 1);

//! // Events: every subscriber group (by default, the subscribing service) handles each once.
//! pricing.subscribe("order.*", |event: Message| async move { Ok(()) }).await?;
//! shop.wait_for_subscribers("order.created", 1, Duration::from_secs(5)).await?;
//! let published = shop.publish(Message::event("order.created", "order-42").with_key("customer-7")).await?;
//! assert_eq!(published.deliveries[0].group.as_deref(), Some("pricing"));
//! shop.shutdown().await;
//! pricing.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`core`](self) (private): the decisions, as plain data structures without IO: the dedup
//!   window, the retry schedule, the choice of instance (rendezvous hashing for keys), topic
//!   matching and the audiences of an event.
//! - `peer`, `net`, `inbound`, `outbound` (private): one QUIC connection per peer, the handshake,
//!   the reader that runs handlers, the send loop with retries.
//! - `subscribe`, `publish`, `ordering` (private): subscriptions and their propagation to peers,
//!   the fan-out of one event to its audiences, the per-key turns of keyed messages.
//! - [`Node`] and [`NodeBuilder`]: the public handle and its configuration; `inspect`
//!   (private) holds what a node tells about its peers and itself.
//! - [`Identity`] and [`MeshCa`]: certificates; [`RevocationList`] and [`Revocations`]: revoked
//!   ones. `tls` and `cert_lifecycle` (private) hold the TLS material every handshake reads,
//!   which [`Node::reload_tls`] swaps while the node runs.
//! - [`policy`]: who may send what to which service, publish and subscribe to which topics.
//!
//! ## Delivery guarantees
//! At-least-once: [`Node::send`] resolves only after the receiver's handler finished. Retries
//! carry the same [`MessageId`], and each receiver's dedup window acks a redelivery again
//! without running the handler. A message is handled twice only if an instance crashed after
//! its handler ran but before its ack left, and the retry went to another instance: handlers
//! should be idempotent or check [`Message::is_redelivery`].

mod builder;
mod cert_lifecycle;
mod config;
#[cfg(feature = "contracts")]
pub mod contract;
mod core;
mod dead_letter;
mod diagnose;
mod error;
mod event;
mod handler;
mod handling;
mod identity;
mod inbound;
mod inspect;
mod message;
mod net;
mod node;
mod ordering;
mod outbound;
#[cfg(feature = "outbox")]
pub mod outbox;
mod peer;
pub mod policy;
mod publish;
mod registry;
mod stats;
mod subscribe;
mod sync;
mod tls;

// `::shoal` paths (what `#[derive(Contract)]` writes) resolve inside this crate too.
#[cfg(feature = "contracts")]
extern crate self as shoal;

pub use builder::NodeBuilder;
#[cfg(feature = "contracts")]
pub use contract::Contract;
pub use core::retry::RetryPolicy;
pub use dead_letter::DeadLetter;
pub use diagnose::{AnnouncedInstance, ServiceDiagnosis};
pub use error::Error;
pub use event::NodeEvent;
pub use handler::{HandlerError, IntoReply};
pub use identity::{CertSerial, CertificateInfo, Identity, MeshCa, RevocationList, Revocations};
pub use message::Message;
#[cfg(feature = "outbox")]
pub(crate) use node::WeakNode;
pub use node::{Node, PeerInfo, Receipt};
pub use outbound::SendOptions;
pub use policy::Policy;
pub use publish::{EventDelivery, MAX_BATCH_EVENTS, PublishOptions, PublishReceipt, Reliability};
pub use shoal_discovery as discovery;
/// Derives [`Contract`](trait@Contract): `#[derive(shoal::Contract)]` with
/// `#[shoal(name = "...", version = N, kind = "command")]` (see [`contract`]).
#[cfg(feature = "contracts")]
pub use shoal_macros::Contract;
pub use shoal_proto::{Limits, MessageId, MessageKind, NodeId, ReturnAddress};
pub use stats::NodeStats;
pub use subscribe::{Group, SubscribeOptions, Subscription};
