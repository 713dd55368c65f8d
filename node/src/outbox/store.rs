//! What the relay needs from outbox storage, whatever the database.

use std::time::Duration;

use crate::{Message, MessageId};

/// Where an outbox message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// Point-to-point to one instance of this service (`Node::send`).
    Service(String),
    /// Published on its topic, the message's name (`Node::publish`), to every subscriber
    /// group.
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
    pub(crate) fn from_column(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("service", name)) if !name.is_empty() => Ok(Self::Service(name.to_owned())),
            None if text == "publish" => Ok(Self::Publish),
            _ => Err(format!("unknown destination `{text}`")),
        }
    }
}

/// One message waiting in the outbox.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OutboxRow {
    /// Position in the outbox: rows are delivered in this order (per key, strictly).
    pub seq: i64,
    /// Where it goes.
    pub destination: Destination,
    /// The message, with the id it was enqueued with (stable across retries and restarts).
    pub message: Message,
    /// When it was enqueued (Unix milliseconds): the relay's
    /// [`keep_trying`](crate::outbox::RelayOptions::keep_trying) counts from here, across
    /// restarts.
    pub created_ms: u64,
}

/// A row the relay gave up on, kept for inspection until pruned or requeued.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadRow {
    /// Position in the outbox.
    pub seq: i64,
    /// The message's id.
    pub message_id: MessageId,
    /// Where it was going, as stored (`service:<name>` or `publish`).
    pub destination: String,
    /// Why it was given up on (the dead letter's last failure, or why the row is unreadable).
    pub reason: String,
    /// When it was enqueued (Unix milliseconds).
    pub created_ms: u64,
}

/// What the outbox holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Rows waiting to be delivered.
    pub pending: u64,
    /// Rows given up on (kept until pruned).
    pub dead: u64,
    /// Age of the oldest pending row: how far behind the relay is (`None` when nothing waits).
    pub oldest_pending: Option<Duration>,
}

/// Errors of the outbox and inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database refused an operation (locked, full, not a database, ...).
    #[error("outbox database: {0}")]
    Database(String),
    /// The outbox holds its configured maximum of pending rows: nothing was added. Roll the
    /// transaction back (or commit it without the message) and try again later.
    #[error("outbox full: {pending} messages pending, limit {limit}")]
    Full {
        /// Rows pending now.
        pending: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The message cannot be stored (it breaks a wire limit).
    #[error("message refused by the outbox: {0}")]
    Encode(#[from] shoal_proto::EncodeError),
}

/// Storage the relay reads pending rows from and marks delivered or dead. The SQLite store
/// ([`crate::outbox::SqliteOutbox`]) ships; a server database can implement the same trait.
///
/// The relay calls these from a blocking thread (`tokio::task::spawn_blocking`), one call at
/// a time, so they may block on IO.
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` pending rows with `seq` above `after`, in `seq` order. A row that cannot
    /// be read back is not returned: the store marks it dead with the reason, so one damaged
    /// row never stalls the others.
    fn pending(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, OutboxError>;
    /// The rows were acknowledged: they leave the outbox (one transaction).
    fn delivered(&self, seqs: &[i64]) -> Result<(), OutboxError>;
    /// The row was dead-lettered: it stays, marked dead with `reason`, until pruned.
    fn dead(&self, seq: i64, reason: &str) -> Result<(), OutboxError>;
    /// Removes dead rows past the store's retention; returns how many went.
    fn prune_dead(&self) -> Result<usize, OutboxError>;
    /// Records that these subscriber groups (`(pattern, group)`) are live now.
    fn saw_groups(&self, groups: &[(String, String)]) -> Result<(), OutboxError>;
    /// Forgets the subscriber `group` of `pattern` (gone for good); says whether it was
    /// remembered.
    fn forget_group(&self, pattern: &str, group: &str) -> Result<bool, OutboxError>;
    /// The subscriber groups seen within `within`: events published from the outbox are held
    /// for them while they are away, even after this node restarts.
    fn groups(&self, within: Duration) -> Result<Vec<(String, String)>, OutboxError>;
    /// Counts of pending and dead rows.
    fn stats(&self) -> Result<OutboxStats, OutboxError>;
    /// Notified after a commit that added rows, so the relay wakes at once instead of at its
    /// next poll.
    fn notifier(&self) -> std::sync::Arc<tokio::sync::Notify>;
}
