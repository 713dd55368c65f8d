//! Multicast channels: what a publisher's sealed datagrams carry once opened, and the control
//! messages that travel beside them over each subscriber's QUIC connection.
//!
//! A publisher sends events to the subscribers on its LAN as UDP datagrams to a group address,
//! one AEAD operation per datagram. The fixed 24-byte datagram header (version, channel, key
//! epoch, sequence number) is written and read by the node, not here: it is the associated
//! data of the seal and must be read before anything is decrypted. What the seal protects is
//! one of the bodies below, encoded with [`crate::codec`] like everything else on the wire:
//!
//! - [`DatagramBody`]: runs of events ([`EventRun`]), each a [`Head`] shared by its
//!   [`Item`]s, numbered on from `first_item`;
//! - [`HeartbeatBody`]: how far the publisher has sent and what it can still repair, so a
//!   subscriber notices the loss of the last datagrams of a burst.
//!
//! The control messages ([`ChannelKey`], [`ChannelStatus`], [`ChannelNak`],
//! [`ChannelDemote`]) travel over the mutually authenticated QUIC connections: keys reach only
//! the subscribers the publisher admitted, and what a subscriber says about its progress is
//! authenticated by its certificate.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::frame::{Head, Item, SeqRange};
use crate::id::NodeId;

/// Bytes of a channel secret ([`ChannelKey::secret`]).
pub const SECRET_LEN: usize = 32;

/// The events of one datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatagramBody {
    /// The channel-wide number of the first item of the first run; items are numbered on
    /// across runs and datagrams, so a subscriber acknowledges handled events by number.
    pub first_item: u64,
    /// The runs, in the order their events were published.
    pub runs: Vec<EventRun>,
}

/// Events that share a head and the instances chosen to handle them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRun {
    /// What the events share (topic, key, kind...). Its `to` is ignored: one multicast copy
    /// reaches every audience; [`EventRun::assigned`] says which instance of each subscriber
    /// group handles the events.
    pub head: Head,
    /// For each subscriber group with a member on the channel: the instance that handles this
    /// run's events, so each event is handled by exactly one instance per group. Subscribers
    /// without a group handle every event their subscriptions match.
    pub assigned: Vec<Assignment>,
    /// The events.
    pub items: Vec<Item>,
}

/// Which instance of a subscriber group handles a run.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Assignment {
    /// The group.
    pub group: SmolStr,
    /// The instance chosen.
    pub node: NodeId,
}

/// What a heartbeat datagram says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatBody {
    /// Every datagram numbered below this was sent.
    pub next_seq: u64,
    /// The oldest datagram the publisher can still repair.
    pub oldest_kept: u64,
}

/// A node's multicast capability, said over QUIC after the hello ([`crate::Frame::ChannelHello`]):
/// it speaks the channel protocol and sends and receives on `group`. A publisher offers its
/// channel (a [`ChannelKey`]) only to peers on its own group; a node that never says it (an
/// older version, or one without multicast) keeps getting every event by unicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHello {
    /// The group address and port (the same on every node of one LAN's channel).
    pub group: SocketAddr,
}

/// The key of one epoch of a channel, handed by the publisher to one subscriber over QUIC.
///
/// A subscriber that joins gets the current epoch's key; on every rekey (a subscriber left
/// or was refused, the key's time or usage ran out) each remaining subscriber gets the new
/// one, and those who left never do.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelKey {
    /// The channel (one per publisher and group address).
    pub channel: u64,
    /// The key's epoch; datagrams name the epoch they were sealed in.
    pub epoch: u32,
    /// The secret the epoch's AEAD key and nonce base are derived from.
    pub secret: [u8; SECRET_LEN],
    /// The first datagram sealed with this key. For a subscriber that joins, also the first
    /// datagram meant for it.
    pub first_seq: u64,
}

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelKey")
            .field("channel", &self.channel)
            .field("epoch", &self.epoch)
            .field("secret", &"<redacted>")
            .field("first_seq", &self.first_seq)
            .finish()
    }
}

/// A subscriber's progress on a channel, sent to the publisher over QUIC: the cumulative
/// acknowledgement that frees the publisher's repair buffer and moves its flow-control window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStatus {
    /// The channel.
    pub channel: u64,
    /// Every datagram numbered below this has arrived (or was not meant for this subscriber).
    pub next_needed: u64,
    /// How many datagrams from `next_needed` on the subscriber can hold.
    pub window: u32,
    /// Items (event numbers) whose handlers finished since the last status.
    pub handled: Vec<SeqRange>,
    /// Items whose handling failed here since the last status (a handler error, or the
    /// policy refused it): the publisher sends their copies again by unicast at once, where
    /// the error gets its usual answer (a retry, or a dead letter if it is permanent).
    pub failed: Vec<SeqRange>,
}

/// Datagrams a subscriber misses, sent to the publisher over QUIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelNak {
    /// The channel.
    pub channel: u64,
    /// The missing datagrams' numbers.
    pub missing: Vec<SeqRange>,
}

/// The publisher takes a subscriber off the channel: its events come by unicast from now on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDemote {
    /// The channel.
    pub channel: u64,
    /// Events numbered from here on that were not acknowledged come by unicast.
    pub from_item: u64,
}
