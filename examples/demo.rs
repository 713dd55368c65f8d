//! One node of the demo mesh. `scripts/demo.sh` starts several of these, each in its own network
//! namespace (discovering each other by mDNS) or on loopback with static peers.
//!
//! Each node serves `greet` (it replies with who it is), finds the services it was told to talk
//! to, sends them a few requests and commands, subscribes to and publishes the events it was
//! told to, prints what it found and what it exchanged, then lingers so the others can finish
//! talking to it, and shuts down gracefully.
//!
//! ```sh
//! cargo run -p shoal-examples --example demo -- --service orders --ca /tmp/ca --talk-to invoice \
//!     --peer 127.0.0.1:7101
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use shoal::discovery::{InterfaceSelector, MdnsConfig};
use shoal::{MeshCa, Message, Node};

#[derive(Parser, Debug)]
#[command(about = "One node of the Shoal demo mesh")]
struct Args {
    /// The service this node is an instance of.
    #[arg(long)]
    service: String,
    /// Folder with the mesh CA (ca.pem and ca.key); the demo issues its own certificate from it.
    #[arg(long)]
    ca: PathBuf,
    /// Where to accept QUIC connections.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Discover peers by mDNS on this interface (repeatable). Run inside a network namespace.
    #[arg(long = "mdns")]
    mdns_interfaces: Vec<String>,
    /// A static peer address (repeatable).
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// A service to exchange messages with (repeatable).
    #[arg(long = "talk-to")]
    talk_to: Vec<String>,
    /// Subscribe this service (its own group) to events matching this pattern (repeatable),
    /// e.g. `order.*`.
    #[arg(long = "subscribe")]
    subscribe: Vec<String>,
    /// Publish `--rounds` events on this topic (repeatable), once `--audiences` subscriber
    /// groups are known.
    #[arg(long = "publish")]
    publish: Vec<String>,
    /// Subscriber groups to wait for before publishing.
    #[arg(long, default_value_t = 1)]
    audiences: usize,
    /// Requests, commands and events per service or topic.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// A label for this node's output lines (e.g. its namespace).
    #[arg(long, default_value = "")]
    label: String,
    /// How long to stay up after finishing, so others can still reach this node.
    #[arg(long, default_value_t = 3000)]
    linger_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), shoal::Error> {
    let ca = MeshCa::load(&args.ca)?;
    let identity = ca.issue(&args.service)?;
    let mut builder = Node::builder(args.service.clone())
        .listen(args.listen)
        .identity(identity)
        .trust(ca)
        .peers(args.peers.iter().copied());
    if !args.mdns_interfaces.is_empty() {
        let interfaces = args.mdns_interfaces.iter().map(InterfaceSelector::name);
        builder = builder.discovery(MdnsConfig::new(interfaces).build());
    }
    let node = builder.start().await?;
    let me = if args.label.is_empty() {
        args.service.clone()
    } else {
        format!("{}/{}", args.label, args.service)
    };
    let say = move |line: String| println!("[{me:>18}] {line}");
    say(format!(
        "node {} listening on {}",
        short(node.id()),
        node.local_addr()
    ));

    let (service, id) = (args.service.clone(), node.id());
    node.handle("greet", move |msg: Message| {
        let (service, id) = (service.clone(), id);
        async move {
            Ok(format!(
                "{service} {} got '{}'",
                short(id),
                String::from_utf8_lossy(msg.payload())
            ))
        }
    });
    node.handle("note", |_msg: Message| async move { Ok(()) });

    for pattern in &args.subscribe {
        let say = say.clone();
        node.subscribe(pattern, move |event: Message| {
            say(format!(
                "event {} '{}' handled here",
                event.name(),
                String::from_utf8_lossy(event.payload())
            ));
            async { Ok(()) }
        })
        .await?;
    }

    for target in &args.talk_to {
        let started = Instant::now();
        node.wait_for_instances(target, 1, Duration::from_secs(15))
            .await?;
        for peer in node.peers().iter().filter(|p| &p.service == target) {
            say(format!(
                "found {target} {} at {} after {} ms",
                short(peer.node),
                peer.addr,
                started.elapsed().as_millis()
            ));
        }
        for round in 1..=args.rounds {
            let t = Instant::now();
            let payload = format!("hello #{round} from {}", args.service);
            let reply = node
                .request(
                    target,
                    Message::command("greet", payload),
                    Duration::from_secs(5),
                )
                .await?;
            say(format!(
                "request -> {target}: {} ({} µs)",
                String::from_utf8_lossy(reply.payload()),
                t.elapsed().as_micros()
            ));
            let receipt = node
                .send(target, Message::command("note", format!("note #{round}")))
                .await?;
            say(format!(
                "command -> {target}: acked by {} after {} attempt(s)",
                short(receipt.node),
                receipt.attempts
            ));
        }
    }

    for topic in &args.publish {
        node.wait_for_subscribers(topic, args.audiences, Duration::from_secs(15))
            .await?;
        for round in 1..=args.rounds {
            let event = Message::event(topic.clone(), format!("order #{round}"));
            let receipt = node.publish(event).await?;
            let to: Vec<String> = receipt
                .deliveries
                .iter()
                .map(|d| format!("{} {}", d.group.as_deref().unwrap_or("-"), short(d.node)))
                .collect();
            say(format!(
                "event {topic} #{round} -> acked by {}",
                to.join(", ")
            ));
        }
    }

    tokio::time::sleep(Duration::from_millis(args.linger_ms)).await;
    let peers: Vec<String> = node
        .peers()
        .iter()
        .map(|p| format!("{}@{}", p.service, p.addr))
        .collect();
    say(format!("peers at the end: {}", peers.join(", ")));
    node.shutdown().await;
    let stats = node.stats();
    say(format!(
        "done: handled {}, acked {}, retries {}, dead letters {}",
        stats.handled, stats.acked, stats.retries, stats.dead_lettered
    ));
    Ok(())
}

/// The first 8 hex digits of a node id: enough to tell the demo's nodes apart.
fn short(id: shoal::NodeId) -> String {
    id.to_string()[..8].to_owned()
}
