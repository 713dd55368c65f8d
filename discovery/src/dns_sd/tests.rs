//! Tests of what DNS-SD records say about an instance, and of what a poll reports.

use super::*;

fn txt(entries: &[&str]) -> Vec<(String, Option<Vec<u8>>)> {
    entries
        .iter()
        .filter_map(|e| txt_entry(e.as_bytes()))
        .collect()
}

#[test]
fn txt_records_say_what_an_instance_is() {
    let id = "0123456789abcdef0123456789abcdef";
    let pv = format!("pv={PROTOCOL_VERSION}");
    let full = from_txt(&txt(&[
        "svc=billing",
        &format!("id={id}"),
        &pv,
        "mc=239.255.83.72:7451",
        "sn=1",
        "s0=order.* billing",
    ]))
    .expect("usable");
    assert_eq!(full.service, "billing");
    assert_eq!(
        full.node_id,
        Some(NodeId::from_u128(0x0123456789abcdef0123456789abcdef))
    );
    assert_eq!(full.subscriptions.map(|s| s.len()), Some(1));
    assert_eq!(
        full.multicast,
        Some("239.255.83.72:7451".parse().expect("group"))
    );

    let bare = from_txt(&txt(&["svc=billing"])).expect("svc alone is enough");
    assert_eq!(
        (bare.node_id, bare.subscriptions, bare.multicast),
        (None, None, None)
    );

    assert!(from_txt(&txt(&["id=0123"])).is_none(), "no svc");
    assert!(
        from_txt(&txt(&["svc=billing", "id=xyz"])).is_none(),
        "bad id"
    );
    assert!(
        from_txt(&txt(&["svc=billing", "pv=999"])).is_none(),
        "other protocol"
    );
    assert!(from_txt(&txt(&["svc"])).is_none(), "svc without a value");
    assert_eq!(txt_entry(b""), None);
    assert_eq!(txt_entry(b"=x"), None);
}

#[test]
fn names_are_made_fully_qualified() {
    assert_eq!(fqdn("mesh.example"), "mesh.example.");
    assert_eq!(fqdn("mesh.example."), "mesh.example.");
}

#[test]
fn a_group_is_read_whether_or_not_the_node_is_known_and_a_bad_one_ignored() {
    let group = Some("239.1.2.3:7000".parse().expect("group"));
    let without_id = from_txt(&txt(&["svc=audit", "mc=239.1.2.3:7000"])).expect("usable");
    assert_eq!(without_id.multicast, group);
    assert_eq!(without_id.hint().multicast, group, "carried in the hint");

    let id = "id=0123456789abcdef0123456789abcdef";
    let overlong = format!("mc=239.1.2.3:{}", "7".repeat(300));
    for bad in [
        "mc=garbage",
        "mc=[ff02::1]:7000",
        "mc=10.99.0.2:7000",
        "mc=239.1.2.3:0",
        "mc=239.1.2.3",
        "mc=",
        "mc",
        &overlong,
    ] {
        let found = from_txt(&txt(&["svc=billing", id, bad, "sn=0"]))
            .unwrap_or_else(|| panic!("`{bad}` made the record unusable"));
        assert_eq!(found.multicast, None, "{bad}");
        assert_eq!(found.subscriptions, Some(vec![]), "the rest still counts");
    }
    assert_eq!(txt_entry(b"mc=\xff").map(|(k, _)| k), Some("mc".to_owned()));
    let not_utf8 = vec![("mc".to_owned(), Some(vec![0xff, 0xfe]))];
    let mut record = txt(&["svc=billing"]);
    record.extend(not_utf8);
    assert_eq!(from_txt(&record).map(|f| f.multicast), Some(None));
}

fn found(node: Option<u128>, port: u16) -> Found {
    Found {
        node_id: node.map(NodeId::from_u128),
        service: "billing".into(),
        addrs: vec![SocketAddr::from(([10, 99, 0, 2], port))],
        subscriptions: None,
        multicast: None,
    }
}

fn described(events: &[DiscoveryEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            DiscoveryEvent::Up(h) => format!("Up {}", h.addrs[0].port()),
            DiscoveryEvent::Updated(h) => format!("Updated {}", h.addrs[0].port()),
            DiscoveryEvent::Down(h) => format!("Down {}", h.addrs[0].port()),
        })
        .collect()
}

#[test]
fn an_instance_whose_lookup_fails_stays_as_it_was() {
    let known = BTreeMap::from([
        ("a".to_owned(), found(None, 7001)),
        ("b".to_owned(), found(None, 7002)),
    ]);
    let polled = BTreeMap::from([
        ("a".to_owned(), Ok(found(None, 7001))),
        (
            "b".to_owned(),
            Err("TXT b: error response: SERVFAIL".to_owned()),
        ),
        (
            "c".to_owned(),
            Err("TXT c: error response: SERVFAIL".to_owned()),
        ),
    ]);
    let now = carry_over(&known, polled);
    assert_eq!(now, known, "b kept, c (never seen) left for the next poll");
    assert!(changes(&known, &now).is_empty());
}

#[test]
fn an_instance_that_changes_who_it_is_goes_down_then_up() {
    let before = |f: Found| BTreeMap::from([("a".to_owned(), f)]);
    // A node-less instance is named by its addresses alone.
    assert_eq!(
        described(&changes(
            &before(found(None, 7000)),
            &before(found(None, 7001))
        )),
        ["Down 7000", "Up 7001"]
    );
    // A known node moves.
    assert_eq!(
        described(&changes(
            &before(found(Some(1), 7000)),
            &before(found(Some(1), 7001))
        )),
        ["Updated 7001"]
    );
    // Another node at the same name.
    assert_eq!(
        described(&changes(
            &before(found(Some(1), 7000)),
            &before(found(Some(2), 7000))
        )),
        ["Down 7000", "Up 7000"]
    );
    assert_eq!(
        described(&changes(
            &before(found(None, 7000)),
            &before(found(Some(2), 7000))
        )),
        ["Down 7000", "Up 7000"]
    );
    // What it says changes, not who it is.
    let renamed = Found {
        service: "audit".into(),
        ..found(None, 7000)
    };
    assert_eq!(
        described(&changes(&before(found(None, 7000)), &before(renamed))),
        ["Updated 7000"]
    );
}

/// A DNS server on 127.0.0.1 for `_shoal._udp.mesh.test.`: instances `a` (SRV to the name
/// `host-a.mesh.test.`, port 7001) and `b` (SRV to `127.0.0.1.`, port 7002), both `svc=billing`.
/// While `failing` is set it answers SERVFAIL to b's TXT and to host-a's address queries.
mod fake_dns {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use hickory_resolver::proto::op::{Message, ResponseCode};
    use hickory_resolver::proto::rr::rdata::{A, PTR, SRV, TXT};
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
    use tokio::net::UdpSocket;

    pub(super) async fn start(failing: Arc<AtomicBool>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("address");
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let answer = answer(&query, failing.load(Ordering::SeqCst));
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        addr
    }

    fn answer(query: &Message, failing: bool) -> Message {
        let name = |s: &str| Name::from_ascii(s).expect("name");
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        let Some(q) = query.queries.first() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        response.add_query(q.clone());
        let asked = q.name().to_ascii().to_ascii_lowercase();
        let record = |rdata: RData| Record::from_rdata(q.name().clone(), 0, rdata);
        let (a, b) = ("a._shoal._udp.mesh.test.", "b._shoal._udp.mesh.test.");
        match (asked.as_str(), q.query_type()) {
            ("_shoal._udp.mesh.test.", RecordType::PTR) => {
                response.add_answer(record(RData::PTR(PTR(name(a)))));
                response.add_answer(record(RData::PTR(PTR(name(b)))));
            }
            (n, RecordType::TXT) if n == b && failing => {
                response.metadata.response_code = ResponseCode::ServFail;
            }
            (n, RecordType::TXT) if n == a || n == b => {
                response.add_answer(record(RData::TXT(TXT::new(vec!["svc=billing".into()]))));
            }
            (n, RecordType::SRV) if n == a => {
                let target = name("host-a.mesh.test.");
                response.add_answer(record(RData::SRV(SRV::new(0, 0, 7001, target))));
            }
            (n, RecordType::SRV) if n == b => {
                let target = name("127.0.0.1.");
                response.add_answer(record(RData::SRV(SRV::new(0, 0, 7002, target))));
            }
            ("host-a.mesh.test.", _) if failing => {
                response.metadata.response_code = ResponseCode::ServFail;
            }
            ("host-a.mesh.test.", RecordType::A) => {
                response.add_answer(record(RData::A(A(Ipv4Addr::LOCALHOST))));
            }
            ("host-a.mesh.test.", _) => {}
            _ => response.metadata.response_code = ResponseCode::NXDomain,
        }
        response
    }
}

/// A DNS server failing an instance's lookups (SERVFAIL, after the resolver's retries) does not
/// make the instance vanish: the poll keeps it as it was.
#[tokio::test]
async fn instances_whose_lookups_fail_are_kept_through_a_poll() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let failing = Arc::new(AtomicBool::new(false));
    let server = fake_dns::start(Arc::clone(&failing)).await;
    let config = DnsSdConfig::browse("mesh.test").server(server);
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut poller = Poller {
        resolver: resolver(&config).expect("resolver"),
        config,
        me: NodeId::from_u128(0xe),
        events,
        known: BTreeMap::new(),
    };
    async fn poll(
        poller: &mut Poller,
        received: &mut tokio::sync::mpsc::UnboundedReceiver<DiscoveryEvent>,
    ) -> Vec<String> {
        let polled = tokio::time::timeout(Duration::from_secs(20), poller.poll())
            .await
            .expect("a poll within 20 s")
            .expect("the browse answers");
        let found = carry_over(&poller.known, polled);
        assert!(poller.apply(found));
        let mut told = Vec::new();
        while let Ok(event) = received.try_recv() {
            told.extend(described(&[event]));
        }
        told
    }
    assert_eq!(
        poll(&mut poller, &mut received).await,
        ["Up 7001", "Up 7002"]
    );
    failing.store(true, Ordering::SeqCst);
    assert_eq!(
        poll(&mut poller, &mut received).await,
        Vec::<String>::new(),
        "nothing vanished"
    );
    assert_eq!(
        poller.known.keys().collect::<Vec<_>>(),
        ["a._shoal._udp.mesh.test.", "b._shoal._udp.mesh.test."]
    );
    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        poll(&mut poller, &mut received).await,
        Vec::<String>::new(),
        "nothing came back"
    );
}
