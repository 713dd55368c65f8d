//! The outbox and the inbox across real crashes: separate processes killed with SIGKILL.
//!
//! The test binary runs itself as the child process (`outbox_child`, selected by the
//! `SHOAL_OUTBOX_ROLE` variable), so sender and receiver are real processes with their own
//! SQLite connections, and a kill leaves exactly what a crash leaves.
//!
//! - A **sender** enqueues 10,000 orders, each with its domain row and a command in one
//!   transaction (every tenth is rolled back), and is killed at random points and restarted:
//!   the receiver (this process) must handle exactly one message per committed order and none
//!   for a rolled-back one.
//! - A **receiver** applies each message's effect with the inbox in the same transaction, and
//!   is killed mid-stream (once at a random point, once right after committing an effect but
//!   before acknowledging it) while this process's outbox keeps retrying: every effect is
//!   applied exactly once.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use shoal::outbox::rusqlite::{self, Connection};
use shoal::outbox::{Destination, OutboxStore, RelayOptions, SqliteOutbox};
use shoal::{HandlerError, Identity, MeshCa, Message, Node, RetryPolicy};
use shoal_tests::child::{Proc, TempDir, progress};
use shoal_tests::{Mesh, loopback};

const ROLE: &str = "SHOAL_OUTBOX_ROLE";
const DB: &str = "SHOAL_OUTBOX_DB";
const PEER: &str = "SHOAL_OUTBOX_PEER";
/// Receiver: after committing the effect of this many messages (in this run), stop before
/// acknowledging and wait to be killed.
const PAUSE_AFTER: &str = "SHOAL_OUTBOX_PAUSE_AFTER";
const CHILD_TEST: &str = "outbox_child";

/// Orders the sender enqueues; ids `ORDERS..` are never used.
const ORDERS: u64 = 10_000;
/// Messages the receiver test sends.
const LEDGER_MESSAGES: u64 = 2_000;
/// Bound on each full drain.
const WAIT: Duration = Duration::from_secs(60);

/// Is order `id` rolled back instead of committed?
fn rolled_back(id: u64) -> bool {
    id % 10 == 9
}

#[test]
fn sender_killed_while_enqueuing_loses_nothing_and_sends_nothing_rolled_back() {
    let rt = background_runtime();
    let dir = TempDir::new("outbox-crash-sender");
    let db = dir.path.join("orders.db");
    let mesh = Mesh::new();
    let handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let invoice = rt.block_on(async {
        let node = mesh.start("invoice", &[]).await;
        let seen = Arc::clone(&handled);
        node.handle("create-invoice", move |msg: Message| {
            let id: u64 = String::from_utf8_lossy(msg.payload())
                .parse()
                .unwrap_or(u64::MAX);
            *seen.lock().unwrap().entry(id).or_default() += 1;
            async { Ok::<_, HandlerError>(()) }
        });
        node
    });
    let spawn = || {
        spawn_child(
            "sender",
            &db,
            invoice.local_addr(),
            &mesh.ca,
            &mesh.identity("orders"),
            None,
        )
    };
    // Killed at four random points while enqueuing, then left to finish.
    let mut rng = rand::rng();
    let mut kill_points: Vec<u64> = (0..4)
        .map(|_| rng.random_range(200..ORDERS - 200))
        .collect();
    kill_points.sort_unstable();
    for at in kill_points {
        let mut sender = spawn();
        let reached = sender.wait_for(|line| progress(line, "enqueued").is_some_and(|n| n >= at));
        sender.kill();
        eprintln!("sender killed after `{reached}`");
    }
    let mut sender = spawn();
    sender.wait_for(|line| line == "drained");
    sender.kill();

    let committed: HashSet<u64> = Connection::open(&db)
        .unwrap()
        .prepare("SELECT id FROM orders")
        .unwrap()
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|id| id.unwrap() as u64)
        .collect();
    let expected: HashSet<u64> = (0..ORDERS).filter(|id| !rolled_back(*id)).collect();
    assert_eq!(committed, expected, "every order row committed once");
    let handled = handled.lock().unwrap().clone();
    let twice: Vec<_> = handled.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    let ids: HashSet<u64> = handled.keys().copied().collect();
    let missing: Vec<_> = committed.difference(&ids).take(10).collect();
    let extra: Vec<_> = ids.difference(&committed).take(10).collect();
    assert!(
        missing.is_empty(),
        "committed but never handled: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "handled without a committed row: {extra:?}"
    );
    rt.block_on(invoice.shutdown());
}

#[test]
fn receiver_killed_mid_stream_applies_each_effect_once_with_the_inbox() {
    let rt = background_runtime();
    let dir = TempDir::new("outbox-crash-receiver");
    let outbox_db = dir.path.join("payments.db");
    let ledger_db = dir.path.join("ledger.db");
    let mesh = Mesh::new();
    let outbox = Arc::new(SqliteOutbox::open(&outbox_db).unwrap());
    let payments = rt.block_on(
        mesh.builder("payments")
            .outbox(
                Arc::clone(&outbox) as Arc<dyn OutboxStore>,
                RelayOptions::default().poll(Duration::from_millis(200)),
            )
            .retry_policy(RetryPolicy {
                ack_timeout: Duration::from_secs(1),
                ..RetryPolicy::default()
            })
            .start(),
    );
    let payments = payments.unwrap();
    // Every message is in the outbox before any receiver runs.
    let mut conn = outbox.connect().unwrap();
    let mut sent = HashSet::new();
    for batch in 0..LEDGER_MESSAGES / 10 {
        let tx = conn.transaction().unwrap();
        for i in 0..10 {
            let msg = Message::command("credit", format!("{}", batch * 10 + i));
            outbox
                .enqueue(&tx, &Destination::Service("ledger".into()), &msg)
                .unwrap();
            sent.insert(msg.id().to_string());
        }
        outbox.commit(tx).unwrap();
    }
    let spawn = |pause: Option<u64>| {
        spawn_child(
            "ledger",
            &ledger_db,
            payments.local_addr(),
            &mesh.ca,
            &mesh.identity("ledger"),
            pause,
        )
    };
    // Killed right after committing an effect it has not acknowledged yet: the sender must
    // redeliver that message, and the inbox must recognise it after the restart.
    let mut ledger = spawn(Some(300));
    ledger.wait_for(|line| line == "paused");
    ledger.kill();
    // Killed at a random point mid-stream.
    let mut ledger = spawn(None);
    let at = rand::rng().random_range(100..700);
    let reached = ledger.wait_for(|line| progress(line, "applied").is_some_and(|n| n >= at));
    ledger.kill();
    eprintln!("ledger killed after `{reached}`");
    // The last one runs until the outbox is empty.
    let mut ledger = spawn(None);
    let started = Instant::now();
    while outbox.stats().unwrap().pending > 0 {
        assert!(
            started.elapsed() < WAIT,
            "outbox not drained: {:?}",
            outbox.stats()
        );
        // Not synchronisation: the relay deletes rows as acks arrive; this samples it.
        std::thread::sleep(Duration::from_millis(20));
    }
    ledger.kill();

    let ledger = Connection::open(&ledger_db).unwrap();
    let (effects, distinct, skipped): (i64, i64, i64) = ledger
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT message_id),
                    (SELECT COALESCE(SUM(n), 0) FROM redeliveries) FROM effects",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    eprintln!("effects {effects}, distinct {distinct}, redeliveries skipped {skipped}");
    assert_eq!(distinct, LEDGER_MESSAGES as i64, "every message applied");
    assert_eq!(effects, distinct, "no effect applied twice");
    assert!(
        skipped >= 1,
        "the paused message was redelivered and skipped"
    );
    let applied: HashSet<String> = ledger
        .prepare("SELECT message_id FROM effects")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(applied, sent);
    rt.block_on(payments.shutdown());
}

/// The child process: a sender or a receiver, as `SHOAL_OUTBOX_ROLE` says; a no-op test
/// otherwise.
#[test]
fn outbox_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap();
    let (ca, identity) = shoal_tests::child::credentials();
    let db = PathBuf::from(var(DB));
    let peer: SocketAddr = var(PEER).parse().unwrap();
    let builder = |service: &str| {
        Node::builder(service)
            .listen(loopback())
            .identity(identity.clone())
            .trust(ca.clone())
            .peer(peer)
    };
    let rt = runtime();
    match role.as_str() {
        "sender" => rt.block_on(run_sender(builder("orders"), &db)),
        "ledger" => {
            let pause = std::env::var(PAUSE_AFTER).ok().map(|n| n.parse().unwrap());
            rt.block_on(run_ledger(builder("ledger"), &db, pause));
        }
        other => panic!("unknown role {other}"),
    }
}

/// Enqueues the orders not yet in the database, one transaction each, then waits until the
/// relay has delivered every row.
async fn run_sender(builder: shoal::NodeBuilder, db: &Path) {
    let outbox = Arc::new(SqliteOutbox::open(db).unwrap());
    let node = builder
        .outbox(
            Arc::clone(&outbox) as Arc<dyn OutboxStore>,
            RelayOptions::default().poll(Duration::from_millis(100)),
        )
        .start()
        .await
        .unwrap();
    let mut conn = outbox.connect().unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
        .unwrap();
    let next: i64 = conn
        .query_row("SELECT COALESCE(MAX(id) + 1, 0) FROM orders", [], |r| {
            r.get(0)
        })
        .unwrap();
    for id in next as u64..ORDERS {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO orders (id) VALUES (?1)", [id as i64])
            .unwrap();
        let command = Message::command("create-invoice", id.to_string());
        outbox
            .enqueue(&tx, &Destination::Service("invoice".into()), &command)
            .unwrap();
        if rolled_back(id) {
            drop(tx);
        } else {
            outbox.commit(tx).unwrap();
        }
        if id % 50 == 0 {
            println!("enqueued {id}");
            // Let the relay run between bursts, as a service's other work would.
            tokio::task::yield_now().await;
        }
    }
    let started = Instant::now();
    while outbox.stats().unwrap().pending > 0 && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("drained");
    std::future::pending::<()>().await;
    drop(node);
}

/// Applies each `credit` in one transaction with its inbox entry; with `pause`, stops after
/// committing that many effects, before acknowledging the last one, and waits to be killed.
async fn run_ledger(builder: shoal::NodeBuilder, db: &Path, pause: Option<u64>) {
    let outbox = SqliteOutbox::open(db).unwrap();
    let conn = outbox.connect().unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS effects (message_id TEXT NOT NULL, amount INTEGER);
         CREATE TABLE IF NOT EXISTS redeliveries (n INTEGER NOT NULL);",
    )
    .unwrap();
    let conn = Arc::new(Mutex::new(conn));
    let handled = Arc::new(AtomicU64::new(0));
    let node = builder.start().await.unwrap();
    node.handle("credit", move |msg: Message| {
        // The effect and its inbox entry commit together, before any await.
        let applied = SqliteOutbox::apply_once(&mut conn.lock().unwrap(), msg.id(), |tx| {
            let amount: i64 = String::from_utf8_lossy(msg.payload()).parse().unwrap_or(0);
            tx.execute(
                "INSERT INTO effects (message_id, amount) VALUES (?1, ?2)",
                rusqlite::params![msg.id().to_string(), amount],
            )
        });
        let result = match applied {
            Ok(Some(_)) => Ok(handled.fetch_add(1, Ordering::SeqCst) + 1),
            Ok(None) => conn
                .lock()
                .unwrap()
                .execute("INSERT INTO redeliveries (n) VALUES (1)", [])
                .map(|_| handled.load(Ordering::SeqCst))
                .map_err(retry),
            Err(e) => Err(retry(e)),
        };
        async move {
            let n = result?;
            if n % 25 == 0 {
                println!("applied {n}");
            }
            if pause == Some(n) {
                println!("paused");
                std::future::pending::<()>().await;
            }
            Ok::<_, HandlerError>(())
        }
    });
    std::future::pending::<()>().await;
    drop(node);
}

fn retry(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::retryable(e.to_string())
}

/// The child's runtime: it blocks on its whole run.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The test's runtime: its nodes keep running on a worker while the test thread waits for
/// the child.
fn background_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts this binary again as a sender or a ledger (see [`outbox_child`]).
fn spawn_child(
    role: &str,
    db: &Path,
    peer: SocketAddr,
    ca: &MeshCa,
    identity: &Identity,
    pause: Option<u64>,
) -> Proc {
    let mut env = vec![
        (ROLE, role.to_owned()),
        (DB, db.display().to_string()),
        (PEER, peer.to_string()),
    ];
    env.extend(shoal_tests::child::credentials_env(ca, identity));
    if let Some(n) = pause {
        env.push((PAUSE_AFTER, n.to_string()));
    }
    Proc::spawn(CHILD_TEST, &env)
}
