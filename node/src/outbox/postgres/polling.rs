//! The polling publisher, safe with several instances: each relay claims the rows it reads
//! (`outbox_claim`, see the schema), under a lease it renews in `outbox_relays`; `LISTEN`
//! wakes it when rows are committed anywhere.
//!
//! A claim takes only rows nobody holds (or whose holder's lease ended), and of the rows
//! with a partition key only the first pending one of each key: the next becomes claimable,
//! by any relay, once that one left the outbox, and the relay that ended it notifies the
//! others. So a key's rows go in order across instances, at the cost of a database round
//! trip between two rows of one key. Claims are taken one at a time per outbox (an advisory
//! lock inside `outbox_claim`) so each sees the ones before it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::session::{Lock, Session, keep_running};
use super::{Shared, pg};
use crate::engine::retry::{CENTURY, later};
use crate::outbox::OutboxError;
use crate::outbox::store::StoredRow;
use crate::sync::lock;

/// A polling relay's identity and state.
pub(super) struct Polling {
    /// Written into the rows it claims and its lease.
    id: String,
    /// It holds the relay lock (shared) and its connection is up.
    active: AtomicBool,
    /// When its lease surely ends: the start of its last renewal plus the lease (the
    /// database set the end from its own clock after that start, so no other relay takes
    /// this one's rows before it). Its creation until the first renewal: no lease yet.
    lease_until: Mutex<Instant>,
    /// One less than the lowest row notified since the last read (`i64::MAX`: none). Rows
    /// get their `seq` when inserted, not when committed: one committed late may sit below
    /// the cursor, so the next read starts here.
    rewind: AtomicI64,
}

impl Polling {
    /// It holds the relay lock and may deliver.
    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Until when the rows it claimed are surely its own ([`crate::outbox::OutboxStore::claims_until`]).
    pub(super) fn claims_until(&self) -> Instant {
        *lock(&self.lease_until)
    }

    /// It may claim rows now: it is active and its lease holds.
    fn may_claim(&self) -> bool {
        self.is_active() && Instant::now() < self.claims_until()
    }

    pub(super) fn new() -> Self {
        Self {
            id: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            active: AtomicBool::new(false),
            lease_until: Mutex::new(Instant::now()),
            rewind: AtomicI64::new(i64::MAX),
        }
    }

    /// Claims up to `limit` pending rows above `after` (or below, after a notification),
    /// in `seq` order; none while this relay is not active or its lease lapsed (its
    /// renewals failing on a connection that still stands).
    pub(super) async fn pending(
        &self,
        shared: &Shared,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRow>, OutboxError> {
        if !self.may_claim() {
            return Ok(Vec::new());
        }
        let rewind = self.rewind.swap(i64::MAX, Ordering::AcqRel);
        let from = after.min(rewind);
        let claimed = async {
            let client = shared.client().await?;
            let claim = client
                .prepare_cached(&shared.sql(
                    "SELECT seq, destination, frame, created_ms FROM {s}.outbox_claim($1, $2, $3)",
                ))
                .await
                .map_err(pg)?;
            let limit = i32::try_from(limit).unwrap_or(i32::MAX);
            client
                .query(&claim, &[&self.id, &from, &limit])
                .await
                .map_err(pg)
        }
        .await;
        let rows = match claimed {
            Ok(rows) => rows,
            Err(e) => {
                self.rewind.fetch_min(rewind, Ordering::AcqRel);
                return Err(e);
            }
        };
        Ok(rows
            .iter()
            .map(|r| StoredRow {
                seq: r.get(0),
                destination: r.get(1),
                frame: r.get(2),
                created_ms: r.get(3),
            })
            .collect())
    }

    /// Gives up this relay's claims and lease (it stops): the others may take its rows now,
    /// and are told to look.
    pub(super) async fn release(&self, shared: &Shared) -> Result<(), OutboxError> {
        self.active.store(false, Ordering::Release);
        let client = shared.client().await?;
        client
            .execute(
                &shared.sql(
                    "UPDATE {s}.outbox SET claimed_by = NULL WHERE claimed_by = $1 AND state = 0",
                ),
                &[&self.id],
            )
            .await
            .map_err(pg)?;
        client
            .execute(
                &shared.sql(
                    "WITH gone AS (DELETE FROM {s}.outbox_relays WHERE relay = $1)
                     SELECT pg_notify('{s}_outbox', '0')",
                ),
                &[&self.id],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// The relay's background work: its connection, lock, lease and notifications, again
    /// after every failure, until the relay stops.
    pub(super) async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let retry = shared.options.lease / 5;
        keep_running("polling relay", retry, || self.session(&shared)).await;
    }

    async fn session(&self, shared: &Shared) -> Result<(), OutboxError> {
        let mut session = Session::open(shared).await?;
        session
            .client
            .batch_execute(&shared.sql("LISTEN {s}_outbox"))
            .await
            .map_err(pg)?;
        session
            .acquire(shared, Lock::Shared, shared.options.lease / 5)
            .await?;
        self.renew(shared, &session.client).await?;
        let _active = Active::set(&self.active);
        // Read everything once: rows may have been committed while this relay was away.
        self.rewind.store(0, Ordering::Release);
        shared.committed.notify_one();
        let mut beat = tokio::time::interval(shared.options.lease / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        loop {
            tokio::select! {
                note = session.notes.recv() => {
                    let Some(payload) = note else {
                        return Err(OutboxError::Database("relay connection closed".into()));
                    };
                    if let Ok(seq) = payload.parse::<i64>() {
                        self.rewind.fetch_min(seq.saturating_sub(1), Ordering::AcqRel);
                    }
                    shared.committed.notify_one();
                }
                _ = beat.tick() => self.renew(shared, &session.client).await?,
            }
        }
    }

    /// Renews this relay's lease (and forgets relays whose lease ended a day ago).
    async fn renew(&self, shared: &Shared, client: &Client) -> Result<(), OutboxError> {
        let asked = Instant::now();
        let (lease_ms, lease_until) = lease_terms(asked, shared.options.lease);
        client
            .execute(
                &shared.sql(
                    "INSERT INTO {s}.outbox_relays (relay, lease_until)
                     VALUES ($1, now() + $2::bigint * interval '1 millisecond')
                     ON CONFLICT (relay) DO UPDATE SET lease_until = excluded.lease_until",
                ),
                &[&self.id, &lease_ms],
            )
            .await
            .map_err(pg)?;
        *lock(&self.lease_until) = lease_until;
        client
            .execute(
                &shared.sql(
                    "DELETE FROM {s}.outbox_relays WHERE lease_until < now() - interval '1 day'",
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}

/// A lease renewed at `asked`: the milliseconds written into `outbox_relays`, and when it
/// surely ends here. A lease longer than a century (`Duration::MAX` for "never expires") is a
/// century: PostgreSQL refuses a timestamp past the year 294276 (and an interval past
/// 292,000 years), and `asked + lease` would overflow (it used to panic in the relay).
fn lease_terms(asked: Instant, lease: Duration) -> (i64, Instant) {
    let lease = lease.min(CENTURY);
    let ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    (ms, Instant::from_std(later(asked.into_std(), lease)))
}

/// Marks a relay active while it lives.
pub(super) struct Active<'a>(&'a AtomicBool);

impl<'a> Active<'a> {
    pub(super) fn set(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_of_duration_max_is_a_century_in_the_database_and_here() {
        let asked = Instant::now();
        let (ms, until) = lease_terms(asked, Duration::MAX);
        assert_eq!(ms, i64::try_from(CENTURY.as_millis()).expect("fits"));
        assert_eq!(until, asked + CENTURY);
        let (ms, until) = lease_terms(asked, Duration::from_secs(10));
        assert_eq!((ms, until), (10_000, asked + Duration::from_secs(10)));
    }
}
