//! `zenoh-request`: closed-loop round trips as Zenoh's `z_ping`/`z_pong` examples measure
//! them, one row per variant (`zenoh-tcp-request`, `zenoh-tcp-ll-request`,
//! `zenoh-quic-request`, `zenoh-quic-ll-request`).
//!
//! Pong (server side): a session listening on 127.0.0.1, a publisher on [`PONG_KEY`]
//! (`express(true)`, `CongestionControl::Block`) and a subscriber on [`PING_KEY`] whose
//! callback (on Zenoh's `rx` thread) puts each sample's payload back. Ping (client side): a
//! session connected to it, a subscriber on [`PONG_KEY`] (Zenoh's default FIFO channel), a
//! publisher on [`PING_KEY`] with the same options; one round trip = `put` + receiving the
//! echo, timed by [`crate::measure::measure`]. Each message is the payload (at least 8
//! bytes) starting with its attempt number, so a stale echo can never end a round trip.

use std::time::Instant;

use ::zenoh::Wait;
use ::zenoh::qos::CongestionControl;

use super::{
    Inbox, REPLY_TIMEOUT, Role, Tls, VARIANTS, Variant, await_ids, free_ports, handshake,
    id_message, on_plain_thread, open, run_ready, serve, start_zenoh_runtime, zenoh_err,
};
use crate::error::{BenchError, BenchResult};
use crate::measure::{RoundTrip, measure};
use crate::report::LatencyReport;
use crate::runtime::run_pair;
use crate::{BenchConfig, datagram_len};

/// Scenario name.
pub const NAME: &str = "zenoh-request";
/// Key ping puts on and pong subscribes to.
pub const PING_KEY: &str = "shoal-bench/zenoh/ping";
/// Key pong puts its echoes on and ping subscribes to.
pub const PONG_KEY: &str = "shoal-bench/zenoh/pong";

/// One run: every one of [`VARIANTS`], each with fresh sessions (and certificates).
pub fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    start_zenoh_runtime()?;
    VARIANTS
        .iter()
        .map(|variant| run_variant(config, *variant))
        .collect()
}

/// Row name of `variant`, e.g. `zenoh-tcp-ll-request`.
pub fn row_name(variant: &Variant) -> String {
    format!("{}-request", variant.name)
}

fn run_variant(config: &BenchConfig, variant: Variant) -> BenchResult<LatencyReport> {
    let name = row_name(&variant);
    let tls = Tls::generate()?;
    let port = free_ports(variant.link, 1)?[0];
    let pong_config = variant.config(Role::Listen(port), &tls)?;
    let ping_config = variant.config(Role::Connect(&[port]), &tls)?;
    let bench = *config;
    let (pong_name, ping_name) = (format!("{name}-pong"), format!("{name}-ping"));
    let label = name.clone();
    run_pair(
        &label,
        config,
        move |announce, shutdown| {
            serve(announce, shutdown, pong_name, move || {
                let session = open(pong_config)?;
                let echo = session
                    .declare_publisher(PONG_KEY)
                    .congestion_control(CongestionControl::Block)
                    .express(true)
                    .wait()
                    .map_err(zenoh_err("zenoh pong publisher"))?;
                session
                    .declare_subscriber(PING_KEY)
                    .callback(move |sample| {
                        // A failed echo shows up as ping's reply timeout.
                        let _ = echo.put(sample.payload().clone()).wait();
                    })
                    .background()
                    .wait()
                    .map_err(zenoh_err("zenoh pong subscriber"))?;
                Ok(((), vec![session]))
            })
        },
        move |()| async move {
            on_plain_thread(ping_name, move || ping(&name, ping_config, &bench))?.await
        },
    )
}

/// The ping side: connects, waits until routes are known both ways, then measures.
fn ping(name: &str, config: ::zenoh::Config, bench: &BenchConfig) -> BenchResult<LatencyReport> {
    let session = open(config)?;
    let result = (|| {
        let replies: Inbox = session
            .declare_subscriber(PONG_KEY)
            .wait()
            .map_err(zenoh_err("zenoh ping subscriber"))?;
        let publisher = session
            .declare_publisher(PING_KEY)
            .congestion_control(CongestionControl::Block)
            .express(true)
            .wait()
            .map_err(zenoh_err("zenoh ping publisher"))?;
        let len = datagram_len(bench.payload);
        handshake(&publisher, &replies, 1, len)?;
        run_ready(measure(name, bench, async |attempt| {
            publisher
                .put(id_message(attempt, len))
                .wait()
                .map_err(zenoh_err("zenoh ping put"))?;
            if await_ids(&replies, attempt, 1, Instant::now() + REPLY_TIMEOUT)? {
                Ok(RoundTrip::Done)
            } else {
                Err(BenchError::msg(format!(
                    "{name}: no reply to round trip {attempt} within {REPLY_TIMEOUT:?}"
                )))
            }
        }))?
    })();
    let closed = session.close().wait().map_err(zenoh_err("zenoh close"));
    let report = result?;
    closed?;
    Ok(report)
}
