//! `shoal serve`: a node that answers messages until Ctrl-C or SIGTERM.
//!
//! Prints, one line each, on stdout:
//! - `listening <addr> node <id> service <name>` once started, then
//!   `metrics http://<addr>/metrics` with `--metrics ADDR`;
//! - `discovered <id> service <name> addr <addr>[,<addr>…]` when discovery announces an instance
//!   and `vanished <id> service <name>` when it no longer does (discovering is not connecting);
//! - `peer up <id> service <name> addr <addr>` and `peer down <id> service <name> reason <why>`
//!   for connections, made when something is first sent to an instance;
//! - `received <kind> <name> id <id> attempt <n> payload <quoted text>` from `print` handlers
//!   and `--subscribe` subscriptions;
//! - `refused <peer id>: not authorized: ...` when the `--policy` refuses a peer's message or
//!   subscription;
//! - `stopping (<signal>)`, then `stats acked=… connections=…` after the graceful shutdown
//!   (and `busy-poll window=1ms polled=0.012345s` with `--busy-poll`, or `busy-poll
//!   under-load window=20us polled=…` with `--busy-poll-under-load`, how long the node
//!   polled, then `multicast sent=… rekeys=…` with `--multicast`);
//! - the lines of certificate reloads (see `reload.rs`): a running `shoal serve` follows its
//!   certificate, key, CA and revocation list files.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use shoal::{HandlerError, Message, Node, NodeEvent, Policy, SubscribeOptions};
use tokio::sync::broadcast;

use crate::common::{MulticastArgs, NodeArgs};
use crate::{CliResult, reload};

/// `shoal serve`
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The service this node is an instance of (its certificate must be for it).
    #[arg(long, value_name = "NAME")]
    service: String,
    /// A handler to register, as KIND (handles messages named KIND) or MSG=KIND. KIND is
    /// `echo` (replies with the payload) or `print` (prints the message). Repeatable
    /// [default: echo and print].
    #[arg(long = "handler", value_name = "[MSG=]KIND")]
    handlers: Vec<HandlerSpec>,
    /// Subscribe to events on topics matching PATTERN (NATS-style: `orders.*`, `orders.>`)
    /// and print them, in this service's group or in GROUP. Repeatable.
    #[arg(long = "subscribe", value_name = "PATTERN[=GROUP]")]
    subscriptions: Vec<String>,
    /// The authorization policy (TOML or JSON, by extension; the README's Security section has
    /// the format) [default: allow everything within the mesh].
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// How often to check the certificate, key, CA and revocation list files for changes, in
    /// seconds (0: only on SIGHUP). A change is applied without dropping connections.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    reload_every: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port; the bound
    /// address is printed). Any address other than loopback exposes them to the network.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    multicast: MulticastArgs,
    #[command(flatten)]
    node: NodeArgs,
}

/// What a built-in handler does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HandlerKind {
    /// Replies with the request's payload (and acks commands).
    Echo,
    /// Prints the message on stdout and acks it.
    Print,
}

/// One `--handler`: the message name and the behaviour.
#[derive(Debug, Clone)]
struct HandlerSpec {
    name: String,
    kind: HandlerKind,
}

impl FromStr for HandlerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, kind) = s.split_once('=').unwrap_or((s, s));
        let kind = HandlerKind::from_str(kind, false)
            .map_err(|_| format!("unknown handler kind `{kind}` (expected echo or print)"))?;
        if name.is_empty() {
            return Err("the message name is empty".into());
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
        })
    }
}

/// Runs `shoal serve`.
pub(crate) async fn run(args: ServeArgs) -> CliResult {
    // Listen for signals before announcing the node, so a supervisor that sends SIGTERM right
    // after the `listening` line gets a graceful shutdown.
    let mut signals = Signals::new()?;
    let hangups = reload::Hangups::new();
    let mut builder = args.node.builder(&args.service, false)?;
    if let Some(path) = &args.policy {
        builder = builder.policy(Policy::load(path)?);
    }
    if let Some(addr) = args.metrics {
        builder = builder.metrics(shoal::MetricsConfig::listen(addr));
    }
    let node = args.multicast.apply(builder).start().await?;
    let events = node.events();

    let handlers = if args.handlers.is_empty() {
        vec![
            HandlerSpec {
                name: "echo".into(),
                kind: HandlerKind::Echo,
            },
            HandlerSpec {
                name: "print".into(),
                kind: HandlerKind::Print,
            },
        ]
    } else {
        args.handlers
    };
    for spec in &handlers {
        register(&node, spec);
    }
    for spec in &args.subscriptions {
        let options = match spec.split_once('=') {
            Some((pattern, group)) => SubscribeOptions::new(pattern).group(group),
            None => SubscribeOptions::new(spec.as_str()),
        };
        node.subscribe_with(options, |msg: Message| async move {
            print_message(&msg);
            Ok::<_, HandlerError>(())
        })
        .await?;
    }

    let files = args.node.tls_files(&args.service);
    let seen = reload::snapshot(&files);
    say!(
        "listening {} node {} service {}",
        node.local_addr(),
        node.id(),
        node.service()
    );
    if let Some(addr) = node.metrics_addr() {
        say!("metrics http://{addr}/metrics");
    }
    let printer = tokio::spawn(print_events(events));
    let every = (args.reload_every > 0).then(|| Duration::from_secs(args.reload_every));
    let follower = tokio::spawn(reload::follow(node.clone(), files, every, hangups, seen));

    let signal = signals.next().await;
    say!("stopping ({signal})");
    tokio::select! {
        () = node.shutdown() => {}
        signal = signals.next() => {
            eprintln!("{signal} again: stopping at once");
            node.abort();
        }
    }
    printer.abort();
    follower.abort();
    let s = node.stats();
    say!(
        "stats acked={} retries={} dead_lettered={} handled={} handler_errors={} duplicates={} \
         unhandled={} malformed_frames={} handshake_failures={} connections_refused={} \
         addresses_penalised={} connections={} unauthorized_messages={} unauthorized_events={} \
         unauthorized_subscriptions={}",
        s.acked,
        s.retries,
        s.dead_lettered,
        s.handled,
        s.handler_errors,
        s.duplicates,
        s.unhandled,
        s.malformed_frames,
        s.handshake_failures,
        s.connections_refused,
        s.addresses_penalised,
        s.connections,
        s.unauthorized_messages,
        s.unauthorized_events,
        s.unauthorized_subscriptions,
    );
    // The two flags cannot both be given.
    let polling = match (args.node.busy_poll, args.node.busy_poll_under_load) {
        (Some(window), _) => Some(("", window)),
        (None, Some(window)) => Some(("under-load ", window)),
        (None, None) => None,
    };
    if let Some((mode, window)) = polling {
        say!(
            "busy-poll {mode}window={} polled={:.6}s",
            humantime::format_duration(window),
            s.busy_poll_time.as_secs_f64()
        );
    }
    args.multicast.report(&node);
    Ok(())
}

/// Registers a built-in handler.
fn register(node: &Node, spec: &HandlerSpec) {
    match spec.kind {
        HandlerKind::Echo => node.handle(spec.name.clone(), |msg: Message| async move {
            Ok::<_, HandlerError>(msg.payload().clone())
        }),
        HandlerKind::Print => node.handle(spec.name.clone(), |msg: Message| async move {
            print_message(&msg);
            Ok::<_, HandlerError>(())
        }),
    }
}

/// `received <kind> <name> id <id> attempt <n> payload <quoted text>`
fn print_message(msg: &Message) {
    say!(
        "received {} {} id {} attempt {} payload {:?}",
        format!("{:?}", msg.kind()).to_lowercase(),
        msg.name(),
        msg.id(),
        msg.attempt(),
        String::from_utf8_lossy(msg.payload())
    );
}

/// Prints peers coming and going until the node is dropped.
async fn print_events(mut events: broadcast::Receiver<NodeEvent>) {
    loop {
        match events.recv().await {
            Ok(NodeEvent::Discovered {
                node,
                service,
                addrs,
            }) => {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                say!(
                    "discovered {node} service {service} addr {}",
                    addrs.join(",")
                );
            }
            Ok(NodeEvent::Vanished { node, service }) => say!("vanished {node} service {service}"),
            Ok(NodeEvent::PeerUp {
                node,
                service,
                addr,
            }) => say!("peer up {node} service {service} addr {addr}"),
            Ok(NodeEvent::PeerDown {
                node,
                service,
                reason,
            }) => say!("peer down {node} service {service} reason {reason:?}"),
            Ok(NodeEvent::NotAuthorized {
                peer: Some(peer),
                denial,
            }) => say!("refused {peer}: {denial}"),
            Ok(NodeEvent::HandshakeFailed { addr, reason }) => {
                tracing::warn!(%addr, %reason, "handshake failed");
            }
            Ok(NodeEvent::ProtocolError { addr, reason }) => {
                tracing::warn!(%addr, %reason, "protocol error");
            }
            Ok(NodeEvent::MulticastGroupDiffers {
                node,
                service,
                theirs,
                ours,
            }) => say!(
                "multicast: {node} service {service} is on group {theirs}, this node on {ours}: \
                 events between them go by unicast"
            ),
            Ok(NodeEvent::MulticastFallback {
                node,
                service,
                reason,
            }) => say!("multicast: subscriber {node} service {service} moved to unicast: {reason}"),
            Ok(other) => tracing::info!(?other, "node event"),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("missed {n} node events");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM, registered up front so none is missed.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> CliResult<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let err =
                |e: std::io::Error| crate::CliError::new(format!("cannot listen for signals: {e}"));
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).map_err(err)?,
                terminate: signal(SignalKind::terminate()).map_err(err)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.interrupt.recv() => "SIGINT",
                Some(()) = self.terminate.recv() => "SIGTERM",
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}
