//! Who a node lets stand for a node id, and whom it lets subscribe, when discovery announces
//! instances: a node id is only claimed by the peer (its hello, its announcement), the
//! service is certified. Events, replies and subscriptions follow the certified service.

#![cfg(test)]

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use shoal_proto::{Frame, Goodbye, NodeId, ReturnAddress, Subscription};

use super::multicast::clean;
use super::tests::{counting, with};
use super::{Faults, Sim};
use crate::engine::action::ConnId;
use crate::engine::{Admission, Discovered, PeerHello};
use crate::policy::Policy;
use crate::{NodeEvent, PublishOptions};

const SECOND: Duration = Duration::from_secs(1);

/// A policy under which `spy` may subscribe to `public.>` only.
fn spy_policy() -> Policy {
    Policy::builder()
        .subscribe("spy", ["public.>"])
        .build()
        .expect("policy")
}

/// `orders` (under [`spy_policy`]), `billing` and `spy`, both of the latter subscribed to
/// `order.*` in group `billing`, and how many events each handled.
struct Scene {
    sim: Sim,
    orders: usize,
    billing: usize,
    spy: usize,
    billed: Rc<Cell<u32>>,
    spied: Rc<Cell<u32>>,
}

fn scene(seed: u64) -> Scene {
    let mut sim = Sim::new(seed);
    let orders = sim.node_with("orders", with(&spy_policy()));
    let billing = sim.node("billing");
    let spy = sim.node("spy");
    let (billed, spied) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    sim.subscribe(billing, "order.*", Some("billing"), counting(&billed));
    sim.subscribe(spy, "order.*", Some("billing"), counting(&spied));
    Scene {
        sim,
        orders,
        billing,
        spy,
        billed,
        spied,
    }
}

/// `spy` (certified as `spy`) connects to `to` claiming the node id `claimed` in its hello;
/// `to` dialled nothing. Returns what `to` decided, and links the two when it admitted it.
fn impostor(sim: &mut Sim, to: usize, spy: usize, claimed: NodeId) -> Admission {
    let (to_id, now) = (sim.nodes[to].engine.id(), sim.now);
    let at = |n: usize| SocketAddr::from(([127, 0, 0, 1], 10_000 + n as u16));
    let (c_to, admission) = sim.nodes[to].engine.connection_up(
        PeerHello {
            node: claimed,
            service: "spy".into(),
            addr: at(spy),
            listen_addrs: Vec::new(),
            dialed: false,
            pinned: false,
        },
        now,
    );
    if admission != Admission::Refused {
        let service = sim.nodes[to].engine.service.clone();
        let (c_spy, _) = sim.nodes[spy].engine.connection_up(
            PeerHello {
                node: to_id,
                service,
                addr: at(to),
                listen_addrs: Vec::new(),
                dialed: true,
                pinned: true,
            },
            now,
        );
        sim.net.link(to, c_to, spy, c_spy, Faults::default());
    }
    sim.settle();
    admission
}

/// `node`'s connection standing for `peer`, if any.
fn conn_to(sim: &Sim, node: usize, peer: NodeId) -> Option<(ConnId, String)> {
    let peers = sim.nodes[node].engine.peers();
    peers
        .into_iter()
        .find(|p| p.node == peer)
        .map(|p| (p.conn, p.service))
}

#[test]
fn a_subscription_an_announcement_advertises_is_checked_against_the_policy() {
    let mut sim = Sim::new(104);
    let orders = sim.node_with("orders", with(&spy_policy()));
    let spy = sim.node("spy");
    let (secret, public) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    sim.subscribe(spy, "secret.>", Some("spy"), counting(&secret));
    sim.subscribe(spy, "public.>", Some("spy"), counting(&public));
    // A stock node's announcement advertises both subscriptions (and repeats itself).
    sim.announce(orders, spy, true);
    sim.announce(orders, spy, true);
    sim.run_for(SECOND);
    let event = sim.event("secret.plans", "x");
    let _ = sim.publish(orders, vec![event], &PublishOptions::default());
    sim.run_for(2 * SECOND);
    assert_eq!(secret.get(), 0, "spy received an event the policy forbids");
    assert!(sim.dials.is_empty(), "nobody to dial for `secret.plans`");
    assert!(
        sim.nodes[orders]
            .engine
            .subscribers("secret.plans", sim.now)
            .is_empty(),
        "no audience for what the policy refuses"
    );
    assert_eq!(
        sim.nodes[orders].engine.stats().unauthorized_subscriptions,
        1,
        "the advertised `secret.>` is refused and counted, once, not with every announcement"
    );

    // What the policy allows still goes, connecting on first use.
    let event = sim.event("public.news", "y");
    let _ = sim.publish(orders, vec![event], &PublishOptions::default());
    sim.run_for(2 * SECOND);
    assert_eq!((secret.get(), public.get()), (0, 1));
}

#[test]
fn an_announcement_naming_another_service_than_the_certificate_counts_for_nothing() {
    let Scene {
        mut sim,
        orders,
        billing,
        spy,
        billed,
        spied,
    } = scene(106);
    // Spy is connected: its `Subscribe` is refused over the connection...
    sim.connect(orders, spy);
    sim.run_for(SECOND);
    assert_eq!(
        sim.nodes[orders].engine.stats().unauthorized_subscriptions,
        1
    );
    // ... so it announces its node id as an instance of `billing`, which may subscribe.
    let lie = Discovered {
        service: "billing".into(),
        addrs: vec![SocketAddr::from(([127, 0, 0, 1], 10_000 + spy as u16))],
        source: shoal_discovery::Source::Mdns,
        subscriptions: Some(vec![Subscription {
            pattern: "order.*".into(),
            group: Some("billing".into()),
        }]),
        multicast: None,
    };
    let (spy_id, now) = (sim.nodes[spy].engine.id(), sim.now);
    sim.nodes[orders].engine.discovered(spy_id, lie, now);
    sim.settle();
    sim.announce(orders, billing, true);
    sim.run_for(SECOND);
    for n in 0..3 {
        let event = sim.event("order.created", format!("o{n}"));
        let _ = sim.publish(orders, vec![event], &PublishOptions::default());
    }
    sim.run_for(3 * SECOND);
    assert_eq!(spied.get(), 0, "billing's events went to spy");
    assert_eq!(billed.get(), 3, "the real billing instance got them all");
}

/// Publishes `count` `order.created` events from `from`.
fn publish_orders(sim: &mut Sim, from: usize, count: usize) {
    for n in 0..count {
        let event = sim.event("order.created", format!("o{n}"));
        let _ = sim.publish(from, vec![event], &PublishOptions::default());
    }
}

#[test]
fn a_node_id_impostor_is_refused_once_a_connection_confirmed_the_announcement() {
    let Scene {
        mut sim,
        orders,
        billing,
        spy,
        billed,
        spied,
    } = scene(105);
    // Billing is announced, and connected on first use: its certificate confirms the
    // announcement.
    sim.announce(orders, billing, true);
    sim.run_for(SECOND);
    publish_orders(&mut sim, orders, 1);
    sim.run_for(SECOND);
    assert_eq!(billed.get(), 1);
    let billing_id = sim.nodes[billing].engine.id();
    // Its connection goes (closed for being idle, a network blip); it is still announced.
    sim.partition(orders, billing, Duration::ZERO);
    sim.run_for(SECOND);
    assert!(conn_to(&sim, orders, billing_id).is_none());
    // A mesh member certified as `spy` claims billing's node id.
    let admission = impostor(&mut sim, orders, spy, billing_id);
    assert_eq!(admission, Admission::Refused, "the impostor is refused");
    publish_orders(&mut sim, orders, 3);
    sim.run_for(3 * SECOND);
    assert_eq!(spied.get(), 0, "billing's events went to spy");
    // The real instance was dialled again, admitted, and got every event.
    assert_eq!(billed.get(), 4);
    let (_, service) = conn_to(&sim, orders, billing_id).expect("billing connected");
    assert_eq!(service, "billing");
}

/// Before any connection confirmed an announcement, nothing says whose id it is: a peer of
/// another service claiming it is admitted, but takes none of the instance's events (the
/// instance is kept out while the impostor holds its id; README, Security).
#[test]
fn an_impostor_of_an_instance_never_connected_takes_none_of_its_events() {
    let mut sim = Sim::new(106);
    let orders = sim.node_with("orders", with(&spy_policy()));
    let billing = sim.node("billing");
    let spy = sim.node("spy");
    let spied = Rc::new(Cell::new(0));
    sim.subscribe(billing, "order.*", Some("billing"), |_| {
        super::Handled::ok()
    });
    sim.subscribe(spy, "order.*", Some("billing"), counting(&spied));
    sim.announce(orders, billing, true);
    sim.run_for(SECOND);
    let billing_id = sim.nodes[billing].engine.id();
    let admission = impostor(&mut sim, orders, spy, billing_id);
    assert!(matches!(admission, Admission::Admitted { .. }));
    publish_orders(&mut sim, orders, 3);
    sim.run_for(3 * SECOND);
    assert_eq!(spied.get(), 0, "billing's events went to spy");
}

/// An announcement is not certified (anyone on the link can send one): one naming another
/// service for an instance's id does not keep the instance's certified connection out.
#[test]
fn a_spoofed_announcement_does_not_keep_the_certified_instance_out() {
    let mut sim = Sim::new(112);
    let orders = sim.node("orders");
    let billing = sim.node("billing");
    let billing_id = sim.nodes[billing].engine.id();
    let now = sim.now;
    sim.nodes[orders].engine.discovered(
        billing_id,
        Discovered {
            service: "spy".into(),
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 40_000))],
            source: shoal_discovery::Source::Mdns,
            subscriptions: None,
            multicast: None,
        },
        now,
    );
    sim.settle();
    let linked = sim.connect_with(billing, orders, Faults::default());
    assert!(
        linked.is_some(),
        "billing's certified connection was refused"
    );
}

#[test]
fn an_impostor_neither_displaces_a_leaving_connection_nor_inherits_its_subscriptions() {
    let Scene {
        mut sim,
        orders,
        billing,
        spy,
        spied,
        ..
    } = scene(107);
    // A static peer, not announced: only its connection says who it is.
    sim.connect(orders, billing);
    sim.run_for(SECOND);
    let billing_id = sim.nodes[billing].engine.id();
    let (conn, _) = conn_to(&sim, orders, billing_id).expect("billing connected");
    // Billing says goodbye: its connection is leaving.
    let now = sim.now;
    let goodbye = Frame::Goodbye(Goodbye {
        reason: "shutdown".into(),
    });
    sim.nodes[orders].engine.handle_frame(conn, goodbye, now);
    sim.settle();
    let admission = impostor(&mut sim, orders, spy, billing_id);
    sim.run_for(SECOND);
    let event = sim.event("order.created", "o1");
    let _ = sim.publish(orders, vec![event], &PublishOptions::default());
    sim.run_for(2 * SECOND);
    assert_eq!(spied.get(), 0, "billing's events went to spy");
    assert_eq!(admission, Admission::Refused);
}

#[test]
fn a_reply_for_an_instance_goes_to_no_other_service_claiming_its_id() {
    let mut sim = Sim::new(108);
    let orders = sim.node("orders");
    let billing = sim.node("billing");
    let spy = sim.node("spy");
    let (billed, spied) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    sim.handle(billing, "charged", counting(&billed));
    sim.handle(spy, "charged", counting(&spied));
    sim.connect(orders, billing);
    // An instance of billing that orders never heard of asked for an asynchronous reply; a
    // spy claims its node id before it connects.
    let absent = NodeId::from_u128(0x5eed);
    let admission = impostor(&mut sim, orders, spy, absent);
    assert!(matches!(admission, Admission::Admitted { .. }));
    sim.run_for(SECOND);
    let addr = ReturnAddress {
        service: "billing".into(),
        node: Some(absent),
        channel: "charged".into(),
    };
    let reply = sim.message(shoal_proto::MessageKind::Reply, "charged", "ok");
    let now = sim.now;
    sim.nodes[orders]
        .engine
        .send_reply(&addr, reply, now)
        .expect("reply");
    sim.settle();
    sim.run_for(2 * SECOND);
    assert_eq!(spied.get(), 0, "the reply for billing went to spy");
    assert_eq!(billed.get(), 1, "another billing instance took it");
}

#[test]
fn a_synchronous_reply_goes_to_no_other_service_claiming_the_requesters_id() {
    let mut sim = Sim::new(109);
    let orders = sim.node("orders");
    let billing = sim.node("billing");
    let spy = sim.node("spy");
    // Billing's request came on `asked`; its connection is gone by the time the handler
    // replies, and a spy claims billing's node id meanwhile.
    let (_, asked) = sim.connect(billing, orders);
    let billing_id = sim.nodes[billing].engine.id();
    sim.crash(billing, Duration::ZERO);
    sim.run_for(SECOND);
    assert!(conn_to(&sim, orders, billing_id).is_none());
    let admission = impostor(&mut sim, orders, spy, billing_id);
    assert!(matches!(admission, Admission::Admitted { .. }));
    let (spy_conn, _) = conn_to(&sim, orders, billing_id).expect("the spy stands for the id");
    let addr = ReturnAddress {
        service: "billing".into(),
        node: Some(billing_id),
        channel: "".into(),
    };
    let target = sim.nodes[orders].engine.reply_conn(asked, &addr);
    assert_ne!(target, spy_conn, "billing's reply would go to spy");
}

#[test]
fn a_delivery_resumed_after_a_duplicate_goes_to_no_other_service_claiming_the_id() {
    let mut sim = Sim::new(110);
    let orders = sim.node("orders");
    let billing = sim.node("billing");
    let spy = sim.node("spy");
    let spied = Rc::new(Cell::new(0));
    sim.handle(billing, "charge", |_| super::Handled::ok_after(10 * SECOND));
    sim.handle(spy, "charge", counting(&spied));
    sim.connect(orders, billing);
    let msg = sim.command("charge", "1");
    sim.send(orders, "billing", msg);
    sim.run_for(Duration::from_millis(5));
    // The connection loses a duplicate race: the command waits for the winner...
    sim.lose_as_duplicate(orders, billing);
    // ... and a spy claims billing's node id first.
    let billing_id = sim.nodes[billing].engine.id();
    let admission = impostor(&mut sim, orders, spy, billing_id);
    assert!(matches!(admission, Admission::Admitted { .. }));
    sim.run_for(2 * SECOND);
    assert_eq!(spied.get(), 0, "billing's command went to spy");
}

/// A channel member's copy that goes by unicast after all (not reported in time, the member
/// moved to unicast, its handler failed) goes only to a connection that may take it: here
/// the member's connection lost a duplicate race (it stays a member, its reports gone with
/// the connection) and a spy claimed its node id before the winner came. The spy subscribes
/// to nothing (a subscription the policy refused would take the member off the channel), so
/// any message reaching it is one of billing's events.
#[test]
fn a_channel_copy_sent_again_by_unicast_goes_to_no_other_service_claiming_the_members_id() {
    let mut sim = Sim::new(111);
    let orders = sim.lan_node_with("orders", clean(), with(&spy_policy()));
    let billing = sim.lan_node("billing", clean());
    let spy = sim.node("spy");
    // Billing's handler is slow: its copies wait for its report when its connection goes.
    sim.subscribe(billing, "order.*", Some("billing"), |_| {
        super::Handled::ok_after(10 * SECOND)
    });
    sim.connect(orders, billing);
    sim.run_for(Duration::from_millis(5));
    let billing_id = sim.nodes[billing].engine.id();
    publish_orders(&mut sim, orders, 3);
    sim.run_for(Duration::from_millis(5));
    assert_eq!(
        sim.nodes[orders].engine.channel_stats().events,
        3,
        "the events went on the channel"
    );
    sim.lose_as_duplicate(orders, billing);
    let admission = impostor(&mut sim, orders, spy, billing_id);
    assert!(matches!(admission, Admission::Admitted { .. }));
    // Past the copies' ack timeout (5 s) and the member's demotion for falling silent.
    sim.run_for(10 * SECOND);
    let spy_stats = sim.nodes[spy].engine.stats();
    assert_eq!(spy_stats.unhandled, 0, "billing's events went to spy");
    // Fallen silent, the member was moved to unicast, with no connection of its own to go
    // on: it left, rather than being said to be on unicast as a `spy`.
    let as_spy = sim.nodes[orders]
        .events
        .iter()
        .any(|e| matches!(e, NodeEvent::MulticastFallback { service, .. } if service == "spy"));
    assert!(!as_spy, "billing was said to be on unicast as spy");
}

/// Orders and billing on the multicast group, billing a member of orders' channel whose
/// connection then lost a duplicate race (it stays a member), and `spy` (a node of the
/// group `spy_group`, `None` for orders' own) admitted under billing's node id meanwhile.
/// Returns the sim, orders, spy, and a second member, `billing2`.
fn member_impostor(seed: u64, spy_group: Option<&str>) -> (Sim, usize, usize, usize) {
    let mut sim = Sim::new(seed);
    let orders = sim.lan_node("orders", clean());
    let billing = sim.lan_node("billing", clean());
    let billing2 = sim.lan_node("billing", clean());
    let spy = match spy_group {
        Some(group) => sim.lan_node_on("spy", clean(), Default::default(), group),
        None => sim.lan_node("spy", clean()),
    };
    for b in [billing, billing2] {
        sim.subscribe(b, "order.*", Some("billing"), |_| super::Handled::ok());
        sim.connect(orders, b);
    }
    sim.run_for(Duration::from_millis(5));
    let billing_id = sim.nodes[billing].engine.id();
    sim.lose_as_duplicate(orders, billing);
    let admission = impostor(&mut sim, orders, spy, billing_id);
    assert!(matches!(admission, Admission::Admitted { .. }));
    sim.run_for(Duration::from_millis(5));
    (sim, orders, spy, billing2)
}

/// The keys of channels `node` holds.
fn channel_keys(sim: &Sim, node: usize) -> usize {
    sim.nodes[node]
        .engine
        .channels
        .as_deref()
        .map_or(0, |c| c.inbound.len())
}

/// A hello on the group from a connection of another service claiming a member's node id is
/// not the member's: it is handed no key (the member's would let it read the channel, whose
/// events the policy may keep from its service).
#[test]
fn a_connection_claiming_a_members_id_is_handed_no_channel_key() {
    let (sim, _, spy, _) = member_impostor(113, None);
    assert_eq!(channel_keys(&sim, spy), 0, "spy holds orders' channel key");
}

/// When the channel changes its key (a member left), the new key goes to each remaining
/// member over a connection of its own service only.
#[test]
fn a_new_channel_key_goes_to_no_other_service_claiming_a_members_id() {
    // The spy is on another group: it says no hello to orders' channel.
    let (mut sim, orders, spy, billing2) = member_impostor(114, Some("239.255.0.9:7400"));
    let rekeys = sim.nodes[orders].engine.channel_stats().rekeys;
    sim.crash(billing2, Duration::ZERO);
    sim.run_for(SECOND);
    publish_orders(&mut sim, orders, 1);
    sim.run_for(SECOND);
    assert!(
        sim.nodes[orders].engine.channel_stats().rekeys > rekeys,
        "the channel changed its key"
    );
    assert_eq!(channel_keys(&sim, spy), 0, "spy holds orders' channel key");
}
