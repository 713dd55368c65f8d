//! The engine's counters, plain numbers under the driver's lock.

use crate::NodeStats;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) acked: u64,
    pub(super) retries: u64,
    pub(super) dead_lettered: u64,
    pub(super) handled: u64,
    pub(super) handler_errors: u64,
    pub(super) duplicates: u64,
    pub(super) replies_resent: u64,
    pub(super) replies_missing: u64,
    pub(super) unhandled: u64,
    pub(super) malformed_frames: u64,
    pub(super) connections: u64,
    pub(super) published: u64,
    pub(super) gathered: u64,
    pub(super) writes: u64,
    pub(super) events_unrouted: u64,
    pub(super) events_dropped: u64,
    pub(super) background_refused: u64,
    // Refusals of the authorization policy (engine/authz.rs).
    pub(super) unauthorized_messages: u64,
    pub(super) unauthorized_events: u64,
    pub(super) unauthorized_subscriptions: u64,
    pub(super) unauthorized_publishes: u64,
    /// Messages refused for a return address not their sender's (engine/sender.rs).
    pub(super) forged_return_addresses: u64,
}

impl Counters {
    /// A snapshot for users; handshake failures and refused connections happen before a
    /// connection reaches the engine and are counted by the transport.
    pub(super) fn snapshot(&self) -> NodeStats {
        NodeStats {
            acked: self.acked,
            retries: self.retries,
            dead_lettered: self.dead_lettered,
            handled: self.handled,
            handler_errors: self.handler_errors,
            duplicates: self.duplicates,
            replies_resent: self.replies_resent,
            replies_missing: self.replies_missing,
            unhandled: self.unhandled,
            malformed_frames: self.malformed_frames,
            handshake_failures: 0,
            connections_refused: 0,
            addresses_penalised: 0, // counted by the transport too
            connections: self.connections,
            published: self.published,
            gathered: self.gathered,
            writes: self.writes,
            events_unrouted: self.events_unrouted,
            events_dropped: self.events_dropped,
            background_refused: self.background_refused,
            unauthorized_messages: self.unauthorized_messages,
            unauthorized_events: self.unauthorized_events,
            unauthorized_subscriptions: self.unauthorized_subscriptions,
            unauthorized_publishes: self.unauthorized_publishes,
            forged_return_addresses: self.forged_return_addresses,
            // The multicast counters are filled in by the driver (runtime/multicast.rs).
            ..NodeStats::default()
        }
    }
}
