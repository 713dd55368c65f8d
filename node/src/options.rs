//! Per-call options: how hard a send or a publish tries.

use std::time::Duration;

use crate::RetryPolicy;

/// Per-message options for [`crate::Node::send_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// Overrides the node's retry policy for this message. The send fails with
    /// [`crate::Error::Config`] if the policy has `max_attempts` 0, or a zero `ack_timeout` or
    /// `deadline`.
    pub retry: Option<RetryPolicy>,
    /// Fail with [`crate::Error::Busy`] instead of waiting when the chosen instance already has the
    /// maximum of unacknowledged messages.
    pub fail_fast: bool,
}

impl SendOptions {
    /// Options that fail fast instead of waiting on a full in-flight window.
    pub fn fail_fast() -> Self {
        Self {
            fail_fast: true,
            ..Self::default()
        }
    }

    /// Options with a retry policy of their own.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        Self {
            retry: Some(retry),
            ..Self::default()
        }
    }
}

/// How hard a publish tries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reliability {
    /// Every audience acknowledges its copy; unacknowledged copies are retried (on another
    /// instance of the group when there is one) and dead-lettered when attempts run out.
    #[default]
    Reliable,
    /// Each copy is written once and not acknowledged: for telemetry-like events where the
    /// next one soon replaces a lost one. A copy that finds its subscriber's queue full, or
    /// no live instance, is dropped and counted in [`crate::NodeStats::events_dropped`].
    BestEffort,
}

/// Per-publish options for [`crate::Node::publish_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Reliable (the default) or best-effort.
    pub reliability: Reliability,
    /// Return at once instead of waiting for the acks; the reliable copies are delivered (and
    /// retried, or dead-lettered) in the background. Events published this way one by one
    /// while others are on their way go together (README, "Reliable events").
    /// [`crate::Node::publish_background`] does the same without a future, with the node's
    /// retry policy and hold time.
    pub background: bool,
    /// Overrides the node's retry policy for this event. The publish fails with
    /// [`crate::Error::Config`] if the policy has `max_attempts` 0, or a zero `ack_timeout` or
    /// `deadline`.
    pub retry: Option<RetryPolicy>,
    /// Overrides how long a copy waits for its group to have a live instance
    /// ([`crate::NodeBuilder::hold_events_for`]).
    pub hold_for: Option<Duration>,
}

impl PublishOptions {
    /// Best-effort delivery: written once, no acks, drops counted.
    pub fn best_effort() -> Self {
        Self {
            reliability: Reliability::BestEffort,
            ..Self::default()
        }
    }

    /// Reliable delivery that does not wait for the acks.
    pub fn background() -> Self {
        Self {
            background: true,
            ..Self::default()
        }
    }

    /// Holds copies for a group with no live instance at most `hold` before dead-lettering
    /// them. While a copy is held the group stays remembered (however short
    /// [`crate::NodeBuilder::remember_groups_for`] is), and once an instance is back the copy
    /// gets its full retries: its [`RetryPolicy::deadline`] counts from the end of the wait,
    /// not from the publish.
    pub fn hold_for(mut self, hold: Duration) -> Self {
        self.hold_for = Some(hold);
        self
    }

    /// Uses `policy` instead of the node's retry policy.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// Most events in one batch: a receiver tracks each in its dedup window (100,000 ids by
/// default), and a batch must not push most of it out.
pub const MAX_BATCH_EVENTS: usize = 10_000;
