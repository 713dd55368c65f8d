//! `zenoh-publish`: one-way publish → subscriber latency to 1 and 8 subscribers, measured
//! exactly as [`crate::pubsub`] measures Shoal and raw quinn (its probe is reused).
//!
//! Server side: `N` sessions, each listening on its own 127.0.0.1 port (like `N` subscriber
//! nodes), each with a subscriber on [`TOPIC_KEY`] whose callback records the stamped
//! payload's one-way latency and then puts an 8-byte ack (the message's sequence number) on
//! [`ACK_KEY`]. Client side: one session connected to all `N`, a publisher on
//! [`TOPIC_KEY`] (`express(true)`, `CongestionControl::Block`), a subscriber on
//! [`ACK_KEY`]; the next message leaves when all `N` acks of the previous one came back
//! (the ack path is not timed). Rows `<variant>-publish-1`, `-8`, `-8-last` for every one
//! of [`VARIANTS`].

use std::sync::Arc;
use std::time::Instant;

use ::zenoh::qos::CongestionControl;
use ::zenoh::{Session, Wait};

use super::{
    Inbox, REPLY_TIMEOUT, Role, Tls, VARIANTS, Variant, await_ids, close_all, free_ports,
    handshake, on_plain_thread, open, run_ready, serve, start_zenoh_runtime, zenoh_err,
};
use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::pubsub::{Probe, STAMP_LEN};
use crate::report::LatencyReport;
use crate::runtime::run_pair;

/// Scenario name.
pub const NAME: &str = "zenoh-publish";
/// Subscriber counts measured.
pub const FAN_OUTS: [usize; 2] = [1, 8];
/// Key the measured messages are published on.
pub const TOPIC_KEY: &str = "shoal-bench/zenoh/topic";
/// Key of the handshake messages (kept off [`TOPIC_KEY`] so the probe never sees them).
pub const SYNC_KEY: &str = "shoal-bench/zenoh/sync";
/// Key the subscribers ack on.
pub const ACK_KEY: &str = "shoal-bench/zenoh/ack";

/// One run: every variant, each to every one of [`FAN_OUTS`], each on fresh sessions.
pub fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    start_zenoh_runtime()?;
    let mut rows = Vec::new();
    for variant in VARIANTS {
        for n in FAN_OUTS {
            rows.extend(run_fan_out(config, variant, n)?);
        }
    }
    Ok(rows)
}

/// Row name of `variant` to `n` subscribers, e.g. `zenoh-tcp-ll-publish-8`.
pub fn row_name(variant: &Variant, n: usize) -> String {
    format!("{}-publish-{n}", variant.name)
}

fn run_fan_out(
    config: &BenchConfig,
    variant: Variant,
    n: usize,
) -> BenchResult<Vec<LatencyReport>> {
    let name = row_name(&variant, n);
    let tls = Tls::generate()?;
    let ports = free_ports(variant.link, n)?;
    let subscriber_configs = ports
        .iter()
        .map(|&port| variant.config(Role::Listen(port), &tls))
        .collect::<BenchResult<Vec<_>>>()?;
    let publisher_config = variant.config(Role::Connect(&ports), &tls)?;
    let probe = Probe::new(config, n)?;
    let (server_probe, client_probe) = (probe.clone(), probe.clone());
    let (server_name, client_name) = (format!("{name}-subscribers"), format!("{name}-publisher"));
    let last = run_pair(
        &name,
        config,
        move |announce, shutdown| {
            serve(announce, shutdown, server_name, move || {
                let mut sessions = Vec::with_capacity(n);
                for (i, config) in subscriber_configs.into_iter().enumerate() {
                    let session = open(config)?;
                    // Pushed first so that it is closed even if subscribing fails.
                    sessions.push(session.clone());
                    if let Err(e) = subscribe(&session, i, server_probe.clone()) {
                        close_all(sessions)?;
                        return Err(e);
                    }
                }
                Ok(((), sessions))
            })
        },
        move |()| async move {
            on_plain_thread(client_name, move || {
                let session = open(publisher_config)?;
                let last = publish_loop(&session, n, &client_probe);
                close_all(vec![session])?;
                last
            })?
            .await
        },
    )?;
    probe.rows(&name, &last)
}

/// Subscriber `i`: records each measured message with the probe, then acks it; answers
/// handshake messages with an ack too.
fn subscribe(session: &Session, i: usize, probe: Probe) -> BenchResult<()> {
    let ack = Arc::new(
        session
            .declare_publisher(ACK_KEY)
            .congestion_control(CongestionControl::Block)
            .express(true)
            .wait()
            .map_err(zenoh_err("zenoh ack publisher"))?,
    );
    let sync_ack = Arc::clone(&ack);
    session
        .declare_subscriber(TOPIC_KEY)
        .callback(move |sample| {
            let payload = sample.payload().to_bytes();
            // No stamp, or a failed ack: the publisher's wait for this ack fails the run.
            if probe.arrived(i, &payload).is_some() {
                let _ = ack.put(payload[..8].to_vec()).wait();
            }
        })
        .background()
        .wait()
        .map_err(zenoh_err("zenoh subscriber"))?;
    session
        .declare_subscriber(SYNC_KEY)
        .callback(move |sample| {
            let _ = sync_ack.put(sample.payload().clone()).wait();
        })
        .background()
        .wait()
        .map_err(zenoh_err("zenoh sync subscriber"))?;
    Ok(())
}

/// The publishing side: handshake with all `n` subscribers, then the probe's closed loop.
fn publish_loop(
    session: &Session,
    n: usize,
    probe: &Probe,
) -> BenchResult<hdrhistogram::Histogram<u64>> {
    let acks: Inbox = session
        .declare_subscriber(ACK_KEY)
        .wait()
        .map_err(zenoh_err("zenoh ack subscriber"))?;
    let publisher = session
        .declare_publisher(TOPIC_KEY)
        .congestion_control(CongestionControl::Block)
        .express(true)
        .wait()
        .map_err(zenoh_err("zenoh publisher"))?;
    let sync = session
        .declare_publisher(SYNC_KEY)
        .congestion_control(CongestionControl::Block)
        .express(true)
        .wait()
        .map_err(zenoh_err("zenoh sync publisher"))?;
    handshake(&sync, &acks, n, STAMP_LEN)?;
    run_ready(probe.closed_loop(&[], async |seq, buf| {
        publisher
            .put(buf.to_vec())
            .wait()
            .map_err(zenoh_err("zenoh put"))?;
        if await_ids(&acks, seq, n, Instant::now() + REPLY_TIMEOUT)? {
            Ok(())
        } else {
            Err(BenchError::msg(format!(
                "message {seq}: not acked by all {n} subscribers within {REPLY_TIMEOUT:?}"
            )))
        }
    }))?
}
