//! The systems a benchmark run can measure: the raw floors, Shoal, and the rivals a user
//! would pick instead. Rivals are compiled in only with their cargo feature, so the normal
//! build and CI stay fast; a run says which systems it measured and which were not built.

/// What part a system plays in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A raw transport Shoal cannot beat (UDP, quinn): the ratios' denominators.
    Floor,
    /// Shoal itself.
    Shoal,
    /// Another messaging system, measured beside Shoal in the same run.
    Rival,
}

/// One system the harness knows.
#[derive(Debug, Clone, Copy)]
pub struct System {
    /// Name used with `--system` and in [`crate::Scenario::system`].
    pub name: &'static str,
    /// Floor, Shoal or rival.
    pub role: Role,
    /// Cargo feature of `shoal-benches` that compiles it in (`None`: always built).
    pub feature: Option<&'static str>,
    /// Whether this binary was built with it.
    pub built: bool,
}

/// Raw UDP.
pub const UDP: &str = "udp";
/// Raw quinn (QUIC with the same mutual TLS Shoal uses).
pub const QUINN: &str = "quinn";
/// Shoal.
pub const SHOAL: &str = "shoal";
/// NATS (Debian's `nats-server`, `async-nats` client).
pub const NATS: &str = "nats";
/// Eclipse Zenoh, peer mode.
pub const ZENOH: &str = "zenoh";
/// ZeroMQ.
pub const ZMQ: &str = "zmq";
/// rust-libp2p request-response over QUIC.
pub const LIBP2P: &str = "libp2p";

/// Every system, floors first, then Shoal, then the rivals.
pub const SYSTEMS: &[System] = &[
    System {
        name: UDP,
        role: Role::Floor,
        feature: None,
        built: true,
    },
    System {
        name: QUINN,
        role: Role::Floor,
        feature: None,
        built: true,
    },
    System {
        name: SHOAL,
        role: Role::Shoal,
        feature: None,
        built: true,
    },
    System {
        name: NATS,
        role: Role::Rival,
        feature: Some("nats"),
        built: cfg!(feature = "nats"),
    },
    System {
        name: ZENOH,
        role: Role::Rival,
        feature: Some("zenoh"),
        built: cfg!(feature = "zenoh"),
    },
    System {
        name: ZMQ,
        role: Role::Rival,
        feature: Some("zmq"),
        built: cfg!(feature = "zmq"),
    },
    System {
        name: LIBP2P,
        role: Role::Rival,
        feature: Some("libp2p"),
        built: cfg!(feature = "libp2p"),
    },
];

/// The system called `name`, if the harness knows it.
pub fn find(name: &str) -> Option<&'static System> {
    SYSTEMS.iter().find(|s| s.name == name)
}

/// One line for the start of a run: the rivals compiled in, and those that were not
/// (with the feature that would build them).
pub fn built_summary() -> String {
    let rivals = || SYSTEMS.iter().filter(|s| s.role == Role::Rival);
    let built: Vec<&str> = rivals().filter(|s| s.built).map(|s| s.name).collect();
    let missing: Vec<String> = rivals()
        .filter(|s| !s.built)
        .map(|s| format!("{} (--features {})", s.name, s.feature.unwrap_or(s.name)))
        .collect();
    let built = if built.is_empty() {
        "none".to_owned()
    } else {
        built.join(", ")
    };
    let missing = if missing.is_empty() {
        String::new()
    } else {
        format!("; not built: {}", missing.join(", "))
    };
    format!("rivals built in: {built}{missing}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_floors_always_built() {
        for (i, a) in SYSTEMS.iter().enumerate() {
            assert!(SYSTEMS[i + 1..].iter().all(|b| b.name != a.name));
            if a.role != Role::Rival {
                assert!(a.built && a.feature.is_none(), "{}", a.name);
            }
        }
        assert!(built_summary().starts_with("rivals built in: "));
    }
}
