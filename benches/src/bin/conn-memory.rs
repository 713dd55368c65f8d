//! What one more open, idle connection costs the node that holds it, in resident memory:
//! Shoal beside raw quinn (the floor) in the same run.
//!
//! ```sh
//! cargo run --release -p shoal-benches --bin conn-memory -- [CONNECTIONS] [RUNS]
//! ```
//!
//! Each run starts a **hub** in a child process of its own (so its RSS is its alone, and no
//! run inherits another's freed memory): a Shoal node with an echo handler, or a quinn
//! endpoint with Shoal's transport settings (keep-alive 250 ms, idle timeout 1.5 s, one
//! unidirectional stream each way) and mutual TLS. This process then opens connections to
//! it, all on loopback:
//!
//! 1. one warm-up connection; after a pause the hub's RSS is read (the base);
//! 2. CONNECTIONS more (default 200), each a fresh Shoal node with the hub as its static
//!    peer (a connection kept open, with its keep-alives), or a quinn connection that
//!    opens one long-lived stream each way and exchanges a byte, as Shoal's hello does;
//!    after a pause, RSS again: **per new idle connection** = growth / CONNECTIONS;
//! 3. 64 messages of 1 KiB on every connection, one after the other (acknowledged `send`s
//!    to the hub's handler; for quinn, echoes on the two streams), then a pause: **per idle
//!    connection after use**, a connection that has carried messages and gone quiet. Not
//!    requests: their replies would fill the node's reply cache (`NodeBuilder::reply_cache`,
//!    16 MiB for the whole node), which is not a cost of connections.
//!
//! Prints one Markdown row per system with the medians over RUNS (default 3). RSS is
//! `VmRSS` of `/proc/<pid>/status`. Every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shoal::{HandlerError, MeshCa, Message, Node};
use shoal_benches::certs::{self, SERVER_NAME};
use shoal_benches::{BenchError, BenchResult as Result, quinn_echo};

/// Messages on every connection in step 3.
const MESSAGES: usize = 64;
/// The size of each message in step 3.
const MESSAGE: usize = 1024;
/// The pause before each RSS reading: handshakes, keep-alives and frees settle.
const PAUSE: Duration = Duration::from_secs(2);
/// The most any one step may take.
const STEP: Duration = Duration::from_secs(60);
const HUB: &str = "conn-hub";

/// The two hubs measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Quinn,
    Shoal,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            Self::Quinn => "quinn",
            Self::Shoal => "shoal",
        }
    }

    fn parse(name: &str) -> Result<Self> {
        match name {
            "quinn" => Ok(Self::Quinn),
            "shoal" => Ok(Self::Shoal),
            other => Err(BenchError::msg(format!(
                "unknown hub {other}: quinn or shoal"
            ))),
        }
    }
}

/// The hub's RSS, in KiB, at the three readings of one run.
#[derive(Clone, Copy, Debug)]
struct Readings {
    base: u64,
    idle: u64,
    used: u64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, system, dir] = args.as_slice()
        && flag == "--hub"
    {
        return run_hub(System::parse(system)?, Path::new(dir));
    }
    let connections: usize = args.first().map_or(Ok(200), |n| n.parse())?;
    let runs: usize = args.get(1).map_or(Ok(3), |n| n.parse())?;
    if connections == 0 || runs == 0 {
        return Err(BenchError::msg("CONNECTIONS and RUNS must be at least 1"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "| hub | connections | RSS base | per new idle connection | per idle connection after {MESSAGES} messages of {MESSAGE} B |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for system in [System::Quinn, System::Shoal] {
        let mut all = Vec::new();
        for _ in 0..runs {
            let readings = runtime.block_on(measure(system, connections))?;
            eprintln!("{} {readings:?}", system.name());
            all.push(readings);
        }
        let per = |f: fn(&Readings) -> u64| {
            median(
                all.iter()
                    .map(|r| (f(r) as f64 - r.base as f64) / connections as f64),
            )
        };
        println!(
            "| {} | {connections} | {:.1} MB | {:.1} KB | {:.1} KB |",
            system.name(),
            median(all.iter().map(|r| r.base as f64)) / 1024.0,
            per(|r| r.idle) * 1.024,
            per(|r| r.used) * 1.024,
        );
    }
    Ok(())
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One run: a hub child, the three readings, the child stopped.
async fn measure(system: System, connections: usize) -> Result<Readings> {
    let dir = std::env::temp_dir().join(format!("conn-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let outcome = match system {
        System::Quinn => measure_quinn(&dir, connections).await,
        System::Shoal => measure_shoal(&dir, connections).await,
    };
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn measure_shoal(dir: &Path, connections: usize) -> Result<Readings> {
    let ca = MeshCa::generate("conn-memory")?;
    ca.save(dir)?;
    let hub = HubProcess::start(System::Shoal, dir)?;
    let start = |i: usize| {
        let ca = ca.clone();
        let addr = hub.addr;
        async move {
            let service = format!("conn-client-{i}");
            let node = Node::builder(&service)
                .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                .identity(ca.issue(&service)?)
                .trust(ca)
                .peer(addr)
                .start()
                .await?;
            node.wait_for_instances(HUB, 1, STEP).await?;
            Ok::<_, shoal::Error>(node)
        }
    };
    let warm = start(connections).await?;
    let base = hub.settled_rss().await?;
    let nodes = bounded(futures_util::future::try_join_all(
        (0..connections).map(start),
    ))
    .await??;
    let idle = hub.settled_rss().await?;
    let body = Bytes::from(vec![0x5a; MESSAGE]);
    let round_trips = nodes.iter().map(|node| {
        let body = body.clone();
        async move {
            for _ in 0..MESSAGES {
                node.send(HUB, Message::command("echo", body.clone()))
                    .await?;
            }
            Ok::<_, shoal::Error>(())
        }
    });
    bounded(futures_util::future::try_join_all(round_trips)).await??;
    let used = hub.settled_rss().await?;
    let shutdowns = nodes.iter().chain([&warm]).map(Node::shutdown);
    bounded(futures_util::future::join_all(shutdowns)).await?;
    hub.stop();
    Ok(Readings { base, idle, used })
}

async fn measure_quinn(dir: &Path, connections: usize) -> Result<Readings> {
    let pki = certs::generate_pki()?;
    std::fs::write(dir.join("ca.der"), pki.ca.cert.der())?;
    std::fs::write(dir.join("server.der"), pki.server.cert.der())?;
    std::fs::write(dir.join("server.key.der"), pki.server.key.serialize_der())?;
    let hub = HubProcess::start(System::Quinn, dir)?;
    let mut client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut config = quinn_echo::client_config(&pki)?;
    config.transport_config(transport()?);
    client.set_default_client_config(config);
    let open = || {
        let client = client.clone();
        let addr = hub.addr;
        async move {
            let conn = client.connect(addr, SERVER_NAME)?.await?;
            let mut send = conn.open_uni().await?;
            send.write_all(&[1]).await?;
            let mut recv = conn.accept_uni().await?;
            recv.read_exact(&mut [0]).await?;
            Ok::<_, BenchError>((conn, send, recv))
        }
    };
    let warm = open().await?;
    let base = hub.settled_rss().await?;
    let mut conns = bounded(futures_util::future::try_join_all(
        (0..connections).map(|_| open()),
    ))
    .await??;
    let idle = hub.settled_rss().await?;
    let round_trips = conns.iter_mut().map(|(_, send, recv)| async move {
        let mut body = vec![0x5a; MESSAGE];
        for _ in 0..MESSAGES {
            send.write_all(&body).await?;
            recv.read_exact(&mut body).await?;
        }
        Ok::<_, BenchError>(())
    });
    bounded(futures_util::future::try_join_all(round_trips)).await??;
    let used = hub.settled_rss().await?;
    for (conn, _, _) in conns.iter().chain([&warm]) {
        conn.close(0u32.into(), b"done");
    }
    let _ = tokio::time::timeout(PAUSE, client.wait_idle()).await;
    hub.stop();
    Ok(Readings { base, idle, used })
}

/// A step's future, bounded by [`STEP`].
async fn bounded<F: Future>(future: F) -> Result<F::Output> {
    tokio::time::timeout(STEP, future)
        .await
        .map_err(|_| BenchError::msg(format!("a step took more than {STEP:?}")))
}

/// Shoal's QUIC transport settings (`shoal::tls::transport`, private), for the quinn hub and
/// its clients alike: the floor is QUIC as a node configures it.
fn transport() -> Result<Arc<quinn::TransportConfig>> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .initial_rtt(Duration::from_millis(10))
        .keep_alive_interval(Some(Duration::from_millis(250)))
        .max_idle_timeout(Some(Duration::from_millis(1500).try_into()?))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(1u32.into());
    Ok(Arc::new(transport))
}

/// The hub's child process: its address, and its stdin, whose closing stops it.
struct HubProcess {
    child: Child,
    addr: SocketAddr,
}

impl HubProcess {
    fn start(system: System, dir: &Path) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--hub")
            .arg(system.name())
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::msg("the hub has no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        match line.trim().parse() {
            Ok(addr) => Ok(Self { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BenchError::msg(format!(
                    "the hub did not say its address: {line:?}"
                )))
            }
        }
    }

    /// The hub's resident memory in KiB, after [`PAUSE`].
    async fn settled_rss(&self) -> Result<u64> {
        tokio::time::sleep(PAUSE).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| BenchError::msg("no VmRSS in the hub's status"))
    }

    /// Closes the hub's stdin (it exits) and waits for it, at most [`PAUSE`] before a kill.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        for _ in 0..20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(PAUSE / 20);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: runs a hub until its stdin closes.
fn run_hub(system: System, dir: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        });
        match system {
            System::Shoal => shoal_hub(dir, stop).await,
            System::Quinn => quinn_hub(dir, stop).await,
        }
    })
}

async fn shoal_hub(dir: &Path, stop: tokio::task::JoinHandle<()>) -> Result<()> {
    let ca = MeshCa::load(dir)?;
    let node = Node::builder(HUB)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .identity(ca.issue(HUB)?)
        .trust(ca)
        .start()
        .await?;
    node.handle("echo", |msg: Message| async move {
        Ok::<_, HandlerError>(msg.payload().clone())
    });
    println!("{}", node.local_addr());
    let _ = stop.await;
    node.shutdown().await;
    Ok(())
}

async fn quinn_hub(dir: &Path, stop: tokio::task::JoinHandle<()>) -> Result<()> {
    let read = |name: &str| -> Result<Vec<u8>> { Ok(std::fs::read(dir.join(name))?) };
    let tls = certs::server_tls_config_der(
        CertificateDer::from(read("ca.der")?),
        vec![CertificateDer::from(read("server.der")?)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read("server.key.der")?)),
        &[quinn_echo::ALPN],
    )?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport()?);
    let endpoint = quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    println!("{}", endpoint.local_addr()?);
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let _ = echo(incoming).await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        _ = stop => {}
    }
    endpoint.close(0u32.into(), b"done");
    Ok(())
}

/// One quinn connection at the hub: a stream each way, a byte of hello, then echoes of
/// [`MESSAGE`] bytes until the client goes.
async fn echo(incoming: quinn::Incoming) -> Result<()> {
    let conn = incoming.await?;
    let mut send = conn.open_uni().await?;
    send.write_all(&[1]).await?;
    let mut recv = conn.accept_uni().await?;
    recv.read_exact(&mut [0]).await?;
    let mut body = vec![0; MESSAGE];
    loop {
        recv.read_exact(&mut body).await?;
        send.write_all(&body).await?;
    }
}
