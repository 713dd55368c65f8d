//! Multicast channels: a publisher's events reach every subscriber on a LAN in one encrypted UDP
//! datagram, reliably, as a deterministic state machine (no socket, no clock, no task).
//!
//! This is the protocol; `multicast_link.rs`, `multicast_fanout.rs` and `multicast_receive.rs`
//! beside it wire it into the engine, and the group socket comes with the runtime (see
//! `DESIGN-NOTES.md` beside this file for the design and what remains). Like the
//! rest of the engine it takes `now` and bytes, and gives back what to send where:
//!
//! - [`Sender`] (one per publisher and group address, a **channel**) numbers datagrams, packs
//!   queued events into them under an MTU budget, seals each with one AEAD operation
//!   ([`seal`]), keeps the sealed bytes for repairs, sends heartbeats, merges NAKs and
//!   decides between a multicast and a unicast repair, holds back to the slowest active
//!   subscriber's window, moves a silent or lagging subscriber to unicast, and rekeys when a
//!   subscriber leaves or is refused, on a timer and before the cipher's usage limit.
//! - [`Receiver`] (one per subscriber and channel) checks and opens datagrams, drops and
//!   counts what is forged, replayed, truncated or foreign ([`DropReason`]), delivers events
//!   in order, finds gaps and NAKs them after a random delay scaled to the LAN's round trip,
//!   and reports its progress (the cumulative acknowledgement) to the publisher.
//!
//! Keys, progress and NAKs travel over the node's mutual-TLS QUIC connections as the control
//! messages of [`shoal_proto::multicast`]; only the events travel by multicast.

mod header;
mod receiver;
mod repair;
mod seal;
mod sender;
#[cfg(test)]
pub(super) mod sim;

use std::time::Duration;

pub(crate) use header::Header;
pub(crate) use receiver::{Delivered, Receiver, ReceiverTransmit};
pub(crate) use sender::{DemoteReason, RekeyReason, SecretSource, Sender, SenderEvent, Transmit};

/// How a channel behaves. The defaults suit a switched LAN with a round trip under a
/// millisecond and Ethernet's 1500-byte MTU.
#[derive(Clone, Debug)]
pub(crate) struct ChannelConfig {
    /// The largest datagram (header, sealed events and tag): 1452 bytes, what a 1500-byte MTU
    /// leaves after IPv6 and UDP headers.
    pub(crate) max_datagram: usize,
    /// The LAN's round trip, which scales every repair timer (NAK delays and merging, the
    /// coalescing wait): 500 µs until measured, then the measured QUIC round trip
    /// ([`measured_rtt`]): the slowest member's for the publisher, the publisher's for a
    /// subscriber.
    pub(crate) rtt: Duration,
    /// Datagrams a subscriber holds beyond its first gap, and so how far the publisher may go
    /// ahead of the slowest active subscriber: 256 (about 370 KB).
    pub(crate) window: u32,
    /// Sealed datagrams the publisher keeps for repairs at most: 1024.
    pub(crate) repair_capacity: usize,
    /// A heartbeat this long after the last datagram, so the loss of a burst's tail is seen
    /// without waiting for the next burst: 2 ms (four of the default round trips). The next
    /// ones come at twice the gap each time (2, 6, 14, 30, 62 ms after the burst), so a tail
    /// lost together with its first heartbeat is found soon too.
    pub(crate) tail_heartbeat: Duration,
    /// Heartbeats while idle: every 100 ms (where the doubling stops).
    pub(crate) heartbeat_interval: Duration,
    /// Whether events are packed only while the link is idle ([`Sender::link_idle`]): what
    /// queues while it sends goes in the next datagrams together, as a QUIC connection packs
    /// what was written while it waited for the socket. Off by default (each call's events
    /// are sealed at once); the runtime turns it on, as its group link says when it is idle.
    pub(crate) paced: bool,
    /// Whether a datagram with room for another event the size of its last waits while the
    /// last one sent has reached no member yet (no status says so), for at most
    /// [`ChannelConfig::rtt`]: the events published meanwhile join it. Nagle's rule,
    /// bounded: under load datagrams fill up (fewer datagrams, and fewer statuses from every
    /// subscriber); a lone event after a quiet spell, or one published once the last datagram
    /// arrived, goes at once. Off by default; the runtime turns it on.
    pub(crate) coalesce: bool,
    /// A subscriber reports progress at most this often while events arrive that it does
    /// not handle: 2 ms (what its handlers finished goes at once).
    pub(crate) status_interval: Duration,
    /// ... and at least this often when nothing arrives: 100 ms.
    pub(crate) status_keepalive: Duration,
    /// A subscriber that says nothing for this long is moved to unicast: 400 ms.
    pub(crate) silent_timeout: Duration,
    /// A subscriber that receives nothing of what is outstanding for it for this long (or
    /// holds the publisher back that long) is moved to unicast: 300 ms, the fallback the
    /// issue asks for when multicast does not arrive.
    pub(crate) stall_timeout: Duration,
    /// A new key at least this often: 10 minutes.
    pub(crate) rekey_interval: Duration,
    /// A new key after this many datagrams sealed under one: 2^22, half AES-GCM's limit.
    pub(crate) usage_limit: u64,
    /// A datagram asked for by at least this many subscribers is repaired by multicast, one
    /// datagram for all; fewer get it over their QUIC connection: 2.
    pub(crate) multicast_repair_min: usize,
    /// Datagrams repaired per round at most: 64 (a NAK storm cannot flood the LAN).
    pub(crate) max_repairs_per_round: usize,
}

/// A measured round trip as the channel uses it: within 250 µs (below that, jitter would make
/// NAKs and repairs race each other) and 100 ms (a LAN is never slower; a connection that has
/// not measured yet reports QUIC's initial 333 ms).
pub(crate) fn measured_rtt(rtt: Duration) -> Duration {
    rtt.clamp(Duration::from_micros(250), Duration::from_millis(100))
}

impl Default for ChannelConfig {
    fn default() -> Self {
        let rtt = Duration::from_micros(500);
        Self {
            max_datagram: 1452,
            rtt,
            window: 256,
            repair_capacity: 1024,
            tail_heartbeat: rtt * 4,
            heartbeat_interval: Duration::from_millis(100),
            paced: false,
            coalesce: false,
            status_interval: Duration::from_millis(2),
            status_keepalive: Duration::from_millis(100),
            silent_timeout: Duration::from_millis(400),
            stall_timeout: Duration::from_millis(300),
            rekey_interval: Duration::from_secs(600),
            usage_limit: 1 << 22,
            multicast_repair_min: 2,
            max_repairs_per_round: 64,
        }
    }
}

/// Why a subscriber dropped a datagram. Each is counted ([`Dropped`]); none affects the
/// datagrams of honest publishers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum DropReason {
    /// Shorter than a header and a tag.
    Truncated,
    /// Not this protocol, this version or this channel.
    Foreign,
    /// Sealed under an epoch whose key this subscriber does not hold (any more, or ever: a
    /// subscriber that left and was rekeyed away sees only these).
    UnknownEpoch,
    /// The seal does not open: forged, damaged, or a header changed.
    Forged,
    /// A number already received (or older than what is wanted): a duplicate or a replay.
    Replayed,
    /// A number too far ahead of the subscriber's window.
    TooFarAhead,
    /// A number outside the range its epoch covers.
    WrongEpoch,
    /// Opened, but the body is not events: a publisher bug, or a key holder misbehaving.
    Malformed,
    /// The datagram came before this subscriber had a key, or after it was moved to unicast.
    NotJoined,
}

/// Datagrams dropped, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Dropped(std::collections::BTreeMap<DropReason, u64>);

impl Dropped {
    pub(crate) fn count(&mut self, reason: DropReason) {
        *self.0.entry(reason).or_default() += 1;
    }

    /// Datagrams dropped for `reason`.
    pub(crate) fn of(&self, reason: DropReason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn add(&mut self, other: &Self) {
        for (reason, n) in &other.0 {
            *self.0.entry(*reason).or_default() += n;
        }
    }

    /// Datagrams dropped for any reason.
    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The channel a datagram names, so a subscriber with several publishers on one group address
/// finds the [`Receiver`] to give it to (`None`: not a datagram of this protocol).
pub(crate) fn channel_of(datagram: &[u8]) -> Option<u64> {
    Header::parse(datagram).ok().map(|h| h.channel)
}
