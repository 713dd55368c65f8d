//! `shoal send`, `shoal request` and `shoal publish`: one-off messages to running services.

use std::collections::HashSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::Args;
use shoal::{Message, MessageId, Node, NodeBuilder, PublishOptions, RetryPolicy, SendOptions};

use crate::common::{ClientArgs, MulticastArgs, micros, parse_header, wait_for_service};
use crate::{CliError, CliResult};

/// What to send: the target, the message name, payload and headers.
#[derive(Debug, Clone, Args)]
pub(crate) struct MessageArgs {
    /// The service to send to.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// The message name; the receiver runs the handler registered for it.
    #[arg(long, value_name = "MSG")]
    name: String,
    /// The payload, as text.
    #[arg(long, value_name = "TEXT", default_value = "")]
    payload: String,
    /// A header to attach. Repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

impl MessageArgs {
    /// A new command message (new id) from these flags.
    fn command(&self) -> Message {
        self.headers.iter().fold(
            Message::command(self.name.clone(), self.payload.clone()),
            |msg, (k, v)| msg.with_header(k.clone(), v.clone()),
        )
    }
}

/// `shoal send`
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    message: MessageArgs,
    #[command(flatten)]
    client: ClientArgs,
    /// How many commands to send, one after the other (each a new message).
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,
    /// Give up on a message (dead-letter it) this long after it was first sent, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout: u64,
    /// Send the commands without awaiting each (`Node::send_background`), then wait for all
    /// of them to be delivered (at most `--timeout`) before exiting; prints one line.
    #[arg(long)]
    background: bool,
}

/// `shoal request`
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    #[command(flatten)]
    message: MessageArgs,
    #[command(flatten)]
    client: ClientArgs,
    /// How long to wait for the reply, in ms.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    timeout: u64,
}

/// `shoal publish`
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The topic, e.g. `order.created` (no wildcards).
    #[arg(long, value_name = "TOPIC")]
    topic: String,
    /// The payload, as text.
    #[arg(long, value_name = "TEXT", default_value = "")]
    payload: String,
    /// A header to attach. Repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// A partition key: events with one key are handled in order, by one instance per group.
    #[arg(long, value_name = "KEY")]
    partition_key: Option<String>,
    /// How many events to publish, one after the other (each a new message).
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u64,
    /// Subscriber groups to wait for before publishing (events reach only the subscribers
    /// known when they are published).
    #[arg(long, value_name = "N", default_value_t = 1)]
    audiences: usize,
    /// Best-effort: write each copy once, no acks, no retries.
    #[arg(long)]
    best_effort: bool,
    /// Publish the events without awaiting each (`Node::publish_background`), then wait for
    /// all of them to be delivered (at most `--timeout`) before exiting; prints one line:
    /// the events every audience took, and the copies dead-lettered.
    #[arg(long, conflicts_with = "best_effort")]
    background: bool,
    /// With `--background`: how long to try, in ms. A copy is retried at most this long
    /// after it was first sent, and the node waits this long (and a second) for the copies
    /// still on their way before it exits; those left then are dead-lettered.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        requires = "background"
    )]
    timeout: u64,
    #[command(flatten)]
    multicast: MulticastArgs,
    #[command(flatten)]
    client: ClientArgs,
}

impl PublishArgs {
    /// A new event (new id) from these flags.
    fn event(&self) -> Message {
        let event = self.headers.iter().fold(
            Message::event(self.topic.clone(), self.payload.clone()),
            |msg, (k, v)| msg.with_header(k.clone(), v.clone()),
        );
        match &self.partition_key {
            Some(key) => event.with_key(key.clone()),
            None => event,
        }
    }

    /// Waits until the topic has the audiences asked for.
    async fn wait_for_audiences(&self, node: &Node) -> CliResult {
        let wait = self.client.wait_or(5_000);
        node.wait_for_subscribers(&self.topic, self.audiences, wait)
            .await
            .map_err(|_| {
                CliError::new(format!(
                    "fewer than {} subscriber group(s) for `{}` within {wait:?}",
                    self.audiences, self.topic
                ))
            })
    }
}

/// Runs `shoal publish`: prints `published id <id> to <group>@<node>[,...] time <µs>` per
/// event, `dropped <audience>` for best-effort copies that were dropped, and with
/// `--multicast` the node's multicast counters at the end (`multicast sent=… rekeys=…`).
/// With `--background`, one line for all of them ([`in_background`]).
pub(crate) async fn publish(args: PublishArgs) -> CliResult {
    if args.background {
        let timeout = Duration::from_millis(args.timeout);
        let configure = |builder| background_builder(args.multicast.apply(builder), timeout);
        let (node, _events) = args.client.start_with(configure).await?;
        let result = match args.wait_for_audiences(&node).await {
            Ok(()) => {
                let publish = || node.publish_background(args.event());
                in_background(&node, args.count, Unit::Events, publish).await
            }
            Err(e) => {
                node.shutdown().await;
                Err(e)
            }
        };
        args.multicast.report(&node);
        return result;
    }
    let (node, _events) = args
        .client
        .start_with(|builder| args.multicast.apply(builder))
        .await?;
    let result = async {
        args.wait_for_audiences(&node).await?;
        for _ in 0..args.count {
            let event = args.event();
            let options = if args.best_effort {
                PublishOptions::best_effort()
            } else {
                PublishOptions::default()
            };
            let start = Instant::now();
            let receipt = node.publish_with(event, options).await?;
            let to: Vec<String> = receipt
                .deliveries
                .iter()
                .map(|d| format!("{}@{}", d.group.as_deref().unwrap_or("-"), d.node))
                .collect();
            say!(
                "published id {} to {} time {}",
                receipt.id,
                to.join(","),
                micros(start.elapsed())
            );
            for audience in &receipt.dropped {
                say!("dropped {audience}");
            }
        }
        Ok(())
    }
    .await;
    node.shutdown().await;
    args.multicast.report(&node);
    result
}

/// Runs `shoal send`: prints `sent id <id> node <id> attempts <n> time <µs>` per command.
/// Fails if any command was not delivered.
pub(crate) async fn send(args: SendArgs) -> CliResult {
    if args.background {
        return send_in_background(args).await;
    }
    let (node, mut events) = args.client.start().await?;
    let result = async {
        let service = &args.message.service;
        wait_for_service(&node, &mut events, service, args.client.wait_or(5_000)).await?;
        let options = SendOptions::with_retry(RetryPolicy {
            deadline: Duration::from_millis(args.timeout),
            ..RetryPolicy::default()
        });
        let mut failed = 0;
        let mut last_error = None;
        for i in 1..=args.count {
            let start = Instant::now();
            match node
                .send_with(service, args.message.command(), options.clone())
                .await
            {
                Ok(receipt) => say!(
                    "sent id {} node {} attempts {} time {}",
                    receipt.id,
                    receipt.node,
                    receipt.attempts,
                    micros(start.elapsed())
                ),
                Err(e) => {
                    if args.count > 1 {
                        eprintln!("error: message {i}/{}: {e}", args.count);
                    }
                    failed += 1;
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            Some(e) if args.count == 1 => Err(e.into()),
            Some(_) => Err(CliError::new(format!(
                "{failed} of {} messages were not delivered",
                args.count
            ))),
            None => Ok(()),
        }
    }
    .await;
    node.shutdown().await;
    result
}

/// Runs `shoal send --background`: sends every command with `Node::send_background`, as
/// [`in_background`] says.
async fn send_in_background(args: SendArgs) -> CliResult {
    let timeout = Duration::from_millis(args.timeout);
    let (node, mut events) = args
        .client
        .start_with(|builder| background_builder(builder, timeout))
        .await?;
    let service = &args.message.service;
    match wait_for_service(&node, &mut events, service, args.client.wait_or(5_000)).await {
        Ok(()) => {
            let send = || node.send_background(service, args.message.command());
            in_background(&node, args.count, Unit::Commands, send).await
        }
        Err(e) => {
            node.shutdown().await;
            Err(e)
        }
    }
}

/// A node for `--background`: a message not delivered `timeout` after it was first sent is
/// a dead letter, and the shutdown waits that long for those still on their way.
fn background_builder(builder: NodeBuilder, timeout: Duration) -> NodeBuilder {
    builder
        .retry_policy(RetryPolicy {
            deadline: timeout,
            ..RetryPolicy::default()
        })
        .shutdown_grace(timeout + Duration::from_secs(1))
}

/// What a background call sends: commands (a dead letter is one command), or events (a dead
/// letter is one audience's copy of an event).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Commands,
    Events,
}

/// Makes `count` background calls with `call` (waiting for room when the node holds as many
/// as it may), then shuts `node` down gracefully, which delivers what it holds within the
/// grace period ([`background_builder`]), and prints `sent <n> in the background: delivered
/// <n>, dead-lettered <n> time <µs>`: the messages delivered (events: to every audience) and
/// the dead letters. Fails if any was not delivered.
async fn in_background(
    node: &Node,
    count: u64,
    unit: Unit,
    mut call: impl FnMut() -> Result<MessageId, shoal::Error>,
) -> CliResult {
    let start = Instant::now();
    let mut sent = 0;
    while sent < count {
        match call() {
            Ok(_) => sent += 1,
            Err(shoal::Error::Backlog { .. }) => node.wait_for_background_room().await,
            Err(e) => {
                node.shutdown().await;
                return Err(e.into());
            }
        }
    }
    node.shutdown().await;
    let lost = node.stats().dead_lettered;
    let undelivered = match unit {
        Unit::Commands => lost,
        // The events with a dead copy (of those the node kept: `dead_letter_capacity`).
        Unit::Events => {
            let letters = node.dead_letters();
            let ids: HashSet<MessageId> = letters.iter().map(|l| l.message.id()).collect();
            ids.len() as u64
        }
    };
    say!(
        "sent {sent} in the background: delivered {}, dead-lettered {lost} time {}",
        sent.saturating_sub(undelivered),
        micros(start.elapsed())
    );
    match (lost, unit) {
        (0, _) => Ok(()),
        (_, Unit::Commands) => Err(CliError::new(format!(
            "{lost} of {sent} messages were not delivered"
        ))),
        (_, Unit::Events) => Err(CliError::new(format!(
            "{undelivered} of {sent} events were not delivered to every audience \
             ({lost} copies dead-lettered)"
        ))),
    }
}

/// Runs `shoal request`: prints the reply's payload.
pub(crate) async fn request(args: RequestArgs) -> CliResult {
    let (node, mut events) = args.client.start().await?;
    let result = async {
        let service = &args.message.service;
        wait_for_service(&node, &mut events, service, args.client.wait_or(5_000)).await?;
        let timeout = Duration::from_millis(args.timeout);
        let reply = node
            .request(service, args.message.command(), timeout)
            .await?;
        print_payload(reply.payload());
        Ok(())
    }
    .await;
    node.shutdown().await;
    result
}

/// Writes a payload to stdout as it is, ending with a newline.
fn print_payload(payload: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(payload);
    if !payload.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}
