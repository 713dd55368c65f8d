//! The transport: quinn connections and the codec, nothing about messages.
//!
//! - [`endpoint`]: accepting, dialling one address, the handshake's outcome.
//! - [`dial`]: following discovery, keeping static peers dialled, connecting on demand.
//! - [`handshake`]: the hello exchange and its checks.
//! - [`limits`]: the limits against floods on incoming connections.
//! - [`penalty`]: the addresses refused for a while after a failed TLS handshake.
//! - [`connection`]: each connection's reader and writer, and the close codes.
//! - [`dial_plan`]: which addresses to keep dialled as discovery hints come and go.
//! - [`multicast`]: the multicast group socket and the task that reads and writes it (not
//!   wired into the node yet).

pub(crate) mod connection;
pub(crate) mod dial;
pub(crate) mod dial_plan;
pub(crate) mod endpoint;
pub(crate) mod handshake;
pub(crate) mod limits;
pub(crate) mod multicast;
mod penalty;
pub(crate) mod socket;
