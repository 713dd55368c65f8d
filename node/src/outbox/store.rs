//! What the relay needs from outbox storage, whatever the database.

use std::sync::Arc;

use crate::Message;

/// Where an outbox message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// Point-to-point to one instance of this service (`Node::send`).
    Service(String),
    /// Published on its topic, the message's name (`Node::publish`).
    Publish,
}

impl Destination {
    /// The text stored in the outbox table: `service:<name>` or `publish`.
    pub(crate) fn to_column(&self) -> String {
        match self {
            Self::Service(name) => format!("service:{name}"),
            Self::Publish => "publish".into(),
        }
    }

    /// Parses [`Destination::to_column`]'s text.
    pub(crate) fn from_column(text: &str) -> Result<Self, OutboxError> {
        match text.split_once(':') {
            Some(("service", name)) if !name.is_empty() => Ok(Self::Service(name.to_owned())),
            None if text == "publish" => Ok(Self::Publish),
            _ => Err(OutboxError::Corrupt(format!(
                "unknown destination `{text}`"
            ))),
        }
    }
}

/// One message waiting in the outbox.
#[derive(Clone, Debug)]
pub struct OutboxRow {
    /// Position in the outbox: rows are delivered in this order (per key, strictly).
    pub seq: i64,
    /// Where it goes.
    pub destination: Destination,
    /// The message, with the id it was enqueued with (stable across retries and restarts).
    pub message: Message,
}

/// What the outbox holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Rows waiting to be delivered.
    pub pending: u64,
    /// Rows given up on (kept until pruned).
    pub dead: u64,
}

/// Errors of the outbox and inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database refused an operation (locked, full, not a database, ...).
    #[error("outbox database: {0}")]
    Database(String),
    /// A stored row cannot be read back (written by an incompatible version, or damaged).
    #[error("outbox row unreadable: {0}")]
    Corrupt(String),
    /// The message cannot be stored (it breaks a wire limit).
    #[error("message refused by the outbox: {0}")]
    Encode(#[from] shoal_proto::EncodeError),
}

/// Storage the relay reads pending rows from and marks delivered or dead. The SQLite store
/// ([`crate::outbox::SqliteOutbox`]) ships; a server database can implement the same trait.
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` pending rows with `seq` above `after`, in `seq` order.
    fn pending(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, OutboxError>;
    /// The rows were acknowledged: they leave the outbox.
    fn delivered(&self, seqs: &[i64]) -> Result<(), OutboxError>;
    /// The row was dead-lettered: it stays, marked dead with `reason`, until pruned.
    fn dead(&self, seq: i64, reason: &str) -> Result<(), OutboxError>;
    /// Counts of pending and dead rows.
    fn stats(&self) -> Result<OutboxStats, OutboxError>;
    /// Notified after a commit that added rows, so the relay wakes at once instead of at its
    /// next poll.
    fn notifier(&self) -> Arc<tokio::sync::Notify>;
}
