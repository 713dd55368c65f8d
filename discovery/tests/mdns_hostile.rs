//! Broken and hostile mDNS announcements on a LAN of network namespaces (feature `netns`,
//! Linux, root): they are rejected, recorded in the diagnostics and never reported.
//!
//! Every mDNS daemon here is created on a thread inside a namespace built by
//! `shoal_discovery::netns`; nothing runs in the root namespace (the tests check this for every
//! daemon thread of the process). Without root the tests print a skip line and pass.
#![cfg(target_os = "linux")]

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use shoal_discovery::mdns::{RejectReason, SERVICE_TYPE};
use shoal_discovery::netns::{self, Lan};
use shoal_discovery::{
    Browser, Discovery, DiscoveryEvent, InterfaceSelector, MdnsConfig, in_root_netns,
};
use shoal_proto::{NodeId, PROTOCOL_VERSION};

use support::{
    GOODBYE, STEP, audit_daemon_threads, local, netns_or_skip, random_id, sock, start_in,
};

/// A hostile instance: name, port, TXT entries, and the reason the observer must record.
type Hostile = (String, u16, Vec<(&'static str, String)>, RejectReason);

/// A responder in a third namespace announces broken and hostile `_shoal._udp` instances; the
/// observer reports only the honest peer and lists the rest in its diagnostics.
#[test]
fn hostile_announcements_are_rejected_and_recorded() {
    if !netns_or_skip("hostile_announcements_are_rejected_and_recorded") {
        return;
    }
    let lan = Lan::new(3).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut a = start_in(
        lan.host(0),
        lan0(),
        local(random_id(), "observer", "0.0.0.0:7000"),
    );
    let (a_id, b_id) = (a.id, random_id());

    let pv = PROTOCOL_VERSION.to_string();
    let id = |n: NodeId| n.to_string();
    let (x1, x2, x3, x4, x5, x6) = (
        random_id(),
        random_id(),
        random_id(),
        random_id(),
        random_id(),
        random_id(),
    );
    // The longest legal DNS label. Longer instance names (one is tried below) are not valid
    // DNS; mdns-sd's parser drops them before the checks. They must not come up either.
    let huge = "h".repeat(63);
    let illegal = "i".repeat(200);
    // (instance, port, TXT, expected reason)
    let hostile: Vec<Hostile> = vec![
        (
            id(x1),
            7201,
            vec![("svc", "x".into()), ("id", id(x1))],
            RejectReason::MissingTxt("pv"),
        ),
        (
            "zz-not-an-id".into(),
            7202,
            vec![("svc", "x".into()), ("id", "zz".into()), ("pv", pv.clone())],
            RejectReason::BadInstanceName,
        ),
        (
            id(x2),
            7203,
            vec![
                ("svc", "x".into()),
                ("id", "+123".into()),
                ("pv", pv.clone()),
            ],
            RejectReason::BadNodeId,
        ),
        (
            id(x3),
            7204,
            vec![("svc", "x".into()), ("id", id(b_id)), ("pv", pv.clone())],
            RejectReason::NodeIdMismatch,
        ),
        (
            id(a_id),
            7205,
            vec![("svc", "evil".into()), ("id", id(a_id)), ("pv", pv.clone())],
            RejectReason::ClaimsOurNodeId,
        ),
        (
            huge.clone(),
            7206,
            vec![("svc", "x".into()), ("id", id(x4)), ("pv", pv.clone())],
            RejectReason::BadInstanceName,
        ),
        (
            id(x5),
            7207,
            vec![("svc", "x".into()), ("id", id(x5)), ("pv", "999".into())],
            RejectReason::UnsupportedProtocolVersion(999),
        ),
        (
            id(x6),
            7208,
            vec![
                ("svc", "bell\u{7}".into()),
                ("id", id(x6)),
                ("pv", pv.clone()),
            ],
            RejectReason::BadService,
        ),
        (
            illegal,
            7209,
            vec![("svc", "x".into()), ("id", id(x4)), ("pv", pv.clone())],
            RejectReason::BadInstanceName,
        ),
    ];
    // All but the illegal name must be recorded.
    let expected: Vec<(String, RejectReason)> = hostile
        .iter()
        .take(hostile.len() - 1)
        .map(|(instance, _, _, reason)| (instance.clone(), reason.clone()))
        .collect();

    // The hostile responder: a raw mdns-sd daemon inside host 2.
    let evil_ip = IpAddr::V4(lan.addr(2));
    let evil = netns::run_in(lan.host(2), move || {
        assert!(
            !in_root_netns(),
            "about to start mDNS in the root network namespace"
        );
        let daemon = mdns_sd::ServiceDaemon::new().expect("raw daemon");
        daemon
            .disable_interface(mdns_sd::IfKind::All)
            .expect("disable");
        daemon
            .enable_interface(netns::HOST_IF)
            .expect("enable lan0");
        for (n, (instance, port, txt, _)) in hostile.into_iter().enumerate() {
            let host = format!("evil{n}.local.");
            match mdns_sd::ServiceInfo::new(SERVICE_TYPE, &instance, &host, evil_ip, port, &txt[..])
            {
                Ok(mut info) => {
                    info.set_requires_probe(false);
                    daemon.register(info).expect("register hostile service");
                }
                Err(e) => println!("mdns-sd refused to build hostile instance {n}: {e}"),
            }
        }
        daemon
    })
    .expect("enter h2");

    let mut b = start_in(lan.host(1), lan0(), local(b_id, "honest", "0.0.0.0:7001"));
    audit_daemon_threads(&[lan.host(0), lan.host(1), lan.host(2)]);

    let hint = a.expect_up(b_id, STEP);
    assert_eq!(hint.addrs, vec![sock(lan.addr(1), 7001)]);
    assert_eq!(hint.service.as_deref(), Some("honest"));
    b.expect_up(a_id, STEP);

    // Wait (bounded) until every hostile instance shows up in A's diagnostics.
    let deadline = Instant::now() + STEP;
    let missing = loop {
        let rejected = a.mdns.diagnostics().rejected;
        let missing: Vec<_> = expected
            .iter()
            .filter(|(instance, reason)| {
                !rejected.iter().any(|r| {
                    r.reason == *reason
                        && r.instance.starts_with(&instance[..instance.len().min(32)])
                })
            })
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let diagnostics = a.mdns.diagnostics();
    assert!(
        missing.is_empty(),
        "not recorded: {missing:?}\ndiagnostics: {diagnostics:#?}"
    );
    for r in &diagnostics.rejected {
        assert!(r.via.iter().all(|v| v == netns::HOST_IF), "{r:?}");
        println!(
            "rejected {} ({}): {} x{}",
            r.instance,
            r.via.join(","),
            r.reason,
            r.count
        );
    }
    assert!(
        diagnostics
            .rejected
            .iter()
            .any(|r| r.instance.starts_with(&huge[..32]))
    );

    // Nothing but B was ever reported to A.
    a.wait_for(Duration::ZERO, |_| false);
    for event in &a.backlog {
        let (DiscoveryEvent::Up(h) | DiscoveryEvent::Updated(h) | DiscoveryEvent::Down(h)) = event
        else {
            continue;
        };
        assert_eq!(h.node_id, Some(b_id), "unexpected event {event:?}");
    }
    assert_eq!(
        diagnostics
            .peers
            .iter()
            .map(|p| p.node_id)
            .collect::<Vec<_>>(),
        vec![b_id]
    );

    // The honest peer is unaffected by the instance that claims its id.
    b.mdns.stop();
    a.expect_down(b_id, GOODBYE);

    if let Ok(status) = evil.shutdown() {
        let _ = status.recv_timeout(Duration::from_secs(2));
    }
}

/// What a responder that lies multicasts: instance `x1` at 203.0.113.5 alone (off the link),
/// `x2` at `on_link` and 203.0.113.6; SRV ports 7301 and 7302; TTL 120 s.
fn lying_announcement(x1: NodeId, x2: NodeId, on_link: std::net::Ipv4Addr) -> Vec<u8> {
    use hickory_resolver::proto::op::{Message, MessageType, OpCode};
    use hickory_resolver::proto::rr::rdata::{A, PTR, SRV, TXT};
    use hickory_resolver::proto::rr::{Name, RData, Record};

    let name = |text: &str| Name::from_ascii(text).expect("name");
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    let instances = [
        (x1, 7301, vec![std::net::Ipv4Addr::new(203, 0, 113, 5)]),
        (
            x2,
            7302,
            vec![on_link, std::net::Ipv4Addr::new(203, 0, 113, 6)],
        ),
    ];
    for (id, port, ips) in instances {
        let fullname = name(&format!("{id}.{SERVICE_TYPE}"));
        let host = name(&format!("liar-{port}.local."));
        let txt = vec![
            "svc=steered".to_owned(),
            format!("id={id}"),
            format!("pv={PROTOCOL_VERSION}"),
        ];
        let records = [
            (name(SERVICE_TYPE), RData::PTR(PTR(fullname.clone()))),
            (
                fullname.clone(),
                RData::SRV(SRV::new(0, 0, port, host.clone())),
            ),
            (fullname, RData::TXT(TXT::new(txt))),
        ];
        for (owner, data) in records {
            message.add_answer(Record::from_rdata(owner, 120, data));
        }
        for ip in ips {
            message.add_answer(Record::from_rdata(host.clone(), 120, RData::A(A(ip))));
        }
    }
    message.to_vec().expect("encode")
}

/// Whether `rejected` lists `instance`'s addresses `addrs` as off the link.
fn refused_off_link(
    rejected: &[shoal_discovery::mdns::RejectedRecord],
    instance: NodeId,
    addrs: &[std::net::SocketAddr],
) -> bool {
    rejected.iter().any(|r| {
        r.reason == RejectReason::OffLink
            && r.instance.starts_with(&instance.to_string())
            && r.addrs == addrs
    })
}

/// A host announces instances whose addresses point off the LAN. Neither Shoal's listener
/// (host 0) nor mdns-sd's browse (host 1, no start-up query) takes those addresses: the
/// instance with only such an address is refused, the other keeps its address on the LAN, and
/// both record the dropped addresses as `OffLink`.
#[test]
fn addresses_off_the_link_are_refused() {
    if !netns_or_skip("addresses_off_the_link_are_refused") {
        return;
    }
    let lan = Lan::new(3).expect("build LAN");
    let lan0 = || MdnsConfig::new([InterfaceSelector::name(netns::HOST_IF)]);
    let mut observers = [
        start_in(
            lan.host(0),
            lan0(),
            local(random_id(), "listener", "0.0.0.0:7000"),
        ),
        start_in(
            lan.host(1),
            lan0().startup_query(false),
            local(random_id(), "browse", "0.0.0.0:7000"),
        ),
    ];
    audit_daemon_threads(&[lan.host(0), lan.host(1)]);
    let (x1, x2) = (random_id(), random_id());
    let datagram = lying_announcement(x1, x2, lan.addr(2));

    // The liar: a plain UDP socket made in host 2's namespace (it stays there), no mDNS.
    let from = lan.addr(2);
    let liar = netns::run_in(lan.host(2), move || {
        let socket = std::net::UdpSocket::bind((from, 0)).expect("bind");
        socket.set_multicast_ttl_v4(255).expect("ttl");
        socket
    })
    .expect("enter h2");
    let group: std::net::SocketAddr = "224.0.0.251:5353".parse().expect("group");
    let (x1_off, x2_off) = (
        [sock(std::net::Ipv4Addr::new(203, 0, 113, 5), 7301)],
        [sock(std::net::Ipv4Addr::new(203, 0, 113, 6), 7302)],
    );
    for observer in &mut observers {
        // Sent again (a few times at most) until this observer has heard it.
        let deadline = Instant::now() + STEP;
        let hint = loop {
            liar.send_to(&datagram, group).expect("send");
            let up = observer.wait_for(
                Duration::from_millis(200),
                |e| matches!(e, DiscoveryEvent::Up(h) if h.node_id == Some(x2)),
            );
            if let Some(DiscoveryEvent::Up(hint)) = up {
                break hint;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw x2: {:#?}",
                observer.id,
                observer.mdns.diagnostics()
            );
        };
        assert_eq!(
            hint.addrs,
            vec![sock(lan.addr(2), 7302)],
            "only the LAN address"
        );
        // The datagram that brought x2 up carried x1 too; the listener refuses x1 first (it
        // comes first in the datagram), mdns-sd's browse resolves the two instances in no set
        // order: wait (bounded) for both refusals to be recorded.
        let deadline = Instant::now() + STEP;
        let diagnostics = loop {
            let diagnostics = observer.mdns.diagnostics();
            let rejected = &diagnostics.rejected;
            if refused_off_link(rejected, x1, &x1_off) && refused_off_link(rejected, x2, &x2_off) {
                break diagnostics;
            }
            assert!(
                Instant::now() < deadline,
                "{} ({:?}): {rejected:#?}",
                observer.id,
                diagnostics.browser
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            diagnostics.peers.iter().all(|p| p.node_id != x1),
            "x1 is never a peer: {diagnostics:#?}"
        );
        assert!(
            observer.backlog.iter().all(|e| !matches!(
                e,
                DiscoveryEvent::Up(h) | DiscoveryEvent::Updated(h) if h.node_id == Some(x1)
            )),
            "{:?}",
            observer.backlog
        );
    }
    assert_eq!(
        observers.map(|o| o.mdns.diagnostics().browser),
        [Some(Browser::Shoal), Some(Browser::MdnsSd)]
    );
}
