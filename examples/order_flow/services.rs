//! The three services of the order flow. Each prints progress lines on stdout that the
//! supervisor reads (`order N`, `drained`, `handled N`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::outbox::rusqlite::params;
use shoal::outbox::{Destination, OutboxStore, RelayOptions, SqliteOutbox};
use shoal::{HandlerError, MeshCa, Message, Node, NodeBuilder};

use crate::{Args, Role};

/// The event every order publishes.
pub(crate) const ORDER_CREATED: &str = "order.created";
/// Environment variables that carry the mesh CA (certificate and key) to the services.
pub(crate) const CA_CERT_ENV: &str = "SHOAL_EXAMPLE_CA_CERT";
/// See [`CA_CERT_ENV`].
pub(crate) const CA_KEY_ENV: &str = "SHOAL_EXAMPLE_CA_KEY";

pub(crate) type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Runs one service until it is killed.
pub(crate) fn run(role: Role, args: &Args) -> Result<()> {
    exit_with_supervisor();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = args.dir.clone().ok_or("--dir is required for a service")?;
        let service = match role {
            Role::Orders => "orders",
            Role::Invoice => "invoice",
            Role::Shipping => "shipping",
            Role::Supervisor => return Err("not a service".into()),
        };
        let ca =
            MeshCa::from_pem_with_key(&std::env::var(CA_CERT_ENV)?, &std::env::var(CA_KEY_ENV)?)?;
        let builder = Node::builder(service)
            .listen(args.listen)
            .identity(ca.issue(service)?)
            .trust(ca)
            .peers(args.peer.iter().copied());
        let db = dir.join(format!("{service}.db"));
        match role {
            Role::Orders => match &args.postgres {
                Some(url) => {
                    crate::pg_orders::take_orders(builder, url, &args.instance, args.orders).await
                }
                None => take_orders(builder, &db, args.orders).await,
            },
            _ => handle_orders(builder, &db, service, &args.instance).await,
        }
    })
}

/// Ends this process when the supervisor goes (its end of our stdin closes), or after a
/// generous bound, so no service outlives the example.
fn exit_with_supervisor() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(600));
        std::process::exit(2);
    });
}

/// Orders: one transaction per order holds the order row and its event. Resumes after the
/// last order in the database, so a restart after a crash goes on where it stopped.
async fn take_orders(builder: NodeBuilder, db: &std::path::Path, orders: u64) -> Result<()> {
    let outbox = Arc::new(SqliteOutbox::open(db)?);
    let node = builder
        .outbox(Arc::clone(&outbox) as Arc<dyn OutboxStore>, relay_options())
        .start()
        .await?;
    let mut conn = outbox.connect()?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)",
    )?;
    let next: i64 = conn.query_row("SELECT COALESCE(MAX(id) + 1, 0) FROM orders", [], |r| {
        r.get(0)
    })?;
    for id in next as u64..orders {
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO orders (id, item) VALUES (?1, ?2)",
            params![id as i64, format!("item-{}", id % 7)],
        )?;
        let event = Message::event(ORDER_CREATED, id.to_string()).with_key(format!("order-{id}"));
        outbox.enqueue(&tx, &Destination::Publish, &event)?;
        outbox.commit(tx)?;
        if id % 100 == 0 {
            println!("order {id}");
        }
        // A steady flow of orders (about 1,000 a second), so the crashes land mid-run.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("all orders taken");
    while outbox.stats()?.pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("drained");
    std::future::pending::<()>().await;
    drop(node);
    Ok(())
}

/// How the orders service relays: both groups get every event, even one taken before they
/// first subscribed.
pub(crate) fn relay_options() -> RelayOptions {
    RelayOptions::default()
        .poll(Duration::from_millis(200))
        .expect_group(ORDER_CREATED, "invoice")
        .expect_group(ORDER_CREATED, "shipping")
}

/// Invoice or shipping, as a process of the supervised run: the instances share one SQLite
/// file, which takes one outbox relay, so they do not announce their work (see
/// [`start_handling`]).
async fn handle_orders(
    builder: NodeBuilder,
    db: &std::path::Path,
    service: &str,
    instance: &str,
) -> Result<()> {
    let node = start_handling(builder, db, service, instance, false).await?;
    println!("subscribed");
    std::future::pending::<()>().await;
    drop(node);
    Ok(())
}

/// What a handling service announces for each order it handled, when it announces.
pub(crate) fn announcement(service: &str) -> &'static str {
    match service {
        "invoice" => "invoice.created",
        _ => "shipment.created",
    }
}

/// Starts invoice or shipping: each `order.created`'s effect (a row naming the order) and its
/// inbox entry commit together, so a redelivered event is skipped, even after a restart.
/// With `announce`, the same transaction enqueues an event in the service's outbox
/// ([`announcement`]: `invoice.created` or `shipment.created`, the order id as payload, keyed
/// by the order), which the node's relay publishes: one per order, and none lost when the
/// instance dies right after the commit.
pub(crate) async fn start_handling(
    builder: NodeBuilder,
    db: &std::path::Path,
    service: &str,
    instance: &str,
    announce: bool,
) -> Result<Node> {
    let store = Arc::new(SqliteOutbox::open(db)?);
    let conn = store.connect()?;
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {service} (order_id INTEGER NOT NULL, instance TEXT NOT NULL)"
    ))?;
    let conn = Arc::new(Mutex::new(conn));
    let handled = Arc::new(AtomicU64::new(0));
    let builder = if announce {
        let relay = RelayOptions::default().poll(Duration::from_millis(200));
        builder.outbox(Arc::clone(&store) as Arc<dyn OutboxStore>, relay)
    } else {
        builder
    };
    let node = builder.start().await?;
    let insert = format!("INSERT INTO {service} (order_id, instance) VALUES (?1, ?2)");
    let instance = instance.to_owned();
    let announced = announce.then(|| announcement(service));
    node.subscribe(ORDER_CREATED, move |event: Message| {
        let order: i64 = String::from_utf8_lossy(event.payload())
            .parse()
            .unwrap_or(-1);
        let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let applied = apply(&store, &mut conn, &event, |tx| {
            tx.execute(&insert, params![order, instance])?;
            if let Some(name) = announced {
                let done =
                    Message::event(name, order.to_string()).with_key(format!("order-{order}"));
                store.enqueue(tx, &Destination::Publish, &done)?;
            }
            Ok(())
        });
        drop(conn);
        let result = match applied {
            Ok(true) => {
                let n = handled.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(100) {
                    println!("handled {n}");
                }
                Ok(())
            }
            Ok(false) => Ok(()), // a redelivery: already applied, just acknowledge it
            Err(e) => Err(HandlerError::retryable(e.to_string())),
        };
        async move { result }
    })
    .await?;
    Ok(node)
}

/// Applies `effect` with `event`'s inbox entry in one transaction, unless the inbox already
/// has it (`false`: a redelivery). Commits through the store, which wakes its relay.
fn apply(
    store: &SqliteOutbox,
    conn: &mut shoal::outbox::rusqlite::Connection,
    event: &Message,
    effect: impl FnOnce(&shoal::outbox::rusqlite::Transaction<'_>) -> Result<()>,
) -> Result<bool> {
    let tx = conn.transaction()?;
    if !SqliteOutbox::first_delivery(&tx, event.id())? {
        return Ok(false);
    }
    effect(&tx)?;
    store.commit(tx)?;
    Ok(true)
}
