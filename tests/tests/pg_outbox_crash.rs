//! The PostgreSQL outbox across real crashes, in both relay modes: processes killed with
//! SIGKILL (this test binary runs itself as the child, `pg_outbox_child`). The receiver
//! (this process) applies each message with the PostgreSQL inbox and records the order of
//! application; at the end every committed order is applied exactly once, none rolled back
//! is, and each customer's orders are applied in order.
//!
//! - A **sender** takes orders (order row + command in one transaction, every tenth rolled
//!   back) and is killed at random points while enqueuing, then restarted.
//! - Two **relays** of the same outbox run while orders are written; the first is killed
//!   mid-stream, and the second takes its rows over (after the lease when polling, by taking
//!   the lock and resuming from the slot when tailing).
//!
//! Skipped (and passing) without a database.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use shoal::outbox::{OutboxStore, PostgresOutbox, RelayMode, RelayOptions};
use shoal::{Node, RetryPolicy};
use shoal_tests::child::{Proc, progress};
use shoal_tests::postgres::{
    Ledger, committed_orders, database, fresh_schema, take_orders, test_options,
};
use shoal_tests::{Mesh, loopback};

const ROLE: &str = "SHOAL_PG_ROLE";
const MODE: &str = "SHOAL_PG_MODE";
const SCHEMA: &str = "SHOAL_PG_SCHEMA";
const PEER: &str = "SHOAL_PG_PEER";
const CHILD_TEST: &str = "pg_outbox_child";

/// Orders the sender test takes.
const ORDERS: u64 = 1_000;
/// Bound on each drain.
const WAIT: Duration = Duration::from_secs(60);

fn mode_name(mode: RelayMode) -> &'static str {
    match mode {
        RelayMode::LogTailing => "tailing",
        _ => "polling",
    }
}

/// The test's runtime: its nodes keep running on workers while the test thread waits for a
/// child.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts this binary again as a sender or a relay of `schema`'s outbox.
fn spawn(role: &str, mode: RelayMode, schema: &str, peer: SocketAddr, mesh: &Mesh) -> Proc {
    let [ca, cert, key] = shoal_tests::child::credentials_env(&mesh.ca, &mesh.identity("orders"));
    Proc::spawn(
        CHILD_TEST,
        &[
            (ROLE, role.to_owned()),
            (MODE, mode_name(mode).to_owned()),
            (SCHEMA, schema.to_owned()),
            (PEER, peer.to_string()),
            ca,
            cert,
            key,
        ],
    )
}

fn sender_killed_while_enqueuing(mode: RelayMode) {
    let name = format!("sender_{}", mode_name(mode));
    let Some(url) = database(&name) else { return };
    let schema = fresh_schema(&name);
    let rt = runtime();
    let mesh = Mesh::new();
    let ledger = rt.block_on(Ledger::start(&mesh, &url));
    let peer = ledger.node.local_addr();
    // Killed at two random points while enqueuing, then left to finish.
    let mut rng = rand::rng();
    let mut kill_points: Vec<u64> = (0..2)
        .map(|_| rng.random_range(100..ORDERS - 100))
        .collect();
    kill_points.sort_unstable();
    for at in kill_points {
        let mut sender = spawn("sender", mode, &schema, peer, &mesh);
        let reached = sender.wait_for(|line| progress(line, "order").is_some_and(|n| n >= at));
        sender.kill();
        eprintln!("{name}: sender killed after `{reached}`");
    }
    let mut sender = spawn("sender", mode, &schema, peer, &mesh);
    sender.wait_for(|line| line == "drained");
    sender.kill();
    rt.block_on(async {
        let committed = committed_orders(&url, &schema).await;
        let expected = (0..ORDERS)
            .filter(|id| !shoal_tests::postgres::rolled_back(*id))
            .count();
        assert_eq!(committed.len(), expected, "every order committed once");
        ledger.finish(&url, &schema, WAIT).await;
    });
}

#[test]
fn polling_sender_killed_while_enqueuing_loses_nothing_and_sends_nothing_rolled_back() {
    sender_killed_while_enqueuing(RelayMode::Polling);
}

#[test]
fn tailing_sender_killed_while_enqueuing_loses_nothing_and_sends_nothing_rolled_back() {
    sender_killed_while_enqueuing(RelayMode::LogTailing);
}

fn relay_killed_mid_stream(mode: RelayMode) {
    let name = format!("relays_{}", mode_name(mode));
    let Some(url) = database(&name) else { return };
    let schema = fresh_schema(&name);
    let rt = runtime();
    let mesh = Mesh::new();
    let ledger = rt.block_on(Ledger::start(&mesh, &url));
    let peer = ledger.node.local_addr();
    // The service writes; two instances relay. The first is killed while rows stream.
    let writer = rt
        .block_on(PostgresOutbox::connect(&url, test_options(&schema, mode)))
        .unwrap();
    rt.block_on(take_orders(&writer, 300, |_| {}));
    let mut first = spawn("relay", mode, &schema, peer, &mesh);
    first.wait_for(|line| line.ends_with("relaying"));
    rt.block_on(ledger.wait_applied(100, WAIT));
    let mut second = spawn("relay", mode, &schema, peer, &mesh);
    second.wait_for(|line| line.ends_with("relaying"));
    let writing = rt.spawn(async move {
        take_orders(&writer, 1_200, |_| {}).await;
    });
    rt.block_on(ledger.wait_applied(500, WAIT));
    first.kill();
    eprintln!(
        "{name}: first relay killed after {} effects",
        ledger.applied()
    );
    rt.block_on(async {
        writing.await.unwrap();
        ledger.finish(&url, &schema, WAIT).await;
    });
    second.kill();
}

#[test]
fn polling_relay_killed_mid_stream_its_rows_go_through_the_other_once_in_order() {
    relay_killed_mid_stream(RelayMode::Polling);
}

#[test]
fn tailing_relay_killed_mid_stream_the_other_resumes_from_the_slot_once_in_order() {
    relay_killed_mid_stream(RelayMode::LogTailing);
}

/// The child process: a sender or a relay, as `SHOAL_PG_ROLE` says; a no-op test otherwise.
#[test]
fn pg_outbox_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    let url = var(shoal_tests::postgres::URL_VAR);
    let mode = match var(MODE).as_str() {
        "tailing" => RelayMode::LogTailing,
        _ => RelayMode::Polling,
    };
    let (ca, identity) = shoal_tests::child::credentials();
    let peer: SocketAddr = var(PEER).parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let outbox = Arc::new(
            PostgresOutbox::connect(&url, test_options(&var(SCHEMA), mode))
                .await
                .unwrap(),
        );
        let node = Node::builder("orders")
            .listen(loopback())
            .identity(identity)
            .trust(ca)
            .peer(peer)
            .retry_policy(RetryPolicy {
                ack_timeout: Duration::from_secs(1),
                ..RetryPolicy::default()
            })
            .outbox(
                Arc::clone(&outbox) as Arc<dyn OutboxStore>,
                RelayOptions::default().poll(Duration::from_millis(200)),
            )
            .start()
            .await
            .unwrap();
        // (The first line may follow libtest's "test pg_outbox_child ... ".)
        println!("relaying");
        if role == "sender" {
            take_orders(&outbox, ORDERS, |id| {
                if id % 50 == 0 {
                    println!("order {id}");
                }
            })
            .await;
            let started = std::time::Instant::now();
            while outbox.stats().await.unwrap().pending > 0 && started.elapsed() < WAIT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!("drained");
        }
        std::future::pending::<()>().await;
        drop(node);
    });
}
