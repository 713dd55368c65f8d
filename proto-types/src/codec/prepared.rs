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

/// The indices of [`Frame::Publish`] and [`Frame::PublishBatch`] among `Frame`'s variants, as
/// serde numbers them. A test checks that the prepared encodings equal encoding the `Frame`.
const PUBLISH_VARIANT: u32 = 9;
const PUBLISH_BATCH_VARIANT: u32 = 10;

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
        let head = Head {
            variant: (PUBLISH_VARIANT, "Publish"),
            fields: Fields::One(envelope, reliable),
        };
        let estimate = super::envelope_len_estimate(envelope);
        Self::encode(&head, envelope.id, estimate, limits)
    }

    /// Encodes a batch of events ([`crate::PublishBatch`]) with the batch id `id` as the
    /// shared part of every copy. Every envelope is checked against `limits`.
    ///
    /// # Errors
    ///
    /// As for [`PreparedEvent::new`], for any envelope or for the whole batch.
    pub fn new_batch(
        id: MessageId,
        envelopes: &[Envelope],
        reliable: bool,
        limits: &Limits,
    ) -> Result<Self, EncodeError> {
        for envelope in envelopes {
            validate_envelope(envelope, limits)?;
        }
        let head = Head {
            variant: (PUBLISH_BATCH_VARIANT, "PublishBatch"),
            fields: Fields::Batch(id, envelopes, reliable),
        };
        let estimate = envelopes.iter().map(super::envelope_len_estimate).sum();
        Self::encode(&head, id, estimate, limits)
    }

    fn encode(
        head: &Head<'_>,
        id: MessageId,
        estimate: usize,
        limits: &Limits,
    ) -> Result<Self, EncodeError> {
        let max = max_frame_len(limits);
        let mut dst = BytesMut::with_capacity(estimate.min(max));
        let mut writer = BodyWriter {
            dst: &mut dst,
            written: 0,
            max,
        };
        bincode::serde::encode_into_writer(head, &mut writer, config())
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
            id,
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

    /// The event's message id (a batch's own id for a batch).
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

/// A `Frame::Publish` or `Frame::PublishBatch` without its last field (the group),
/// serialized from borrowed parts.
struct Head<'a> {
    variant: (u32, &'static str),
    fields: Fields<'a>,
}

/// The fields before `group`, in order. bincode writes a struct as a tuple of its fields, so a
/// tuple of the same fields encodes to the same bytes.
enum Fields<'a> {
    /// `Publish { envelope, reliable, .. }`
    One(&'a Envelope, bool),
    /// `PublishBatch { id, envelopes, reliable, .. }`; a slice serializes like the `Vec`.
    Batch(MessageId, &'a [Envelope], bool),
}

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        match self {
            Self::One(envelope, reliable) => {
                let mut t = serializer.serialize_tuple(2)?;
                t.serialize_element(envelope)?;
                t.serialize_element(reliable)?;
                t.end()
            }
            Self::Batch(id, envelopes, reliable) => {
                let mut t = serializer.serialize_tuple(3)?;
                t.serialize_element(id)?;
                t.serialize_element(envelopes)?;
                t.serialize_element(reliable)?;
                t.end()
            }
        }
    }
}

impl Serialize for Head<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Both frames are newtype variants of `Frame` around a `Box`, which serializes as its
        // contents.
        let (index, name) = self.variant;
        serializer.serialize_newtype_variant("Frame", index, name, &self.fields)
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
    | Frame::Publish(_)
    | Frame::PublishBatch(_) => {}
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
    fn prepared_batches_equal_encoding_the_frame() {
        let limits = Limits::default();
        let batch_id = MessageId::from_parts(1_700_000_000_001, 5);
        let events: Vec<Envelope> = (0..3)
            .map(|i| {
                let mut e = event();
                e.id = MessageId::from_parts(1_700_000_000_000, i);
                e
            })
            .collect();
        let prepared = PreparedEvent::new_batch(batch_id, &events, true, &limits).unwrap();
        for group in [None, Some("billing")] {
            let frame = Frame::PublishBatch(Box::new(crate::PublishBatch {
                id: batch_id,
                envelopes: events.clone(),
                reliable: true,
                group: group.map(str::to_owned),
            }));
            let mut expected = BytesMut::new();
            codec::encode(&frame, &limits, &mut expected).unwrap();
            let copy = prepared.frame_for(group, &limits).unwrap();
            let mut got = BytesMut::new();
            copy.write_to(&mut got);
            assert_eq!(got, expected, "group {group:?}");
            assert_eq!(copy.key(), batch_id.delivery_key(group));
            assert_eq!(codec::decode(&mut got, &limits).unwrap(), Some(frame));
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
