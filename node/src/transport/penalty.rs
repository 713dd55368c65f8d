//! The penalty box: IP addresses whose TLS handshake this node refused (a certificate from a
//! CA it does not trust, a revoked or expired one, no certificate, broken TLS) are refused
//! before TLS for a while. A client that keeps dialling with a foreign certificate then costs
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

/// Addresses refused for a while, with when their penalty ends.
#[derive(Debug)]
pub(super) struct PenaltyBox {
    duration: Duration,
    capacity: usize,
    penalties: HashMap<IpAddr, Penalty>,
}

#[derive(Clone, Copy, Debug)]
struct Penalty {
    until: Instant,
    /// The penalty ended and one handshake was let through; this hold waits for its outcome.
    probing: bool,
}

impl PenaltyBox {
    /// A box that refuses an address for `duration` after its failure, holding at most
    /// `capacity` addresses. A zero `duration` or `capacity` turns the box off.
    pub(super) fn new(duration: Duration, capacity: usize) -> Self {
        Self {
            duration,
            capacity,
            penalties: HashMap::new(),
        }
    }

    /// Puts `ip` in the box at `now` (again, if it is there: its penalty starts over).
    /// Returns whether this is a new penalty: the address was not in the box, or this is the
    /// failure of the one handshake let through when its penalty ended (not of one admitted
    /// before the penalty began).
    pub(super) fn penalise(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.duration.is_zero() || self.capacity == 0 {
            return false;
        }
        let penalty = Penalty {
            until: now + self.duration,
            probing: false,
        };
        if let Some(entry) = self.penalties.get_mut(&ip) {
            let new = entry.probing;
            *entry = penalty;
            return new;
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
        self.penalties.insert(ip, penalty);
        true
    }

    /// How long `ip` stays in the box after `now`, if it is in it. When its penalty has
    /// ended, one handshake is let through (`None`) and the penalty starts over: a client
    /// with many attempts in flight gets one handshake per penalty, not all of them at once.
    /// That handshake's outcome decides: a failure penalises again, a success
    /// [forgives](Self::forgive).
    pub(super) fn remaining(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let penalty = self.penalties.get_mut(&ip)?;
        if penalty.until > now {
            Some(penalty.until - now)
        } else {
            *penalty = Penalty {
                until: now + self.duration,
                probing: true,
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
        let mut penalties = PenaltyBox::new(Duration::from_secs(10), 16);
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
        let mut penalties = PenaltyBox::new(Duration::from_secs(10), 3);
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
    fn a_box_without_duration_or_room_is_off() {
        let start = Instant::now();
        for mut off in [
            PenaltyBox::new(Duration::ZERO, 16),
            PenaltyBox::new(Duration::from_secs(10), 0),
        ] {
            assert!(!off.penalise(ip(1), start));
            assert_eq!(off.remaining(ip(1), start), None);
        }
    }
}
