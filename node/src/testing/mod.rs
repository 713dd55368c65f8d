//! A black-box test kit for services built on Shoal (feature `testing`): test one service
//! through its messages, with faults, without timing guesses.
//!
//! A [`TestMesh`] starts in-process nodes on loopback (QUIC over 127.0.0.1) with an ephemeral
//! CA. The service under test is started by its own code, from a [`NodeBuilder`] the mesh
//! hands out ([`TestMesh::builder`]); a **probe** node sends, requests and publishes to it,
//! and records everything it publishes (to topics the probe
//! [subscribes](TestMesh::subscribe) to), sends (to [stand-ins](TestMesh::stand_in) for the
//! services it talks to) and replies: what, where and when ([`Recorded`]).
//!
//! ```
//! use shoal::testing::{Expect, Fault, TestMesh};
//! use shoal::{HandlerError, Message};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), shoal::Error> {
//! let mesh = TestMesh::start().await?;
//! mesh.subscribe("invoice.created").await?;
//!
//! // The service under test: one invoice per order (its own code, any configuration).
//! let invoice = mesh.builder("invoice")?.start().await?;
//! let publisher = invoice.clone();
//! invoice.subscribe("order.created", move |order: Message| {
//!     let (node, order_id) = (publisher.clone(), order.payload().clone());
//!     async move {
//!         let invoice = Message::event("invoice.created", order_id);
//!         node.publish(invoice).await.map_err(|e| HandlerError::retryable(e.to_string()))?;
//!         Ok(())
//!     }
//! }).await?;
//! mesh.wait_for("invoice").await?;
//!
//! // Half the deliveries lost, three at most (six in a row would use up the retries): retries.
//! mesh.inject(Fault::drop(0.5).to("invoice").times(3));
//! mesh.publish(Message::event("order.created", "order-42")).await?;
//! mesh.expect(Expect::published("invoice.created").payload("order-42")).await?;
//! mesh.wait_idle().await?;
//! mesh.expect_none(Expect::published("invoice.created")).await?; // and only one
//! # Ok(()) }
//! ```
//!
//! # Expectations without sleeps
//! - [`TestMesh::expect`] waits for a recorded message that an [`Expect`] describes (channel,
//!   name or type, version, payload, any predicate), at most its time limit, and returns it;
//!   each recorded message satisfies one `expect`. On failure the error
//!   ([`Error::Expectation`], an [`ExpectationFailed`]) lists what the probe *did* see.
//! - [`TestMesh::expect_none`] watches a window for messages that must not come.
//! - [`TestMesh::wait_idle`] waits until no node of the mesh runs a handler, has an
//!   unacknowledged or waiting delivery, waits for a reply or has something unwritten, and
//!   no fault holds a frame back. Each node's engine knows this exactly; the mesh is woken by
//!   every call into an engine, so nothing polls.
//!
//! # Faults
//! [`Fault`]s act between the transport and the engine of the node that reads a frame: a
//! node built by the mesh passes every batch of frames it reads through the mesh's fault
//! plan first. Deliveries can be dropped, delayed, reordered, duplicated as a redelivery
//! the receiver has not seen ([`Fault::duplicate`]: catches handlers that are not
//! idempotent) or as a network duplicate its dedup window catches
//! ([`Fault::duplicate_on_wire`]); acks can be dropped on their way back, so the sender
//! retries; two nodes or services can be [partitioned](TestMesh::partition) and healed. Each
//! fault narrows to a receiving node, a sending node, a channel, and a number of hits; its
//! draws come from the mesh's seed ([`TestMeshBuilder::seed`], or the environment variable
//! [`SEED_ENV`]), which every failure report names, so a failing run replays the same
//! draws for the same sequence of messages (the network's timing itself is not replayed).
//! [`TestMesh::kill`] stops a node as a crash would ([`Node::abort`](crate::Node::abort)):
//! restart it from a new [`TestMesh::builder`] with the same outbox or inbox database.
//!
//! # Virtual time
//! The mesh runs on tokio's clock, so `#[tokio::test(start_paused = true)]` works on a
//! `current_thread` runtime: with nothing to do, tokio jumps to the next timer, so a 5 s
//! ack timeout, a 30 s hold or a delay fault costs no real time. What does **not** follow
//! the virtual clock: real time spent in blocking calls (SQLite, file IO; the clock stands
//! still meanwhile, which is harmless), anything outside the process (a PostgreSQL server's
//! own timeouts), and multi-threaded runtimes (`pause` needs `current_thread`). QUIC's own
//! timers (keep-alives, idle timeouts, loss detection) use the virtual clock too, so a test
//! that leaves the mesh idle while time jumps far ahead keeps its connections: keep-alives
//! are sent at their virtual times. Loopback packets arrive before tokio looks for the next
//! timer, so they are never overtaken by a jump.
//!
//! # Contract conformance
//! [`TestMesh::check_conformance`] checks every message the probe records against the
//! service's AsyncAPI document ([`Conformance`], from a
//! [`ServiceContract`](crate::contract::ServiceContract) or a document file): declared
//! where it was seen, with a payload its JSON Schema accepts. [`Pact`] keeps the example
//! messages a consumer relies on; the provider's tests [verify](Pact::verify) them.
//!
//! # What it costs
//! Nodes not built by a mesh pay one branch per batch of frames read, when the feature is
//! compiled in; nothing without it.
//!
//! [`NodeBuilder`]: crate::NodeBuilder
//! [`Error::Expectation`]: crate::Error::Expectation

mod conformance;
mod expect;
mod faults;
mod hook;
mod mesh;
mod pact;
mod probe;
mod recording;
mod wait;

pub use conformance::Conformance;
pub use expect::{Expect, ExpectationFailed, Failure};
pub use faults::{Fault, FaultId, Peer};
#[cfg(feature = "outbox")]
pub(crate) use hook::relay_turned;
pub(crate) use hook::{ConnFaults, NodeHooks};
pub use mesh::{SEED_ENV, TestMesh, TestMeshBuilder};
pub use pact::{Example, Interaction, Pact};
pub use probe::StandIn;
pub use recording::{Channel, Recorded};

/// The byte message of a typed command or document: named by its type, with its version,
/// JSON content type and partition key, as a [`TypedNode`](crate::contract::TypedNode)
/// sends it. For the probe, which has no contract of its own.
#[cfg(feature = "contracts")]
pub fn typed_message<T: crate::contract::Contract>(
    value: &T,
) -> Result<crate::Message, crate::Error> {
    use crate::contract::{Codec, MessageRef, encode, finish};
    let body = encode(value, Codec::Json)?;
    let msg = match T::KIND {
        crate::MessageKind::Document => crate::Message::document(T::NAME, body),
        _ => crate::Message::command(T::NAME, body),
    };
    Ok(finish(
        msg,
        MessageRef::of::<T>(),
        Codec::Json,
        value.partition_key(),
    ))
}

/// The byte message of a typed event on `topic`, with the `shoal-message` header naming its
/// type, as a [`TypedNode`](crate::contract::TypedNode) publishes it.
#[cfg(feature = "contracts")]
pub fn typed_event<T: crate::contract::Contract>(
    topic: &str,
    value: &T,
) -> Result<crate::Message, crate::Error> {
    use crate::contract::{Codec, MESSAGE_HEADER, MessageRef, encode, finish};
    let msg = crate::Message::event(topic, encode(value, Codec::Json)?)
        .with_header(MESSAGE_HEADER, T::NAME);
    Ok(finish(
        msg,
        MessageRef::of::<T>(),
        Codec::Json,
        value.partition_key(),
    ))
}
