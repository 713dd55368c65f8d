//! Transaction log tailing: one instance at a time (holding the relay lock alone) streams
//! the outbox's inserts from a logical replication slot (`pgoutput`), in commit order, and
//! hands them to its relay without a query.
//!
//! The table stays the truth: rows are deleted or marked dead there as in polling mode, and
//! the relay reads the table itself when it goes back (a rescan, a row held behind its key)
//! or when a new tail starts. The stream only brings new rows early. The slot's position is
//! confirmed up to a commit once every row of that commit and of those before it is
//! acknowledged or dead (or has waited [`super::PostgresOptions::hold_slot_for`]), so a tail
//! that dies resumes from the rows it had not finished.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

use super::pgoutput::{Change, OutboxColumns, parse};
use super::polling::Active;
use super::session::{Lock, Session, keep_running};
use super::slot::State;
use super::{PostgresOptions, Shared, pg, schema};
use crate::outbox::OutboxError;
use crate::outbox::store::StoredRow;
use crate::sync::lock;

/// Most rows read from the log and not yet taken by the relay; past it the tail waits (the
/// server keeps the rest in its WAL).
const FRESH_ROWS: usize = 4_096;

/// The log tail's state, shared with the relay's store calls.
pub(super) struct Tailing {
    /// This instance tails now (holds the lock alone, and its stream is up).
    active: AtomicBool,
    state: Mutex<State>,
    /// The relay took rows: there may be room for more.
    room: tokio::sync::Notify,
    /// The position to confirm moved.
    confirm: tokio::sync::Notify,
}

impl Tailing {
    /// It holds the relay lock and may deliver.
    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(super) fn new() -> Self {
        Self {
            active: AtomicBool::new(false),
            state: Mutex::new(State::new()),
            room: tokio::sync::Notify::new(),
            confirm: tokio::sync::Notify::new(),
        }
    }

    /// Rows for the relay: fresh rows from the log when it reads from the head, the table's
    /// pending rows above `after` when it reads again from further back; none while another
    /// instance tails.
    pub(super) async fn pending(
        &self,
        shared: &Shared,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRow>, OutboxError> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        {
            let mut state = lock(&self.state);
            if after >= state.served_max {
                let rows = state.take_fresh(limit);
                drop(state);
                self.room.notify_waiters();
                return Ok(rows);
            }
        }
        let client = shared.client().await?;
        let read = client
            .prepare_cached(&shared.sql(
                "SELECT seq, destination, frame, created_ms FROM {s}.outbox
                 WHERE state = 0 AND seq > $1 ORDER BY seq LIMIT $2",
            ))
            .await
            .map_err(pg)?;
        let rows: Vec<StoredRow> = client
            .query(&read, &[&after, &(limit.min(i64::MAX as usize) as i64)])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| StoredRow {
                seq: r.get(0),
                destination: r.get(1),
                frame: r.get(2),
                created_ms: r.get(3),
            })
            .collect();
        let mut state = lock(&self.state);
        let read: HashSet<i64> = rows.iter().map(|r| r.seq).collect();
        state.fresh.retain(|r| !read.contains(&r.seq));
        if rows.len() < limit {
            // The table is read to its end: what is new comes from the log.
            state.served_max = rows.last().map_or(after, |r| r.seq.max(after));
        }
        drop(state);
        self.room.notify_waiters();
        Ok(rows)
    }

    /// The relay recorded these rows' outcomes (deleted, or marked dead).
    pub(super) fn finished(&self, seqs: &[i64], hold: Duration) {
        let mut state = lock(&self.state);
        state.finished(seqs);
        if state.advance(hold) {
            self.confirm.notify_one();
        }
    }

    /// The tail's background work: take the lock, stream the slot, hand rows over, confirm
    /// positions; again after every failure, until the relay stops.
    pub(super) async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let retry = shared.options.lease / 5;
        keep_running("log tail", retry, || self.session(&shared)).await;
    }

    async fn session(&self, shared: &Shared) -> Result<(), OutboxError> {
        let options = &shared.options;
        let mut session = Session::open(shared).await?;
        session
            .acquire(shared, Lock::Exclusive, options.lease / 5)
            .await?;
        schema::ensure_slot(&session.client, &options.schema).await?;
        let row = session
            .client
            .query_one(
                "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&format!("{}_outbox", options.schema)],
            )
            .await
            .map_err(pg)?;
        let lsn = |i: usize| {
            let text: Option<String> = row.get(i);
            Lsn::parse(text.as_deref().unwrap_or("0/0"))
                .map_err(|e| OutboxError::Database(format!("replication slot position: {e:?}")))
        };
        let (start, now) = (lsn(0)?, lsn(1)?);
        let config = replication_config(&shared.config, options)?
            .with_start_lsn(start)
            .with_ack_lsn(start);
        let mut stream = ReplicationClient::connect(config).await.map_err(repl)?;
        stream.wait_started().await.map_err(repl)?;
        lock(&self.state).reset(start.as_u64());
        let _active = Active::set(&self.active);
        tracing::info!(schema = %options.schema, from = %start, "outbox log tail started");
        shared.committed.notify_one();
        let mut log = Log {
            columns: None,
            open: None,
            // Commits up to here may have been relayed by an earlier tail: their rows are
            // checked against the table before they go.
            replayed_until: now.as_u64(),
        };
        let mut tick = tokio::time::interval(options.hold_slot_for.min(Duration::from_secs(1)));
        loop {
            tokio::select! {
                event = stream.recv() => match event.map_err(repl)? {
                    Some(event) => self.event(shared, &mut session, &mut log, event).await?,
                    None => return Err(OutboxError::Database("replication stream ended".into())),
                },
                () = self.confirm.notified() => {
                    stream.update_applied_lsn(Lsn::from_u64(lock(&self.state).confirmed));
                }
                note = session.notes.recv() => if note.is_none() {
                    return Err(OutboxError::Database("relay connection closed".into()));
                },
                _ = tick.tick() => {
                    if lock(&self.state).advance(options.hold_slot_for) {
                        stream.update_applied_lsn(Lsn::from_u64(lock(&self.state).confirmed));
                    }
                }
            }
        }
    }

    async fn event(
        &self,
        shared: &Shared,
        session: &mut Session,
        log: &mut Log,
        event: ReplicationEvent,
    ) -> Result<(), OutboxError> {
        match event {
            ReplicationEvent::Begin { .. } => log.open = Some(Vec::new()),
            ReplicationEvent::XLogData { data, .. } => log.change(&shared.options.schema, &data)?,
            ReplicationEvent::Commit { end_lsn, .. } => {
                let mut rows = log.open.take().unwrap_or_default();
                if !rows.is_empty() && end_lsn.as_u64() <= log.replayed_until {
                    rows = still_pending(shared, &session.client, rows).await?;
                }
                if !rows.is_empty() {
                    self.wait_for_room(session).await?;
                }
                let woke = !rows.is_empty();
                let mut state = lock(&self.state);
                state.commit(end_lsn.as_u64(), rows);
                if state.advance(shared.options.hold_slot_for) {
                    self.confirm.notify_one();
                }
                drop(state);
                if woke {
                    shared.committed.notify_one();
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Nothing read is unfinished: everything up to the server's position is done.
                let mut state = lock(&self.state);
                if log.open.is_none()
                    && state.commits.is_empty()
                    && wal_end.as_u64() > state.confirmed
                {
                    state.confirmed = wal_end.as_u64();
                    self.confirm.notify_one();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Waits until the relay took enough fresh rows (or the connection ends).
    async fn wait_for_room(&self, session: &mut Session) -> Result<(), OutboxError> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if lock(&self.state).fresh.len() < FRESH_ROWS {
                return Ok(());
            }
            tokio::select! {
                () = room => {}
                note = session.notes.recv() => if note.is_none() {
                    return Err(OutboxError::Database("relay connection closed".into()));
                },
            }
        }
    }
}

/// What is being read from the log.
struct Log {
    /// Where the outbox's columns are, once its relation was described.
    columns: Option<(u32, OutboxColumns)>,
    /// The rows of the commit being read.
    open: Option<Vec<StoredRow>>,
    replayed_until: u64,
}

impl Log {
    fn change(&mut self, schema: &str, data: &[u8]) -> Result<(), OutboxError> {
        match parse(data) {
            Ok(Change::Relation(relation)) => {
                if relation.namespace == schema && relation.name == "outbox" {
                    let columns = OutboxColumns::find(&relation).map_err(OutboxError::Setup)?;
                    self.columns = Some((relation.id, columns));
                }
            }
            Ok(Change::Insert { relid, values }) => match &self.columns {
                Some((id, columns)) if *id == relid => match columns.row(&values) {
                    Ok(Some(row)) => self.open.get_or_insert_with(Vec::new).push(row),
                    Ok(None) => {}
                    // The row is in the table still: the relay's next scan finds it.
                    Err(e) => tracing::warn!(
                        "outbox log tail: unreadable insert ({e}); left to the table scan"
                    ),
                },
                _ => {}
            },
            Ok(Change::Other) => {}
            Err(e) => tracing::warn!("outbox log tail: unreadable message ({e}); skipped"),
        }
        Ok(())
    }
}

/// The rows of `rows` still pending in the table (a replayed commit's rows may be done).
async fn still_pending(
    shared: &Shared,
    client: &tokio_postgres::Client,
    rows: Vec<StoredRow>,
) -> Result<Vec<StoredRow>, OutboxError> {
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let pending: HashSet<i64> = client
        .query(
            &shared.sql("SELECT seq FROM {s}.outbox WHERE seq = ANY($1) AND state = 0"),
            &[&seqs],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(rows
        .into_iter()
        .filter(|r| pending.contains(&r.seq))
        .collect())
}

/// The replication connection's settings, from the outbox's connection settings.
fn replication_config(
    config: &tokio_postgres::Config,
    options: &PostgresOptions,
) -> Result<ReplicationConfig, OutboxError> {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.to_string_lossy().into_owned(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .ok_or_else(|| OutboxError::Setup("the database URL names no user".into()))?;
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    let name = format!("{}_outbox", options.schema);
    Ok(
        ReplicationConfig::new(host, user, password, database, name.as_str(), name.as_str())
            .with_port(port)
            .with_tls(TlsConfig::disabled())
            .with_binary(true)
            .with_status_interval(Duration::from_secs(1))
            .with_wakeup_interval(Duration::from_secs(10))
            .with_buffer_size(FRESH_ROWS)
            .with_application_name("shoal-outbox-tail"),
    )
}

/// Checks at connect that a replication connection can log in (credentials, `pg_hba.conf`).
pub(super) async fn check_replication_login(
    config: &tokio_postgres::Config,
    options: &PostgresOptions,
) -> Result<(), OutboxError> {
    let replication = replication_config(config, options)?;
    let mut client = tokio::time::timeout(options.connect_timeout, async {
        let mut client = ReplicationClient::connect_gated(replication).await?;
        client.identify_system().await?;
        Ok::<_, pgwire_replication::PgWireError>(client)
    })
    .await
    .map_err(|_| OutboxError::Setup("replication connection timed out".into()))?
    .map_err(|e| {
        OutboxError::Setup(format!(
            "a replication connection cannot log in ({e}): the role needs REPLICATION and \
             pg_hba.conf must let it connect to the database"
        ))
    })?;
    client.abort();
    Ok(())
}

fn repl(e: pgwire_replication::PgWireError) -> OutboxError {
    OutboxError::Database(format!("replication stream: {e}"))
}
