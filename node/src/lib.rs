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
//! Dependencies point one way: the public API → [`runtime`](self) → the engine and the
//! transport, which never import each other.
//! - `engine` (private): the delivery protocol as a deterministic state machine, in the
//!   manner of `quinn-proto`: no tokio, no quinn, no clock (time is passed in), no task.
//!   Frames, calls and handler outcomes go in; frames to write, handlers to run, callers to
//!   complete, dead letters, events and the next deadline come out. It owns the dedup window,
//!   the kept replies, retries, routing, topic matching, fan-out, key turns and
//!   subscriptions, and is tested on a simulated network with loss, duplication, reordering
//!   and a virtual clock.
//! - `transport` (private): quinn and the codec: accepting, dialling, the hello exchange,
//!   each connection's reader and writer, close codes.
//! - `runtime` (private): the only place that sees both: it holds the engine under a lock,
//!   feeds it tokio's time, runs handlers, wakes callers, writes what an idle connection has
//!   at once (or wakes its writer when more may join), and drives the timer; while the
//!   node's messages travel in batches (and after every message with
//!   [`NodeBuilder::busy_poll`]), it keeps the runtime polling for input for a while.
//! - [`Node`], [`NodeBuilder`], [`Message`], options, receipts, [`Error`], [`NodeEvent`],
//!   [`NodeStats`]: the public API. [`Identity`] and [`MeshCa`]: certificates.
//! - [`Identity`] and [`MeshCa`]: certificates; [`RevocationList`] and [`Revocations`]: revoked
//!   ones. `tls` and `cert_lifecycle` (private) hold the TLS material every handshake reads,
//!   which [`Node::reload_tls`] swaps while the node runs.
//! - `metrics` (feature `metrics`): Prometheus metrics, served by the node or registered
//!   into the service's own registry.
//! - [`policy`]: who may send what to which service, publish and subscribe to which topics.
//! - `testing` (feature `testing`): a black-box test kit for services built on Shoal: a test
//!   mesh on loopback with a recording probe, expectations that wait on events instead of
//!   sleeps, seeded faults, crashes, contract conformance. Its module docs have a runnable
//!   example.
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
mod dead_letter;
mod diagnose;
mod discovered;
mod engine;
mod error;
mod event;
mod handler;
mod identity;
mod inspect;
mod message;
#[cfg(feature = "metrics")]
pub mod metrics;
mod node;
mod options;
#[cfg(feature = "outbox")]
pub mod outbox;
pub mod policy;
mod publish;
mod receipts;
mod runtime;
mod stats;
mod subscribe;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod trace;
mod transport;

// `::shoal` paths (what `#[derive(Contract)]` writes) resolve inside this crate too.
#[cfg(feature = "contracts")]
extern crate self as shoal;

pub use builder::NodeBuilder;
#[cfg(feature = "contracts")]
pub use contract::Contract;
pub use dead_letter::DeadLetter;
pub use diagnose::{AnnouncedInstance, ServiceDiagnosis};
pub use discovered::DiscoveredInstance;
pub use engine::retry::RetryPolicy;
pub use error::{BacklogLimit, Error, MulticastProblem};
pub use event::{FallbackReason, NodeEvent};
pub use handler::{HandlerError, IntoReply};
pub use identity::{CertSerial, CertificateInfo, Identity, MeshCa, RevocationList, Revocations};
pub use message::Message;
#[cfg(feature = "metrics")]
pub use metrics::MetricsConfig;
pub use node::Node;
#[cfg(feature = "outbox")]
pub(crate) use node::WeakNode;
pub use options::{MAX_BATCH_EVENTS, PublishOptions, Reliability, SendOptions};
pub use policy::Policy;
/// The Prometheus client whose registry [`Node::register_metrics`] takes (feature `metrics`).
#[cfg(feature = "metrics")]
pub use prometheus_client;
pub use receipts::{Deliveries, EventDelivery, PeerInfo, PublishReceipt, Receipt};
pub use shoal_discovery as discovery;
/// Derives [`Contract`](trait@Contract): `#[derive(shoal::Contract)]` with
/// `#[shoal(name = "...", version = N, kind = "command")]` (see [`contract`]).
#[cfg(feature = "contracts")]
pub use shoal_macros::Contract;
pub use shoal_proto::{Limits, MessageId, MessageKind, NodeId, ReturnAddress, SmolStr};
pub use stats::NodeStats;
pub use subscribe::{Group, SubscribeOptions, Subscription};
pub use trace::TraceContext;
pub use transport::multicast::MulticastConfig;
