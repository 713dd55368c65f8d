//! What the relay needs from outbox storage, whatever the database.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use shoal_proto::{Limits, codec};

use crate::message::unix_ms;
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
    /// The database lacks something this outbox needs (a setting, a privilege, a newer
    /// schema than this build knows); the message says what and how to fix it.
    #[error("outbox database set-up: {0}")]
    Setup(String),
}

/// Work a store does beside the relay for as long as it runs (see
/// [`OutboxStore::background`]).
pub type Background = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A row as stored, before its frame is decoded.
pub(crate) struct StoredRow {
    pub(crate) seq: i64,
    pub(crate) destination: String,
    pub(crate) frame: Vec<u8>,
    pub(crate) created_ms: i64,
}

impl StoredRow {
    /// The row with its message decoded, or why it cannot be.
    pub(crate) fn decode(self, limits: &Limits) -> Result<OutboxRow, String> {
        let envelope = codec::decode_envelope(&self.frame, limits).map_err(|e| e.to_string())?;
        Ok(OutboxRow {
            seq: self.seq,
            destination: Destination::from_column(&self.destination)?,
            message: Message::from_envelope(envelope),
            created_ms: self.created_ms.max(0) as u64,
        })
    }
}

/// Decodes stored rows in order; a row that cannot be read back is handed to `dead` with the
/// reason instead, so one damaged row never stalls the others.
pub(crate) fn decode_rows(
    rows: Vec<StoredRow>,
    limits: &Limits,
    mut dead: impl FnMut(i64, &str) -> Result<(), OutboxError>,
) -> Result<Vec<OutboxRow>, OutboxError> {
    let mut decoded = Vec::with_capacity(rows.len());
    for row in rows {
        let seq = row.seq;
        match row.decode(limits) {
            Ok(row) => decoded.push(row),
            Err(why) => {
                let reason = format!("unreadable outbox row: {why}");
                tracing::warn!(seq, "{reason}; marked dead");
                dead(seq, &reason)?;
            }
        }
    }
    Ok(decoded)
}

/// A message as an outbox row stores it (see `codec::encode_envelope`), with the trace
/// context current at the enqueue in its headers (unless it has one): the row's frame holds
/// the headers, so the relay's send, whenever it comes, continues that trace, and no column
/// is needed.
pub(crate) fn encode_stored(
    message: &Message,
    limits: &Limits,
) -> Result<bytes::Bytes, OutboxError> {
    let message = crate::trace::with_current_context(message);
    Ok(codec::encode_envelope(message.envelope(), limits)?)
}

/// Unix milliseconds `age` ago.
pub(crate) fn cutoff_ms(age: Duration) -> i64 {
    unix_ms().saturating_sub(age.as_millis() as u64) as i64
}

/// A message id from its stored bytes (big-endian, up to 16).
pub(crate) fn id_from_bytes(bytes: &[u8]) -> MessageId {
    let mut raw = [0_u8; 16];
    let n = bytes.len().min(16);
    raw[16 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    MessageId::from_u128(u128::from_be_bytes(raw))
}

/// Storage the relay reads pending rows from and marks delivered or dead. Two stores ship:
/// SQLite ([`crate::outbox::SqliteOutbox`]) and, with the `postgres` feature, PostgreSQL
/// (`PostgresOutbox`).
///
/// The relay calls these from a blocking thread (`tokio::task::spawn_blocking`), one call at
/// a time, so they may block on IO. Rows it gets from [`OutboxStore::pending`] are this
/// relay's until their outcome is recorded: a store shared by several relays hands each row
/// to one of them (the PostgreSQL store claims them).
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
    /// Work the store does beside the relay while it runs, spawned when the relay starts
    /// and dropped when it stops: the PostgreSQL store's lease, lock, `LISTEN` connection
    /// or log tail. None by default.
    fn background(&self) -> Option<Background> {
        None
    }
    /// The relay stopped (the node shuts down): rows it was given but did not finish may go
    /// to other relays at once. Nothing to do by default.
    fn relay_stopped(&self) -> Result<(), OutboxError> {
        Ok(())
    }
    /// Until when the rows [`OutboxStore::pending`] gave this relay stay its own; `None` (the
    /// default) for a store that never hands them to another relay. Once it passes, another
    /// relay may deliver them (the PostgreSQL polling relay's lease lapsed): the relay stops
    /// delivering the rows it has in flight (the node stops retrying them) and reads the store
    /// again from the start, where it gets the rows that are still, or again, its own. The
    /// relay asks after each step and sleeps until it when it has rows in flight.
    fn claims_until(&self) -> Option<std::time::Instant> {
        None
    }
}
