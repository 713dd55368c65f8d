//! The supervisor: starts the services as child processes of this same binary, kills and
//! restarts them while orders flow, then checks the books.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal::MeshCa;
use shoal::outbox::rusqlite::{Connection, OpenFlags};

use crate::Args;
use crate::services::{CA_CERT_ENV, CA_KEY_ENV};

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
    let result = run_in(&dir, args.orders);
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
        orders: orders_addr,
        count: orders,
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

    let books = Books::read(dir)?;
    println!(
        "orders {}; invoices {} (invoice-a {}, invoice-b {}), invoiced twice {}, never \
         invoiced {}; shipments {}, shipped twice {}, never shipped {}",
        books.orders,
        books.invoices,
        books.by_instance("invoice-a"),
        books.by_instance("invoice-b"),
        books.invoiced_twice,
        books.never_invoiced,
        books.shipments,
        books.shipped_twice,
        books.never_shipped,
    );
    if books.orders == orders
        && books.invoices == orders
        && books.shipments == orders
        && books.invoiced_twice + books.never_invoiced + books.shipped_twice + books.never_shipped
            == 0
    {
        println!("OK: nothing lost, nothing invoiced or shipped twice");
        Ok(())
    } else {
        Err("the books do not balance".into())
    }
}

/// What the services need to start.
struct Services {
    dir: PathBuf,
    ca: MeshCa,
    orders: SocketAddr,
    count: u64,
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
            command.args(["--listen", &self.orders.to_string()]);
        } else {
            command.args(["--peer", &self.orders.to_string()]);
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
    fn read(dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            Connection::open_with_flags(dir.join(name), OpenFlags::SQLITE_OPEN_READ_ONLY)
        };
        let count = |conn: &Connection, sql: &str| -> Result<u64> {
            Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        let orders = open("orders.db")?;
        let invoice = open("invoice.db")?;
        let shipping = open("shipping.db")?;
        // Each handler's database sees the orders, to find orders never handled.
        for conn in [&invoice, &shipping] {
            conn.execute(
                "ATTACH DATABASE ?1 AS o",
                [dir.join("orders.db").to_string_lossy()],
            )?;
        }
        let twice = |conn: &Connection, table: &str| {
            count(
                conn,
                &format!(
                    "SELECT COUNT(*) FROM (SELECT order_id FROM {table} GROUP BY order_id \
                     HAVING COUNT(*) > 1)"
                ),
            )
        };
        let never = |conn: &Connection, table: &str| {
            count(
                conn,
                &format!(
                    "SELECT COUNT(*) FROM o.orders WHERE id NOT IN (SELECT order_id FROM {table})"
                ),
            )
        };
        let mut by_instance = Vec::new();
        let mut stmt =
            invoice.prepare("SELECT instance, COUNT(*) FROM invoice GROUP BY instance")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (name, n) = row?;
            by_instance.push((name, n as u64));
        }
        Ok(Self {
            orders: count(&orders, "SELECT COUNT(*) FROM orders")?,
            invoices: count(&invoice, "SELECT COUNT(*) FROM invoice")?,
            invoiced_twice: twice(&invoice, "invoice")?,
            never_invoiced: never(&invoice, "invoice")?,
            shipments: count(&shipping, "SELECT COUNT(*) FROM shipping")?,
            shipped_twice: twice(&shipping, "shipping")?,
            never_shipped: never(&shipping, "shipping")?,
            by_instance,
        })
    }

    fn by_instance(&self, name: &str) -> u64 {
        self.by_instance
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, count)| *count)
    }
}

/// `N` from an `order N` progress line.
fn order_number(line: &str) -> Option<u64> {
    line.strip_prefix("order ")?.parse().ok()
}

/// A loopback UDP port free right now (QUIC runs on UDP).
fn free_loopback_port() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}
