//! Dialling: following discovery, keeping static peers dialled, and connecting on demand.
//!
//! Discovery hints take one of two paths:
//!
//! - **Announced instances whose subscriptions are known** (an mDNS or DNS-SD announcement
//!   that advertises them) go to the engine's directory only. Nothing is dialled: the engine
//!   asks for a connection when a delivery needs one ([`Action::Connect`]), and
//!   [`connect_on_demand`] dials it.
//! - **Everything else** is dialled at once and kept dialled ([`keep_dialled`]): static peer
//!   addresses (whose node and service are unknown until a handshake), and announced instances
//!   that do not advertise their subscriptions (a publisher can learn those only over a
//!   connection). These connections are *pinned*: never closed for being idle. With
//!   [`crate::NodeBuilder::connect_on_discovery`] every announced instance takes this path.
//!
//! [`Action::Connect`]: crate::engine::Action::Connect

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_discovery::{DiscoveryEvent, PeerHint};
use shoal_proto::NodeId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dial_plan::{Announcements, DialPlan, Listing};
use super::endpoint::connect;
use super::handshake::HandshakeError;
use crate::engine::Discovered;
use crate::runtime::Driver;
use crate::sync::lock;

/// Rounds of dialling an instance's addresses on demand before giving up (the engine asks
/// again while deliveries still wait for it).
const ON_DEMAND_ROUNDS: u32 = 3;

/// The dialling state the driver keeps: the instances being dialled on demand.
#[derive(Debug, Default)]
pub(crate) struct Dials {
    in_progress: Mutex<HashSet<NodeId>>,
}

/// Turns discovery hints into directory entries (connected on first use) or kept dials. See
/// the module docs.
pub(crate) async fn follow_discovery(
    driver: Arc<Driver>,
    mut events: mpsc::UnboundedReceiver<DiscoveryEvent>,
) {
    let mut plan = DialPlan::default();
    let mut announced = Announcements::default();
    let mut diallers: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    let local = driver.endpoint.local_addr().ok();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = driver.stopping.cancelled() => return,
        };
        let Some(event) = event else { return };
        let (hint, up) = match &event {
            DiscoveryEvent::Up(hint) | DiscoveryEvent::Updated(hint) => (hint, true),
            DiscoveryEvent::Down(hint) => (hint, false),
            _ => continue,
        };
        if hint.node_id == Some(driver.id) {
            continue;
        }
        // Announced instances enter the directory (they are listed, and connected to on first
        // use when their subscriptions are known).
        if let (Some(node), Some(service)) = (hint.node_id, &hint.service) {
            // An instance stays listed while any source announces it.
            let listing = if up {
                announced.up(
                    node,
                    Discovered {
                        service: service.clone(),
                        addrs: hint.addrs.clone(),
                        source: hint.source,
                        subscriptions: hint.subscriptions.clone(),
                        multicast: hint.multicast,
                    },
                )
            } else {
                announced.down(node, hint.source)
            };
            match listing {
                Listing::Discovered(known) => {
                    driver.call(|engine, now| engine.discovered(node, known, now));
                }
                Listing::Undiscovered => {
                    driver.call(|engine, now| engine.undiscovered(node, now));
                }
            }
        }
        let usable = |addr: SocketAddr| match local.and_then(|local| unreachable_from(local, addr))
        {
            Some(reason) => {
                driver.dial_failures.record(addr, &reason);
                false
            }
            None => true,
        };
        // A lazy hint takes back whatever an earlier eager one of the same instance started.
        let event = if up && !dialled_at_once(hint, driver.config.connect_on_discovery) {
            DiscoveryEvent::Down(hint.clone())
        } else {
            event
        };
        let changes = plan.apply(event, usable);
        for addr in changes.stop {
            if let Some(token) = diallers.remove(&addr) {
                token.cancel();
            }
        }
        for addr in changes.start {
            let token = driver.stopping.child_token();
            diallers.insert(addr, token.clone());
            let driver2 = Arc::clone(&driver);
            driver
                .tasks
                .spawn(async move { keep_dialled(driver2, addr, token).await });
        }
    }
}

/// Whether `hint` is dialled at once and kept (see the module docs).
fn dialled_at_once(hint: &PeerHint, connect_on_discovery: bool) -> bool {
    connect_on_discovery || hint.node_id.is_none() || hint.subscriptions.is_none()
}

/// Why a socket bound to `local` cannot send to `remote`, if it cannot: a loopback-bound node
/// cannot reach a LAN address, and an IPv4 socket cannot reach IPv6 (the kernel refuses).
pub(super) fn unreachable_from(local: SocketAddr, remote: SocketAddr) -> Option<String> {
    let dual_stack = local.ip().is_unspecified() && local.is_ipv6();
    if local.is_ipv4() != remote.is_ipv4() && !dual_stack {
        return Some(format!(
            "{remote} is not reachable from this node's socket {local} (other address family)"
        ));
    }
    if local.ip().is_loopback() && !remote.ip().is_loopback() {
        return Some(format!(
            "{remote} is not reachable from this node's loopback socket {local}: listen on a LAN address or 0.0.0.0"
        ));
    }
    None
}

/// Keeps a connection to whoever listens on `addr`: dials, waits while connected, and redials
/// with backoff (100 ms doubling to 2 s) after a failure, until `stop` (the node stops, or no
/// hint names the address any more). Stopping does not close a live connection. The
/// connection is pinned: never closed for being idle.
async fn keep_dialled(driver: Arc<Driver>, addr: SocketAddr, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut known: Option<NodeId> = None;
    let mut changes = driver.peer_changes();
    while !stop.is_cancelled() {
        let connected = known
            .filter(|n| driver.is_connected(*n))
            .or_else(|| driver.listening_on(addr));
        if let Some(node) = connected {
            known = Some(node);
            tokio::select! {
                _ = changes.changed() => continue,
                () = stop.cancelled() => return,
            }
        }
        let connected = tokio::select! {
            connected = connect(&driver, addr, true) => connected,
            () = stop.cancelled() => return,
        };
        match connected {
            Ok(node) => {
                known = Some(node);
                backoff = Duration::from_millis(100);
            }
            // A peer list naming this node.
            Err(HandshakeError::SelfConnection) => return,
            Err(reason) => {
                tracing::debug!(%addr, %reason, "dial failed; retrying in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Connects to the announced instance `node` at one of `addrs`, because the engine asked
/// ([`crate::engine::Action::Connect`]): tries each address in turn, a few rounds with a short
/// backoff between them ([`in_rounds`]), and gives up quietly after the last (the failures
/// are in [`crate::Node::diagnose`]; the engine asks again while a delivery still waits, after
/// 1 s, then backing off to once in 8 s while its asks bring no connection). One dial per
/// instance at a time: an ask that comes while one is under way is dropped.
pub(crate) fn connect_on_demand(driver: &Arc<Driver>, node: NodeId, addrs: Vec<SocketAddr>) {
    if driver.is_stopping() || !lock(&driver.dials.in_progress).insert(node) {
        return;
    }
    let local = driver.endpoint.local_addr().ok();
    let usable: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match local.and_then(|l| unreachable_from(l, *a)) {
            Some(reason) => {
                driver.dial_failures.record(*a, &reason);
                false
            }
            None => true,
        })
        .collect();
    let driver2 = Arc::clone(driver);
    driver.tasks.spawn(async move {
        let (driver3, addrs) = (&driver2, usable.as_slice());
        let dial = in_rounds(move || dial_round(driver3, node, addrs));
        tokio::select! {
            () = dial => {}
            () = driver2.stopping.cancelled() => {}
        }
        lock(&driver2.dials.in_progress).remove(&node);
    });
}

/// How a round of dialling an instance's addresses ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    /// Connected, or nothing more to dial (a connection stands, the address is this node's).
    Done,
    /// No address answered with the instance.
    Failed,
}

/// One round of dialling `node` at each of `addrs` in turn.
async fn dial_round(driver: &Arc<Driver>, node: NodeId, addrs: &[SocketAddr]) -> Round {
    for addr in addrs {
        // A connection saying goodbye (closing for being idle) takes no new message: the
        // delivery that asked needs another.
        if driver.takes_messages_to(node) {
            return Round::Done;
        }
        match connect(driver, *addr, false).await {
            Ok(found) if found == node => return Round::Done,
            Ok(other) => {
                tracing::debug!(%addr, %node, %other, "another node answers at the announced address");
            }
            Err(HandshakeError::SelfConnection) => return Round::Done,
            Err(reason) => tracing::debug!(%addr, %node, %reason, "dial on demand failed"),
        }
    }
    Round::Failed
}

/// Runs `round` up to [`ON_DEMAND_ROUNDS`] times while it fails, with a backoff between two
/// rounds (100 ms, doubling) and none after the last: the dial ends, and leaves
/// [`Dials::in_progress`], as soon as its last round failed, so an ask that comes next is
/// dialled rather than dropped (the next one may be 8 s later).
async fn in_rounds<F, Fut>(mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Round>,
{
    let mut backoff = Duration::from_millis(100);
    for n in 0..ON_DEMAND_ROUNDS {
        if n > 0 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        if round().await == Round::Done {
            return;
        }
    }
}

impl Driver {
    /// Whether a live connection stands for `node`.
    pub(crate) fn is_connected(&self, node: NodeId) -> bool {
        self.read(|engine| engine.peers().iter().any(|p| p.node == node))
    }

    /// Whether a connection that takes new messages stands for `node` (not one saying
    /// goodbye).
    pub(crate) fn takes_messages_to(&self, node: NodeId) -> bool {
        self.read(|engine| engine.takes_messages_to(node))
    }

    /// The node listening on `addr` among the live peers (a static address needs no dialling).
    pub(crate) fn listening_on(&self, addr: SocketAddr) -> Option<NodeId> {
        self.read(|engine| {
            engine
                .peers()
                .into_iter()
                .find(|p| listens_at(p.addr, &p.listen_addrs, addr))
                .map(|p| p.node)
        })
    }
}

/// Whether the peer seen at `seen` (its connection's remote address), which says it listens on
/// `listen_addrs`, is the one listening on `addr`. A peer bound to 0.0.0.0:P (or [::]:P) listens
/// on every one of *its* addresses at P, not on every address at P: it counts only when its
/// connection comes from `addr`'s IP. Otherwise a peer listening on 0.0.0.0:7000 would stand
/// for every other peer at port 7000, and those would never be dialled.
fn listens_at(seen: SocketAddr, listen_addrs: &[SocketAddr], addr: SocketAddr) -> bool {
    let same_ip = unmapped(seen.ip()) == unmapped(addr.ip());
    (same_ip && seen.port() == addr.port())
        || listen_addrs.iter().any(|l| {
            (unmapped(l.ip()) == unmapped(addr.ip()) && l.port() == addr.port())
                || (l.ip().is_unspecified() && l.port() == addr.port() && same_ip)
        })
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket sees an IPv4
/// peer) written as the IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use shoal_discovery::Source;

    use std::time::Duration;

    use super::{
        ON_DEMAND_ROUNDS, Round, dialled_at_once, in_rounds, listens_at, unreachable_from,
    };

    /// A dial whose rounds all fail ends when its last round does: no backoff after it, during
    /// which the instance would still count as being dialled and an ask would be dropped.
    #[tokio::test(start_paused = true)]
    async fn a_dial_on_demand_ends_with_its_last_round() {
        let start = tokio::time::Instant::now();
        let mut rounds = Vec::new();
        in_rounds(|| {
            rounds.push(start.elapsed());
            async { Round::Failed }
        })
        .await;
        let ms = Duration::from_millis;
        assert_eq!(
            rounds,
            [ms(0), ms(100), ms(300)],
            "100 ms, then 200 ms between rounds"
        );
        assert_eq!(rounds.len(), ON_DEMAND_ROUNDS as usize);
        assert_eq!(start.elapsed(), ms(300), "no pause after the last round");

        // A round that connects ends the dial at once.
        let mut calls = 0;
        in_rounds(|| {
            calls += 1;
            async { Round::Done }
        })
        .await;
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_socket_only_dials_what_it_can_reach() {
        let p = |s: &str| s.parse().expect("address");
        assert!(unreachable_from(p("127.0.0.1:1"), p("127.0.0.1:2")).is_none());
        assert!(unreachable_from(p("0.0.0.0:1"), p("10.99.0.2:7000")).is_none());
        assert!(unreachable_from(p("10.99.0.1:1"), p("10.99.0.2:7000")).is_none());
        assert!(unreachable_from(p("[::]:1"), p("10.99.0.2:7000")).is_none());
        let loopback = unreachable_from(p("127.0.0.1:1"), p("10.99.0.2:7000"));
        assert!(loopback.is_some_and(|r| r.contains("loopback")));
        assert!(unreachable_from(p("0.0.0.0:1"), p("[fe80::1]:7000")).is_some());
    }

    #[test]
    fn a_peer_on_an_unspecified_address_listens_only_on_its_own_addresses() {
        let p = |s: &str| -> std::net::SocketAddr { s.parse().expect("address") };
        // B listens on [::]:7000 and is connected from [::1]:7000; C is at 127.0.0.2:7000.
        let b_seen = p("[::1]:7000");
        let b_listens = [p("[::]:7000")];
        assert!(listens_at(b_seen, &b_listens, p("[::1]:7000")));
        assert!(
            !listens_at(b_seen, &b_listens, p("127.0.0.2:7000")),
            "another peer at the same port"
        );
        // The same on IPv4, and as a dual-stack socket sees an IPv4 peer.
        let b4_listens = [p("0.0.0.0:7000")];
        assert!(listens_at(
            p("10.99.0.2:7000"),
            &b4_listens,
            p("10.99.0.2:7000")
        ));
        assert!(!listens_at(
            p("10.99.0.2:7000"),
            &b4_listens,
            p("10.99.0.3:7000")
        ));
        assert!(listens_at(
            p("[::ffff:10.99.0.2]:7000"),
            &b4_listens,
            p("10.99.0.2:7000")
        ));
        assert!(!listens_at(
            p("[::ffff:10.99.0.2]:7000"),
            &b4_listens,
            p("10.99.0.3:7000")
        ));
        // A peer that dialled from another port still listens where it says it does.
        assert!(listens_at(
            p("10.99.0.2:40000"),
            &b4_listens,
            p("10.99.0.2:7000")
        ));
        assert!(listens_at(
            p("10.99.0.2:40000"),
            &[p("10.99.0.2:7000")],
            p("10.99.0.2:7000")
        ));
        assert!(!listens_at(
            p("10.99.0.2:40000"),
            &b4_listens,
            p("10.99.0.2:7001")
        ));
    }

    #[test]
    fn only_instances_that_advertise_their_subscriptions_wait_for_first_use() {
        let hint = |node: Option<u128>, subs: Option<Vec<shoal_proto::Subscription>>| {
            shoal_discovery::PeerHint {
                node_id: node.map(shoal_proto::NodeId::from_u128),
                service: node.map(|_| "billing".to_owned()),
                addrs: vec!["10.99.0.2:7000".parse().expect("address")],
                source: Source::Mdns,
                subscriptions: subs,
                multicast: None,
            }
        };
        assert!(
            dialled_at_once(&hint(None, None), false),
            "a static address"
        );
        assert!(
            dialled_at_once(&hint(Some(1), None), false),
            "subscriptions unknown"
        );
        assert!(!dialled_at_once(&hint(Some(1), Some(vec![])), false));
        assert!(
            dialled_at_once(&hint(Some(1), Some(vec![])), true),
            "asked for"
        );
    }
}
