//! The supervisor: starts the services as child processes of this same binary, kills and
//! restarts them while orders flow, then checks the books.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use shoal::MeshCa;
use shoal::outbox::rusqlite::{Connection, OpenFlags};

use crate::services::{CA_CERT_ENV, CA_KEY_ENV};
use crate::{Args, pg_orders};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Bound on every wait for a service's progress, and on the final count.
const WAIT: Duration = Duration::from_secs(60);

/// Runs the whole example; `Err` if an order was lost or handled twice.
pub(crate) fn run(args: &Args) -> Result<()> {
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("shoal-order-flow-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let result = match &args.postgres {
        Some(url) => run_on_postgres(&dir, url, args.orders),
        None => run_in(&dir, args.orders),
    };
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(dir: &Path, orders: u64) -> Result<()> {
    let ca = MeshCa::generate("order-flow example")?;
    // The orders service keeps its address across restarts, so the others find it again.
    let orders_addr = free_loopback_port()?;
    let services = Services {
        dir: dir.to_path_buf(),
        ca,
        orders: vec![orders_addr],
        count: orders,
        postgres: None,
    };
    println!(
        "order-flow: {orders} orders; databases in {}",
        dir.display()
    );
    let mut order_taker = services.start("orders", "orders")?;
    let mut invoice_a = services.start("invoice", "invoice-a")?;
    let invoice_b = services.start("invoice", "invoice-b")?;
    let mut shipping = services.start("shipping", "shipping")?;
    for service in [&mut invoice_a, &mut shipping] {
        service.wait_for(|l| l == "subscribed")?;
    }

    // Crashes while orders flow: each service is killed with SIGKILL and started again.
    let at = |share: u64| (orders * share / 100) / 100 * 100;
    order_taker.wait_for(|l| order_number(l).is_some_and(|n| n >= at(20)))?;
    invoice_a.kill();
    println!(
        "killed invoice-a (SIGKILL) at order {}; restarting it",
        at(20)
    );
    let _invoice_a = services.start("invoice", "invoice-a")?;
    order_taker.wait_for(|l| order_number(l).is_some_and(|n| n >= at(45)))?;
    shipping.kill();
    println!(
        "killed shipping (SIGKILL) at order {}; restarting it",
        at(45)
    );
    let _shipping = services.start("shipping", "shipping")?;
    order_taker.wait_for(|l| order_number(l).is_some_and(|n| n >= at(70)))?;
    order_taker.kill();
    println!("killed orders (SIGKILL) at order {}; restarting it", at(70));
    let mut order_taker = services.start("orders", "orders")?;
    order_taker.wait_for(|l| l == "drained")?;
    println!("every order taken, and its event acknowledged by invoice and shipping");
    drop(invoice_b);

    let books = Books::read(dir, &orders_in_sqlite(dir)?)?;
    books.verdict(orders)
}

/// The order flow with `orders` as two instances on PostgreSQL, relaying by tailing the log.
fn run_on_postgres(dir: &Path, url: &str, orders: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(pg_orders::clear(url))?;
    let ca = MeshCa::generate("order-flow example")?;
    let services = Services {
        dir: dir.to_path_buf(),
        ca,
        orders: vec![free_loopback_port()?, free_loopback_port()?],
        count: orders,
        postgres: Some(url.to_owned()),
    };
    println!(
        "order-flow: {orders} orders taken by orders-a and orders-b on PostgreSQL (log \
         tailing); other databases in {}",
        dir.display()
    );
    let mut orders_a = services.start("orders", "orders-a")?;
    orders_a.wait_for(|l| l.ends_with("tailing"))?;
    let mut orders_b = services.start("orders", "orders-b")?;
    let mut invoice_a = services.start("invoice", "invoice-a")?;
    let invoice_b = services.start("invoice", "invoice-b")?;
    let mut shipping = services.start("shipping", "shipping")?;
    for service in [&mut invoice_a, &mut shipping] {
        service.wait_for(|l| l == "subscribed")?;
    }
    println!("orders-a tails the log; orders-b stands by");

    // orders-a takes the even orders: its progress paces the crashes.
    let at = |share: u64| (orders * share / 100) / 100 * 100;
    orders_a.wait_for(|l| order_number(l).is_some_and(|n| n >= at(20)))?;
    invoice_a.kill();
    println!(
        "killed invoice-a (SIGKILL) at order {}; restarting it",
        at(20)
    );
    let _invoice_a = services.start("invoice", "invoice-a")?;
    orders_a.wait_for(|l| order_number(l).is_some_and(|n| n >= at(45)))?;
    shipping.kill();
    println!(
        "killed shipping (SIGKILL) at order {}; restarting it",
        at(45)
    );
    let _shipping = services.start("shipping", "shipping")?;
    orders_a.wait_for(|l| order_number(l).is_some_and(|n| n >= at(70)))?;
    orders_a.kill();
    println!(
        "killed orders-a (SIGKILL) while it tailed the log, at order {}",
        at(70)
    );
    orders_b.wait_for(|l| l == "tailing")?;
    println!("orders-b took over the log tail from the replication slot; restarting orders-a");
    let mut orders_a = services.start("orders", "orders-a")?;
    orders_a.wait_for(|l| l == "all orders taken")?;
    orders_b.wait_for(|l| l == "all orders taken")?;
    let deadline = Instant::now() + WAIT;
    while rt.block_on(pg_orders::pending(url))? > 0 {
        if Instant::now() > deadline {
            return Err("the outbox did not drain".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("every order taken, and its event acknowledged by invoice and shipping");
    drop(invoice_b);
    let taken = rt.block_on(pg_orders::committed(url))?;
    let books = Books::read(dir, &taken)?;
    rt.block_on(pg_orders::clear(url))?;
    books.verdict(orders)
}

/// What the services need to start.
struct Services {
    dir: PathBuf,
    ca: MeshCa,
    /// The orders instances' addresses (kept across restarts, so the others find them).
    orders: Vec<SocketAddr>,
    count: u64,
    /// The orders service's PostgreSQL database, if not SQLite.
    postgres: Option<String>,
}

impl Services {
    /// Starts `service` as a child process of this binary.
    fn start(&self, service: &str, instance: &str) -> Result<Service> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["--role", service, "--instance", instance])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--orders", &self.count.to_string()])
            .env(CA_CERT_ENV, self.ca.cert_pem())
            .env(CA_KEY_ENV, self.ca.key_pem().unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if service == "orders" {
            let at = usize::from(instance.ends_with("-b")).min(self.orders.len() - 1);
            command.args(["--listen", &self.orders[at].to_string()]);
        } else {
            for addr in &self.orders {
                command.args(["--peer", &addr.to_string()]);
            }
        }
        if let Some(url) = &self.postgres {
            command.args(["--postgres", url]);
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Service {
            name: instance.to_owned(),
            child,
            lines,
        })
    }
}

/// A running service; killed when dropped.
struct Service {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Service {
    /// Waits (bounded) for a progress line that satisfies `done`.
    fn wait_for(&mut self, done: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if done(&line) => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!("{} made no progress within {WAIT:?}", self.name).into());
                }
            }
        }
    }

    /// SIGKILL: a crash, with no chance to flush or say goodbye.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the databases say at the end.
struct Books {
    orders: u64,
    invoices: u64,
    invoiced_twice: u64,
    never_invoiced: u64,
    shipments: u64,
    shipped_twice: u64,
    never_shipped: u64,
    by_instance: Vec<(String, u64)>,
}

impl Books {
    /// The invoice and shipping databases in `dir`, against the orders taken.
    fn read(dir: &Path, orders: &[u64]) -> Result<Self> {
        let handled = |name: &str, table: &str| -> Result<Vec<(u64, String)>> {
            let conn =
                Connection::open_with_flags(dir.join(name), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let mut stmt = conn.prepare(&format!("SELECT order_id, instance FROM {table}"))?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        };
        let invoices = handled("invoice.db", "invoice")?;
        let shipments = handled("shipping.db", "shipping")?;
        let (invoiced_twice, never_invoiced) = tally(orders, &invoices);
        let (shipped_twice, never_shipped) = tally(orders, &shipments);
        let mut by_instance: Vec<(String, u64)> = Vec::new();
        for (_, instance) in &invoices {
            match by_instance.iter_mut().find(|(name, _)| name == instance) {
                Some((_, n)) => *n += 1,
                None => by_instance.push((instance.clone(), 1)),
            }
        }
        Ok(Self {
            orders: orders.len() as u64,
            invoices: invoices.len() as u64,
            invoiced_twice,
            never_invoiced,
            shipments: shipments.len() as u64,
            shipped_twice,
            never_shipped,
            by_instance,
        })
    }

    fn by_instance(&self, name: &str) -> u64 {
        self.by_instance
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, count)| *count)
    }

    /// Prints the books; `Err` unless each of the `orders` has one invoice and one shipment.
    fn verdict(&self, orders: u64) -> Result<()> {
        println!(
            "orders {}; invoices {} (invoice-a {}, invoice-b {}), invoiced twice {}, never \
             invoiced {}; shipments {}, shipped twice {}, never shipped {}",
            self.orders,
            self.invoices,
            self.by_instance("invoice-a"),
            self.by_instance("invoice-b"),
            self.invoiced_twice,
            self.never_invoiced,
            self.shipments,
            self.shipped_twice,
            self.never_shipped,
        );
        if self.orders == orders
            && self.invoices == orders
            && self.shipments == orders
            && self.invoiced_twice + self.never_invoiced + self.shipped_twice + self.never_shipped
                == 0
        {
            println!("OK: nothing lost, nothing invoiced or shipped twice");
            Ok(())
        } else {
            Err("the books do not balance".into())
        }
    }
}

/// Of `orders`, how many were handled more than once, and how many never, by `handled`.
fn tally(orders: &[u64], handled: &[(u64, String)]) -> (u64, u64) {
    let mut times: HashMap<u64, u64> = orders.iter().map(|id| (*id, 0)).collect();
    for (id, _) in handled {
        *times.entry(*id).or_default() += 1;
    }
    let twice = times.values().filter(|n| **n > 1).count() as u64;
    let never = times.values().filter(|n| **n == 0).count() as u64;
    (twice, never)
}

/// The orders the SQLite orders service took.
fn orders_in_sqlite(dir: &Path) -> Result<Vec<u64>> {
    let conn =
        Connection::open_with_flags(dir.join("orders.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT id FROM orders")?;
    let ids = stmt.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?;
    Ok(ids.collect::<std::result::Result<_, _>>()?)
}

/// `N` from an `order N` progress line.
fn order_number(line: &str) -> Option<u64> {
    line.strip_prefix("order ")?.parse().ok()
}

/// A loopback UDP port free right now (QUIC runs on UDP).
fn free_loopback_port() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}
