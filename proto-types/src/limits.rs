//! Size limits enforced when encoding and decoding frames.

/// Limits on what a frame may contain. Both ends enforce them: the sender gets an
/// [`crate::EncodeError`] before anything is written, the receiver a [`crate::DecodeError`]
/// that names the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded frame, length prefix excluded. Default 4 MiB.
    pub max_frame_len: usize,
    /// Most headers on one envelope. Default 64.
    pub max_headers: usize,
    /// Longest message name, service name, topic, header key, partition key, content type or
    /// channel, in bytes. Default 256.
    pub max_name_len: usize,
    /// Longest header value, in bytes. Default 4096.
    pub max_header_value_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: 4 * 1024 * 1024,
            max_headers: 64,
            max_name_len: 256,
            max_header_value_len: 4096,
        }
    }
}
