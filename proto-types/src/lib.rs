//! Shoal's wire protocol: the message [`Envelope`], the [`Frame`]s that cross a connection, and
//! the [`codec`] that turns frames into length-prefixed bytes and back.
//!
//! This crate is pure: no sockets, no clocks, no randomness. Bytes go in and frames come out,
//! so every rule about the wire can be tested without a network.
//!
//! ```
//! use bytes::BytesMut;
//! use shoal_proto::{codec, Frame, Limits};
//!
//! let limits = Limits::default();
//! let mut buf = BytesMut::new();
//! codec::encode(&Frame::Ping(7), &limits, &mut buf).unwrap();
//! assert_eq!(codec::decode(&mut buf, &limits).unwrap(), Some(Frame::Ping(7)));
//! assert!(buf.is_empty());
//! ```

pub mod codec;
mod envelope;
mod error;
mod frame;
mod id;
mod limits;
pub mod multicast;

pub use envelope::{Envelope, MessageKind, ReturnAddress};
pub use error::{DecodeError, EncodeError, LimitViolation};
pub use frame::{
    ALPN, Ack, Differs, Frame, Goodbye, Head, Hello, Item, Messages, Nack, NackCode,
    PROTOCOL_VERSION, SeqRange, Subscription, To,
};
pub use id::{GroupKey, MessageId, NodeId};
pub(crate) use limits::validate_item_parts;
pub use limits::{Limits, validate_envelope, validate_frame, validate_head, validate_item};
/// The string type of names and keys ([`Envelope::name`], [`Envelope::partition_key`],
/// [`To::Group`], [`Subscription::group`]): inline up to 23 bytes, shared beyond, so cloning
/// one never allocates.
pub use smol_str::SmolStr;
