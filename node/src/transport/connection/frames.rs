//! Frames taken off the chunks a stream is read in ([`Frames`]).

use bytes::{Buf, Bytes, BytesMut};
use shoal_proto::codec::{self, LENGTH_PREFIX};
use shoal_proto::{DecodeError, Frame, Limits};

/// What [`Frames::take`] decodes: a frame, or the error one gave.
pub(super) type Decoded = Result<Frame, DecodeError>;

/// The frames of one stream, taken off the chunks it is read in as they arrive.
///
/// A frame that lies within one chunk is decoded from the chunk itself (a large one, and its
/// payloads, are views of the chunk's bytes: nothing is copied). A frame that spans chunks is
/// copied once into a buffer of exactly its length, reserved as soon as its length prefix is
/// complete (and refused before that when the prefix is above the limit), so its bytes are
/// never copied twice and the buffer never grows. No chunk is kept once read: what a peer
/// makes the reader hold is one frame's length at most, however it splits its bytes.
#[derive(Debug, Default)]
pub(super) struct Frames {
    /// The bytes so far (its prefix first) of a frame that spans chunks; empty when none.
    partial: BytesMut,
    /// The length of `partial`'s frame (prefix included) once its prefix is complete; 0
    /// before.
    total: usize,
}

impl Frames {
    /// Decodes into `out` every frame `chunk` completes or holds, keeping the bytes of the
    /// frame it leaves incomplete for the next chunk. A frame that breaks a per-field limit
    /// names its messages and is refused alone; any other error breaks the stream: it is
    /// pushed last and its description returned (the rest of the chunk is left).
    pub(super) fn take(
        &mut self,
        mut chunk: Bytes,
        limits: &Limits,
        out: &mut Vec<Decoded>,
    ) -> Option<String> {
        loop {
            if !self.partial.is_empty() {
                match self.complete(&mut chunk, limits) {
                    Ok(Some(whole)) => {
                        let decoded = decode_whole(whole, limits);
                        if let Some(fatal) = push(decoded, out) {
                            return Some(fatal);
                        }
                    }
                    Ok(None) => return None, // the chunk went into the frame, still incomplete
                    Err(e) => return push(Err(e), out),
                }
            }
            if chunk.is_empty() {
                return None;
            }
            match codec::decode_shared(&mut chunk, limits) {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => {
                    // The chunk ends inside a frame: its bytes start the frame's buffer, as
                    // long as the whole frame if the prefix is there.
                    let total = match codec::body_len(&chunk, limits) {
                        Ok(len) => len.map_or(LENGTH_PREFIX, |len| LENGTH_PREFIX + len),
                        Err(e) => return push(Err(e), out),
                    };
                    self.total = if chunk.len() >= LENGTH_PREFIX {
                        total
                    } else {
                        0
                    };
                    self.partial = BytesMut::with_capacity(total);
                    self.partial.extend_from_slice(&chunk);
                    return None;
                }
                Err(e) => {
                    if let Some(fatal) = push(Err(e), out) {
                        return Some(fatal);
                    }
                }
            }
        }
    }

    /// Adds the front of `chunk` to the frame in `partial`, up to its end: the whole frame
    /// once it is complete, `None` while it is not (all of `chunk` was taken).
    fn complete(
        &mut self,
        chunk: &mut Bytes,
        limits: &Limits,
    ) -> Result<Option<Bytes>, DecodeError> {
        if self.total == 0 {
            // The prefix is still incomplete (a chunk of fewer than four bytes ended it).
            let take = (LENGTH_PREFIX - self.partial.len()).min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            chunk.advance(take);
            let Some(len) = codec::body_len(&self.partial, limits)? else {
                return Ok(None);
            };
            self.total = LENGTH_PREFIX + len;
            self.partial.reserve(len);
        }
        let take = (self.total - self.partial.len()).min(chunk.len());
        self.partial.extend_from_slice(&chunk[..take]);
        chunk.advance(take);
        if self.partial.len() < self.total {
            return Ok(None);
        }
        self.total = 0;
        Ok(Some(std::mem::take(&mut self.partial).freeze()))
    }
}

/// Decodes a frame whose bytes are all there.
fn decode_whole(mut whole: Bytes, limits: &Limits) -> Decoded {
    match codec::decode_shared(&mut whole, limits) {
        Ok(Some(frame)) => Ok(frame),
        Err(e) => Err(e),
        // Unreachable: the frame is complete.
        Ok(None) => Err(DecodeError::Malformed("an incomplete frame".into())),
    }
}

/// Pushes `decoded` onto `out`: the description of an error that breaks the stream, `None`
/// for a frame, or a frame refused alone (it names its messages).
fn push(decoded: Decoded, out: &mut Vec<Decoded>) -> Option<String> {
    let fatal = match &decoded {
        Ok(_) | Err(DecodeError::LimitExceeded { seqs: Some(_), .. }) => None,
        Err(e) => Some(e.to_string()),
    };
    out.push(decoded);
    fatal
}

#[cfg(test)]
mod tests;
