//! The datagram header: 24 bytes in the clear, the associated data of the datagram's seal.
//!
//! ```text
//!  0      2       3      4              12        16                24
//!  +------+-------+------+---------------+---------+-----------------+----------------+-----+
//!  | "SM" | ver 1 | kind | channel (u64) | epoch   | seq (u64)       | sealed body    | tag |
//!  +------+-------+------+---------------+---------+-----------------+----------------+-----+
//! ```
//!
//! Big-endian throughout. `kind` is 0 for events and 1 for a heartbeat; `seq` is the
//! datagram's number for events and the epoch's heartbeat counter for a heartbeat. The header
//! is not encrypted (a subscriber must read the channel and epoch to find the key) but any
//! change to it makes the seal fail to open.

/// The header's length.
pub(crate) const HEADER_LEN: usize = 24;

const MAGIC: [u8; 2] = *b"SM";

/// The version of the datagram format this code speaks.
pub(crate) const VERSION: u8 = 1;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Events ([`shoal_proto::multicast::DatagramBody`]).
    Events = 0,
    /// A heartbeat ([`shoal_proto::multicast::HeartbeatBody`]).
    Heartbeat = 1,
}

/// A datagram's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) channel: u64,
    pub(crate) epoch: u32,
    /// The datagram's number (events) or the heartbeat counter (heartbeats).
    pub(crate) seq: u64,
}

/// Why bytes are not a header of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Shorter than a header.
    Short,
    /// Not our magic, version or kind: another protocol (or version) on the group address.
    Foreign,
}

impl Header {
    /// The header's bytes.
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.kind as u8;
        out[4..12].copy_from_slice(&self.channel.to_be_bytes());
        out[12..16].copy_from_slice(&self.epoch.to_be_bytes());
        out[16..24].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Reads the header at the front of `datagram`.
    pub(crate) fn parse(datagram: &[u8]) -> Result<Self, HeaderError> {
        let Some(bytes) = datagram.first_chunk::<HEADER_LEN>() else {
            return Err(HeaderError::Short);
        };
        if bytes[0..2] != MAGIC || bytes[2] != VERSION {
            return Err(HeaderError::Foreign);
        }
        let kind = match bytes[3] {
            0 => Kind::Events,
            1 => Kind::Heartbeat,
            _ => return Err(HeaderError::Foreign),
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut epoch = [0u8; 4];
        epoch.copy_from_slice(&bytes[12..16]);
        Ok(Self {
            kind,
            channel: u64_at(4),
            epoch: u32::from_be_bytes(epoch),
            seq: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_foreign_bytes_are_told_apart() {
        let h = Header {
            kind: Kind::Heartbeat,
            channel: u64::MAX - 3,
            epoch: 7,
            seq: 1 << 40,
        };
        let bytes = h.to_bytes();
        assert_eq!(Header::parse(&bytes), Ok(h));
        assert_eq!(
            Header::parse(&bytes[..HEADER_LEN - 1]),
            Err(HeaderError::Short)
        );
        for (at, value) in [(0, b'X'), (2, 2), (3, 9)] {
            let mut other = bytes;
            other[at] = value;
            assert_eq!(
                Header::parse(&other),
                Err(HeaderError::Foreign),
                "byte {at}"
            );
        }
    }
}
