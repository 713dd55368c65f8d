//! How a [`super::PostgresOutbox`] is set up: [`PostgresOptions`] and [`RelayMode`].

use std::time::Duration;

/// How the relay learns of new rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayMode {
    /// The polling publisher: every instance relays. Each claims rows with `FOR UPDATE SKIP
    /// LOCKED` under a lease it renews; rows of a dead instance go to the others once its
    /// lease ends. `LISTEN`/`NOTIFY` wakes the relays when rows are committed. Needs nothing
    /// but the right to create the schema.
    #[default]
    Polling,
    /// Transaction log tailing: one instance at a time (chosen with an advisory lock) reads
    /// the inserts into the outbox from a logical replication slot (`pgoutput`), in commit
    /// order, without queries. The slot's position is confirmed once the rows up to it are
    /// acknowledged, so a new tail resumes from there. Needs `wal_level = logical` and a
    /// role with the REPLICATION attribute (checked at connect).
    LogTailing,
}

/// Limits, timeouts and the relay mode of a [`super::PostgresOutbox`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The schema that holds the outbox's tables (created if missing). Every instance of a
    /// service uses the same; two services sharing a database use two. Lower-case letters,
    /// digits and `_`. Default `shoal`.
    pub schema: String,
    /// How the relay learns of new rows. Default [`RelayMode::Polling`]. Every instance of a
    /// service must use the same mode; one relays in either mode only when no instance
    /// relays in the other (an advisory lock keeps them apart), so switching modes is safe.
    pub relay: RelayMode,
    /// How long a polling relay's claim on its rows lasts without renewal (it renews every
    /// third of it): rows of an instance that died go to the others after this. Standby
    /// instances try for the relay's lock every fifth of it. Default 10 s. A lease longer
    /// than a century (`Duration::MAX`, say) is written as a century, which PostgreSQL can
    /// store as a timestamp from now.
    pub lease: Duration,
    /// Log tailing: how long an unacknowledged row holds back the slot's position (the WAL
    /// the server keeps for it). A row waiting longer, for a receiver that is away, stays in
    /// the table, and a new tail finds it there. Default 60 s.
    pub hold_slot_for: Duration,
    /// Most pending rows: [`super::PostgresOutbox::enqueue`] refuses more with
    /// [`crate::outbox::OutboxError::Full`]. Checked against a count at most a second old.
    /// Default 1,000,000.
    pub max_pending: u64,
    /// How long dead rows are kept for inspection before the relay prunes them. Default 7
    /// days.
    pub keep_dead_for: Duration,
    /// Connections in the pool (the relay uses one at a time; the rest serve
    /// [`super::PostgresOutbox::pool`]). Default 16.
    pub pool_size: usize,
    /// How long to wait for a connection to the server, or for a free one in the pool.
    /// Default 5 s.
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "shoal".into(),
            relay: RelayMode::Polling,
            lease: Duration::from_secs(10),
            hold_slot_for: Duration::from_secs(60),
            max_pending: 1_000_000,
            keep_dead_for: Duration::from_secs(7 * 24 * 3600),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PostgresOptions {
    /// These options with the tables in `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// These options with another relay mode.
    pub fn relay(mut self, mode: RelayMode) -> Self {
        self.relay = mode;
        self
    }

    /// These options with another lease (at least a second; at most a century, see
    /// [`PostgresOptions::lease`]).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// These options with another hold on the slot's position.
    pub fn hold_slot_for(mut self, span: Duration) -> Self {
        self.hold_slot_for = span;
        self
    }

    /// These options with another limit on pending rows.
    pub fn max_pending(mut self, rows: u64) -> Self {
        self.max_pending = rows;
        self
    }

    /// These options with another retention of dead rows.
    pub fn keep_dead_for(mut self, span: Duration) -> Self {
        self.keep_dead_for = span;
        self
    }

    /// These options with another pool size (at least 2).
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(2);
        self
    }

    /// These options with another connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}
