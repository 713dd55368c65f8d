//! Length-prefixed bincode framing. The only module that knows about bincode.
//!
//! TODO(helper): implement.

use bytes::BytesMut;

use crate::{DecodeError, EncodeError, Frame, Limits};

/// Appends `frame` to `dst` as a 4-byte big-endian length followed by its bincode encoding.
pub fn encode(frame: &Frame, limits: &Limits, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let _ = (frame, limits, dst);
    todo!()
}

/// Takes one frame off the front of `src`; `Ok(None)` when more bytes are needed.
pub fn decode(src: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, DecodeError> {
    let _ = (src, limits);
    todo!()
}
