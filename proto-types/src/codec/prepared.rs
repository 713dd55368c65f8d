//! Events encoded once for any number of subscriber groups.
//!
//! A published event goes to every target group as a [`Frame::Publish`] whose only per-copy
//! field, `group`, is encoded last. bincode encodes a struct as its fields one after the other,
//! so the frame body of every copy is the same run of bytes (variant tag, envelope, reliable
//! flag) followed by a short group tail. [`PreparedEvent`] encodes that shared run once;
//! [`PreparedEvent::frame_for`] adds a length prefix and the group, copying nothing else.
//!
//! ```
//! use bytes::BytesMut;
//! use shoal_proto::codec::{self, PreparedEvent};
//! use shoal_proto::{Envelope, Frame, Limits, MessageId, MessageKind};
//!
//! let limits = Limits::default();
//! let id = MessageId::from_parts(1_700_000_000_000, 7);
//! let event = Envelope::new(id, MessageKind::Event, "order.created".into(), 0, "{}".into());
//! let prepared = PreparedEvent::new(&event, true, &limits).unwrap();
//!
//! let mut wire = BytesMut::new();
//! prepared.frame_for(Some("billing"), &limits).unwrap().write_to(&mut wire);
//! match codec::decode(&mut wire, &limits).unwrap() {
//!     Some(Frame::Publish(p)) => assert_eq!(p.group.as_deref(), Some("billing")),
//!     other => panic!("{other:?}"),
//! }
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, Serializer};

use super::{BodyWriter, LENGTH_PREFIX, config, max_frame_len};
use crate::limits::check_name;
use crate::{EncodeError, Envelope, Frame, Limits, MessageId, validate_envelope};

/// The index of [`Frame::Publish`] among `Frame`'s variants, as serde numbers them.
/// A test checks that the prepared encoding equals encoding the `Frame` itself.
const PUBLISH_VARIANT: u32 = 9;

/// An event whose envelope is encoded once, ready to be framed for each target group.
#[derive(Clone, Debug)]
pub struct PreparedEvent {
    /// The frame body up to the group: variant tag, envelope, reliable flag.
    shared: Bytes,
    id: MessageId,
}

/// One group's copy of a prepared event: a length prefix, the shared body and the group.
#[derive(Clone, Debug)]
pub struct EventFrame {
    prefix: [u8; LENGTH_PREFIX],
    shared: Bytes,
    tail: Vec<u8>,
    key: MessageId,
}

impl PreparedEvent {
    /// Encodes `envelope` (checked against `limits`) as the shared part of every copy.
    ///
    /// # Errors
    ///
    /// [`EncodeError::LimitExceeded`] when the envelope breaks a per-field limit or is longer
    /// than `max_frame_len` on its own.
    pub fn new(envelope: &Envelope, reliable: bool, limits: &Limits) -> Result<Self, EncodeError> {
        validate_envelope(envelope, limits)?;
        let max = max_frame_len(limits);
        let mut dst = BytesMut::with_capacity(super::envelope_len_estimate(envelope).min(max));
        let mut writer = BodyWriter {
            dst: &mut dst,
            written: 0,
            max,
        };
        let head = PublishHead { envelope, reliable };
        bincode::serde::encode_into_writer(&head, &mut writer, config())
            .map_err(|e| EncodeError::Serialize(e.to_string()))?;
        if writer.written > max {
            return Err(EncodeError::LimitExceeded {
                limit: "max_frame_len",
                actual: writer.written,
                max,
            });
        }
        Ok(Self {
            shared: dst.freeze(),
            id: envelope.id,
        })
    }

    /// The copy for `group` (`None`: the receiver's ungrouped subscriptions).
    ///
    /// # Errors
    ///
    /// [`EncodeError::LimitExceeded`] when the group name is longer than `max_name_len` or the
    /// whole frame longer than `max_frame_len`.
    pub fn frame_for(
        &self,
        group: Option<&str>,
        limits: &Limits,
    ) -> Result<EventFrame, EncodeError> {
        if let Some(group) = group {
            check_name(group, limits)?;
        }
        let tail = bincode::serde::encode_to_vec(group, config())
            .map_err(|e| EncodeError::Serialize(e.to_string()))?;
        let len = self.shared.len() + tail.len();
        let max = max_frame_len(limits);
        let prefix = match u32::try_from(len) {
            Ok(l) if len <= max => l.to_be_bytes(),
            _ => {
                return Err(EncodeError::LimitExceeded {
                    limit: "max_frame_len",
                    actual: len,
                    max,
                });
            }
        };
        Ok(EventFrame {
            prefix,
            shared: self.shared.clone(),
            tail,
            key: self.id.delivery_key(group),
        })
    }

    /// The event's message id.
    pub fn id(&self) -> MessageId {
        self.id
    }
}

impl EventFrame {
    /// The key this copy is acknowledged and deduplicated under
    /// ([`MessageId::delivery_key`] of its group).
    pub fn key(&self) -> MessageId {
        self.key
    }

    /// Bytes on the wire, length prefix included.
    pub fn len(&self) -> usize {
        LENGTH_PREFIX + self.shared.len() + self.tail.len()
    }

    /// Never true: a frame has at least its prefix.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the frame to `dst`, exactly as [`super::encode`] would have written it.
    pub fn write_to(&self, dst: &mut BytesMut) {
        dst.reserve(self.len());
        dst.put_slice(&self.prefix);
        dst.put_slice(&self.shared);
        dst.put_slice(&self.tail);
    }
}

/// `Frame::Publish` without its last field, serialized from borrowed parts.
struct PublishHead<'a> {
    envelope: &'a Envelope,
    reliable: bool,
}

impl Serialize for PublishHead<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The fields of `Publish` before `group`, in order: bincode writes a struct as a
        /// tuple, so a tuple of the same fields encodes to the same bytes.
        struct Fields<'a>(&'a Envelope, bool);
        impl Serialize for Fields<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let mut t = serializer.serialize_tuple(2)?;
                t.serialize_element(self.0)?;
                t.serialize_element(&self.1)?;
                t.end()
            }
        }
        // `Frame::Publish(Box<Publish>)` is a newtype variant; a `Box` serializes as its
        // contents.
        serializer.serialize_newtype_variant(
            "Frame",
            PUBLISH_VARIANT,
            "Publish",
            &Fields(self.envelope, self.reliable),
        )
    }
}

// `Frame` is matched here so that adding a variant before `Publish` fails to compile until
// `PUBLISH_VARIANT` is checked again (the round-trip test then confirms it).
const _: fn(&Frame) = |f| match f {
    Frame::Hello(_)
    | Frame::Deliver(_)
    | Frame::Ack(_)
    | Frame::Nack(_)
    | Frame::Ping(_)
    | Frame::Pong(_)
    | Frame::Goodbye(_)
    | Frame::Subscribe(_)
    | Frame::Unsubscribe(_)
    | Frame::Publish(_) => {}
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{MessageKind, Publish, codec};

    fn event() -> Envelope {
        let mut e = Envelope::new(
            MessageId::from_parts(1_700_000_000_000, 99),
            MessageKind::Event,
            "orders.created".into(),
            1_700_000_000_000,
            Bytes::from_static(b"payload"),
        );
        e.partition_key = Some("customer-7".into());
        e.headers.push(("trace".into(), "abc".into()));
        e.attempt = 1;
        e
    }

    #[test]
    fn prepared_copies_equal_encoding_the_frame() {
        let limits = Limits::default();
        for reliable in [true, false] {
            let prepared = PreparedEvent::new(&event(), reliable, &limits).unwrap();
            for group in [
                None,
                Some("billing"),
                Some(""),
                Some("a-much-longer-group-name"),
            ] {
                let mut expected = BytesMut::new();
                let frame = Frame::Publish(Box::new(Publish {
                    envelope: event(),
                    reliable,
                    group: group.map(str::to_owned),
                }));
                codec::encode(&frame, &limits, &mut expected).unwrap();
                let copy = prepared.frame_for(group, &limits).unwrap();
                let mut got = BytesMut::new();
                copy.write_to(&mut got);
                assert_eq!(got, expected, "group {group:?}");
                assert_eq!(copy.len(), expected.len());
                assert_eq!(copy.key(), event().id.delivery_key(group));
                assert_eq!(codec::decode(&mut got, &limits).unwrap(), Some(frame));
            }
        }
    }

    #[test]
    fn limits_apply_to_the_envelope_and_the_group() {
        let limits = Limits::default();
        let mut long = event();
        long.name = "x".repeat(limits.max_name_len + 1);
        let err = PreparedEvent::new(&long, true, &limits).unwrap_err();
        assert!(err.to_string().contains("max_name_len"), "{err}");

        let prepared = PreparedEvent::new(&event(), true, &limits).unwrap();
        let group = "g".repeat(limits.max_name_len + 1);
        let err = prepared.frame_for(Some(&group), &limits).unwrap_err();
        assert!(err.to_string().contains("max_name_len"), "{err}");

        let small = Limits {
            max_frame_len: 40,
            ..Limits::default()
        };
        let err = PreparedEvent::new(&event(), true, &small).unwrap_err();
        assert!(err.to_string().contains("max_frame_len"), "{err}");
    }
}
