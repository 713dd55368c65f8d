//! The SQLite outbox and inbox: tables in the service's own database file, WAL mode.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction, params};
use shoal_proto::{Limits, MessageId};

use super::store::{
    DeadRow, Destination, OutboxError, OutboxRow, OutboxStats, OutboxStore, StoredRow, cutoff_ms,
    decode_rows, encode_stored, id_from_bytes,
};
use crate::Message;
use crate::message::unix_ms;
use crate::sync::lock;

/// The tables, created if missing. Row states: 0 pending, 2 dead (delivered rows are
/// deleted). Triggers keep the count of pending rows in `shoal_outbox_count`, whoever writes,
/// so the size limit costs one lookup.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shoal_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  BLOB    NOT NULL UNIQUE,
    destination TEXT    NOT NULL,
    frame       BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0,
    dead_ms     INTEGER,
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS shoal_outbox_by_state ON shoal_outbox (state, seq);
CREATE TABLE IF NOT EXISTS shoal_outbox_count (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    pending INTEGER NOT NULL
);
INSERT OR IGNORE INTO shoal_outbox_count (id, pending)
    VALUES (0, (SELECT COUNT(*) FROM shoal_outbox WHERE state = 0));
CREATE TRIGGER IF NOT EXISTS shoal_outbox_counts_inserts AFTER INSERT ON shoal_outbox
    WHEN NEW.state = 0
    BEGIN UPDATE shoal_outbox_count SET pending = pending + 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS shoal_outbox_counts_deletes AFTER DELETE ON shoal_outbox
    WHEN OLD.state = 0
    BEGIN UPDATE shoal_outbox_count SET pending = pending - 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS shoal_outbox_counts_updates AFTER UPDATE OF state ON shoal_outbox
    WHEN OLD.state != NEW.state
    BEGIN UPDATE shoal_outbox_count
        SET pending = pending + (NEW.state = 0) - (OLD.state = 0) WHERE id = 0; END;
CREATE TABLE IF NOT EXISTS shoal_outbox_groups (
    pattern TEXT    NOT NULL,
    grp     TEXT    NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (pattern, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shoal_inbox (
    message_id BLOB    PRIMARY KEY,
    handled_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Limits and timeouts of a [`SqliteOutbox`]; see [`SqliteOutbox::open_with`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct OutboxOptions {
    /// How long a statement waits for another connection's write lock before it fails with
    /// "database is locked". Default 5 s.
    pub busy_timeout: Duration,
    /// Most pending rows: [`SqliteOutbox::enqueue`] refuses more with [`OutboxError::Full`].
    /// Default 1,000,000.
    pub max_pending: u64,
    /// How long dead rows are kept for inspection ([`SqliteOutbox::dead_rows`]) before the
    /// relay prunes them. Default 7 days.
    pub keep_dead_for: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_pending: 1_000_000,
            keep_dead_for: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl OutboxOptions {
    /// These options with another busy timeout.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
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
}

/// An outbox (and inbox) in a SQLite database file shared with the service's own tables.
///
/// The service writes messages with [`SqliteOutbox::enqueue`] inside its own transactions, on
/// its own connection to the same file ([`SqliteOutbox::connect`] opens one set up alike);
/// the node's relay reads them through this value's connection.
#[derive(Debug)]
pub struct SqliteOutbox {
    conn: Mutex<Connection>,
    path: PathBuf,
    options: OutboxOptions,
    limits: Limits,
    committed: Arc<tokio::sync::Notify>,
}

impl SqliteOutbox {
    /// Opens (or creates) the database at `path` with default [`OutboxOptions`], switches it
    /// to WAL mode and creates the outbox and inbox tables if they are missing.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] naming the file when it cannot be opened, is not a SQLite
    /// database, or stays locked by another connection longer than the busy timeout.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OutboxError> {
        Self::open_with(path, OutboxOptions::default())
    }

    /// [`SqliteOutbox::open`] with these options.
    ///
    /// # Errors
    ///
    /// As [`SqliteOutbox::open`].
    pub fn open_with(path: impl AsRef<Path>, options: OutboxOptions) -> Result<Self, OutboxError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, options.busy_timeout)?;
        conn.execute_batch(SCHEMA).map_err(named(&path))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            options,
            limits: Limits::default(),
            committed: Arc::default(),
        })
    }

    /// Opens another connection to the same database, in WAL mode with the same busy
    /// timeout: the service's own connection for its domain tables and
    /// [`SqliteOutbox::enqueue`].
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] as for [`SqliteOutbox::open`].
    pub fn connect(&self) -> Result<Connection, OutboxError> {
        open_connection(&self.path, self.options.busy_timeout)
    }

    /// Adds `message` for `destination` to the outbox as part of `tx`: it is stored if and
    /// only if `tx` commits, with the id it has now (so receivers can deduplicate retries).
    /// Commit with [`SqliteOutbox::commit`] so the relay starts at once.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Full`] when [`OutboxOptions::max_pending`] rows are pending;
    /// [`OutboxError::Encode`] when the message breaks a wire limit;
    /// [`OutboxError::Database`] when the insert fails (for instance, the same message
    /// enqueued twice). Nothing was added then; the rest of `tx` is untouched.
    pub fn enqueue(
        &self,
        tx: &Transaction<'_>,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), OutboxError> {
        let frame = encode_stored(message, &self.limits)?;
        // Write first, then check the limit: a transaction that begins with a read cannot
        // take the write lock if another connection wrote meanwhile (SQLite's WAL answers
        // "database is locked" at once, without waiting), and the caller's transaction may
        // begin with this call.
        tx.prepare_cached(
            "INSERT INTO shoal_outbox (message_id, destination, frame, created_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut insert| {
            insert.execute(params![
                message.id().as_u128().to_be_bytes(),
                destination.to_column(),
                &frame[..],
                unix_ms() as i64,
            ])
        })
        .map_err(db)?;
        let pending: i64 = tx
            .query_row("SELECT pending FROM shoal_outbox_count", [], |r| r.get(0))
            .map_err(db)?;
        let pending = pending.max(0) as u64;
        if pending > self.options.max_pending {
            // Take the row back out: the rest of the caller's transaction is untouched.
            tx.execute(
                "DELETE FROM shoal_outbox WHERE seq = ?1",
                [tx.last_insert_rowid()],
            )
            .map_err(db)?;
            return Err(OutboxError::Full {
                pending: pending - 1,
                limit: self.options.max_pending,
            });
        }
        Ok(())
    }

    /// Commits `tx` (holding enqueued messages) and wakes the node's relay at once.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the commit fails; nothing was stored then.
    pub fn commit(&self, tx: Transaction<'_>) -> Result<(), OutboxError> {
        tx.commit().map_err(db)?;
        self.committed.notify_one();
        Ok(())
    }

    /// Records in `tx` that the message `id` was handled; `false` if it already was (the
    /// caller should then skip its effect and return `Ok` so the node acknowledges the
    /// message). Call it in the same transaction as the handler's own writes: the effect and
    /// the record commit together, so a redelivery after a crash or restart is recognised.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the insert fails.
    pub fn first_delivery(tx: &Transaction<'_>, id: MessageId) -> Result<bool, OutboxError> {
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO shoal_inbox (message_id, handled_ms) VALUES (?1, ?2)",
            )
            .and_then(|mut insert| {
                insert.execute(params![id.as_u128().to_be_bytes(), unix_ms() as i64])
            })
            .map_err(db)?;
        Ok(inserted == 1)
    }

    /// Applies a message's effect exactly once: in one transaction on `conn`, records `id`
    /// in the inbox and runs `effect`, unless `id` was handled before, even before a restart.
    /// Returns `Some(effect's value)`, or `None` for a redelivery (skip it and return `Ok`
    /// from the handler so the node acknowledges it). Call it from the handler before any
    /// `.await` (a connection cannot be held across one).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the transaction or `effect` fails; nothing was
    /// recorded then, so a redelivery applies the effect.
    pub fn apply_once<T>(
        conn: &mut Connection,
        id: MessageId,
        effect: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, OutboxError> {
        let tx = conn.transaction().map_err(db)?;
        if !Self::first_delivery(&tx, id)? {
            return Ok(None);
        }
        let value = effect(&tx).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Some(value))
    }

    /// Forgets inbox entries at least `age` old. Keep `age` well above the longest time a
    /// sender may still retry a message (its outbox's
    /// [`keep_trying`](crate::outbox::RelayOptions::keep_trying)): a message redelivered
    /// after its entry is gone is handled again. Returns how many were removed.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the delete fails.
    pub fn prune_inbox(&self, age: Duration) -> Result<usize, OutboxError> {
        lock(&self.conn)
            .execute(
                "DELETE FROM shoal_inbox WHERE handled_ms <= ?1",
                [cutoff_ms(age)],
            )
            .map_err(db)
    }

    /// Up to `limit` dead rows, oldest first, with the reason each was given up on.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the query fails.
    pub fn dead_rows(&self, limit: usize) -> Result<Vec<DeadRow>, OutboxError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, message_id, destination, COALESCE(last_error, ''), created_ms
                 FROM shoal_outbox WHERE state = 2 ORDER BY seq LIMIT ?1",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                let id: Vec<u8> = r.get(1)?;
                Ok(DeadRow {
                    seq: r.get(0)?,
                    message_id: id_from_bytes(&id),
                    destination: r.get(2)?,
                    reason: r.get(3)?,
                    created_ms: r.get::<_, i64>(4)?.max(0) as u64,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Puts every dead row back to pending (after fixing what made it fail), keeping its
    /// place and id; the relay delivers them at its next poll. Returns how many.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the update fails.
    pub fn requeue_dead(&self) -> Result<usize, OutboxError> {
        let requeued = lock(&self.conn)
            .execute(
                "UPDATE shoal_outbox SET state = 0, dead_ms = NULL, created_ms = ?1
                 WHERE state = 2",
                [unix_ms() as i64],
            )
            .map_err(db)?;
        self.committed.notify_one();
        Ok(requeued)
    }
}

impl OutboxStore for SqliteOutbox {
    fn pending(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, OutboxError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, destination, frame, created_ms FROM shoal_outbox
                 WHERE state = 0 AND seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db)?;
        let raw: Vec<StoredRow> = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok(StoredRow {
                    seq: r.get(0)?,
                    destination: r.get(1)?,
                    frame: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        drop(stmt);
        drop(conn);
        decode_rows(raw, &self.limits, |seq, reason| self.dead(seq, reason))
    }

    fn delivered(&self, seqs: &[i64]) -> Result<(), OutboxError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(db)?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM shoal_outbox WHERE seq = ?1")
                .map_err(db)?;
            for seq in seqs {
                stmt.execute([seq]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    fn dead(&self, seq: i64, reason: &str) -> Result<(), OutboxError> {
        lock(&self.conn)
            .execute(
                "UPDATE shoal_outbox SET state = 2, dead_ms = ?3, last_error = ?2 WHERE seq = ?1",
                params![seq, reason, unix_ms() as i64],
            )
            .map_err(db)?;
        Ok(())
    }

    fn prune_dead(&self) -> Result<usize, OutboxError> {
        lock(&self.conn)
            .execute(
                "DELETE FROM shoal_outbox WHERE state = 2 AND dead_ms < ?1",
                [cutoff_ms(self.options.keep_dead_for)],
            )
            .map_err(db)
    }

    fn saw_groups(&self, groups: &[(String, String)]) -> Result<(), OutboxError> {
        if groups.is_empty() {
            return Ok(());
        }
        let mut conn = lock(&self.conn);
        let tx = conn.transaction().map_err(db)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO shoal_outbox_groups (pattern, grp, seen_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (pattern, grp) DO UPDATE SET seen_ms = excluded.seen_ms",
                )
                .map_err(db)?;
            for (pattern, group) in groups {
                upsert
                    .execute(params![pattern, group, unix_ms() as i64])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    fn forget_group(&self, pattern: &str, group: &str) -> Result<bool, OutboxError> {
        let conn = lock(&self.conn);
        let removed = conn
            .execute(
                "DELETE FROM shoal_outbox_groups WHERE pattern = ?1 AND grp = ?2",
                params![pattern, group],
            )
            .map_err(db)?;
        Ok(removed > 0)
    }

    fn groups(&self, within: Duration) -> Result<Vec<(String, String)>, OutboxError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached("SELECT pattern, grp FROM shoal_outbox_groups WHERE seen_ms >= ?1")
            .map_err(db)?;
        let rows = stmt
            .query_map([cutoff_ms(within)], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn notifier(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.committed)
    }

    fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let conn = lock(&self.conn);
        let (pending, dead, oldest): (i64, i64, Option<i64>) = conn
            .query_row(
                "SELECT (SELECT pending FROM shoal_outbox_count),
                        (SELECT COUNT(*) FROM shoal_outbox WHERE state = 2),
                        (SELECT created_ms FROM shoal_outbox WHERE state = 0
                         ORDER BY seq LIMIT 1)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(db)?;
        let now = unix_ms();
        Ok(OutboxStats {
            pending: pending.max(0) as u64,
            dead: dead.max(0) as u64,
            oldest_pending: oldest
                .map(|ms| Duration::from_millis(now.saturating_sub(ms.max(0) as u64))),
        })
    }
}

/// A connection in WAL mode with a busy timeout. Fails on a file that is not a database.
fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, OutboxError> {
    let conn = Connection::open(path).map_err(named(path))?;
    conn.busy_timeout(busy_timeout).map_err(named(path))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(named(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!("SQLite kept journal mode `{mode}` instead of WAL");
    }
    // WAL makes NORMAL durable against crashes of the process (not of the machine's power).
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(named(path))?;
    Ok(conn)
}

fn named(path: &Path) -> impl Fn(rusqlite::Error) -> OutboxError + '_ {
    move |e| OutboxError::Database(format!("{}: {e}", path.display()))
}

fn db(e: rusqlite::Error) -> OutboxError {
    OutboxError::Database(e.to_string())
}

#[cfg(test)]
mod tests;
