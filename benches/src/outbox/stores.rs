//! The outbox stores the benchmark compares, behind one type, and the PostgreSQL they need.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal::Message;
use shoal::outbox::deadpool_postgres;
use shoal::outbox::rusqlite::{Connection, params};
use shoal::outbox::{
    Destination, OutboxStore, PostgresOptions, PostgresOutbox, RelayMode, SqliteOutbox,
};

use crate::error::{BenchError, BenchResult};

/// Which outbox a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SQLite file, polling publisher (woken by the commit).
    Sqlite,
    /// PostgreSQL, polling publisher (claims, `LISTEN`/`NOTIFY`).
    PgPolling,
    /// PostgreSQL, transaction log tailing (logical replication slot).
    PgTailing,
}

impl Kind {
    /// Every kind, in the order rows are printed.
    pub const ALL: [Self; 3] = [Self::Sqlite, Self::PgPolling, Self::PgTailing];

    /// The rows' name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Sqlite => "shoal-outbox",
            Self::PgPolling => "pg-polling",
            Self::PgTailing => "pg-tailing",
        }
    }
}

/// An outbox the sending service writes to, with its own connection.
pub enum Store {
    /// A SQLite outbox and the service's connection to its file.
    Sqlite {
        /// The outbox.
        outbox: Arc<SqliteOutbox>,
        /// The service's own connection.
        conn: Connection,
        /// Keeps the database's folder.
        _dir: TempDir,
    },
    /// A PostgreSQL outbox and a pooled connection of the service.
    Postgres {
        /// The outbox.
        outbox: Arc<PostgresOutbox>,
        /// The service's own connection.
        client: deadpool_postgres::Object,
    },
}

impl Store {
    /// A fresh outbox of `kind` (PostgreSQL ones in a fresh schema of `pg`).
    pub async fn open(kind: Kind, pg: Option<&str>) -> BenchResult<Self> {
        let mode = match kind {
            Kind::Sqlite => {
                let dir = TempDir::new()?;
                let outbox =
                    Arc::new(SqliteOutbox::open(dir.0.join("sender.db")).map_err(outbox_err)?);
                let conn = outbox.connect().map_err(outbox_err)?;
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, amount INTEGER)",
                )
                .map_err(BenchError::msg)?;
                return Ok(Self::Sqlite {
                    outbox,
                    conn,
                    _dir: dir,
                });
            }
            Kind::PgPolling => RelayMode::Polling,
            Kind::PgTailing => RelayMode::LogTailing,
        };
        let url = pg.ok_or_else(|| BenchError::msg("no PostgreSQL"))?;
        let schema = format!("bench_{:08x}", rand_u32());
        let outbox = Arc::new(
            PostgresOutbox::connect(url, PostgresOptions::default().schema(&schema).relay(mode))
                .await
                .map_err(outbox_err)?,
        );
        let client = outbox.pool().get().await.map_err(BenchError::msg)?;
        client
            .batch_execute(&format!(
                "CREATE TABLE {schema}.payments (id BIGSERIAL PRIMARY KEY, amount INT)"
            ))
            .await
            .map_err(BenchError::msg)?;
        Ok(Self::Postgres { outbox, client })
    }

    /// The outbox, for the relay.
    pub fn relayed(&self) -> Arc<dyn OutboxStore> {
        match self {
            Self::Sqlite { outbox, .. } => Arc::clone(outbox) as Arc<dyn OutboxStore>,
            Self::Postgres { outbox, .. } => Arc::clone(outbox) as Arc<dyn OutboxStore>,
        }
    }

    /// Commits one transaction of `payloads.len()` payments, each with its `credit` command
    /// to `to`.
    pub async fn commit(&mut self, to: &str, payloads: &[Bytes]) -> BenchResult<()> {
        let to = Destination::Service(to.into());
        match self {
            Self::Sqlite { outbox, conn, .. } => {
                let tx = conn.transaction().map_err(BenchError::msg)?;
                for payload in payloads {
                    tx.execute("INSERT INTO payments (amount) VALUES (?1)", params![42])
                        .map_err(BenchError::msg)?;
                    let msg = Message::command("credit", payload.clone());
                    outbox.enqueue(&tx, &to, &msg).map_err(outbox_err)?;
                }
                outbox.commit(tx).map_err(outbox_err)
            }
            Self::Postgres { outbox, client } => {
                let insert = format!(
                    "INSERT INTO {}.payments (amount) VALUES (42)",
                    outbox.schema()
                );
                let tx = client.transaction().await.map_err(BenchError::msg)?;
                for payload in payloads {
                    tx.execute(insert.as_str(), &[])
                        .await
                        .map_err(BenchError::msg)?;
                    let msg = Message::command("credit", payload.clone());
                    outbox.enqueue(&tx, &to, &msg).await.map_err(outbox_err)?;
                }
                outbox.commit(tx).await.map_err(outbox_err)
            }
        }
    }

    /// Removes what a PostgreSQL outbox left (its slot holds WAL).
    pub async fn remove(self, pg: Option<&str>) {
        if let (Self::Postgres { outbox, client }, Some(url)) = (self, pg) {
            let schema = outbox.schema().to_owned();
            drop(client);
            drop(outbox);
            if let Ok((client, connection)) =
                shoal::outbox::tokio_postgres::connect(url, shoal::outbox::tokio_postgres::NoTls)
                    .await
            {
                tokio::spawn(connection);
                // The stopping tail may hold the slot for a moment.
                for _ in 0..50 {
                    let _ = client
                        .execute(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                             WHERE slot_name = $1 AND NOT active",
                            &[&format!("{schema}_outbox")],
                        )
                        .await;
                    let left = client
                        .query_one(
                            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                            &[&format!("{schema}_outbox")],
                        )
                        .await
                        .map_or(0, |r| r.get::<_, i64>(0));
                    if left == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = client
                    .batch_execute(&format!(
                        "DROP PUBLICATION IF EXISTS {schema}_outbox; DROP SCHEMA {schema} CASCADE"
                    ))
                    .await;
            }
        }
    }
}

/// The PostgreSQL the PostgreSQL rows use: `SHOAL_BENCH_PG_URL` (or the tests'
/// `SHOAL_TEST_PG_URL`) when set, else a throwaway cluster started with
/// `scripts/pg-cluster.sh` for this run and stopped when dropped.
pub struct Postgres {
    /// Its connection URL.
    pub url: String,
    cluster: Option<PathBuf>,
}

impl Postgres {
    /// The database, or why there is none (the PostgreSQL rows are skipped then).
    pub fn get() -> Result<Self, String> {
        for var in ["SHOAL_BENCH_PG_URL", "SHOAL_TEST_PG_URL"] {
            if let Ok(url) = std::env::var(var)
                && !url.is_empty()
            {
                return Ok(Self { url, cluster: None });
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "shoal-bench-pg-{}-{}",
            std::process::id(),
            rand_u32()
        ));
        let out = std::process::Command::new(SCRIPT)
            .arg("start")
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run {SCRIPT}: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "no PostgreSQL (set SHOAL_BENCH_PG_URL, or let {SCRIPT} start one): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            url: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            cluster: Some(dir),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.cluster {
            let _ = std::process::Command::new(SCRIPT)
                .arg("stop")
                .arg(dir)
                .output();
        }
    }
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-cluster.sh");

/// A temporary folder for a SQLite outbox, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    fn new() -> BenchResult<Self> {
        let path = std::env::temp_dir().join(format!(
            "shoal-bench-outbox-{}-{}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(&path).map_err(BenchError::from)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32))
}

pub(super) fn outbox_err(e: shoal::outbox::OutboxError) -> BenchError {
    BenchError::msg(format!("outbox: {e}"))
}
