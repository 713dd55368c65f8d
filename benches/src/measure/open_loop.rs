//! Open-loop latency: messages leave at a fixed **offered rate** whatever the replies do, and
//! each latency is measured from the message's **intended** send time.
//!
//! A closed loop ([`super::measure`]) sends the next message only after the previous reply,
//! so a stall of 5 ms delays *one* sample by 5 ms and then simply sends fewer messages: the
//! messages that a real client would have sent during the stall, and that would all have
//! waited, are never measured ("coordinated omission"). Here message `seq` is due at
//! `start + seq / rate` ([`RateSchedule::intended`]); if the sender could only issue it later
//! (the runtime was busy, the transport pushed back, too many were in flight), the wait is
//! charged to its latency and the message is counted as **late**. A message without an
//! answer within [`LOSS_TIMEOUT`] is counted as **lost**.
//!
//! Pacing: tokio's timers tick in milliseconds, far too coarse for 10,000 msgs/s (one every
//! 100 µs), so the sender sleeps only while the next message is more than [`SPIN_BELOW`]
//! away and otherwise spins with `yield_now` (which lets the runtime poll its I/O driver and
//! run other tasks between checks). The sending thread is therefore busy for the whole run;
//! it is the client side's own thread ([`crate::runtime`]), as for every scenario.
//!
//! Two ways to use it:
//!
//! * [`open_loop`] — when every message is its own future (a Shoal `request`, a NATS
//!   request, a libp2p request-response): give it a closure that starts message `seq`, it
//!   keeps the futures in flight and does the pacing, timing and counting.
//! * [`RateSchedule`] + [`RateRecorder`] — when one stream carries every message in order
//!   (raw quinn, a ZeroMQ DEALER socket): a writer calls [`RateSchedule::wait_turn`] before
//!   each message, a reader calls [`RateRecorder::complete`] per reply (see
//!   `quinn_echo::run_stream_at_rate`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::RoundTrip;
use crate::BenchConfig;
use crate::error::{BenchError, BenchResult};
use crate::report::rate::RateReport;
use crate::report::{self, LatencyReport};

/// Default offered rate (`--rate`), messages per second.
pub const DEFAULT_RATE: u64 = 10_000;
/// How long a message may stay unanswered before it counts as lost.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(1);
/// Most messages [`open_loop`] keeps in flight; at that many it waits for one to finish
/// before issuing the next (which then counts as late if it is behind schedule).
pub const MAX_IN_FLIGHT: usize = 4_096;
/// Below this distance to the next due time the sender spins instead of sleeping.
pub const SPIN_BELOW: Duration = Duration::from_millis(2);
/// Upper bound on the spins of one wait (a safety bound: at ~1 µs per spin it is far more
/// than any wait needs).
const MAX_SPINS: u64 = 100_000_000;

/// `10000` → `"10k"`, `2000000` → `"2m"`, `1500` → `"1500"`: the rate as row names show it.
pub fn rate_label(rate: u64) -> String {
    if rate >= 1_000_000 && rate.is_multiple_of(1_000_000) {
        format!("{}m", rate / 1_000_000)
    } else if rate >= 1_000 && rate.is_multiple_of(1_000) {
        format!("{}k", rate / 1_000)
    } else {
        rate.to_string()
    }
}

/// Row name of `variant` at `rate`: `at_rate_name("shoal-request", 10_000)` is
/// `"shoal-request-at-10k"` (the comparison table pairs rows by the `-at-<rate>` suffix).
pub fn at_rate_name(variant: &str, rate: u64) -> String {
    format!("{variant}-at-{}", rate_label(rate))
}

/// When each message of an open-loop run is due: `warmup + count` messages at `rate` per
/// second from the moment the schedule was made; the first `warmup` are not recorded.
#[derive(Debug, Clone, Copy)]
pub struct RateSchedule {
    start: Instant,
    rate: u64,
    warmup: u64,
    count: u64,
}

impl RateSchedule {
    /// A schedule starting now (the first message is due immediately). Fails for a rate of 0.
    pub fn starting_now(config: &BenchConfig, rate: u64) -> BenchResult<Self> {
        if rate == 0 {
            return Err(BenchError::msg("the offered rate must be at least 1 msg/s"));
        }
        Ok(Self {
            start: Instant::now(),
            rate,
            warmup: config.warmup,
            count: config.count,
        })
    }

    /// Offered rate, messages per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Messages in the run, warm-up included.
    pub fn total(&self) -> u64 {
        self.warmup + self.count
    }

    /// Whether message `seq` is recorded (it is past the warm-up).
    pub fn measured(&self, seq: u64) -> bool {
        seq >= self.warmup
    }

    /// Time between two messages.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / self.rate).max(Duration::from_nanos(1))
    }

    /// When message `seq` is due: `start + seq / rate`.
    pub fn intended(&self, seq: u64) -> Instant {
        let nanos = u128::from(seq) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Waits until message `seq` is due (returns at once if it is overdue) and says whether
    /// it is **late**: issued a whole [`interval`](Self::interval) or more after its due time.
    pub async fn wait_turn(&self, seq: u64) -> bool {
        let due = self.intended(seq);
        wait_until(due).await;
        Instant::now().saturating_duration_since(due) >= self.interval()
    }
}

/// Sleeps while `due` is far, then spins with `yield_now` (see the module docs).
async fn wait_until(due: Instant) {
    for _ in 0..MAX_SPINS {
        let now = Instant::now();
        if now >= due {
            return;
        }
        if due - now > SPIN_BELOW {
            tokio::time::sleep_until(due - SPIN_BELOW / 2).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Records an open-loop run: latency from each message's intended send time, late and lost
/// messages. Single-threaded (`&self` methods through `Cell`/`RefCell`), so a writer and a
/// reader joined in one task can both use it.
#[derive(Debug)]
pub struct RateRecorder {
    schedule: RateSchedule,
    histogram: RefCell<Histogram<u64>>,
    late: Cell<u64>,
    lost: Cell<u64>,
}

impl RateRecorder {
    /// An empty recorder for `schedule`.
    pub fn new(schedule: RateSchedule) -> BenchResult<Self> {
        Ok(Self {
            schedule,
            histogram: RefCell::new(report::new_histogram()?),
            late: Cell::new(0),
            lost: Cell::new(0),
        })
    }

    /// The schedule it records against.
    pub fn schedule(&self) -> &RateSchedule {
        &self.schedule
    }

    /// Message `seq` was issued late (as [`RateSchedule::wait_turn`] said); counted if
    /// measured.
    pub fn late(&self, seq: u64) {
        if self.schedule.measured(seq) {
            self.late.set(self.late.get() + 1);
        }
    }

    /// Message `seq`'s answer arrived at `at`: records `at - intended(seq)` if measured.
    pub fn complete(&self, seq: u64, at: Instant) {
        if self.schedule.measured(seq) {
            let latency = at.saturating_duration_since(self.schedule.intended(seq));
            report::record(&mut self.histogram.borrow_mut(), latency);
        }
    }

    /// Message `seq` got no answer in time; counted if measured.
    pub fn lost(&self, seq: u64) {
        if self.schedule.measured(seq) {
            self.lost.set(self.lost.get() + 1);
        }
    }

    /// The row `name`. Fails if nothing at all was answered (a broken run, not a slow one).
    pub fn report(&self, name: &str) -> BenchResult<RateReport> {
        let histogram = self.histogram.borrow();
        if histogram.is_empty() && self.schedule.count > 0 {
            return Err(BenchError::msg(format!(
                "{name}: none of {} messages was answered",
                self.schedule.count
            )));
        }
        let latency = LatencyReport::from_histogram(name, &histogram).with_lost(self.lost.get());
        Ok(RateReport::new(
            latency,
            self.schedule.rate,
            self.schedule.count,
            self.late.get(),
        ))
    }
}

/// Runs an open-loop measurement where each message is its own future and returns the row
/// `name`.
///
/// `config.warmup + config.count` messages are issued at `rate` per second; `issue(seq)`
/// starts message `seq` and returns a future that resolves when its answer is in
/// ([`RoundTrip::Done`]; [`RoundTrip::Lost`] or no answer within [`LOSS_TIMEOUT`] counts it
/// as lost; an `Err` fails the run). Up to [`MAX_IN_FLIGHT`] futures are polled at once on
/// the calling task, so they need not be `Send` or `'static`. Bounded in count, and in time
/// by `LOSS_TIMEOUT` after the last message (the caller bounds the whole run, see
/// [`crate::runtime::run_pair`]).
///
/// ```ignore
/// open_loop("shoal-request-at-10k", config, 10_000, |_seq| {
///     let reply = node.request(SERVICE, Message::command("echo", body.clone()), timeout);
///     async move { reply.await.map(|_| RoundTrip::Done).map_err(shoal_err) }
/// })
/// .await
/// ```
pub async fn open_loop<F, Fut>(
    name: &str,
    config: &BenchConfig,
    rate: u64,
    mut issue: F,
) -> BenchResult<RateReport>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = BenchResult<RoundTrip>>,
{
    let schedule = RateSchedule::starting_now(config, rate)?;
    let recorder = RateRecorder::new(schedule)?;
    let mut in_flight = FuturesUnordered::new();
    let finish = |(seq, outcome, at): (u64, Result<BenchResult<RoundTrip>, _>, Instant)| {
        match outcome {
            Ok(Ok(RoundTrip::Done)) => recorder.complete(seq, at),
            Ok(Ok(RoundTrip::Lost)) | Err(_) => recorder.lost(seq),
            Ok(Err(e)) => return Err(e.context(format!("{name}: message {seq}"))),
        }
        Ok(())
    };
    let mut next = 0;
    // Each pass issues one message or handles one completion (or waits for one), so
    // `total` issues plus `total` completions plus the spins of the waits bound it.
    for _ in 0..MAX_SPINS {
        while let Some(Some(done)) = in_flight.next().now_or_never() {
            finish(done)?;
        }
        if next == schedule.total() {
            match in_flight.next().await {
                Some(done) => finish(done)?,
                None => break,
            }
            continue;
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(done) = in_flight.next().await {
                finish(done)?;
            }
            continue;
        }
        let due = schedule.intended(next);
        let now = Instant::now();
        if now >= due {
            if now - due >= schedule.interval() {
                recorder.late(next);
            }
            let seq = next;
            let fut = tokio::time::timeout(LOSS_TIMEOUT, issue(seq));
            in_flight.push(fut.map(move |outcome| (seq, outcome, Instant::now())));
            next += 1;
        } else if due - now > SPIN_BELOW && !in_flight.is_empty() {
            tokio::select! {
                Some(done) = in_flight.next() => finish(done)?,
                () = tokio::time::sleep_until(due - SPIN_BELOW / 2) => {}
            }
        } else if due - now > SPIN_BELOW {
            tokio::time::sleep_until(due - SPIN_BELOW / 2).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    if next < schedule.total() || !in_flight.is_empty() {
        return Err(BenchError::msg(format!(
            "{name}: the open loop did not finish (issued {next} of {})",
            schedule.total()
        )));
    }
    recorder.report(name)
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
    fn labels_and_names() {
        assert_eq!(rate_label(10_000), "10k");
        assert_eq!(rate_label(2_000_000), "2m");
        assert_eq!(rate_label(1_500), "1500");
        assert_eq!(rate_label(500), "500");
        assert_eq!(at_rate_name("quinn-stream", 10_000), "quinn-stream-at-10k");
    }

    #[test]
    fn schedule_spaces_messages_evenly() {
        let runtime = crate::runtime::build().expect("runtime");
        runtime.block_on(async {
            let s = RateSchedule::starting_now(&config(10, 2), 1_000).expect("schedule");
            assert_eq!(s.total(), 12);
            assert_eq!(s.interval(), Duration::from_millis(1));
            assert_eq!(s.intended(3) - s.intended(0), Duration::from_millis(3));
            assert!(!s.measured(1) && s.measured(2));
            assert!(RateSchedule::starting_now(&config(1, 0), 0).is_err());
        });
    }

    #[test]
    fn the_loop_keeps_sending_through_a_slow_answer() {
        let runtime = crate::runtime::build().expect("runtime");
        // 1000 msgs/s; message 20's answer takes 30 ms, message 50 is lost. The loop is
        // open: the messages due meanwhile still leave on time.
        let report = runtime
            .block_on(async {
                open_loop("t", &config(100, 0), 1_000, |seq| async move {
                    if seq == 20 {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    Ok(if seq == 50 {
                        RoundTrip::Lost
                    } else {
                        RoundTrip::Done
                    })
                })
                .await
            })
            .expect("runs");
        assert_eq!(report.latency.count, 99);
        assert_eq!(report.latency.lost, 1);
        assert_eq!(report.offered, 100);
        // Nothing waits for message 20 (the loop is open): only message 20 itself took
        // 30 ms, not the ones due meanwhile (bounds loose enough for a loaded machine).
        assert!(report.latency.max >= 30_000_000, "{}", report.latency.max);
        assert!(report.latency.p50 < 20_000_000, "{}", report.latency.p50);
    }

    #[test]
    fn a_blocked_sender_makes_late_messages_and_counts_the_wait() {
        let runtime = crate::runtime::build().expect("runtime");
        runtime.block_on(async {
            let config = config(50, 0);
            let schedule = RateSchedule::starting_now(&config, 1_000).expect("schedule");
            let recorder = RateRecorder::new(schedule).expect("recorder");
            for seq in 0..schedule.total() {
                if schedule.wait_turn(seq).await {
                    recorder.late(seq);
                }
                if seq == 10 {
                    // The sender itself blocks for 20 ms (back-pressure).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                recorder.complete(seq, Instant::now());
            }
            let report = recorder.report("t").expect("report");
            // At least the ~19 due during the stall (more if this thread was descheduled).
            assert!((15..=50).contains(&report.late), "{}", report.late);
            // The message due right after the stall waited ~20 ms.
            assert!(report.latency.max >= 15_000_000, "{}", report.latency.max);
        });
    }

    #[test]
    fn errors_fail_the_run() {
        let runtime = crate::runtime::build().expect("runtime");
        let err = runtime
            .block_on(open_loop("t", &config(5, 0), 1_000, |_| async {
                Err::<RoundTrip, _>(BenchError::msg("boom"))
            }))
            .expect_err("fails");
        assert!(err.message().contains("boom"), "{err}");
    }
}
