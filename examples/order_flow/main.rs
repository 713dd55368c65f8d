//! The classic order flow, with crashes: nothing lost, nothing invoiced twice.
//!
//! ```sh
//! cargo run -p shoal-examples --example order-flow
//! ```
//!
//! One command runs four processes on loopback (static peers, no multicast):
//!
//! - **orders** writes each order and its `order.created` event in one SQLite transaction
//!   (the transactional outbox); its node's relay publishes the events.
//! - **invoice** (two instances, one shared database) and **shipping** subscribe; each
//!   applies an event's effect together with its inbox entry in one transaction
//!   ([`SqliteOutbox::apply_once`]), so a redelivered event is skipped, even after a restart.
//!
//! While orders flow, the supervisor kills an invoice instance, the shipping service and the
//! orders service itself with SIGKILL, and restarts each. At the end it counts the rows:
//! every order has exactly one invoice and one shipment. Exit status 1 if not.
//!
//! With `--postgres URL`, `orders` keeps its orders and outbox in PostgreSQL instead and runs
//! as **two instances** (each takes half the orders) relaying by **tailing the transaction
//! log**: one tails, the other stands by. The supervisor kills the one that tails; the other
//! takes over from the replication slot. `scripts/order-flow-postgres.sh` runs it on a
//! throwaway cluster.
//!
//! [`SqliteOutbox::apply_once`]: shoal::outbox::SqliteOutbox::apply_once

mod pg_orders;

mod services;
mod supervisor;
// Black-box tests of the invoice service with `shoal::testing` (`cargo test -p shoal-examples`).
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// What this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Starts, kills and restarts the others, then checks the books.
    Supervisor,
    /// Takes orders: order row + `order.created` event in one transaction.
    Orders,
    /// Invoices each order once.
    Invoice,
    /// Ships each order once.
    Shipping,
}

#[derive(Parser, Debug)]
#[command(about = "Shoal's order-flow example: outbox and inbox across SIGKILLs")]
struct Args {
    /// What this process is; you run the supervisor, which starts the others.
    #[arg(long, value_enum, default_value_t = Role::Supervisor)]
    role: Role,
    /// Folder for the databases (default: a new temporary folder, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Orders to take.
    #[arg(long, default_value_t = 2_000)]
    orders: u64,
    /// Where this service listens (services only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The orders service's addresses (invoice and shipping dial them).
    #[arg(long)]
    peer: Vec<SocketAddr>,
    /// Keep orders and their outbox in this PostgreSQL database (two `orders` instances,
    /// relaying by tailing the log) instead of SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// This instance's name in the books (e.g. `invoice-a`).
    #[arg(long, default_value = "")]
    instance: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.role {
        Role::Supervisor => supervisor::run(&args),
        role => services::run(role, &args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order-flow ({:?}): {e}", args.role);
            std::process::ExitCode::FAILURE
        }
    }
}
