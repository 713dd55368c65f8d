//! Rival messaging systems, each behind its own cargo feature of `shoal-benches`
//! (see [`crate::systems`]). Every rival listens on `127.0.0.1` only and never multicasts.

#[cfg(feature = "libp2p")]
pub mod libp2p;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "zenoh")]
pub mod zenoh;
#[cfg(feature = "zmq")]
pub mod zmq;
