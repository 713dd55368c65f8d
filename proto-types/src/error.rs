//! Errors from encoding and decoding frames.

use thiserror::Error;

/// A field, count or frame that is larger than a [`crate::Limits`] field allows.
///
/// Returned by [`crate::validate_envelope`] and [`crate::validate_frame`]; the codec turns it
/// into [`EncodeError::LimitExceeded`] or [`DecodeError::LimitExceeded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("{limit} exceeded: {actual} > {max}")]
pub struct LimitViolation {
    /// The name of the [`crate::Limits`] field that was exceeded, e.g. `"max_headers"`.
    pub limit: &'static str,
    /// The offending size or count.
    pub actual: usize,
    /// The configured maximum.
    pub max: usize,
}

impl From<LimitViolation> for EncodeError {
    fn from(v: LimitViolation) -> Self {
        Self::LimitExceeded {
            limit: v.limit,
            actual: v.actual,
            max: v.max,
        }
    }
}

/// Why a frame could not be encoded. Nothing was appended to the destination buffer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field or the whole frame is larger than a configured limit.
    #[error("{limit} exceeded: {actual} > {max}")]
    LimitExceeded {
        /// The name of the [`crate::Limits`] field that was exceeded.
        limit: &'static str,
        /// The offending size or count.
        actual: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The serializer failed (should not happen for Shoal's own types).
    #[error("could not encode frame: {0}")]
    Serialize(String),
}

/// Why bytes could not be decoded into a frame.
///
/// "Need more bytes" is not an error: [`crate::codec::decode`] returns `Ok(None)` then.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces a frame larger than `max_frame_len`; the stream cannot be
    /// trusted past this point. Nothing was consumed: the connection should be closed.
    #[error("frame of {len} bytes exceeds max_frame_len ({max})")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The frame's bytes are not a valid frame. The frame has been consumed; the stream stays
    /// in sync, but the peer is not speaking Shoal correctly.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A well-formed frame breaks a limit. The frame has been consumed; `seqs` names the
    /// messages when the frame was a run of them, so the receiver can refuse just those.
    #[error("{limit} exceeded: {actual} > {max}")]
    LimitExceeded {
        /// The name of the [`crate::Limits`] field that was exceeded.
        limit: &'static str,
        /// The offending size or count.
        actual: usize,
        /// The configured maximum.
        max: usize,
        /// The sequence numbers of the messages the frame carried, if it was a run of them.
        seqs: Option<crate::SeqRange>,
    },
}
