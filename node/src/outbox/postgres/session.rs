//! The relay's own connection (outside the pool): it holds the advisory lock that says who
//! relays, and receives notifications. When it drops, the lock is gone with it, so whatever
//! was done under the lock stops.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{Shared, pg};
use crate::outbox::OutboxError;
use crate::outbox::relay::AbortOnDrop;

/// Who may relay at once: any number of polling relays (they share the lock), or one
/// tailing relay (it holds it alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lock {
    Shared,
    Exclusive,
}

/// A connection of the relay's own, driven by a task of its own.
pub(super) struct Session {
    pub(super) client: Client,
    /// Payloads of the notifications received; closed when the connection ends.
    pub(super) notes: mpsc::UnboundedReceiver<String>,
    _driver: AbortOnDrop,
}

impl Session {
    /// Opens a connection to the outbox's database.
    pub(super) async fn open(shared: &Shared) -> Result<Self, OutboxError> {
        let (client, mut connection) = shared.config.connect(NoTls).await.map_err(pg)?;
        let (tx, notes) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(note))) => {
                        let _ = tx.send(note.payload().to_owned());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!("outbox relay connection ended: {e}");
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(Self {
            client,
            notes,
            _driver: AbortOnDrop(driver),
        })
    }

    /// Waits until this session holds the outbox's relay lock in `mode`, trying every
    /// `retry`. Errors when the connection fails.
    pub(super) async fn acquire(
        &mut self,
        shared: &Shared,
        mode: Lock,
        retry: Duration,
    ) -> Result<(), OutboxError> {
        let function = match mode {
            Lock::Shared => "pg_try_advisory_lock_shared",
            Lock::Exclusive => "pg_try_advisory_lock",
        };
        let sql = format!("SELECT {function}(hashtext('shoal relay'), hashtext($1))");
        let mut waited = false;
        loop {
            let held: bool = self
                .client
                .query_one(&sql, &[&shared.options.schema])
                .await
                .map_err(pg)?
                .get(0);
            if held {
                if waited {
                    tracing::info!(schema = %shared.options.schema, ?mode, "outbox relay lock taken");
                }
                return Ok(());
            }
            if !waited {
                tracing::info!(
                    schema = %shared.options.schema,
                    ?mode,
                    "another outbox relay holds the lock; standing by"
                );
                waited = true;
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                // Notifications are not for a relay that stands by; a closed channel means
                // the connection ended.
                note = self.notes.recv() => if note.is_none() {
                    return Err(OutboxError::Database("relay connection closed".into()));
                },
            }
        }
    }
}

/// Runs `session` again and again until the relay stops (this future is dropped), pausing
/// `retry` after each end: the database restarted, the connection broke, the lock was lost.
pub(super) async fn keep_running<F, Fut>(what: &str, retry: Duration, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), OutboxError>>,
{
    loop {
        if let Err(e) = session().await {
            tracing::warn!("outbox {what}: {e}; trying again in {retry:?}");
        }
        tokio::time::sleep(retry).await;
    }
}
