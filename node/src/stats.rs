//! Counters a user can read to see what the node did.

/// A snapshot of the node's counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Messages acknowledged by a receiver (point-to-point sends, asynchronous replies, and
    /// each audience's copy of a reliable event); a synchronous request counts when its reply
    /// comes, which is its answer.
    pub acked: u64,
    /// Delivery attempts after the first.
    pub retries: u64,
    /// Messages given up on (see [`crate::Node::dead_letters`]).
    pub dead_lettered: u64,
    /// Deliveries (messages and event copies) whose handlers ran and succeeded on this node.
    pub handled: u64,
    /// Deliveries whose handler returned an error or panicked.
    pub handler_errors: u64,
    /// Deliveries recognised as duplicates by the dedup window (acked again, not handled).
    pub duplicates: u64,
    /// Duplicates of requests already handled that got the reply this node kept for them
    /// (the requester's first reply was lost; see [`crate::NodeBuilder::reply_cache`]).
    pub replies_resent: u64,
    /// Duplicates of requests already handled whose reply was no longer kept: refused for
    /// good, so the requester's call fails with the reason.
    pub replies_missing: u64,
    /// Deliveries refused because no handler was registered for their name.
    pub unhandled: u64,
    /// Frames from peers that could not be decoded or broke a limit.
    pub malformed_frames: u64,
    /// Connections refused or failed during the TLS or Shoal handshake (a certificate from
    /// another CA, a revoked or expired one, no hello before the deadline, ...).
    pub handshake_failures: u64,
    /// Incoming connections refused before their TLS handshake started, by the limits against
    /// floods: too many connections in total or from one address, or more handshakes than the
    /// rate limit allows (see [`crate::NodeBuilder::max_connections`]).
    pub connections_refused: u64,
    /// Times an address was put in the penalty box: this node refused its TLS handshake, so
    /// its next connections are refused before TLS for a while (see
    /// [`crate::NodeBuilder::handshake_penalty`]); those refusals count in
    /// `connections_refused`.
    pub addresses_penalised: u64,
    /// Peer connections established.
    pub connections: u64,
    /// Events published by this node (each event of a batch counts).
    pub published: u64,
    /// Lone events published, commands sent and requests made by separate calls that
    /// travelled to the engine with others of the same turn, as one operation with a result for each (README,
    /// "Calls gathered in one turn"): each saved its own delivery, attempt and timer.
    pub gathered: u64,
    /// Writes to peers' connections: each hands QUIC every message, ack and reply queued for
    /// that peer at the time, so messages sent per write says how well traffic batches (about
    /// one on a quiet connection, where a message leaves at once; many under load).
    pub writes: u64,
    /// Events published on a topic nobody subscribed to (nothing was sent).
    pub events_unrouted: u64,
    /// Best-effort event copies dropped: the subscriber's queue was full, or its group had no
    /// live instance.
    pub events_dropped: u64,
    /// Background publishes and sends refused because the node held as many background
    /// messages as it may ([`crate::NodeBuilder::max_background_publishes`],
    /// [`crate::NodeBuilder::max_background_bytes`]; [`crate::Error::Backlog`]).
    pub background_refused: u64,
    /// Commands, requests, documents and asynchronous replies refused because the policy does
    /// not allow their sender to send them here (each was nacked "not authorized" for good).
    /// See [`crate::policy`].
    pub unauthorized_messages: u64,
    /// Event copies refused because the policy does not allow their publisher to publish
    /// their topic.
    pub unauthorized_events: u64,
    /// Subscriptions refused by the policy: peers' subscriptions (not added to the audiences,
    /// so they get no events) and this node's own `subscribe` calls.
    pub unauthorized_subscriptions: u64,
    /// This node's `publish` calls refused by the policy (each failed at once).
    pub unauthorized_publishes: u64,
    /// Messages and event copies refused because their return address (`reply_to`) named
    /// another service or node than their sender's certified one, or asked for a synchronous
    /// reply to an event (each was nacked "invalid" for good, before any handler ran): a
    /// peer trying to have replies sent, as this node, where it may not send itself.
    pub forged_return_addresses: u64,
    /// Multicast fan-out ([`crate::NodeBuilder::multicast`]; all zero without it): datagrams
    /// this node sent to its group (events, heartbeats and repairs sent to the whole group).
    pub multicast_sent: u64,
    /// Events this node's channel sent to its group, each once for all its subscribers
    /// (first sends: repairs are in `multicast_repairs`). `multicast_events /
    /// multicast_sent` is about how many events a datagram carried.
    pub multicast_events: u64,
    /// Multicast datagrams read from the group (every member's, before any check).
    pub multicast_received: u64,
    /// Multicast datagrams dropped: queues full (the protocol repairs them), socket errors,
    /// and received datagrams the channels refused (duplicates, keys this node does not hold,
    /// channels it does not receive, forgeries). The protocol repairs what an honest
    /// publisher meant for this node.
    pub multicast_dropped: u64,
    /// Of `multicast_dropped`: received datagrams whose seal did not open (forged or
    /// damaged) or that opened to something that is not events. Above zero, someone on the
    /// LAN sends datagrams that are not an honest publisher's.
    pub multicast_forged: u64,
    /// Lost datagrams this node's channel sent again (to the group when several subscribers
    /// asked, over the asker's QUIC connection otherwise).
    pub multicast_repairs: u64,
    /// Subscribers this node's channel moved to unicast because multicast did not reach them
    /// (or they fell behind).
    pub multicast_demotions: u64,
    /// Times this node's channel changed its key: a subscriber left or was refused, a
    /// subscriber joined after the key had sealed events (under a policy that restricts
    /// subscriptions), every 10 minutes, and after 2^22 datagrams under one key.
    pub multicast_rekeys: u64,
    /// Time this node's runtime thread spent busy polling for input instead of sleeping
    /// ([`crate::NodeBuilder::busy_poll`], and by default under load:
    /// [`crate::NodeBuilder::busy_poll_under_load`]): about the CPU time it cost.
    pub busy_poll_time: std::time::Duration,
}
