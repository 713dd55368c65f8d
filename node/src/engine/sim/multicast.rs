//! The simulated LAN's multicast group: a node's channel datagrams ([`Action::Multicast`])
//! reach every other node on the group, each with its own loss, duplication and reordering
//! ([`LanFaults`], the channel protocol's own simulated faults), and what reaches a crashed
//! node is kept so a test can try it with the keys that node still holds.
//!
//! [`Action::Multicast`]: crate::engine::Action::Multicast

use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{Event, Handled, Sim};
use crate::config::Config;
use crate::engine::ConnId;
use crate::engine::MulticastSetup;
use crate::engine::multicast::ChannelConfig;

pub(in crate::engine) use crate::engine::multicast::sim::Faults as LanFaults;

/// The group every simulated node with multicast is on.
const GROUP: &str = "239.255.0.1:7400";
/// How long a node's group link takes to send one datagram. The channel is paced, as the
/// runtime's is: events published meanwhile share the next datagrams.
const LINK_SEND: Duration = Duration::from_micros(10);

impl Sim {
    /// Adds a node of `service` on the multicast group, whose datagrams from the others arrive
    /// with `faults`, and opens its channel (secrets from a seeded generator, so runs repeat).
    pub(super) fn lan_node(&mut self, service: &str, faults: LanFaults) -> usize {
        self.lan_node_with(service, faults, Config::default())
    }

    /// [`Sim::lan_node`] with `config` (its `multicast` is set here).
    pub(super) fn lan_node_with(
        &mut self,
        service: &str,
        faults: LanFaults,
        config: Config,
    ) -> usize {
        self.lan_node_on(service, faults, config, GROUP)
    }

    /// [`Sim::lan_node_with`] on `group` (the others are on [`GROUP`]).
    pub(super) fn lan_node_on(
        &mut self,
        service: &str,
        faults: LanFaults,
        config: Config,
        group: &str,
    ) -> usize {
        let config = Config {
            multicast: Some(MulticastSetup {
                group: group.parse().expect("a group address"),
                channel: ChannelConfig {
                    paced: true,
                    coalesce: true,
                    ..ChannelConfig::default()
                },
            }),
            ..config
        };
        let node = self.node_with(service, config);
        self.lan.insert(node, faults);
        let channel = self.rng.random();
        let mut keys = SmallRng::seed_from_u64(self.rng.random());
        let now = self.now;
        self.nodes[node]
            .engine
            .open_channel(channel, Box::new(move || keys.random()), now);
        self.settle();
        node
    }

    /// A publisher `orders` and a subscriber `billing` of `order.*` on the group, connected
    /// and settled; datagrams reach `billing` with `faults`. Returns the publisher, the
    /// subscriber, and the subscriber's connection at the publisher.
    pub(super) fn lan_pair(&mut self, faults: LanFaults) -> (usize, usize, ConnId) {
        let publisher = self.lan_node("orders", clean());
        let billing = self.lan_node("billing", faults);
        let (at_publisher, _) = self.connect(publisher, billing);
        self.subscribe(billing, "order.*", Some("billing"), |_| Handled::ok());
        self.run_for(Duration::from_millis(5));
        (publisher, billing, at_publisher)
    }

    /// `node` hands a datagram to its group link, which sends it after those before it.
    pub(super) fn multicast(&mut self, node: usize, bytes: Bytes) {
        self.datagrams += 1;
        let free = self.link_free_at.get(&node).copied().unwrap_or(self.now);
        let sent = free.max(self.now) + LINK_SEND;
        self.link_free_at.insert(node, sent);
        self.schedule(sent, Event::LinkIdle { node });
        let others: Vec<usize> = self.lan.keys().copied().filter(|&n| n != node).collect();
        for to in others {
            let arrivals = self.lan[&to].arrivals(&mut self.rng, sent);
            for at in arrivals {
                let bytes = bytes.clone();
                self.schedule(at, Event::Datagram { to, bytes });
            }
        }
    }

    /// `node`'s link sent a datagram: if it was the last one handed to it, the engine hears
    /// the link is idle.
    pub(super) fn link_idle(&mut self, node: usize) {
        let now = self.now;
        let done = self.link_free_at.get(&node).is_none_or(|&at| at <= now);
        if done && self.nodes[node].alive {
            self.nodes[node].engine.multicast_link_idle(now);
        }
    }

    /// A datagram arrives at `to` (kept, when `to` crashed).
    pub(super) fn datagram_arrives(&mut self, to: usize, bytes: Bytes) {
        if self.nodes[to].alive {
            let now = self.now;
            self.nodes[to].engine.on_multicast_datagram(&bytes, now);
        } else {
            self.captured.push((to, bytes));
        }
    }
}

/// Faults of a clean switched LAN: 100 µs, nothing lost.
pub(super) fn clean() -> LanFaults {
    LanFaults::default()
}

/// Faults that lose `loss` of the datagrams and reorder by up to 300 µs.
pub(super) fn lossy(loss: f64) -> LanFaults {
    LanFaults {
        loss,
        duplicate: 0.01,
        jitter: Duration::from_micros(300),
        ..LanFaults::default()
    }
}
