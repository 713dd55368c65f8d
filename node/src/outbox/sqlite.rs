//! The SQLite outbox and inbox: tables in the service's own database file, WAL mode.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use shoal_proto::{Frame, Limits, MessageId, codec};

use super::store::{Destination, OutboxError, OutboxRow, OutboxStats, OutboxStore};
use crate::Message;
use crate::sync::lock;

/// The tables, created if missing. Row states: 0 pending, 2 dead (delivered rows are deleted).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shoal_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  BLOB    NOT NULL UNIQUE,
    destination TEXT    NOT NULL,
    frame       BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS shoal_outbox_by_state ON shoal_outbox (state, seq);
CREATE TABLE IF NOT EXISTS shoal_inbox (
    message_id BLOB    PRIMARY KEY,
    handled_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An outbox (and inbox) in a SQLite database file shared with the service's own tables.
///
/// The service writes messages with [`SqliteOutbox::enqueue`] inside its own transactions, on
/// its own connections to the same file; the node's relay reads them through this value's
/// connection.
#[derive(Debug)]
pub struct SqliteOutbox {
    conn: Mutex<Connection>,
    limits: Limits,
    committed: Arc<tokio::sync::Notify>,
}

impl SqliteOutbox {
    /// Opens (or creates) the database at `path`, switches it to WAL mode and creates the
    /// outbox and inbox tables if they are missing.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] naming the file when it cannot be opened, is not a SQLite
    /// database, or stays locked by another process.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OutboxError> {
        let path = path.as_ref();
        let named = |e: rusqlite::Error| OutboxError::Database(format!("{}: {e}", path.display()));
        let conn = Connection::open(path).map_err(named)?;
        prepare(&conn).map_err(named)?;
        Ok(Self {
            conn: Mutex::new(conn),
            limits: Limits::default(),
            committed: Arc::default(),
        })
    }

    /// Adds `message` for `destination` to the outbox as part of `tx`: it is stored if and
    /// only if `tx` commits, with the id it has now (so receivers can deduplicate retries).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Encode`] when the message breaks a wire limit;
    /// [`OutboxError::Database`] when the insert fails (for instance, the same message
    /// enqueued twice).
    pub fn enqueue(
        tx: &Transaction<'_>,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), OutboxError> {
        let mut frame = BytesMut::new();
        codec::encode(
            &Frame::Deliver(Box::new(message.envelope().clone())),
            &Limits::default(),
            &mut frame,
        )?;
        tx.execute(
            "INSERT INTO shoal_outbox (message_id, destination, frame, created_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                message.id().as_u128().to_be_bytes(),
                destination.to_column(),
                &frame[..],
                crate::message::unix_ms() as i64,
            ],
        )
        .map_err(db)?;
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
    /// caller should then skip its effect and let the node acknowledge the message). Call it
    /// in the same transaction as the handler's own writes.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the insert fails.
    pub fn first_delivery(tx: &Transaction<'_>, id: MessageId) -> Result<bool, OutboxError> {
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO shoal_inbox (message_id, handled_ms) VALUES (?1, ?2)",
                params![id.as_u128().to_be_bytes(), crate::message::unix_ms() as i64],
            )
            .map_err(db)?;
        Ok(inserted == 1)
    }

    /// Forgets inbox entries older than `age` (their messages can no longer be redelivered:
    /// keep `age` above the senders' retry deadline). Returns how many were removed.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the delete fails.
    pub fn prune_inbox(&self, age: Duration) -> Result<usize, OutboxError> {
        let cutoff = crate::message::unix_ms().saturating_sub(age.as_millis() as u64) as i64;
        lock(&self.conn)
            .execute("DELETE FROM shoal_inbox WHERE handled_ms < ?1", [cutoff])
            .map_err(db)
    }

    fn row(&self, seq: i64, destination: &str, frame: &[u8]) -> Result<OutboxRow, OutboxError> {
        let corrupt = |why: String| OutboxError::Corrupt(format!("row {seq}: {why}"));
        let mut buf = BytesMut::from(frame);
        let envelope = match codec::decode(&mut buf, &self.limits) {
            Ok(Some(Frame::Deliver(envelope))) if buf.is_empty() => *envelope,
            Ok(_) => return Err(corrupt("not one stored message".into())),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        Ok(OutboxRow {
            seq,
            destination: Destination::from_column(destination)?,
            message: Message::from_envelope(envelope),
        })
    }
}

impl OutboxStore for SqliteOutbox {
    fn pending(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, OutboxError> {
        let conn = lock(&self.conn);
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, destination, frame FROM shoal_outbox
                 WHERE state = 0 AND seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db)?;
        let raw: Vec<(i64, String, Vec<u8>)> = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        drop(stmt);
        drop(conn);
        raw.iter()
            .map(|(seq, dest, frame)| self.row(*seq, dest, frame))
            .collect()
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
                "UPDATE shoal_outbox SET state = 2, last_error = ?2 WHERE seq = ?1",
                params![seq, reason],
            )
            .map_err(db)?;
        Ok(())
    }

    fn notifier(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.committed)
    }

    fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let conn = lock(&self.conn);
        let count = |state: i64| -> Result<u64, OutboxError> {
            conn.query_row(
                "SELECT COUNT(*) FROM shoal_outbox WHERE state = ?1",
                [state],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(db)
            .map(|n| n.unwrap_or(0).max(0) as u64)
        };
        Ok(OutboxStats {
            pending: count(0)?,
            dead: count(2)?,
        })
    }
}

/// WAL mode, a busy timeout, and the tables. Fails on a file that is not a database.
fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!("SQLite kept journal mode `{mode}` instead of WAL");
    }
    conn.execute_batch(SCHEMA)
}

fn db(e: rusqlite::Error) -> OutboxError {
    OutboxError::Database(e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shoal-outbox-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("service.db")
    }

    #[test]
    fn only_committed_messages_are_pending_in_order_with_their_ids() {
        let path = temp_db("commit");
        let outbox = SqliteOutbox::open(&path).unwrap();
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            .unwrap();
        let mut committed = Vec::new();
        for i in 0..6 {
            let tx = conn.transaction().unwrap();
            tx.execute("INSERT INTO orders (id) VALUES (?1)", [i])
                .unwrap();
            let msg = Message::event("order.created", format!("order {i}"));
            SqliteOutbox::enqueue(&tx, &Destination::Publish, &msg).unwrap();
            if i % 2 == 0 {
                tx.commit().unwrap();
                committed.push(msg.id());
            } // odd ones roll back when dropped
        }
        let pending = outbox.pending(0, 100).unwrap();
        let ids: Vec<MessageId> = pending.iter().map(|r| r.message.id()).collect();
        assert_eq!(ids, committed);
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(outbox.stats().unwrap().pending, 3);

        outbox.delivered(&[pending[0].seq]).unwrap();
        outbox.dead(pending[1].seq, "no subscriber").unwrap();
        let left = outbox.pending(0, 100).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message.id(), committed[2]);
        assert_eq!(
            outbox.stats().unwrap(),
            OutboxStats {
                pending: 1,
                dead: 1
            }
        );
        // Reopening finds the same rows: nothing lives only in memory.
        drop(outbox);
        let again = SqliteOutbox::open(&path).unwrap();
        assert_eq!(again.pending(0, 100).unwrap()[0].message.id(), committed[2]);
    }

    #[test]
    fn the_inbox_remembers_handled_ids_across_reopening() {
        let path = temp_db("inbox");
        let mut conn = Connection::open(&path).unwrap();
        let outbox = SqliteOutbox::open(&path).unwrap();
        let id = Message::command("x", "").id();
        let tx = conn.transaction().unwrap();
        assert!(SqliteOutbox::first_delivery(&tx, id).unwrap());
        assert!(!SqliteOutbox::first_delivery(&tx, id).unwrap());
        tx.commit().unwrap();
        drop(conn);
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        assert!(
            !SqliteOutbox::first_delivery(&tx, id).unwrap(),
            "still known after reopening"
        );
        drop(tx);
        assert_eq!(outbox.prune_inbox(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(outbox.prune_inbox(Duration::ZERO).unwrap(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_by_name() {
        let path = temp_db("corrupt");
        std::fs::write(&path, b"this is not a sqlite database, just text").unwrap();
        let err = SqliteOutbox::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("service.db") && err.contains("not a database"),
            "{err}"
        );
    }
}
