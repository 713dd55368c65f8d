//! Tests of the record checks: well-formed, malformed and hostile announcements.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const PEER: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
const ME: u128 = 0xfeed;

fn me() -> Me {
    Me {
        node_id: NodeId::from_u128(ME),
        service: "invoice".into(),
        port: 7000,
    }
}

fn txt(entries: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
        .collect()
}

fn good() -> Announcement {
    let id = NodeId::from_u128(PEER).to_string();
    Announcement {
        fullname: format!("{id}.{SERVICE_TYPE}"),
        port: 7001,
        addrs: vec![ReceivedAddr {
            ip: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)),
            scope_id: 0,
        }],
        txt: txt(&[
            ("svc", "billing"),
            ("id", &id),
            ("pv", &PROTOCOL_VERSION.to_string()),
        ]),
        via: vec!["lan0".into()],
    }
}

fn rejected(a: &Announcement) -> RejectReason {
    match check(a, &me()) {
        Verdict::Rejected(reason) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn accepts_a_well_formed_announcement() {
    let Verdict::Peer(peer) = check(&good(), &me()) else {
        panic!("rejected a good announcement")
    };
    assert_eq!(peer.node_id, NodeId::from_u128(PEER));
    assert_eq!(peer.service, "billing");
    assert_eq!(
        peer.addrs,
        vec!["10.99.0.2:7001".parse::<SocketAddr>().expect("addr")]
    );
}

#[test]
fn node_ids_must_be_exactly_32_hex_digits() {
    assert_eq!(
        parse_node_id(&NodeId::from_u128(PEER).to_string()),
        Some(NodeId::from_u128(PEER))
    );
    assert_eq!(
        parse_node_id("0123456789ABCDEF0123456789ABCDEF"),
        Some(NodeId::from_u128(PEER))
    );
    assert_eq!(parse_node_id("+123456789abcdef0123456789abcdef"), None);
    assert_eq!(parse_node_id("123456789abcdef0123456789abcdef"), None);
    assert_eq!(parse_node_id("0123456789abcdef0123456789abcdef0"), None);
    assert_eq!(parse_node_id("0123456789abcdeg0123456789abcdef"), None);
    assert_eq!(parse_node_id(""), None);
    assert_eq!(parse_node_id("ééééééééééééééé"), None);
}

#[test]
fn txt_round_trips_through_the_checker() {
    let local = local_node(
        vec![Subscription {
            pattern: "orders.*".into(),
            group: Some("billing".into()),
        }],
        None,
    );
    let mut a = announced(&local);
    let Verdict::Peer(peer) = check(&a, &me()) else {
        panic!("not a peer")
    };
    assert_eq!(peer.subscriptions, Some(local.subscriptions));
    // An announcement that does not advertise them (an older node) is still a peer.
    a.txt.retain(|(k, _)| k == "svc" || k == "id" || k == "pv");
    let Verdict::Peer(peer) = check(&a, &me()) else {
        panic!("not a peer")
    };
    assert_eq!(peer.subscriptions, None);
}

/// The local node `billing` with `subscriptions` and `multicast`, as announced.
fn local_node(subscriptions: Vec<Subscription>, multicast: Option<SocketAddrV4>) -> LocalNode {
    LocalNode {
        node_id: NodeId::from_u128(PEER),
        service: "billing".into(),
        addrs: vec!["0.0.0.0:7001".parse().expect("addr")],
        subscriptions,
        multicast,
    }
}

fn announced(local: &LocalNode) -> Announcement {
    let mut a = good();
    a.txt = txt_entries(local)
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())))
        .collect();
    a
}

fn keys(entries: &[(String, String)]) -> Vec<&str> {
    entries.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn the_multicast_group_is_announced_before_the_subscriptions_and_read_back() {
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 83, 72), 7451);
    let local = local_node(
        vec![Subscription {
            pattern: "orders.*".into(),
            group: None,
        }],
        Some(group),
    );
    let entries = txt_entries(&local);
    assert_eq!(keys(&entries), ["svc", "id", "pv", "mc", "sn", "s0"]);
    assert_eq!(entries[3].1, "239.255.83.72:7451");
    let Verdict::Peer(peer) = check(&announced(&local), &me()) else {
        panic!("not a peer")
    };
    assert_eq!(peer.multicast, Some(group));
    assert_eq!(peer.subscriptions, Some(local.subscriptions.clone()));

    // Multicast off, or a group no receiver would take: nothing is announced.
    for multicast in [
        None,
        Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 7451)),
    ] {
        let local = LocalNode {
            multicast,
            ..local.clone()
        };
        assert_eq!(keys(&txt_entries(&local)), ["svc", "id", "pv", "sn", "s0"]);
        let Verdict::Peer(peer) = check(&announced(&local), &me()) else {
            panic!("not a peer")
        };
        assert_eq!(peer.multicast, None);
    }
}

#[test]
fn the_group_counts_against_the_subscriptions_budget() {
    // 26 subscriptions of 880 bytes: they fit alone, not beside the widest group entry (25).
    let subscriptions: Vec<Subscription> = (0..26)
        .map(|i| Subscription {
            pattern: format!("t{i:02}.{}", "x".repeat(25)),
            group: None,
        })
        .collect();
    let mut local = local_node(subscriptions, None);
    assert_eq!(txt_entries(&local).len(), 3 + 1 + 26, "they fit alone");
    local.multicast = Some(SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 255), 65_535));
    let entries = txt_entries(&local);
    assert_eq!(
        keys(&entries),
        ["svc", "id", "pv", "mc"],
        "the group stays, they go"
    );
    let Verdict::Peer(peer) = check(&announced(&local), &me()) else {
        panic!("not a peer")
    };
    assert_eq!(peer.multicast, local.multicast);
    assert_eq!(peer.subscriptions, None, "learned over the connection");
}

#[test]
fn a_malformed_group_is_ignored_and_the_announcement_kept() {
    let overlong = "9".repeat(10_000);
    for bad in [
        &b"garbage"[..],
        b"[ff02::1]:7451",
        b"ff02::1",
        b"10.99.0.2:7451",
        b"239.255.83.72:0",
        b"239.255.83.72",
        overlong.as_bytes(),
        &[0xff, 0x00, 0xfe],
    ] {
        let mut a = good();
        a.txt.push(("mc".into(), Some(bad.to_vec())));
        let Verdict::Peer(peer) = check(&a, &me()) else {
            panic!("rejected for mc={:?}", String::from_utf8_lossy(bad))
        };
        assert_eq!(peer.multicast, None, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(peer.service, "billing");
    }
    let mut a = good();
    a.txt.push(("mc".into(), None));
    assert!(matches!(check(&a, &me()), Verdict::Peer(p) if p.multicast.is_none()));
}

#[test]
fn wrong_service_type_and_bad_instance_names() {
    let mut a = good();
    a.fullname = a.fullname.replace("_shoal", "_other");
    assert_eq!(rejected(&a), RejectReason::WrongServiceType);

    let mut a = good();
    a.fullname = SERVICE_TYPE.to_owned();
    assert_eq!(rejected(&a), RejectReason::WrongServiceType);

    let mut a = good();
    a.fullname = String::new();
    assert_eq!(rejected(&a), RejectReason::WrongServiceType);

    let mut a = good();
    a.fullname = format!("printer.{SERVICE_TYPE}");
    assert_eq!(rejected(&a), RejectReason::BadInstanceName);

    let mut a = good();
    a.fullname = format!("{}.{SERVICE_TYPE}", "x".repeat(10_000));
    assert_eq!(rejected(&a), RejectReason::BadInstanceName);

    // Multi-byte characters just before the suffix must not split a char.
    let mut a = good();
    a.fullname = format!("éé{SERVICE_TYPE}");
    assert_eq!(rejected(&a), RejectReason::WrongServiceType);

    // DNS names are case-insensitive.
    let mut a = good();
    a.fullname = a.fullname.to_uppercase();
    assert!(matches!(check(&a, &me()), Verdict::Peer(_)));
}

#[test]
fn missing_or_bad_txt() {
    for key in [TXT_SERVICE, TXT_NODE_ID, TXT_PROTOCOL_VERSION] {
        let mut a = good();
        a.txt.retain(|(k, _)| k != key);
        assert_eq!(rejected(&a), RejectReason::MissingTxt(key), "without {key}");

        let mut a = good();
        for entry in &mut a.txt {
            if entry.0 == key {
                entry.1 = None;
            }
        }
        assert_eq!(
            rejected(&a),
            RejectReason::MissingTxt(key),
            "{key} without value"
        );
    }

    let mut a = good();
    a.txt = Vec::new();
    assert!(matches!(rejected(&a), RejectReason::MissingTxt(_)));

    let mut a = good();
    a.txt[1].1 = Some(b"not-an-id".to_vec());
    assert_eq!(rejected(&a), RejectReason::BadNodeId);

    let mut a = good();
    a.txt[1].1 = Some(vec![0xff; 32]);
    assert_eq!(rejected(&a), RejectReason::BadNodeId);

    let mut a = good();
    a.txt[1].1 = Some(NodeId::from_u128(PEER + 1).to_string().into_bytes());
    assert_eq!(rejected(&a), RejectReason::NodeIdMismatch);

    for bad in [
        &b""[..],
        &[0xc3, 0x28],
        b"tab\there",
        &[b'a'; MAX_SERVICE_NAME_LEN + 1],
    ] {
        let mut a = good();
        a.txt[0].1 = Some(bad.to_vec());
        assert_eq!(rejected(&a), RejectReason::BadService, "svc {bad:?}");
    }

    for bad in ["", "one", "-1", "+1", "65536", "1.0", " 1"] {
        let mut a = good();
        a.txt[2].1 = Some(bad.as_bytes().to_vec());
        assert_eq!(rejected(&a), RejectReason::BadProtocolVersion, "pv {bad:?}");
    }

    let mut a = good();
    a.txt[2].1 = Some(b"999".to_vec());
    assert_eq!(rejected(&a), RejectReason::UnsupportedProtocolVersion(999));
}

#[test]
fn first_txt_duplicate_wins_and_unknown_keys_are_ignored() {
    let mut a = good();
    a.txt.push(("svc".into(), Some(b"other".to_vec())));
    a.txt.push(("future".into(), None));
    let Verdict::Peer(peer) = check(&a, &me()) else {
        panic!("rejected")
    };
    assert_eq!(peer.service, "billing");
}

#[test]
fn our_own_id() {
    let id = NodeId::from_u128(ME).to_string();
    let mut a = good();
    a.fullname = format!("{id}.{SERVICE_TYPE}");
    a.port = 7000;
    a.txt = txt(&[
        ("svc", "invoice"),
        ("id", &id),
        ("pv", &PROTOCOL_VERSION.to_string()),
    ]);
    assert_eq!(check(&a, &me()), Verdict::Ours);

    let mut impostor = a.clone();
    impostor.txt[0].1 = Some(b"evil".to_vec());
    assert_eq!(rejected(&impostor), RejectReason::ClaimsOurNodeId);

    let mut impostor = a;
    impostor.port = 6666;
    assert_eq!(rejected(&impostor), RejectReason::ClaimsOurNodeId);
}

#[test]
fn addresses() {
    let mut a = good();
    a.addrs.clear();
    assert_eq!(rejected(&a), RejectReason::NoUsableAddress);

    let mut a = good();
    a.addrs = [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 251),
    ]
    .into_iter()
    .map(|ip| ReceivedAddr {
        ip: IpAddr::V4(ip),
        scope_id: 3,
    })
    .collect();
    assert_eq!(rejected(&a), RejectReason::NoUsableAddress);

    let mut a = good();
    a.port = 0;
    assert_eq!(rejected(&a), RejectReason::ZeroPort);

    let link_local: Ipv6Addr = "fe80::1".parse().expect("ip");
    let global: Ipv6Addr = "2001:db8::1".parse().expect("ip");
    let mut a = good();
    a.addrs = vec![
        ReceivedAddr {
            ip: IpAddr::V6(global),
            scope_id: 4,
        },
        ReceivedAddr {
            ip: IpAddr::V6(link_local),
            scope_id: 4,
        },
        ReceivedAddr {
            ip: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)),
            scope_id: 0,
        },
        ReceivedAddr {
            ip: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)),
            scope_id: 0,
        },
    ];
    let Verdict::Peer(peer) = check(&a, &me()) else {
        panic!("rejected")
    };
    assert_eq!(
        peer.addrs,
        vec![
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 7001)),
            SocketAddr::V6(SocketAddrV6::new(global, 7001, 0, 0)),
            SocketAddr::V6(SocketAddrV6::new(link_local, 7001, 0, 4)),
        ]
    );

    let mut a = good();
    a.addrs = (1..=100u8)
        .map(|i| ReceivedAddr {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
            scope_id: 0,
        })
        .collect();
    let Verdict::Peer(peer) = check(&a, &me()) else {
        panic!("rejected")
    };
    assert_eq!(peer.addrs.len(), MAX_ADDRS_PER_INSTANCE);
}

#[test]
fn service_names() {
    assert!(valid_service_name("invoice"));
    assert!(valid_service_name("заказы"));
    assert!(valid_service_name(&"a".repeat(MAX_SERVICE_NAME_LEN)));
    assert!(!valid_service_name(""));
    assert!(!valid_service_name("new\nline"));
    assert!(!valid_service_name(&"a".repeat(MAX_SERVICE_NAME_LEN + 1)));
}

#[test]
fn printable_names_are_short_and_escaped() {
    assert_eq!(printable_name("a\nb"), "a\\nb");
    let long = printable_name(&"é".repeat(1000));
    assert_eq!(long.chars().count(), MAX_NAME_IN_DIAGNOSTICS + 1);
    assert!(long.ends_with('…'));
}
