//! What the relay needs to know about the node's peers, behind a few methods on [`Node`], so
//! the relay never reaches into the node's internals (which belong to the delivery engine).

use shoal_proto::Subscription;
use tokio::sync::watch;

use crate::{Node, RetryPolicy};

impl Node {
    /// A receiver that wakes on every change of the peers (up, down, subscriptions). Its value
    /// counts the changes: a delivery that failed for want of a receiver is worth retrying at
    /// once if the count moved while it was on its way.
    pub(crate) fn peer_changes(&self) -> watch::Receiver<u64> {
        self.driver().peer_changes()
    }

    /// Whether at least one live instance of `service` is connected.
    pub(crate) fn has_live_instance(&self, service: &str) -> bool {
        self.driver()
            .call(|engine, now| engine.live_instances(service, now))
            > 0
    }

    /// The grouped subscriptions of the live peers.
    pub(crate) fn live_groups(&self) -> Vec<Subscription> {
        self.driver().read(|engine| engine.live_groups())
    }

    /// Keeps the grouped `subs` that no live peer holds as audiences until `until`.
    pub(crate) fn remember_groups(&self, subs: Vec<Subscription>, until: std::time::Instant) {
        self.driver()
            .call(|engine, now| engine.remember_groups(subs, until, now));
    }

    /// The node's retry policy (what sends use unless told otherwise).
    pub(crate) fn default_retry_policy(&self) -> RetryPolicy {
        self.driver().config.retry.clone()
    }
}
