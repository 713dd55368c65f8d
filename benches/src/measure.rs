//! The closed-loop driver shared by every latency scenario: warm up, then time `count`
//! round trips one at a time (the next request leaves only after the previous reply came
//! back) into an HDR histogram. The open-loop driver (a fixed offered rate, latency from the
//! intended send time) is in [`open_loop`](mod@open_loop).

pub mod open_loop;

use std::time::Duration;

use tokio::time::Instant;

use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::report::{self, LatencyReport};

pub use self::open_loop::{
    DEFAULT_RATE, RateRecorder, RateSchedule, at_rate_name, open_loop, rate_label,
};

/// How long a datagram scenario waits for a reply before counting the round trip as lost
/// and sending the next one. Loopback loses almost nothing; this only keeps a lost datagram
/// from stalling the run.
pub const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

/// Outcome of one round trip, returned by the closure given to [`measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundTrip {
    /// The reply arrived; the time is recorded (after the warm-up).
    Done,
    /// No reply (unreliable transports only): not recorded, counted in
    /// [`LatencyReport::lost`], and retried with a new attempt number.
    Lost,
}

/// Runs `config.warmup` unrecorded then `config.count` recorded round trips, strictly one
/// after the other, and returns the report named `name`.
///
/// `round_trip(attempt)` must send one message and wait for its reply; `attempt` is a
/// unique, increasing number the closure may embed to match replies (datagram scenarios
/// do). Timing covers the whole closure call. Losses beyond [`BenchConfig::max_lost`] fail
/// the run. The loop is bounded by count; the caller bounds it in time (see
/// [`crate::runtime::run_pair`]).
///
/// For a Shoal scenario the closure is one `send`-until-acked or one `request`:
///
/// ```ignore
/// measure("shoal-request", config, async |_attempt| {
///     node.request(peer, payload.clone()).await?;
///     Ok(RoundTrip::Done)
/// })
/// .await
/// ```
pub async fn measure(
    name: &str,
    config: &BenchConfig,
    mut round_trip: impl AsyncFnMut(u64) -> BenchResult<RoundTrip>,
) -> BenchResult<LatencyReport> {
    let mut histogram = report::new_histogram()?;
    let max_lost = config.max_lost();
    let mut lost = 0u64;
    let mut done = 0u64;
    let wanted = config.warmup + config.count;
    let max_attempts = wanted + max_lost + 1;
    for attempt in 0..max_attempts {
        if done == wanted {
            break;
        }
        let start = Instant::now();
        let outcome = round_trip(attempt).await?;
        let elapsed = start.elapsed();
        match outcome {
            RoundTrip::Done => {
                if done >= config.warmup {
                    report::record(&mut histogram, elapsed);
                }
                done += 1;
            }
            RoundTrip::Lost => {
                lost += 1;
                if lost > max_lost {
                    return Err(BenchError::msg(format!(
                        "{name}: more than {max_lost} round trips lost"
                    )));
                }
            }
        }
    }
    if done < wanted {
        return Err(BenchError::msg(format!(
            "{name}: only {done} of {wanted} round trips completed"
        )));
    }
    Ok(LatencyReport::from_histogram(name, &histogram).with_lost(lost))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(count: u64, warmup: u64) -> BenchConfig {
        BenchConfig {
            count,
            warmup,
            ..BenchConfig::default()
        }
    }

    #[test]
    fn records_count_after_warmup_and_skips_losses() {
        let runtime = crate::runtime::build().expect("runtime");
        let report = runtime
            .block_on(measure("t", &config(50, 5), async |attempt| {
                Ok(if attempt % 10 == 3 {
                    RoundTrip::Lost
                } else {
                    RoundTrip::Done
                })
            }))
            .expect("measures");
        assert_eq!(report.count, 50);
        assert_eq!(report.lost, 6);
    }

    #[test]
    fn too_many_losses_fail() {
        let runtime = crate::runtime::build().expect("runtime");
        let err = runtime
            .block_on(measure("t", &config(50, 0), async |_| Ok(RoundTrip::Lost)))
            .expect_err("must fail");
        assert!(err.message().contains("lost"), "{err}");
    }
}
