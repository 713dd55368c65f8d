//! Round trips with busy polling (scenario `busy-poll`): each side's runtime keeps polling for
//! input instead of sleeping between messages, so no hop waits for a sleeping thread to wake.
//!
//! Rows, all closed loop like `quinn-stream` and `shoal-send` (kind `request` in the
//! comparison):
//! * `quinn-stream-busy-poll-request` — raw quinn's stream echo, both runtimes polling all
//!   along ([`Spinner`]): the floor of the two below.
//! * `shoal-send-busy-poll-request`, `shoal-busy-poll-request` — `send` and `request` with
//!   both nodes built with [`shoal::NodeBuilder::busy_poll`]`(`[`WINDOW`]`)`.
//!
//! `--baseline quinn-stream-busy-poll-request` gives Shoal's rows their ratio to the floor
//! that polls too; the default baseline (`quinn-stream`, which sleeps) shows what polling buys.
//!
//! Scenario `busy-poll-at-rate`: the same at the offered `--rate` (as `quinn-stream-at-rate`
//! and `shoal-at-rate`), rows `quinn-stream-busy-poll-at-<rate>`,
//! `shoal-busy-poll-request-at-<rate>`, `shoal-send-busy-poll-at-<rate>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::BenchResult;
use crate::report::LatencyReport;
use crate::report::rate::RateReport;
use crate::{BenchConfig, quinn_echo, shoal_scenarios};

/// Scenario name.
pub const NAME: &str = "busy-poll";
/// Row: raw quinn, polling.
pub const QUINN_ROW: &str = "quinn-stream-busy-poll-request";
/// Row: Shoal's `send`, polling.
pub const SEND_ROW: &str = "shoal-send-busy-poll-request";
/// Row: Shoal's `request`, polling.
pub const REQUEST_ROW: &str = "shoal-busy-poll-request";
/// Scenario name, at an offered rate.
pub const AT_RATE_NAME: &str = "busy-poll-at-rate";
/// Row variants at an offered rate: raw quinn, Shoal's `request`, Shoal's `send`.
pub const AT_RATE_VARIANTS: [&str; 3] = [
    "quinn-stream-busy-poll",
    "shoal-busy-poll-request",
    "shoal-send-busy-poll",
];
/// The nodes' polling window: far longer than a round trip, so they poll all along.
pub const WINDOW: Duration = Duration::from_millis(1);

/// One run: the three rows, each on fresh endpoints or nodes.
pub fn run(config: &BenchConfig) -> BenchResult<Vec<LatencyReport>> {
    Ok(vec![
        quinn_echo::run_stream_busy_poll(config, QUINN_ROW)?,
        shoal_scenarios::run_busy_poll(SEND_ROW, config, false, WINDOW)?,
        shoal_scenarios::run_busy_poll(REQUEST_ROW, config, true, WINDOW)?,
    ])
}

/// One run at `rate`: the three rows, each on fresh endpoints or nodes.
pub fn run_at_rate(config: &BenchConfig, rate: u64) -> BenchResult<Vec<RateReport>> {
    let [quinn, request, send] = AT_RATE_VARIANTS;
    let mut rows = vec![quinn_echo::run_stream_at_rate_busy_poll(
        config, rate, quinn,
    )?];
    rows.extend(shoal_scenarios::run_at_rate_busy_poll(
        config,
        rate,
        [request, send],
        WINDOW,
    )?);
    Ok(rows)
}

/// Keeps the current tokio runtime polling for input until dropped: a task that yields over
/// and over, and tokio polls its IO driver without blocking before it runs a yielded task
/// again. What [`shoal::NodeBuilder::busy_poll`] does after each activity, here for the
/// whole life of raw quinn's side.
pub struct Spinner {
    stop: Arc<AtomicBool>,
}

impl Spinner {
    /// Starts polling on the current runtime.
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                tokio::task::yield_now().await;
            }
        });
        Self { stop }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
