use std::net::Ipv6Addr;

use hickory_resolver::proto::op::{MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::PTR;
use hickory_resolver::proto::rr::{RData, Record};
use shoal_proto::NodeId;

use super::*;
use crate::event::DiscoveryEvent;
use crate::mdns::record::SERVICE_TYPE;
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

/// An ear on a loopback socket: `on_datagram` only reads its name and index.
fn ear() -> Ear {
    Ear {
        interface: "lan0".into(),
        index: 7,
        v6: false,
        socket: UdpSocket::bind("127.0.0.1:0").expect("socket"),
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
