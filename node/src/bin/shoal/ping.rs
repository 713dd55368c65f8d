//! `shoal ping`: closed-loop round trips to a service, with a latency histogram.
//!
//! By default each round trip is a request to the service's echo handler and its reply (one
//! at a time, so the numbers are latencies, not throughput under load). `--protocol` measures
//! the transport alone with Shoal's ping frames, which no handler sees.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use shoal::{Message, Node};

use crate::common::{ClientArgs, wait_for_service};
use crate::{CliError, CliResult};

/// `shoal ping`
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// The service to ping.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// Round trips to measure.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    count: u64,
    /// Round trips made first and not measured.
    #[arg(long, value_name = "N", default_value_t = 10)]
    warmup: u64,
    /// Request payload size in bytes (ignored with --protocol).
    #[arg(long = "payload", value_name = "BYTES", default_value_t = 64)]
    payload_len: usize,
    /// The message name of the service's echo handler.
    #[arg(long, value_name = "MSG", default_value = "echo")]
    name: String,
    /// Use protocol-level ping frames (transport round trip) instead of request/reply.
    #[arg(long)]
    protocol: bool,
    /// Give up on one round trip after this long, in ms.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    timeout: u64,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `shoal ping`: prints a header line, then `count`, `p50`, `p90`, `p99`, `p99.9` and
/// `max` in microseconds, one per line.
pub(crate) async fn run(args: PingArgs) -> CliResult {
    if args.count == 0 {
        return Err(CliError::new("--count must be at least 1"));
    }
    let (node, mut events) = args.client.start().await?;
    let result = async {
        wait_for_service(
            &node,
            &mut events,
            &args.service,
            args.client.wait_or(5_000),
        )
        .await?;
        let pinger = Pinger::new(&node, &args);
        for _ in 0..args.warmup {
            pinger.round_trip().await?;
        }
        // 1 µs to 60 s with 3 significant digits.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| CliError::new(format!("histogram: {e}")))?;
        let started = Instant::now();
        for _ in 0..args.count {
            let rtt = pinger.round_trip().await?;
            histogram.saturating_record(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
        }
        let elapsed = started.elapsed();
        let what = if args.protocol {
            "protocol ping frames".to_owned()
        } else {
            format!(
                "request/reply to `{}`, {}-byte payload",
                args.name, args.payload_len
            )
        };
        say!(
            "ping {}: {} round trips ({what}) in {:.3} s, {:.0}/s",
            args.service,
            args.count,
            elapsed.as_secs_f64(),
            args.count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
        );
        say!("count  {}", histogram.len());
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            say!("{label:<6} {} µs", histogram.value_at_quantile(q));
        }
        say!("max    {} µs", histogram.max());
        Ok(())
    }
    .await;
    node.shutdown().await;
    result
}

/// One way of making a round trip.
struct Pinger<'a> {
    node: &'a Node,
    service: &'a str,
    name: &'a str,
    payload: Bytes,
    protocol: bool,
    timeout: Duration,
}

impl<'a> Pinger<'a> {
    fn new(node: &'a Node, args: &'a PingArgs) -> Self {
        Self {
            node,
            service: &args.service,
            name: &args.name,
            payload: Bytes::from(vec![b'x'; args.payload_len]),
            protocol: args.protocol,
            timeout: Duration::from_millis(args.timeout),
        }
    }

    /// One round trip; its duration.
    async fn round_trip(&self) -> CliResult<Duration> {
        if self.protocol {
            return Ok(self.node.ping(self.service, self.timeout).await?);
        }
        let start = Instant::now();
        let msg = Message::command(self.name, self.payload.clone());
        let reply = self.node.request(self.service, msg, self.timeout).await?;
        let rtt = start.elapsed();
        if reply.payload() != &self.payload {
            return Err(CliError::new(format!(
                "the reply from `{}` differs from the request: is `{}` an echo handler?",
                self.service, self.name
            )));
        }
        Ok(rtt)
    }
}
