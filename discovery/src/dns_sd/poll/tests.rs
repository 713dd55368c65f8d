//! Tests of what a poll reports: an instance whose lookup failed kept as it was, the events
//! of an instance that changes, and a whole poll against a fake DNS server on 127.0.0.1.

use std::time::Duration;

use shoal_proto::NodeId;

use super::super::{DnsSdConfig, resolver};
use super::*;

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
