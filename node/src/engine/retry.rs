//! When to retry a message, and when to give up.

use std::time::{Duration, Instant};

use crate::Error;

/// Exponential backoff with jitter, bounded by attempts and an overall deadline.
///
/// Defaults, tuned for commands between services on one LAN: the first retry comes after about
/// 50 ms (enough for a restarted peer or another instance to take over), delays double up to 2 s,
/// at most 8 attempts, and no message is retried more than 30 s after it was first sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delivery attempts in total, the first included. Default 8. Must be at least 1.
    pub max_attempts: u32,
    /// Give up this long after the first attempt, whatever the attempt count. Default 30 s.
    ///
    /// A held delivery (`hold_for`, `hold_events_for`) counts it from the end of its wait
    /// instead: the attempt made when an instance is back (or, for a keyed event behind a held
    /// one, when its turn comes) starts the clock again, so a message held past 30 s still
    /// gets its retries once it can be delivered. Must not be zero (refused with
    /// [`Error::Config`](crate::Error::Config)).
    pub deadline: Duration,
    /// Base delay before the second attempt; the actual delay is drawn from half of it to all
    /// of it (equal jitter), and doubles with each attempt. Default 50 ms.
    pub initial_backoff: Duration,
    /// Upper bound of any delay. Default 2 s.
    pub max_backoff: Duration,
    /// How long to wait for the receiver's ack (its handler included) before retrying.
    /// Default 5 s. Must not be zero.
    pub ack_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            deadline: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Refuses a policy no delivery can work with, naming `whose` it is (the builder method
    /// or the option that gave it): no attempt at all (it was taken as one), an ack wait of
    /// zero (every attempt times out before its ack can come) or a deadline of zero (nothing
    /// is retried, and the first attempt has no time for its ack either).
    pub(crate) fn check(&self, whose: &str) -> Result<(), Error> {
        let why = if self.max_attempts == 0 {
            "max_attempts 0: counts the first attempt, so it must be at least 1"
        } else if self.ack_timeout.is_zero() {
            "ack_timeout zero: every attempt would time out before its ack"
        } else if self.deadline.is_zero() {
            "deadline zero: no attempt would have time for its ack"
        } else {
            return Ok(());
        };
        Err(Error::Config(format!("{whose}: {why}")))
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again at this instant.
    RetryAt(Instant),
    /// Attempts or time ran out.
    GiveUp,
}

/// The retry state of one delivery: a pure state machine driven by the send loop. It keeps
/// what changes (when it started, the attempts made); the [`RetryPolicy`] it follows is the
/// delivery's, passed in, so a delivery holds one copy of it.
#[derive(Clone, Debug)]
pub(crate) struct RetryState {
    started: Instant,
    attempts: u32,
}

impl RetryState {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            started: now,
            attempts: 0,
        }
    }

    /// Starts the deadline's clock again at `now`: a held delivery whose wait for an instance
    /// just ended gets its retries from here (see [`RetryPolicy::deadline`]).
    pub(crate) fn restart_clock(&mut self, now: Instant) {
        self.started = self.started.max(now);
    }

    /// Counts an attempt about to be made and returns its number (1 for the first).
    pub(crate) fn begin_attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// Attempts made so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The instant past which nothing more is tried.
    pub(crate) fn deadline(&self, policy: &RetryPolicy) -> Instant {
        later(self.started, policy.deadline)
    }

    /// The latest instant the current attempt may wait for its ack.
    pub(crate) fn ack_deadline(&self, policy: &RetryPolicy, now: Instant) -> Instant {
        later(now, policy.ack_timeout).min(self.deadline(policy))
    }

    /// Decides what follows a failed attempt. `jitter` is a number in `[0, 1)` from the caller's
    /// random source; the delay is drawn from `[d/2, d)` where `d` doubles per attempt
    /// ("equal jitter"), so retries from many senders spread out but never come instantly.
    pub(crate) fn after_failure(&self, policy: &RetryPolicy, now: Instant, jitter: f64) -> Next {
        if self.attempts >= policy.max_attempts {
            return Next::GiveUp;
        }
        let exp = self.attempts.saturating_sub(1).min(30);
        let full = policy
            .initial_backoff
            .saturating_mul(1 << exp)
            .min(policy.max_backoff);
        let delay = full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        let at = later(now, delay);
        if at >= self.deadline(policy) {
            Next::GiveUp
        } else {
            Next::RetryAt(at)
        }
    }
}

/// A century: what [`later`] adds when `at + d` does not fit, and the longest span Shoal
/// writes into a database (a PostgreSQL timestamp reaches the year 294276, an interval
/// 292,000 years; a century fits both with room).
pub(crate) const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d`, or a century later when that does not fit: `Duration::MAX` means "never".
///
/// Every instant the engine (and the runtime) computes from a duration a user configured
/// goes through this, so a huge value (`Duration::MAX` for "forever") never overflows.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(CENTURY))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            deadline: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_within_jitter_bounds() {
        let t0 = Instant::now();
        let mut s = RetryState::new(t0);
        let expected_full_ms = [100u64, 200, 400, 500];
        for full in expected_full_ms {
            s.begin_attempt();
            for (jitter, want) in [(0.0, full / 2), (0.999_999, full)] {
                let Next::RetryAt(at) = s.after_failure(&policy(), t0, jitter) else {
                    panic!("gave up early")
                };
                let ms = (at - t0).as_millis() as u64;
                assert!(
                    ms.abs_diff(want) <= 1,
                    "attempt {}: {ms} ms, want ~{want}",
                    s.attempts()
                );
            }
        }
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let t0 = Instant::now();
        let mut s = RetryState::new(t0);
        for _ in 0..5 {
            s.begin_attempt();
        }
        assert_eq!(s.after_failure(&policy(), t0, 0.5), Next::GiveUp);
    }

    #[test]
    fn gives_up_when_the_next_try_would_pass_the_deadline() {
        let t0 = Instant::now();
        let mut s = RetryState::new(t0);
        s.begin_attempt();
        assert_eq!(
            s.after_failure(&policy(), t0 + Duration::from_millis(9_990), 0.5),
            Next::GiveUp
        );
        assert!(matches!(
            s.after_failure(&policy(), t0, 0.5),
            Next::RetryAt(_)
        ));
    }

    #[test]
    fn durations_too_large_for_an_instant_mean_never() {
        let t0 = Instant::now();
        let forever = RetryPolicy {
            deadline: Duration::MAX,
            ack_timeout: Duration::MAX,
            max_backoff: Duration::MAX,
            initial_backoff: Duration::MAX,
            max_attempts: u32::MAX,
        };
        let mut s = RetryState::new(t0);
        s.begin_attempt();
        assert!(s.deadline(&forever) > t0 + Duration::from_secs(3600 * 24 * 365));
        assert!(s.ack_deadline(&forever, t0) > t0 + Duration::from_secs(3600 * 24 * 365));
        assert!(matches!(
            s.after_failure(&forever, t0, 0.99),
            Next::RetryAt(_) | Next::GiveUp
        ));
    }

    #[test]
    fn policies_no_delivery_can_work_with_are_refused_naming_the_value() {
        assert!(policy().check("X").is_ok());
        let unusable = [
            (
                RetryPolicy {
                    max_attempts: 0,
                    ..policy()
                },
                "max_attempts 0",
            ),
            (
                RetryPolicy {
                    ack_timeout: Duration::ZERO,
                    ..policy()
                },
                "ack_timeout zero",
            ),
            (
                RetryPolicy {
                    deadline: Duration::ZERO,
                    ..policy()
                },
                "deadline zero",
            ),
        ];
        for (p, expected) in unusable {
            match p.check("SendOptions::retry") {
                Err(Error::Config(why)) => {
                    assert!(why.starts_with("SendOptions::retry: ") && why.contains(expected));
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn ack_wait_never_passes_the_deadline() {
        let t0 = Instant::now();
        let s = RetryState::new(t0);
        assert_eq!(s.ack_deadline(&policy(), t0), t0 + Duration::from_secs(1));
        assert_eq!(
            s.ack_deadline(&policy(), t0 + Duration::from_millis(9_500)),
            t0 + Duration::from_secs(10)
        );
    }
}
