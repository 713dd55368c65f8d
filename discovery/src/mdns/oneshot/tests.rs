use std::net::Ipv6Addr;

use shoal_proto::NodeId;

use super::*;
use crate::event::DiscoveryEvent;
use crate::mdns::record::RejectReason;
use crate::mdns::test_support::{PEER, instance, peer_records, state};

/// The answer a responder gives to a legacy unicast PTR query: PTR, then SRV, TXT and A as
/// additionals, with TTL 10.
fn answer(id: u16, with_txt: bool) -> Message {
    let mut message = Message::new(id, MessageType::Response, OpCode::Query);
    let mut records = peer_records(10, with_txt, None).into_iter();
    message.add_answer(records.next().expect("PTR"));
    for record in records {
        message.add_additional(record);
    }
    message
}

/// The link of the interface the answers come on: 10.99.0.0/24.
fn lan0() -> Link {
    Link::new(vec![link::Subnet::new(
        IpAddr::V4(Ipv4Addr::new(10, 99, 0, 7)),
        24,
    )])
}

fn asker() -> (
    StartupQuery,
    tokio::sync::mpsc::UnboundedReceiver<DiscoveryEvent>,
) {
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    let query = StartupQuery {
        selected: Vec::new(),
        events,
        state: state(),
        stop: Arc::new(AtomicBool::new(false)),
        introduction: None,
        table: None,
    };
    (query, rx)
}

#[test]
fn an_answer_describes_the_instance_whole() {
    let found = announcements(&answer(7, true));
    assert_eq!(found.len(), 1);
    let a = &found[0];
    assert_eq!(a.fullname, instance());
    assert_eq!(a.port, 7000);
    assert_eq!(a.addrs.len(), 1);
    assert_eq!(a.addrs[0].ip, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)));
    assert_eq!(a.txt[0], ("svc".to_owned(), Some(b"invoice".to_vec())));
}

#[test]
fn an_instance_without_txt_is_left_to_the_browse() {
    assert!(announcements(&answer(7, false)).is_empty());
}

#[test]
fn the_answer_to_our_query_reports_the_peer() {
    let (query, mut rx) = asker();
    let wire = answer(42, true).to_vec().expect("encode");
    assert!(query.on_datagram(&wire, 42, "lan0", 7, &lan0()));
    match rx.try_recv() {
        Ok(DiscoveryEvent::Up(hint)) => {
            assert_eq!(hint.node_id, Some(NodeId::from_u128(PEER)));
            assert_eq!(hint.service.as_deref(), Some("invoice"));
            assert_eq!(hint.addrs, vec!["10.99.0.1:7000".parse().expect("addr")]);
        }
        other => panic!("expected Up, got {other:?}"),
    }
    assert_eq!(lock(&query.state).startup_query_answers, 1);
    // The same answer again (the second query's) changes nothing.
    assert!(query.on_datagram(&wire, 42, "lan0", 7, &lan0()));
    assert!(rx.try_recv().is_err());
}

#[test]
fn other_datagrams_are_ignored_without_panicking() {
    let (query, mut rx) = asker();
    // Another query's answer, a query, garbage, truncations of a good answer.
    let wire = answer(42, true).to_vec().expect("encode");
    assert!(!query.on_datagram(&wire, 43, "lan0", 7, &lan0()));
    let mut question = answer(42, true);
    question.metadata.message_type = MessageType::Query;
    assert!(!query.on_datagram(&question.to_vec().expect("encode"), 42, "lan0", 7, &lan0()));
    assert!(!query.on_datagram(&[0xff; 40], 42, "lan0", 7, &lan0()));
    for len in 0..wire.len() {
        let _ = query.on_datagram(&wire[..len], 42, "lan0", 7, &lan0());
    }
    // Whatever a truncation still parsed to, nothing was reported twice or for another id.
    let mut ups = 0;
    while let Ok(event) = rx.try_recv() {
        assert!(matches!(event, DiscoveryEvent::Up(_)), "{event:?}");
        ups += 1;
    }
    assert!(ups <= 1);
}

#[test]
fn the_query_asks_for_shoal_instances() {
    let wire = query_message(9).expect("query");
    let message = Message::from_vec(&wire).expect("parse");
    assert_eq!(message.metadata.id, 9);
    assert_eq!(message.queries.len(), 1);
    assert_eq!(message.queries[0].query_type(), RecordType::PTR);
    assert_eq!(message.queries[0].name().to_ascii(), SERVICE_TYPE);
}

#[test]
fn an_answer_pointing_off_the_link_is_refused() {
    let (query, mut rx) = asker();
    let wire = answer(42, true).to_vec().expect("encode");
    // The answer's address, 10.99.0.1, is not on an interface whose subnet is 10.1.0.0/24.
    let elsewhere = Link::new(vec![link::Subnet::new(
        IpAddr::V4(Ipv4Addr::new(10, 1, 0, 7)),
        24,
    )]);
    assert!(query.on_datagram(&wire, 42, "lan0", 7, &elsewhere));
    assert!(rx.try_recv().is_err(), "nothing reported");
    let rejected = lock(&query.state).rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].reason, RejectReason::OffLink);
    assert_eq!(
        rejected[0].addrs,
        vec!["10.99.0.1:7000".parse().expect("addr")]
    );
}

#[test]
fn a_link_local_address_in_an_answer_takes_the_interface_as_scope() {
    let (query, mut rx) = asker();
    let mut message = Message::new(42, MessageType::Response, OpCode::Query);
    let v6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let mut records = peer_records(10, true, Some(v6)).into_iter();
    message.add_answer(records.next().expect("PTR"));
    for record in records {
        message.add_additional(record);
    }
    let wire = message.to_vec().expect("encode");
    assert!(query.on_datagram(&wire, 42, "lan0", 7, &lan0()));
    match rx.try_recv() {
        // Without its scope, fe80::1 could not be dialled.
        Ok(DiscoveryEvent::Up(hint)) => assert!(
            hint.addrs
                .contains(&"[fe80::1%7]:7000".parse().expect("addr")),
            "{:?}",
            hint.addrs
        ),
        other => panic!("expected Up, got {other:?}"),
    }
}
