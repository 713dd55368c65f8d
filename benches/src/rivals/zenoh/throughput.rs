//! `zenoh-throughput`: sustained put → subscriber throughput, rows `zenoh-tcp-pubsub-<size>`
//! and `zenoh-quic-pubsub-<size>` for each of [`PAYLOADS`], each compared with
//! `quinn-batch-<size>`.
//!
//! As Zenoh's `z_pub_thr`/`z_sub_thr`: the publisher (`CongestionControl::Block`: reliable,
//! it waits for queue space instead of dropping; no express, so Zenoh batches small
//! messages) puts in a loop; the subscriber's callback counts every sample that
//! **arrives**, and that count is sampled over the [`Schedule`] window. Only the default
//! transport is measured: the low-latency one cannot fragment (64 KiB does not fit one
//! batch) and Zenoh does not recommend it for throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::zenoh::Wait;
use ::zenoh::qos::CongestionControl;
use tokio::sync::oneshot;

use super::{
    QUIC, Role, SETUP_TIMEOUT, TCP, Tls, Variant, free_ports, on_plain_thread, open, serve,
    start_zenoh_runtime, zenoh_err,
};
use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::pubsub_throughput::quinn_name;
use crate::runtime::run_pair;
use crate::throughput::{Schedule, ThroughputReport, Window};

/// Scenario name.
pub const NAME: &str = "zenoh-throughput";
/// Payload sizes measured (`--payload` does not apply here).
pub const PAYLOADS: [usize; 3] = [64, 1024, 65536];
/// Variants measured (the default transport of each link).
pub const THROUGHPUT_VARIANTS: [Variant; 2] = [TCP, QUIC];
/// Key the messages are put on.
pub const KEY: &str = "shoal-bench/zenoh/thr";
/// Puts between two looks at the clock.
const CLOCK_EVERY: u64 = 64;
/// Upper bound on the puts of one row.
const MAX_MESSAGES: u64 = 1_000_000_000;

/// One run: for each of [`PAYLOADS`], every one of [`THROUGHPUT_VARIANTS`].
pub fn run(config: &BenchConfig) -> BenchResult<Vec<ThroughputReport>> {
    start_zenoh_runtime()?;
    let mut rows = Vec::new();
    for payload in PAYLOADS {
        for variant in THROUGHPUT_VARIANTS {
            rows.push(run_row(config, variant, payload)?.compared_with(quinn_name(payload)));
        }
    }
    Ok(rows)
}

/// Row name of `variant` with `payload`, e.g. `zenoh-tcp-pubsub-1024`.
pub fn row_name(variant: &Variant, payload: usize) -> String {
    format!("{}-pubsub-{payload}", variant.name)
}

fn run_row(
    config: &BenchConfig,
    variant: Variant,
    payload: usize,
) -> BenchResult<ThroughputReport> {
    let name = row_name(&variant, payload);
    let tls = Tls::generate()?;
    let port = free_ports(variant.link, 1)?[0];
    let subscriber_config = variant.config(Role::Listen(port), &tls)?;
    let publisher_config = variant.config(Role::Connect(&[port]), &tls)?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let duration = config.duration;
    let (server_name, client_name) = (format!("{name}-sub"), format!("{name}-pub"));
    let window = run_pair(
        &name,
        config,
        move |announce, shutdown| {
            serve(announce, shutdown, server_name, move || {
                let session = open(subscriber_config)?;
                session
                    .declare_subscriber(KEY)
                    .callback(move |_sample| {
                        counter.fetch_add(1, Ordering::Relaxed);
                    })
                    .background()
                    .wait()
                    .map_err(zenoh_err("zenoh subscriber"))?;
                Ok(((), vec![session]))
            })
        },
        move |()| async move {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<Schedule>();
            let publisher = on_plain_thread(client_name, move || {
                put_loop(publisher_config, payload, ready_tx, go_rx)
            })?;
            if ready_rx.await.is_err() {
                publisher.await?;
                return Err(BenchError::msg("zenoh publisher ended before it was ready"));
            }
            let schedule = Schedule::starting_now(duration);
            go_tx
                .send(schedule)
                .map_err(|_| BenchError::msg("zenoh publisher thread is gone"))?;
            let window = schedule.sample(&received).await;
            publisher.await?;
            Ok::<Window, BenchError>(window)
        },
    )?;
    Ok(ThroughputReport::new(name, payload, window))
}

/// The publishing thread: connects, waits until the subscriber is known, says it is ready,
/// then puts until the schedule's window is over.
fn put_loop(
    config: ::zenoh::Config,
    payload: usize,
    ready: oneshot::Sender<()>,
    go: std::sync::mpsc::Receiver<Schedule>,
) -> BenchResult<()> {
    let session = open(config)?;
    let result = (|| {
        let publisher = session
            .declare_publisher(KEY)
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(zenoh_err("zenoh publisher"))?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while !publisher
            .matching_status()
            .wait()
            .map_err(zenoh_err("zenoh matching status"))?
            .matching()
        {
            if Instant::now() >= deadline {
                return Err(BenchError::msg(format!(
                    "zenoh publisher saw no subscriber within {SETUP_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ready
            .send(())
            .map_err(|_| BenchError::msg("zenoh throughput client is gone"))?;
        let schedule = go
            .recv_timeout(SETUP_TIMEOUT)
            .map_err(|_| BenchError::msg("zenoh publisher never told to start"))?;
        let body = ::zenoh::bytes::ZBytes::from(vec![0xA5u8; payload]);
        for i in 0..MAX_MESSAGES {
            if i % CLOCK_EVERY == 0 && schedule.over() {
                break;
            }
            publisher
                .put(body.clone())
                .wait()
                .map_err(zenoh_err("zenoh put"))?;
        }
        Ok(())
    })();
    let closed = session.close().wait().map_err(zenoh_err("zenoh close"));
    result?;
    closed
}
