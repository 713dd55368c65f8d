//! The penalty box: IP addresses whose TLS handshakes this node refused (a certificate from a
//! CA it does not trust, a revoked or expired one, no certificate, broken TLS) at a flood's
//! pace, `after` of them within one second, are refused before TLS for a while. A
//! misconfigured client that retries with backoff (a few attempts in its first second, then
//! fewer) never gets there, so it is told why at each attempt and does not hold off the
//! honest peers behind the same address; a flood gets there within its first few attempts. A client that keeps dialling with a foreign certificate then costs
//! the node one handshake per penalty instead of one per token of the handshake rate, and it
//! no longer takes the rate's tokens from honest peers.
//!
//! The box holds at most `capacity` addresses, so a flood from many addresses cannot make it
//! grow without bound: when it is full, expired entries go first, then the one closest to
//! expiring (each entry cost its client a full, failed handshake, so a scan of the box when it
//! is full is cheap beside what filled it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::engine::retry::later;

/// Failures are counted over windows of this length.
const STRIKE_WINDOW: Duration = Duration::from_secs(1);

/// Addresses refused for a while, with when their penalty ends, and addresses counting
/// failures towards one.
#[derive(Debug)]
pub(super) struct PenaltyBox {
    duration: Duration,
    capacity: usize,
    /// Refused TLS handshakes within [`STRIKE_WINDOW`] that put an address in the box.
    after: u32,
    penalties: HashMap<IpAddr, Penalty>,
}

#[derive(Clone, Copy, Debug)]
struct Penalty {
    until: Instant,
    /// The penalty ended and one handshake was let through; this hold waits for its outcome.
    probing: bool,
    /// Not refused yet: `strikes` failures since `until - STRIKE_WINDOW`.
    counting: Option<u32>,
}

impl Penalty {
    /// Whether new connections from the address are refused at `now`.
    fn refuses(&self, now: Instant) -> bool {
        self.counting.is_none() && self.until > now
    }
}

impl PenaltyBox {
    /// A box that refuses an address for `duration` once `after` of its handshakes failed
    /// within a second, holding at most `capacity` addresses. A zero `duration` or `capacity`
    /// turns the box off.
    pub(super) fn new(duration: Duration, capacity: usize, after: u32) -> Self {
        Self {
            duration,
            capacity,
            after: after.max(1),
            penalties: HashMap::new(),
        }
    }

    /// Puts `ip` in the box at `now` (again, if it is there: its penalty starts over).
    /// Returns whether this is a new penalty: the address was not in the box, or this is the
    /// failure of the one handshake let through when its penalty ended (not of one admitted
    /// before the penalty began).
    /// Below the threshold the failure is only counted (and `false` returned).
    pub(super) fn penalise(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.duration.is_zero() || self.capacity == 0 {
            return false;
        }
        let penalty = Penalty {
            until: later(now, self.duration),
            probing: false,
            counting: None,
        };
        let strike = |strikes: u32| Penalty {
            until: now + STRIKE_WINDOW,
            probing: false,
            counting: Some(strikes),
        };
        if let Some(entry) = self.penalties.get_mut(&ip) {
            match entry.counting {
                // Within the window: one more strike, and the box once there are enough.
                Some(strikes) if entry.until > now => {
                    if strikes + 1 >= self.after {
                        *entry = penalty;
                        return true;
                    }
                    *entry = Penalty {
                        counting: Some(strikes + 1),
                        ..*entry
                    };
                    return false;
                }
                // A new window (only counted entries exist, so `after` is above one).
                Some(_) => {
                    *entry = strike(1);
                    return false;
                }
                None => {
                    let new = entry.probing;
                    *entry = penalty;
                    return new;
                }
            }
        }
        if self.penalties.len() >= self.capacity {
            self.penalties.retain(|_, p| p.until > now);
        }
        if self.penalties.len() >= self.capacity {
            let soonest = self
                .penalties
                .iter()
                .min_by_key(|(_, p)| p.until)
                .map(|(ip, _)| *ip);
            if let Some(soonest) = soonest {
                self.penalties.remove(&soonest);
            }
        }
        if self.after <= 1 {
            self.penalties.insert(ip, penalty);
            true
        } else {
            self.penalties.insert(ip, strike(1));
            false
        }
    }

    /// How long `ip` stays in the box after `now`, if it is in it. When its penalty has
    /// ended, one handshake is let through (`None`) and the penalty starts over: a client
    /// with many attempts in flight gets one handshake per penalty, not all of them at once.
    /// That handshake's outcome decides: a failure penalises again, a success
    /// [forgives](Self::forgive).
    pub(super) fn remaining(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let penalty = self.penalties.get_mut(&ip)?;
        if penalty.counting.is_some() {
            None
        } else if penalty.refuses(now) {
            Some(penalty.until - now)
        } else {
            *penalty = Penalty {
                until: later(now, self.duration),
                probing: true,
                counting: None,
            };
            None
        }
    }

    /// Takes `ip` out of the box: a handshake from it succeeded.
    pub(super) fn forgive(&mut self, ip: IpAddr) {
        self.penalties.remove(&ip);
    }

    /// Addresses in the box (some may have expired and not been removed yet).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.penalties.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn an_address_is_refused_until_its_penalty_ends_then_gets_one_handshake() {
        let mut penalties = PenaltyBox::new(Duration::from_secs(10), 16, 1);
        let start = Instant::now();
        let second = |n: u64| start + Duration::from_secs(n);
        assert_eq!(penalties.remaining(ip(1), start), None);
        assert!(penalties.penalise(ip(1), start));
        let six = Some(Duration::from_secs(6));
        assert_eq!(penalties.remaining(ip(1), second(4)), six);
        assert_eq!(
            penalties.remaining(ip(2), second(4)),
            None,
            "only that address"
        );
        // A failure while in the box (a handshake admitted before the first failed) starts
        // the penalty over.
        assert!(!penalties.penalise(ip(1), second(4)));
        let two = Some(Duration::from_secs(2));
        assert_eq!(penalties.remaining(ip(1), second(12)), two);
        // The penalty ends: one handshake, and the next attempts wait for its outcome.
        assert_eq!(penalties.remaining(ip(1), second(14)), None);
        let ten = Some(Duration::from_secs(10));
        assert_eq!(penalties.remaining(ip(1), second(14)), ten);
        // It failed: a new penalty.
        assert!(penalties.penalise(ip(1), second(15)));
        assert_eq!(
            penalties.remaining(ip(1), second(24)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(penalties.remaining(ip(1), second(25)), None);
        // That one succeeded: the address is out of the box.
        penalties.forgive(ip(1));
        assert_eq!(penalties.remaining(ip(1), second(25)), None);
        assert_eq!(penalties.len(), 0);
    }

    #[test]
    fn a_full_box_drops_expired_entries_then_the_one_closest_to_expiring() {
        let mut penalties = PenaltyBox::new(Duration::from_secs(10), 3, 1);
        let start = Instant::now();
        let second = |n: u64| start + Duration::from_secs(n);
        penalties.penalise(ip(1), second(0));
        penalties.penalise(ip(2), second(1));
        penalties.penalise(ip(3), second(2));
        // Full: ip(1) expired at 10 s and makes room.
        penalties.penalise(ip(4), second(10));
        assert_eq!(penalties.len(), 3);
        assert_eq!(penalties.remaining(ip(1), second(10)), None);
        // Full, none expired: ip(2), due to leave first (at 11 s), makes room.
        penalties.penalise(ip(5), second(10));
        assert_eq!(penalties.len(), 3);
        assert_eq!(penalties.remaining(ip(2), second(10)), None);
        for kept in [3, 4, 5] {
            assert!(
                penalties.remaining(ip(kept), second(10)).is_some(),
                "{kept}"
            );
        }
    }

    #[test]
    fn an_address_enters_the_box_only_at_a_floods_pace() {
        let mut penalties = PenaltyBox::new(Duration::from_secs(10), 16, 3);
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        // A client retrying with backoff: two failures in one second, two in the next.
        for at in [0, 100, 1_100, 1_300] {
            assert!(!penalties.penalise(ip(1), ms(at)), "{at} ms");
            assert_eq!(penalties.remaining(ip(1), ms(at)), None, "{at} ms");
        }
        // A third within the window: the box.
        assert!(penalties.penalise(ip(1), ms(1_500)));
        assert_eq!(
            penalties.remaining(ip(1), ms(1_500)),
            Some(Duration::from_secs(10))
        );
        // While in the box, what fails counts as before (the penalty starts over).
        assert!(!penalties.penalise(ip(1), ms(2_000)));
        assert_eq!(
            penalties.remaining(ip(1), ms(2_000)),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn a_box_without_duration_or_room_is_off() {
        let start = Instant::now();
        for mut off in [
            PenaltyBox::new(Duration::ZERO, 16, 1),
            PenaltyBox::new(Duration::from_secs(10), 0, 1),
        ] {
            assert!(!off.penalise(ip(1), start));
            assert_eq!(off.remaining(ip(1), start), None);
        }
    }
}
