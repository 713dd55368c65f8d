//! The outbox and inbox on PostgreSQL, for services that run several instances or keep their
//! data in PostgreSQL already: tables in a schema of the service's database, written in the
//! service's own transactions, relayed by polling (every instance) or by tailing the
//! transaction log (one instance at a time).

mod options;
mod pgoutput;
mod polling;
mod schema;
mod session;
mod slot;
mod store;
mod tailing;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use shoal_proto::Limits;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, Transaction};

pub use options::{PostgresOptions, RelayMode};

use super::store::{DeadRow, Destination, OutboxError, OutboxStats, encode_stored, id_from_bytes};
use crate::message::unix_ms;
use crate::sync::lock;
use crate::{Message, MessageId};

/// What [`PostgresOutbox::apply_once`]'s effect returns: a boxed future borrowing the
/// transaction, e.g. `|tx| Box::pin(async move { tx.execute(..).await })`.
pub type Effect<'t, T> =
    Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 't>>;

/// How long [`PostgresOutbox::enqueue`] trusts its count of pending rows before it counts
/// again (the limit is checked against it: counting on every enqueue would cost a scan).
const COUNT_FOR: Duration = Duration::from_secs(1);

/// An outbox (and inbox) in a PostgreSQL database shared with the service's own tables.
///
/// The service writes messages with [`PostgresOutbox::enqueue`] inside its own transactions
/// (on a connection from [`PostgresOutbox::pool`], or its own); the node's relay, given this
/// store with [`NodeBuilder::outbox`](crate::NodeBuilder::outbox), delivers them in the mode
/// of [`PostgresOptions::relay`]. Every instance of a service connects to the same schema.
///
/// The [`OutboxStore`](crate::outbox::OutboxStore) methods block on the database: they are
/// the relay's, called from a blocking thread. Call the async methods of the same names
/// ([`PostgresOutbox::stats`], ...) from your own code.
pub struct PostgresOutbox {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("schema", &self.shared.options.schema)
            .field("relay", &self.shared.options.relay)
            .finish_non_exhaustive()
    }
}

/// What the store, its relay's background work and the user's calls share.
pub(super) struct Shared {
    pool: Pool,
    config: tokio_postgres::Config,
    options: PostgresOptions,
    limits: Limits,
    /// Wakes the relay: after a commit made through [`PostgresOutbox::commit`], a
    /// notification, or a change of the tail.
    committed: Arc<tokio::sync::Notify>,
    /// The runtime the store was opened on: the relay's blocking calls run their queries on
    /// it.
    runtime: tokio::runtime::Handle,
    mode: Mode,
    /// Pending rows as last counted, and when (see [`COUNT_FOR`]).
    counted: Mutex<Option<(Instant, u64)>>,
}

/// The relay mode's own state.
enum Mode {
    Polling(Arc<polling::Polling>),
    Tailing(Arc<tailing::Tailing>),
}

impl PostgresOutbox {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, or
    /// any form [`tokio_postgres::Config`] reads), creates or migrates the outbox's tables
    /// in [`PostgresOptions::schema`], and for [log tailing](RelayMode::LogTailing) checks
    /// the server's settings and creates the publication and replication slot.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the URL is not valid or the server cannot be reached;
    /// [`OutboxError::Setup`] when the database lacks something the outbox needs
    /// (`wal_level = logical` and the REPLICATION attribute for log tailing, the right to
    /// create the schema), naming the fix.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, OutboxError> {
        if !schema::valid_schema(&options.schema) {
            return Err(OutboxError::Setup(format!(
                "schema name `{}` must be lower-case letters, digits and `_` (at most 40)",
                options.schema
            )));
        }
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| OutboxError::Database(format!("database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("shoal-outbox");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| OutboxError::Database(format!("connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        schema::migrate(&mut client, &options.schema).await?;
        let mode = match options.relay {
            RelayMode::Polling => Mode::Polling(Arc::new(polling::Polling::new())),
            RelayMode::LogTailing => {
                schema::prepare_tailing(&client, &options.schema).await?;
                tailing::check_replication_login(&config, &options).await?;
                Mode::Tailing(Arc::new(tailing::Tailing::new()))
            }
        };
        drop(client);
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                config,
                options,
                limits: Limits::default(),
                committed: Arc::default(),
                runtime: tokio::runtime::Handle::current(),
                mode,
                counted: Mutex::new(None),
            }),
        })
    }

    /// The connection pool the outbox uses, for the service's own transactions: take a
    /// connection, begin a transaction, write your rows and [`PostgresOutbox::enqueue`] in it.
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// Whether this instance's relay delivers now: it holds the relay lock (shared when
    /// polling; alone when tailing the log, so of several instances exactly one says yes)
    /// and its connection is up. `false` before the node started its relay.
    pub fn relaying(&self) -> bool {
        match &self.shared.mode {
            Mode::Polling(poll) => poll.is_active(),
            Mode::Tailing(tail) => tail.is_active(),
        }
    }

    /// The schema the outbox's tables are in.
    pub fn schema(&self) -> &str {
        &self.shared.options.schema
    }

    /// Adds `message` for `destination` to the outbox as part of `tx`: it is stored if and
    /// only if `tx` commits, with the id it has now (so receivers can deduplicate retries).
    /// Commit with [`PostgresOutbox::commit`] (or call [`PostgresOutbox::wake`] after your
    /// own commit) so this instance's relay starts at once; other instances learn of it
    /// from the database (a notification, or the log).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Full`] when about [`PostgresOptions::max_pending`] rows are pending
    /// (nothing was written; `tx` is usable); [`OutboxError::Encode`] when the message breaks
    /// a wire limit; [`OutboxError::Database`] when the insert fails (for instance, the same
    /// message enqueued twice): PostgreSQL then aborts `tx`, so roll it back.
    ///
    /// The message is encoded when this is called, with the trace context current then (see
    /// the README's outbox section): `ctx.in_scope(|| outbox.enqueue(..))` is enough.
    pub fn enqueue(
        &self,
        tx: &Transaction<'_>,
        destination: &Destination,
        message: &Message,
    ) -> impl Future<Output = Result<(), OutboxError>> {
        let frame = encode_stored(message, &self.shared.limits);
        async move { self.insert(tx, destination, message, frame?).await }
    }

    /// [`PostgresOutbox::enqueue`] once the message is encoded.
    async fn insert(
        &self,
        tx: &Transaction<'_>,
        destination: &Destination,
        message: &Message,
        frame: bytes::Bytes,
    ) -> Result<(), OutboxError> {
        let pending = self.pending_count(tx).await?;
        let limit = self.shared.options.max_pending;
        if pending >= limit {
            return Err(OutboxError::Full { pending, limit });
        }
        let id = message.id().as_u128().to_be_bytes();
        let id = &id[..];
        let frame = &frame[..];
        tx.execute_typed(
            &self.sql(
                "INSERT INTO {s}.outbox (message_id, destination, msg_key, frame, created_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            ),
            &[
                (&id, Type::BYTEA),
                (&destination.to_column(), Type::TEXT),
                (&message.key(), Type::TEXT),
                (&frame, Type::BYTEA),
                (&(unix_ms() as i64), Type::INT8),
            ],
        )
        .await
        .map_err(pg)?;
        if let Some((_, n)) = lock(&self.shared.counted).as_mut() {
            *n += 1;
        }
        Ok(())
    }

    /// Pending rows, counted in `tx` at most every [`COUNT_FOR`].
    async fn pending_count(&self, tx: &Transaction<'_>) -> Result<u64, OutboxError> {
        let known = lock(&self.shared.counted)
            .filter(|(at, _)| at.elapsed() < COUNT_FOR)
            .map(|(_, n)| n);
        if let Some(n) = known {
            return Ok(n);
        }
        let n: i64 = tx
            .query_one(
                &self.sql("SELECT count(*) FROM {s}.outbox WHERE state = 0"),
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let n = n.max(0) as u64;
        *lock(&self.shared.counted) = Some((Instant::now(), n));
        Ok(n)
    }

    /// Commits `tx` (holding enqueued messages) and wakes this instance's relay at once.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the commit fails; nothing was stored then.
    pub async fn commit(&self, tx: deadpool_postgres::Transaction<'_>) -> Result<(), OutboxError> {
        tx.commit().await.map_err(pg)?;
        self.wake();
        Ok(())
    }

    /// Wakes this instance's relay: call it after committing a transaction that enqueued
    /// messages when you did not commit with [`PostgresOutbox::commit`].
    pub fn wake(&self) {
        self.shared.committed.notify_one();
    }

    /// Records in `tx` that the message `id` was handled; `false` if it already was (the
    /// transaction that recorded it committed, in any instance, even before a restart). Call
    /// it in the same transaction as the handler's own writes. A concurrent delivery of the
    /// same message waits for this transaction and then gets `false`.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the insert fails.
    pub async fn first_delivery(
        &self,
        tx: &Transaction<'_>,
        id: MessageId,
    ) -> Result<bool, OutboxError> {
        let id = id.as_u128().to_be_bytes();
        let id = &id[..];
        let inserted = tx
            .execute_typed(
                &self.sql(
                    "INSERT INTO {s}.inbox (message_id, handled_ms) VALUES ($1, $2)
                     ON CONFLICT (message_id) DO NOTHING",
                ),
                &[(&id, Type::BYTEA), (&(unix_ms() as i64), Type::INT8)],
            )
            .await
            .map_err(pg)?;
        Ok(inserted == 1)
    }

    /// Applies a message's effect exactly once: in one transaction on a pooled connection,
    /// records `id` in the inbox and runs `effect`, unless `id` was handled before, by any
    /// instance, even before a restart. Returns `Some(effect's value)`, or `None` for a
    /// redelivery (skip it and return `Ok` from the handler so the node acknowledges it).
    ///
    /// ```ignore
    /// let applied = outbox
    ///     .apply_once(event.id(), |tx| Box::pin(async move {
    ///         tx.execute("INSERT INTO invoices (order_id) VALUES ($1)", &[&order]).await
    ///     }))
    ///     .await?;
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the transaction or `effect` fails; nothing was
    /// recorded then, so a redelivery applies the effect.
    pub async fn apply_once<T, F>(&self, id: MessageId, effect: F) -> Result<Option<T>, OutboxError>
    where
        F: for<'t> FnOnce(&'t Transaction<'t>) -> Effect<'t, T>,
    {
        let mut client = self.shared.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        if !self.first_delivery(&tx, id).await? {
            return Ok(None);
        }
        let value = effect(&tx).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Some(value))
    }

    /// Forgets inbox entries at least `age` old; keep `age` well above the senders'
    /// [`keep_trying`](crate::outbox::RelayOptions::keep_trying). Returns how many went.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the delete fails.
    pub async fn prune_inbox(&self, age: Duration) -> Result<u64, OutboxError> {
        self.shared.prune_inbox(age).await
    }

    /// Counts of pending and dead rows, and the age of the oldest pending one.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the query fails.
    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.shared.stats().await
    }

    /// Up to `limit` dead rows, oldest first, with the reason each was given up on.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the query fails.
    pub async fn dead_rows(&self, limit: usize) -> Result<Vec<DeadRow>, OutboxError> {
        let client = self.shared.client().await?;
        let rows = client
            .query(
                &self.sql(
                    "SELECT seq, message_id, destination, COALESCE(last_error, ''), created_ms
                     FROM {s}.outbox WHERE state = 2 ORDER BY seq LIMIT $1",
                ),
                &[&(limit.min(i64::MAX as usize) as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| DeadRow {
                seq: r.get(0),
                message_id: id_from_bytes(r.get(1)),
                destination: r.get(2),
                reason: r.get(3),
                created_ms: r.get::<_, i64>(4).max(0) as u64,
            })
            .collect())
    }

    /// Puts every dead row back to pending (after fixing what made it fail), keeping its
    /// place and id, and tells every relay. Returns how many.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] when the update fails.
    pub async fn requeue_dead(&self) -> Result<u64, OutboxError> {
        let client = self.shared.client().await?;
        let row = client
            .query_one(
                &self.sql(
                    "WITH back AS (
                         UPDATE {s}.outbox SET state = 0, dead_ms = NULL, claimed_by = NULL,
                                created_ms = $1
                         WHERE state = 2 RETURNING seq)
                     SELECT count(*), pg_notify('{s}_outbox', min(seq)::text) FROM back",
                ),
                &[&(unix_ms() as i64)],
            )
            .await
            .map_err(pg)?;
        self.wake();
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    fn sql(&self, template: &str) -> String {
        self.shared.sql(template)
    }
}

impl Shared {
    /// `template` with `{s}` replaced by the schema's name.
    fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.options.schema)
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, OutboxError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &self.sql(
                    "SELECT (SELECT count(*) FROM {s}.outbox WHERE state = 0),
                            (SELECT count(*) FROM {s}.outbox WHERE state = 2),
                            (SELECT created_ms FROM {s}.outbox WHERE state = 0
                             ORDER BY seq LIMIT 1)",
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        let (pending, dead, oldest): (i64, i64, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        Ok(OutboxStats {
            pending: pending.max(0) as u64,
            dead: dead.max(0) as u64,
            oldest_pending: oldest
                .map(|ms| Duration::from_millis(unix_ms().saturating_sub(ms.max(0) as u64))),
        })
    }

    async fn prune_inbox(&self, age: Duration) -> Result<u64, OutboxError> {
        let client = self.client().await?;
        client
            .execute(
                &self.sql("DELETE FROM {s}.inbox WHERE handled_ms <= $1"),
                &[&super::store::cutoff_ms(age)],
            )
            .await
            .map_err(pg)
    }
}

/// A database error, with the server's own message when there is one.
pub(super) fn pg(e: tokio_postgres::Error) -> OutboxError {
    OutboxError::Database(schema::pg_text(&e))
}

fn pool_error(e: deadpool_postgres::PoolError) -> OutboxError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => OutboxError::Database(format!("connection pool: {other}")),
    }
}
