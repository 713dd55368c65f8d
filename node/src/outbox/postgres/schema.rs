//! The outbox's tables in PostgreSQL, created or migrated when a [`super::PostgresOutbox`]
//! connects, and what log tailing needs from the server (checked at connect, with a clear
//! error naming the fix).

use tokio_postgres::Client;

use super::pg;
use crate::outbox::OutboxError;

/// The schema's version this build writes; a database at a later version is refused.
const VERSION: i32 = 1;

/// The SQL of each version, in order: `MIGRATIONS[n]` takes a schema from version `n` to
/// `n + 1`. `{s}` stands for the schema's name. Add versions at the end; never edit one.
const MIGRATIONS: [&str; VERSION as usize] = ["
CREATE TABLE {s}.outbox (
    seq         BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  BYTEA    NOT NULL UNIQUE,
    destination TEXT     NOT NULL,
    msg_key     TEXT,
    frame       BYTEA    NOT NULL,
    created_ms  BIGINT   NOT NULL,
    state       SMALLINT NOT NULL DEFAULT 0,
    claimed_by  TEXT,
    dead_ms     BIGINT,
    last_error  TEXT
);
CREATE INDEX outbox_pending ON {s}.outbox (seq) WHERE state = 0;
CREATE INDEX outbox_keys ON {s}.outbox (destination, msg_key, seq)
    WHERE state = 0 AND msg_key IS NOT NULL;
CREATE INDEX outbox_dead ON {s}.outbox (seq) WHERE state = 2;
CREATE TABLE {s}.outbox_relays (
    relay       TEXT        PRIMARY KEY,
    lease_until TIMESTAMPTZ NOT NULL
);
CREATE TABLE {s}.outbox_groups (
    pattern TEXT   NOT NULL,
    grp     TEXT   NOT NULL,
    seen_ms BIGINT NOT NULL,
    PRIMARY KEY (pattern, grp)
);
CREATE TABLE {s}.inbox (
    message_id BYTEA  PRIMARY KEY,
    handled_ms BIGINT NOT NULL
);
CREATE INDEX inbox_by_age ON {s}.inbox (handled_ms);
CREATE FUNCTION {s}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{s}_outbox', (SELECT min(seq) FROM added)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON {s}.outbox
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {s}.outbox_notify();
CREATE FUNCTION {s}.outbox_claim(me TEXT, after_seq BIGINT, max_rows INT)
RETURNS TABLE (seq BIGINT, destination TEXT, frame BYTEA, created_ms BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- One claim at a time per outbox: each claim sees the ones before it.
    PERFORM pg_advisory_xact_lock(hashtext('shoal claim'), hashtext('{s}'));
    RETURN QUERY
    WITH picked AS (
        SELECT o.seq, o.claimed_by, o.destination, o.frame, o.created_ms
        FROM {s}.outbox o
        WHERE o.state = 0 AND o.seq > after_seq
          AND (o.claimed_by IS NULL OR o.claimed_by = me OR NOT EXISTS (
                SELECT 1 FROM {s}.outbox_relays r
                WHERE r.relay = o.claimed_by AND r.lease_until > now()))
          -- Only the first pending row of its key: the next goes once this one left
          -- (delivered or dead), whichever relay takes it, so a key's rows go in order.
          AND (o.msg_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM {s}.outbox e
                WHERE e.state = 0 AND e.destination = o.destination AND e.msg_key = o.msg_key
                  AND e.seq < o.seq))
        ORDER BY o.seq
        LIMIT max_rows
        FOR UPDATE OF o SKIP LOCKED
    ), claimed AS (
        UPDATE {s}.outbox o SET claimed_by = me FROM picked
        WHERE o.seq = picked.seq AND picked.claimed_by IS DISTINCT FROM me
    )
    SELECT p.seq, p.destination, p.frame, p.created_ms FROM picked p ORDER BY p.seq;
END $$;
"];

/// Whether `schema` is usable as a bare PostgreSQL identifier (and in slot names).
pub(super) fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 40
}

/// Creates the schema's tables, or brings them to [`VERSION`], in one transaction under an
/// advisory lock, so instances starting together do it once.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<(), OutboxError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('shoal migrate'), hashtext($1))",
        &[&schema],
    )
    .await
    .map_err(pg)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             id INT PRIMARY KEY CHECK (id = 0), version INT NOT NULL);"
    ))
    .await
    .map_err(|e| setup(format!("cannot create schema `{schema}` (the role needs CREATE on the database, or create the schema for it): {}", pg_text(&e))))?;
    let version: i32 = tx
        .query_opt(&format!("SELECT version FROM {schema}.schema_version"), &[])
        .await
        .map_err(pg)?
        .map_or(0, |row| row.get(0));
    if version > VERSION {
        return Err(setup(format!(
            "schema `{schema}` is at version {version}, newer than this build of Shoal knows \
             ({VERSION}): run a newer Shoal"
        )));
    }
    for sql in &MIGRATIONS[version.max(0) as usize..] {
        tx.batch_execute(&sql.replace("{s}", schema))
            .await
            .map_err(pg)?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {schema}.schema_version (id, version) VALUES (0, $1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version"
        ),
        &[&VERSION],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)
}

/// Checks what log tailing needs and creates its publication and replication slot if
/// missing. Each missing requirement is an [`OutboxError::Setup`] that says how to fix it.
pub(super) async fn prepare_tailing(client: &Client, schema: &str) -> Result<(), OutboxError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('server_version_num')::int,
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_user::text",
            &[],
        )
        .await
        .map_err(pg)?;
    let (wal_level, version, replication, user): (String, i32, Option<bool>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if wal_level != "logical" {
        return Err(setup(format!(
            "log tailing needs wal_level = logical, the server has `{wal_level}`: set \
             `wal_level = logical` in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) \
             and restart PostgreSQL"
        )));
    }
    if version < 140_000 {
        return Err(setup(format!(
            "log tailing needs PostgreSQL 14 or later (binary pgoutput), the server is {version}"
        )));
    }
    if replication != Some(true) {
        return Err(setup(format!(
            "log tailing needs a role with the REPLICATION attribute: \
             ALTER ROLE {user} REPLICATION (or use the polling relay)"
        )));
    }
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&format!("{schema}_outbox")],
        )
        .await
        .map_err(pg)?
        .get(0);
    if !exists {
        let created = client
            .batch_execute(&format!(
                "CREATE PUBLICATION {schema}_outbox FOR TABLE {schema}.outbox \
                 WITH (publish = 'insert')"
            ))
            .await;
        if let Err(e) = created
            && !is_duplicate(&e)
        {
            return Err(setup(format!(
                "cannot create publication `{schema}_outbox` (the role must own \
                 {schema}.outbox): {}",
                pg_text(&e)
            )));
        }
    }
    ensure_slot(client, schema).await
}

/// Creates the replication slot if it is missing (first start, or dropped by hand).
pub(super) async fn ensure_slot(client: &Client, schema: &str) -> Result<(), OutboxError> {
    let slot = format!("{schema}_outbox");
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(pg)?
        .get(0);
    if exists {
        return Ok(());
    }
    match client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate(&e) => Ok(()),
        Err(e) => Err(setup(format!(
            "cannot create replication slot `{slot}` (max_replication_slots may be 0 or all \
             in use): {}",
            pg_text(&e)
        ))),
    }
}

fn is_duplicate(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT)
}

/// The server's message for `e` (its `Display` says only "db error").
pub(super) fn pg_text(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned())
}

fn setup(message: String) -> OutboxError {
    OutboxError::Setup(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["shoal", "orders_outbox", "_x1"] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in [
            "",
            "Shoal",
            "1x",
            "a-b",
            "a;drop table x",
            "a b",
            &"x".repeat(41),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
