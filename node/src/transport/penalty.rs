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
    until: HashMap<IpAddr, Instant>,
}

impl PenaltyBox {
    /// A box that refuses an address for `duration` after its failure, holding at most
    /// `capacity` addresses. A zero `duration` or `capacity` turns the box off.
    pub(super) fn new(duration: Duration, capacity: usize) -> Self {
        Self {
            duration,
            capacity,
            until: HashMap::new(),
        }
    }

    /// Puts `ip` in the box at `now` (again, if it is there: its penalty starts over).
    /// Returns whether it was not already there.
    pub(super) fn penalise(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.duration.is_zero() || self.capacity == 0 {
            return false;
        }
        let until = now + self.duration;
        if let Some(entry) = self.until.get_mut(&ip) {
            *entry = until;
            return false;
        }
        if self.until.len() >= self.capacity {
            self.until.retain(|_, until| *until > now);
        }
        if self.until.len() >= self.capacity {
            let soonest = self
                .until
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(ip, _)| *ip);
            if let Some(soonest) = soonest {
                self.until.remove(&soonest);
            }
        }
        self.until.insert(ip, until);
        true
    }

    /// How long `ip` stays in the box after `now`, if it is in it; an expired entry is
    /// removed.
    pub(super) fn remaining(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = *self.until.get(&ip)?;
        if until > now {
            Some(until - now)
        } else {
            self.until.remove(&ip);
            None
        }
    }

    /// Addresses in the box (some may have expired and not been removed yet).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
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
    fn an_address_is_refused_until_its_penalty_ends_and_again_after_another_failure() {
        let mut penalties = PenaltyBox::new(Duration::from_secs(10), 16);
        let start = Instant::now();
        assert_eq!(penalties.remaining(ip(1), start), None);
        assert!(penalties.penalise(ip(1), start));
        let later = start + Duration::from_secs(4);
        assert_eq!(
            penalties.remaining(ip(1), later),
            Some(Duration::from_secs(6))
        );
        assert_eq!(penalties.remaining(ip(2), later), None, "only that address");
        // A failure while in the box (a handshake admitted before the first failed) starts
        // the penalty over.
        assert!(!penalties.penalise(ip(1), later));
        let after = start + Duration::from_secs(12);
        assert_eq!(
            penalties.remaining(ip(1), after),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            penalties.remaining(ip(1), later + Duration::from_secs(10)),
            None
        );
        assert_eq!(
            penalties.len(),
            0,
            "an expired entry is removed when looked up"
        );
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
