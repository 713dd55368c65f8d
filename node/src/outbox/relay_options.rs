//! How the outbox relay works: [`RelayOptions`], with their defaults.

use std::time::Duration;

/// How the relay works; see [`crate::NodeBuilder::outbox`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayOptions {
    /// How often the relay looks for rows it was not woken for (written by other processes,
    /// left by a crash, kept for later). Default 1 s; must be above zero
    /// ([`crate::NodeBuilder::start`] refuses zero). `Duration::MAX` never polls: the relay
    /// then wakes only for commits made through the store and for changes of peers.
    pub poll: Duration,
    /// How long a row keeps being retried, and waits for a receiver, before it is marked
    /// dead. Default 24 hours.
    pub keep_trying: Duration,
    /// How long a subscriber group, once seen, stays an audience of the outbox's events while
    /// it is away (its copies are held for it, up to `keep_trying`), even across restarts of
    /// this node: the relay records the groups it sees in the store. Default 7 days.
    pub remember_groups_for: Duration,
    /// Subscriber groups (`(pattern, group)`) that must get the outbox's events even before
    /// they were ever seen: a new deployment whose publisher starts first loses nothing.
    pub expected_groups: Vec<(String, String)>,
    /// Most rows kept in flight while they wait for a receiver that is away (a service with no
    /// live instance, a remembered group with none). They do not take the places of rows
    /// others can take at once; past this many, further such rows stay in the store until
    /// some of these go. Default 16,384.
    pub max_waiting: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            keep_trying: Duration::from_secs(24 * 3600),
            remember_groups_for: Duration::from_secs(7 * 24 * 3600),
            expected_groups: Vec::new(),
            max_waiting: 16_384,
        }
    }
}

impl RelayOptions {
    /// Refuses options the relay cannot work with: a zero poll interval. Called by
    /// [`crate::NodeBuilder::start`] before the node starts.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.poll.is_zero() {
            return Err(crate::Error::Config(
                "RelayOptions::poll(0): the outbox relay's poll interval must be above zero".into(),
            ));
        }
        Ok(())
    }

    /// Options with this poll interval (above zero: `NodeBuilder::start` refuses zero).
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Options with this retry span.
    pub fn keep_trying(mut self, span: Duration) -> Self {
        self.keep_trying = span;
        self
    }

    /// Options with this memory of subscriber groups.
    pub fn remember_groups_for(mut self, span: Duration) -> Self {
        self.remember_groups_for = span;
        self
    }

    /// Options with this bound on rows in flight waiting for an absent receiver.
    pub fn max_waiting(mut self, rows: usize) -> Self {
        self.max_waiting = rows;
        self
    }

    /// Options where the subscriber `group` of events matching `pattern` is an audience from
    /// the start, as if it had been seen (see [`RelayOptions::expected_groups`]).
    pub fn expect_group(mut self, pattern: impl Into<String>, group: impl Into<String>) -> Self {
        self.expected_groups.push((pattern.into(), group.into()));
        self
    }
}
