//! [`OutboxStore`] for [`PostgresOutbox`]: what the relay calls, from its blocking thread,
//! run on the store's runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{Mode, PostgresOutbox, pg};
use crate::message::unix_ms;
use crate::outbox::store::{
    Background, OutboxError, OutboxRow, OutboxStats, OutboxStore, cutoff_ms, decode_rows,
};

impl PostgresOutbox {
    /// Runs `work` to its end on the store's runtime. Only for a thread outside the runtime
    /// (the relay's blocking calls).
    fn block<T>(
        &self,
        work: impl Future<Output = Result<T, OutboxError>>,
    ) -> Result<T, OutboxError> {
        self.shared.runtime.block_on(work)
    }

    /// Runs a statement that returns no rows on a pooled connection.
    fn execute(
        &self,
        template: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, OutboxError> {
        self.block(async {
            let client = self.shared.client().await?;
            let statement = client
                .prepare_cached(&self.shared.sql(template))
                .await
                .map_err(pg)?;
            client.execute(&statement, params).await.map_err(pg)
        })
    }

    /// `statement` (which ends some rows) as it runs in this mode. Polling: the next rows of
    /// the keys of rows that end may now be claimed, by any relay, and the relays' cursors
    /// may be past them; a notification sends them back to look.
    fn unblocking(&self, statement: &str) -> String {
        match &self.shared.mode {
            Mode::Polling(_) => format!(
                "WITH ended AS ({statement} RETURNING seq, msg_key)
                 SELECT pg_notify('{{s}}_outbox', min(seq)::text) FROM ended
                 WHERE msg_key IS NOT NULL HAVING count(*) > 0"
            ),
            Mode::Tailing(_) => statement.to_owned(),
        }
    }

    /// Lets the log tail confirm the slot past rows that are done.
    fn finished(&self, seqs: &[i64]) {
        if let Mode::Tailing(tail) = &self.shared.mode {
            tail.finished(seqs, self.shared.options.hold_slot_for);
        }
    }
}

impl OutboxStore for PostgresOutbox {
    fn claims_until(&self) -> Option<std::time::Instant> {
        match &self.shared.mode {
            Mode::Polling(poll) => Some(poll.claims_until().into_std()),
            // The log tail claims nothing: a tail that took over reads the table's pending
            // rows, in flight here or not (same ids: receivers deduplicate).
            Mode::Tailing(_) => None,
        }
    }

    fn pending(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, OutboxError> {
        let stored = match &self.shared.mode {
            Mode::Polling(poll) => self.block(poll.pending(&self.shared, after, limit))?,
            Mode::Tailing(tail) => self.block(tail.pending(&self.shared, after, limit))?,
        };
        decode_rows(stored, &self.shared.limits, |seq, reason| {
            self.dead(seq, reason)
        })
    }

    fn delivered(&self, seqs: &[i64]) -> Result<(), OutboxError> {
        self.execute(
            &self.unblocking("DELETE FROM {s}.outbox WHERE seq = ANY($1)"),
            &[&seqs],
        )?;
        self.finished(seqs);
        Ok(())
    }

    fn dead(&self, seq: i64, reason: &str) -> Result<(), OutboxError> {
        self.execute(
            &self.unblocking(
                "UPDATE {s}.outbox SET state = 2, dead_ms = $3, last_error = $2,
                        claimed_by = NULL
                 WHERE seq = $1",
            ),
            &[&seq, &reason, &(unix_ms() as i64)],
        )?;
        self.finished(&[seq]);
        Ok(())
    }

    fn prune_dead(&self) -> Result<usize, OutboxError> {
        let pruned = self.execute(
            "DELETE FROM {s}.outbox WHERE state = 2 AND dead_ms < $1",
            &[&cutoff_ms(self.shared.options.keep_dead_for)],
        )?;
        Ok(pruned as usize)
    }

    fn saw_groups(&self, groups: &[(String, String)]) -> Result<(), OutboxError> {
        if groups.is_empty() {
            return Ok(());
        }
        let (patterns, names): (Vec<&str>, Vec<&str>) =
            groups.iter().map(|(p, g)| (p.as_str(), g.as_str())).unzip();
        self.execute(
            "INSERT INTO {s}.outbox_groups (pattern, grp, seen_ms)
             SELECT p, g, $3 FROM unnest($1::text[], $2::text[]) AS t (p, g)
             ON CONFLICT (pattern, grp) DO UPDATE SET seen_ms = excluded.seen_ms",
            &[&patterns, &names, &(unix_ms() as i64)],
        )?;
        Ok(())
    }

    fn forget_group(&self, pattern: &str, group: &str) -> Result<bool, OutboxError> {
        let removed = self.execute(
            "DELETE FROM {s}.outbox_groups WHERE pattern = $1 AND grp = $2",
            &[&pattern, &group],
        )?;
        Ok(removed > 0)
    }

    fn groups(&self, within: Duration) -> Result<Vec<(String, String)>, OutboxError> {
        self.block(async {
            let client = self.shared.client().await?;
            let rows = client
                .query(
                    &self
                        .shared
                        .sql("SELECT pattern, grp FROM {s}.outbox_groups WHERE seen_ms >= $1"),
                    &[&cutoff_ms(within)],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.block(self.shared.stats())
    }

    fn notifier(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.shared.committed)
    }

    fn background(&self) -> Option<Background> {
        let shared = Arc::clone(&self.shared);
        Some(match &self.shared.mode {
            Mode::Polling(poll) => Box::pin(Arc::clone(poll).run(shared)),
            Mode::Tailing(tail) => Box::pin(Arc::clone(tail).run(shared)),
        })
    }

    fn relay_stopped(&self) -> Result<(), OutboxError> {
        match &self.shared.mode {
            Mode::Polling(poll) => self.block(poll.release(&self.shared)),
            Mode::Tailing(_) => Ok(()),
        }
    }
}
