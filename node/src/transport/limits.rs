//! Limits against floods on the accepting side, applied to each incoming connection before
//! its TLS handshake starts (so a refused one costs no signature and no certificate check):
//!
//! - at most `max_connections` incoming connections at once, handshaking or established;
//! - at most `max_connections_per_address` of them from one IP address;
//! - at most `handshake_rate` new handshakes per second, in bursts of up to
//!   `handshake_burst` (a token bucket);
//! - none from an address whose TLS handshake this node refused in the last
//!   `handshake_penalty` (the [`super::penalty`] box): a client with a foreign certificate
//!   that dials again costs no second handshake. Checked first, so such a client takes none
//!   of the rate's tokens from honest peers.
//!
//! A connection over a limit is refused with QUIC's `CONNECTION_REFUSED`, so an honest peer
//! learns at once and dials again after its backoff. Refusals are counted
//! ([`crate::NodeStats::connections_refused`]). The deadline for the TLS handshake and the
//! hello is in [`super::endpoint`]; the cap on each peer's queued bytes is the engine's
//! (`Config::max_queued_bytes`, see `engine::backpressure`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::penalty::PenaltyBox;
use crate::config::Config;
use crate::sync::lock;

/// Why an incoming connection was refused before its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` incoming connections are open.
    Total(usize),
    /// `max_connections_per_address` incoming connections from this address are open.
    PerAddress(IpAddr, usize),
    /// More handshakes than the rate limit allows.
    Rate(u32),
    /// This address's TLS handshake was refused lately; it may try again after `remaining`.
    Penalised { ip: IpAddr, remaining: Duration },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Total(max) => write!(f, "refused: {max} incoming connections open (the limit)"),
            Self::PerAddress(ip, max) => {
                write!(
                    f,
                    "refused: {max} incoming connections from {ip} open (the limit)"
                )
            }
            Self::Rate(rate) => write!(f, "refused: more than {rate} handshakes per second"),
            Self::Penalised { ip, remaining } => write!(
                f,
                "refused: {ip} failed its TLS handshake lately (may try again in {} ms)",
                remaining.as_millis()
            ),
        }
    }
}

/// The accepting side's limits and what they count. Shared by the accept loop and every
/// incoming connection's [`Slot`].
#[derive(Debug)]
pub(crate) struct AcceptLimits {
    max_total: usize,
    max_per_address: usize,
    rate: u32,
    burst: u32,
    state: Mutex<State>,
    /// Connections refused by a limit since start.
    refused: AtomicU64,
    /// Times an address was put in the penalty box since start.
    penalised: AtomicU64,
}

#[derive(Debug)]
struct State {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    /// Handshakes the bucket allows now, and when it was last filled.
    tokens: f64,
    filled: Option<Instant>,
    penalties: PenaltyBox,
}

impl AcceptLimits {
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            max_total: config.max_connections,
            max_per_address: config.max_connections_per_address,
            rate: config.handshake_rate,
            burst: config.handshake_burst.max(1),
            state: Mutex::new(State {
                total: 0,
                per_address: HashMap::new(),
                tokens: f64::from(config.handshake_burst.max(1)),
                filled: None,
                penalties: PenaltyBox::new(
                    config.handshake_penalty,
                    config.handshake_penalty_capacity,
                    config.handshake_penalty_after,
                ),
            }),
            refused: AtomicU64::new(0),
            penalised: AtomicU64::new(0),
        })
    }

    /// Admits a new incoming connection from `ip` at `now`, or says which limit refuses it
    /// (and counts the refusal). The connection holds its [`Slot`] as long as it lives.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Slot, Refusal> {
        let refused = {
            let mut state = lock(&self.state);
            let from_ip = state.per_address.get(&ip).copied().unwrap_or(0);
            if let Some(remaining) = state.penalties.remaining(ip, now) {
                Some(Refusal::Penalised { ip, remaining })
            } else if state.total >= self.max_total {
                Some(Refusal::Total(self.max_total))
            } else if from_ip >= self.max_per_address {
                Some(Refusal::PerAddress(ip, self.max_per_address))
            } else if !state.take_token(self.rate, self.burst, now) {
                Some(Refusal::Rate(self.rate))
            } else {
                state.total += 1;
                *state.per_address.entry(ip).or_default() += 1;
                None
            }
        };
        match refused {
            Some(refusal) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(refusal)
            }
            None => Ok(Slot {
                limits: Arc::clone(self),
                ip,
            }),
        }
    }

    /// Connections refused by a limit since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Refuses handshakes from `ip` for the penalty from `now` on: the node refused its TLS
    /// handshake (nothing when the penalty box is off).
    pub(crate) fn penalise(&self, ip: IpAddr, now: Instant) {
        if lock(&self.state).penalties.penalise(ip, now) {
            self.penalised.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes `ip` out of the penalty box: a TLS handshake from it succeeded.
    pub(crate) fn forgive(&self, ip: IpAddr) {
        lock(&self.state).penalties.forgive(ip);
    }

    /// Times an address was put in the penalty box since start.
    pub(crate) fn penalised(&self) -> u64 {
        self.penalised.load(Ordering::Relaxed)
    }

    fn release(&self, ip: IpAddr) {
        let mut state = lock(&self.state);
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_address.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                state.per_address.remove(&ip);
            }
        }
    }
}

impl State {
    /// Takes one handshake from the bucket, refilled at `rate` per second up to `burst`.
    fn take_token(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        if let Some(filled) = self.filled {
            let elapsed = now.saturating_duration_since(filled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        }
        self.filled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An incoming connection's place under the limits; given back when dropped (the handshake
/// failed, or the connection ended).
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<AcceptLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(total: usize, per_address: usize, rate: u32, burst: u32) -> Arc<AcceptLimits> {
        AcceptLimits::new(&Config {
            max_connections: total,
            max_connections_per_address: per_address,
            handshake_rate: rate,
            handshake_burst: burst,
            ..Config::default()
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn connections_over_the_caps_are_refused_until_one_ends() {
        let limits = limits(3, 2, 1000, 1000);
        let now = Instant::now();
        let a1 = limits.admit(A, now).expect("first");
        let _a2 = limits.admit(A, now).expect("second");
        assert_eq!(
            limits.admit(A, now).expect_err("per address"),
            Refusal::PerAddress(A, 2)
        );
        let _b1 = limits.admit(B, now).expect("another address");
        assert_eq!(limits.admit(B, now).expect_err("total"), Refusal::Total(3));
        drop(a1);
        let _a3 = limits.admit(A, now).expect("a slot was given back");
        assert_eq!(limits.refused(), 2);
    }

    #[test]
    fn handshakes_beyond_the_rate_are_refused_then_allowed_again() {
        let limits = limits(100, 100, 10, 5);
        let start = Instant::now();
        let burst: Vec<Slot> = (0..5)
            .map(|_| limits.admit(A, start).expect("burst"))
            .collect();
        assert_eq!(limits.admit(A, start).expect_err("rate"), Refusal::Rate(10));
        drop(burst); // the rate limits handshakes started, not connections open
        assert!(limits.admit(A, start).is_err());
        // 10 per second: one more after 100 ms, and never more than the burst after a pause.
        let later = start + Duration::from_millis(100);
        let _one = limits.admit(A, later).expect("refilled");
        assert!(limits.admit(A, later).is_err());
        let much_later = start + Duration::from_secs(60);
        let admitted = (0..10)
            .filter(|_| limits.admit(A, much_later).map(drop).is_ok())
            .count();
        assert_eq!(admitted, 5);
    }
}
