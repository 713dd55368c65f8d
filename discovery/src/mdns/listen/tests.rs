use std::net::Ipv6Addr;

use hickory_resolver::proto::op::{MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};
use hickory_resolver::proto::rr::{RData, Record};
use shoal_proto::NodeId;

use super::table::MAX_TTL;
use super::*;
use crate::event::DiscoveryEvent;
use crate::mdns::link::Subnet;
use crate::mdns::record::{ReceivedAddr, SERVICE_TYPE};
use crate::mdns::state::MAX_TRACKED_INSTANCES;
use crate::mdns::test_support::{PEER, instance, name, peer_records, state};

/// What mdns-sd multicasts for an instance: PTR, SRV, TXT and addresses, all answers, all
/// with `ttl` (0: a goodbye).
fn announcement(ttl: u32, v6: Option<Ipv6Addr>) -> Vec<u8> {
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    for record in peer_records(ttl, true, v6) {
        message.add_answer(record);
    }
    message.to_vec().expect("encode")
}

fn listener() -> (
    Listener,
    tokio::sync::mpsc::UnboundedReceiver<DiscoveryEvent>,
) {
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = Listener {
        events,
        state: state(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    (listener, rx)
}

/// An ear on a loopback socket: `on_datagram` only reads its name, index and link. Its
/// interface, `lan0`, has the subnets 10.99.0.0/24 and fd00::/64.
fn ear() -> Ear {
    ear_on(&[("10.99.0.7", 24), ("fd00::7", 64)])
}

/// An ear on `lan0` whose interface has the subnets `subnets` (address, prefix length).
fn ear_on(subnets: &[(&str, u8)]) -> Ear {
    let subnets = subnets
        .iter()
        .map(|(ip, prefix)| Subnet::new(ip.parse().expect("ip"), *prefix))
        .collect();
    Ear {
        interface: "lan0".into(),
        index: 7,
        v6: false,
        socket: UdpSocket::bind("127.0.0.1:0").expect("socket"),
        link: Arc::new(Mutex::new(Arc::new(Link::new(subnets)))),
    }
}

#[test]
fn an_announcement_brings_the_instance_up_until_it_expires() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let now = Instant::now();
    listener.on_datagram(&announcement(120, None), &ear(), &mut table, now);
    let Ok(DiscoveryEvent::Up(hint)) = rx.try_recv() else {
        panic!("no Up");
    };
    assert_eq!(hint.node_id, Some(NodeId::from_u128(PEER)));
    assert_eq!(hint.addrs, vec!["10.99.0.1:7000".parse().expect("addr")]);
    let seen = lock(&listener.state).peers();
    assert_eq!(seen[0].via, vec!["lan0".to_owned()]);

    // Announced again before it expires: no event, and the expiry moves on.
    let later = now + Duration::from_secs(100);
    listener.on_datagram(&announcement(120, None), &ear(), &mut table, later);
    assert!(rx.try_recv().is_err());
    assert!(
        table
            .take_expired(now + Duration::from_secs(121))
            .is_empty()
    );
    let gone = table.take_expired(later + Duration::from_secs(120));
    assert_eq!(gone, vec![instance().to_ascii_lowercase()]);
}

#[test]
fn a_goodbye_brings_it_down() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let now = Instant::now();
    listener.on_datagram(&announcement(120, None), &ear(), &mut table, now);
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Up(_))));
    listener.on_datagram(&announcement(0, None), &ear(), &mut table, now);
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Down(_))));
    assert!(
        rx.try_recv().is_err(),
        "the goodbye is not also an announcement"
    );
    assert!(lock(&listener.state).peers().is_empty());
    assert!(
        table
            .take_expired(now + Duration::from_secs(200))
            .is_empty()
    );
}

#[test]
fn link_local_addresses_take_the_interface_as_scope() {
    let (listener, mut rx) = listener();
    let v6: Ipv6Addr = "fe80::1".parse().expect("ip");
    listener.on_datagram(
        &announcement(120, Some(v6)),
        &ear(),
        &mut Table::default(),
        Instant::now(),
    );
    let Ok(DiscoveryEvent::Up(hint)) = rx.try_recv() else {
        panic!("no Up");
    };
    let scoped = hint.addrs.iter().find_map(|a| match a {
        SocketAddr::V6(v6) => Some(v6.scope_id()),
        SocketAddr::V4(_) => None,
    });
    assert_eq!(scoped, Some(7), "{hint:?}");
}

#[test]
fn queries_and_garbage_are_ignored_without_panicking() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let now = Instant::now();
    let mut query = Message::new(0, MessageType::Query, OpCode::Query);
    query.add_answer(Record::from_rdata(
        name(SERVICE_TYPE),
        120,
        RData::PTR(PTR(name(&instance()))),
    ));
    listener.on_datagram(&query.to_vec().expect("encode"), &ear(), &mut table, now);
    listener.on_datagram(&[0xff; 40], &ear(), &mut table, now);
    let wire = announcement(120, None);
    for len in 0..wire.len() {
        listener.on_datagram(&wire[..len], &ear(), &mut table, now);
    }
    // A truncated announcement may still carry the whole instance; nothing else comes out.
    while let Ok(event) = rx.try_recv() {
        assert!(matches!(event, DiscoveryEvent::Up(_)), "{event:?}");
    }
}

/// Fingerprints are keyed per table: what collides in one table does not in another, so a
/// collision cannot be worked out ahead of time by someone on the link.
#[test]
fn fingerprints_are_keyed_per_table() {
    let wire = announcement(120, None);
    let link = Link::new(Vec::new());
    let (one, other) = (Table::default(), Table::default());
    assert_eq!(
        one.fingerprint(&wire, 7, &link),
        one.fingerprint(&wire, 7, &link)
    );
    assert_ne!(
        one.fingerprint(&wire, 7, &link),
        one.fingerprint(&wire, 8, &link)
    );
    assert_ne!(
        one.fingerprint(&wire, 7, &link),
        other.fingerprint(&wire, 7, &link)
    );
}

#[test]
fn the_srv_ttl_sets_the_expiry() {
    let message = Message::from_vec(&announcement(75, None)).expect("decode");
    let heard = said(&message);
    assert!(heard.goodbyes.is_empty());
    assert_eq!(
        heard.ttls.get(&instance().to_ascii_lowercase()),
        Some(&Duration::from_secs(75))
    );
    let goodbye = Message::from_vec(&announcement(0, None)).expect("decode");
    assert_eq!(
        said(&goodbye).goodbyes,
        vec![instance().to_ascii_lowercase()]
    );
}

#[test]
fn each_interface_and_family_keeps_its_addresses_until_their_ttl() {
    let mut table = Table::default();
    let now = Instant::now();
    let addr = |ip: &str, scope_id| ReceivedAddr {
        ip: ip.parse().expect("ip"),
        scope_id,
    };
    let (v4, v6, lo) = (
        addr("10.99.0.1", 0),
        addr("fe80::1", 7),
        addr("127.0.0.1", 0),
    );
    let heard = |table: &mut Table, interface: &str, addrs: Vec<ReceivedAddr>, at: Instant| {
        let mut announcement = Announcement {
            fullname: instance(),
            addrs,
            via: vec![interface.to_owned()],
            ..Announcement::default()
        };
        table.heard(&mut announcement, at + Duration::from_secs(120), at);
        (announcement.addrs, announcement.via)
    };
    // The IPv4 group of lan0, then its IPv6 group 10 s later: both families are reported.
    assert_eq!(
        heard(&mut table, "lan0", vec![v4.clone()], now).0,
        vec![v4.clone()]
    );
    let later = now + Duration::from_secs(10);
    let both = heard(&mut table, "lan0", vec![v6.clone()], later);
    assert_eq!(both.0, vec![v4.clone(), v6.clone()]);
    // The same instance heard on lo as well: its address there joins, and lo joins `via`.
    let (addrs, via) = heard(&mut table, "lo", vec![lo.clone()], later);
    assert_eq!(addrs, vec![v4.clone(), lo, v6.clone()]);
    assert_eq!(via, vec!["lan0".to_owned(), "lo".to_owned()]);
    // lan0's IPv4 announcement lapses (its TTL ran out), its IPv6 one is renewed.
    let renewed = now + Duration::from_secs(125);
    let (addrs, _) = heard(&mut table, "lan0", vec![v6.clone()], renewed);
    assert!(!addrs.contains(&v4), "{addrs:?}");
    assert!(table.take_expired(renewed).is_empty());
    let name = instance().to_ascii_lowercase();
    assert_eq!(
        table.take_expired(renewed + Duration::from_secs(120)),
        vec![name]
    );
}

/// The TXT entries of node `id` (service `invoice`) advertising `subs`.
fn txt(id: u128, subs: &[&str]) -> Vec<String> {
    let mut txt = vec![
        "svc=invoice".to_owned(),
        format!("id={}", NodeId::from_u128(id)),
        format!("pv={}", shoal_proto::PROTOCOL_VERSION),
        format!("sn={}", subs.len()),
    ];
    for (i, sub) in subs.iter().enumerate() {
        txt.push(format!("s{i}={sub}"));
    }
    txt
}

/// Adds node `id`'s records to `message`, as mdns-sd announces them to one group: PTR, SRV
/// (port 7000) and TXT `txt`, and an A or AAAA record for each of `ips`, all with `ttl`.
fn add_instance(message: &mut Message, id: u128, txt: Vec<String>, ips: &[&str], ttl: u32) {
    let fullname = name(&format!("{}.{SERVICE_TYPE}", NodeId::from_u128(id)));
    let host = name(&format!("host-{id:x}.local."));
    let ptr = RData::PTR(PTR(fullname.clone()));
    message.add_answer(Record::from_rdata(name(SERVICE_TYPE), ttl, ptr));
    let srv = RData::SRV(SRV::new(0, 0, 7000, host.clone()));
    message.add_answer(Record::from_rdata(fullname.clone(), ttl, srv));
    message.add_answer(Record::from_rdata(fullname, ttl, RData::TXT(TXT::new(txt))));
    for ip in ips {
        let data = match ip.parse().expect("ip") {
            IpAddr::V4(ip) => RData::A(A(ip)),
            IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
        };
        message.add_answer(Record::from_rdata(host.clone(), ttl, data));
    }
}

/// The peer's announcement of `subs` at `ips`, TTL 120 s.
fn saying(subs: &[&str], ips: &[&str]) -> Vec<u8> {
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    add_instance(&mut message, PEER, txt(PEER, subs), ips, 120);
    message.to_vec().expect("encode")
}

/// The peer's addresses as the node's table has them (port 7000).
fn peer_addrs(listener: &Listener) -> Vec<SocketAddr> {
    let peers = lock(&listener.state).peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    peers[0].addrs.clone()
}

fn subscriptions(event: &DiscoveryEvent) -> Vec<String> {
    let (DiscoveryEvent::Up(hint) | DiscoveryEvent::Updated(hint)) = event else {
        panic!("{event:?}");
    };
    let subs = hint.subscriptions.as_deref().unwrap_or_default();
    subs.iter().map(|s| s.pattern.clone()).collect()
}

#[test]
fn subscriptions_going_back_to_what_they_were_are_reported() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let (with, without) = (
        saying(&["orders.*"], &["10.99.0.1"]),
        saying(&[], &["10.99.0.1"]),
    );
    listener.on_datagram(&with, &ear(), &mut table, t0);
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Up(_))));
    listener.on_datagram(&without, &ear(), &mut table, at(1));
    let updated = rx.try_recv().expect("unsubscribed");
    assert!(subscriptions(&updated).is_empty(), "{updated:?}");
    // Subscribed again: the datagram is the first one word for word, and news again.
    listener.on_datagram(&with, &ear(), &mut table, at(2));
    let again = rx.try_recv().expect("subscribed again");
    assert_eq!(subscriptions(&again), vec!["orders.*".to_owned()]);
    // From then on it is a repeat again.
    listener.on_datagram(&with, &ear(), &mut table, at(3));
    assert!(rx.try_recv().is_err());
    assert_eq!(table.sizes(), (1, 1));
}

#[test]
fn an_address_going_back_is_reported() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let t0 = Instant::now();
    let (a, b) = (saying(&[], &["10.99.0.1"]), saying(&[], &["10.99.0.2"]));
    for (secs, datagram) in [(0, &a), (70, &b), (140, &a)] {
        let now = t0 + Duration::from_secs(secs);
        listener.on_datagram(datagram, &ear(), &mut table, now);
        assert!(rx.try_recv().is_ok(), "no event at {secs} s");
    }
    assert_eq!(
        peer_addrs(&listener),
        vec!["10.99.0.1:7000".parse().expect("addr")]
    );
}

#[test]
fn a_change_heard_in_one_family_makes_the_other_familys_announcement_news() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let v4 = |subs: &[&str]| saying(subs, &["10.99.0.1"]);
    let v6 = |subs: &[&str]| saying(subs, &["fd00::1"]);
    listener.on_datagram(&v4(&["orders.*"]), &ear(), &mut table, t0);
    listener.on_datagram(&v6(&["orders.*"]), &ear(), &mut table, t0);
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Up(_))));
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Updated(_))));
    // It unsubscribes; only its IPv4 announcement arrives. Then it subscribes again, and only
    // its IPv6 announcement arrives, the one heard before word for word: news all the same.
    listener.on_datagram(&v4(&[]), &ear(), &mut table, at(1));
    assert!(subscriptions(&rx.try_recv().expect("unsubscribed")).is_empty());
    listener.on_datagram(&v6(&["orders.*"]), &ear(), &mut table, at(2));
    let again = rx.try_recv().expect("subscribed again");
    assert_eq!(subscriptions(&again), vec!["orders.*".to_owned()]);
}

#[test]
fn a_repeat_renews_only_the_family_it_announced() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let t0 = Instant::now();
    let v4 = saying(&[], &["10.99.0.1"]);
    listener.on_datagram(&saying(&[], &["fd00::1"]), &ear(), &mut table, t0);
    listener.on_datagram(&v4, &ear(), &mut table, t0);
    assert_eq!(peer_addrs(&listener).len(), 2);
    // The peer lost its IPv6 address: only its IPv4 announcement goes on, every 70 s (a
    // repeat, unparsed, until the IPv6 address lapses).
    for times in 1..=10 {
        let now = t0 + Duration::from_secs(70 * times);
        listener.on_datagram(&v4, &ear(), &mut table, now);
    }
    let events: Vec<DiscoveryEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(
        events.len(),
        3,
        "Up, Updated (IPv4), Updated (IPv6 lapsed): {events:?}"
    );
    assert_eq!(
        peer_addrs(&listener),
        vec!["10.99.0.1:7000".parse().expect("addr")]
    );
    assert_eq!(table.sizes(), (1, 1));
}

#[test]
fn refused_instances_are_not_kept() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let now = Instant::now();
    // 100 datagrams of 50 instances each, none with `pv`, all with a TTL of 68 years.
    for datagram in 0..100 {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        for i in 0..50 {
            let id = 10_000 + datagram * 50 + i;
            let mut txt = txt(id, &[]);
            txt.retain(|entry| !entry.starts_with("pv="));
            add_instance(&mut message, id, txt, &["10.99.0.9"], i32::MAX as u32);
        }
        listener.on_datagram(&message.to_vec().expect("encode"), &ear(), &mut table, now);
    }
    // And one alone, word for word again and again.
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    add_instance(
        &mut message,
        9,
        vec!["svc=invoice".into()],
        &["10.99.0.9"],
        120,
    );
    let alone = message.to_vec().expect("encode");
    for _ in 0..3 {
        listener.on_datagram(&alone, &ear(), &mut table, now);
    }
    assert!(rx.try_recv().is_err());
    assert_eq!(lock(&listener.state).rejected_total, 5003);
    assert_eq!(table.sizes(), (0, 0));
}

#[test]
fn the_table_keeps_no_more_instances_than_are_tracked() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let now = Instant::now();
    for id in 0..MAX_TRACKED_INSTANCES as u128 + 10 {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        add_instance(
            &mut message,
            10_000 + id,
            txt(10_000 + id, &[]),
            &["10.99.0.9"],
            120,
        );
        listener.on_datagram(&message.to_vec().expect("encode"), &ear(), &mut table, now);
    }
    assert_eq!(
        std::iter::from_fn(|| rx.try_recv().ok()).count(),
        MAX_TRACKED_INSTANCES
    );
    assert_eq!(
        table.sizes(),
        (MAX_TRACKED_INSTANCES, MAX_TRACKED_INSTANCES)
    );
}

#[test]
fn a_ttl_from_the_wire_counts_up_to_max_ttl() {
    let (listener, mut rx) = listener();
    let mut table = Table::default();
    let t0 = Instant::now();
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    add_instance(&mut message, PEER, txt(PEER, &[]), &["10.99.0.1"], u32::MAX);
    let forever = message.to_vec().expect("encode");
    listener.on_datagram(&forever, &ear(), &mut table, t0);
    assert!(matches!(rx.try_recv(), Ok(DiscoveryEvent::Up(_))));
    // Its repeat counts the same.
    let later = t0 + Duration::from_secs(100);
    listener.on_datagram(&forever, &ear(), &mut table, later);
    assert!(
        table
            .take_expired(later + MAX_TTL - Duration::from_secs(1))
            .is_empty()
    );
    assert_eq!(
        table.take_expired(later + MAX_TTL),
        vec![instance().to_ascii_lowercase()]
    );
    assert_eq!(table.sizes(), (0, 0));
}

mod on_link;
