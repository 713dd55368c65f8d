//! The transactional outbox and the persistent inbox .
//!
//! A service that changes its database and then sends a message can crash in between. With
//! the outbox, the message is written into an outbox table *in the same transaction* as the
//! domain change; the node's relay later delivers it through the normal delivery path and
//! removes it once acknowledged. The inbox is the receiver's mirror: a table of handled
//! message ids, written in the same transaction as the handler's own changes, so a
//! redelivered message is recognised even after a restart.

mod peers;
#[cfg(feature = "postgres")]
mod postgres;
pub(crate) mod relay;
mod relay_options;
mod sqlite;
mod store;
mod waiting;

/// The connection pool of [`PostgresOutbox::pool`].
#[cfg(feature = "postgres")]
pub use deadpool_postgres;
#[cfg(feature = "postgres")]
pub use postgres::{Effect, PostgresOptions, PostgresOutbox, RelayMode};
pub use relay_options::RelayOptions;
/// The SQLite bindings the outbox uses: open your connections and transactions with these,
/// so their types match [`SqliteOutbox::enqueue`].
pub use rusqlite;
pub use sqlite::{OutboxOptions, SqliteOutbox};
pub use store::{
    Background, DeadRow, Destination, OutboxError, OutboxRow, OutboxStats, OutboxStore,
};
/// The PostgreSQL client the outbox uses: begin your transactions with these (directly or
/// through [`deadpool_postgres`]), so their types match [`PostgresOutbox::enqueue`].
#[cfg(feature = "postgres")]
pub use tokio_postgres;
