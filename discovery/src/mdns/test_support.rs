//! What the mDNS unit tests share: a peer's names and the table of a node that sees it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record};
use shoal_proto::{NodeId, PROTOCOL_VERSION};

use super::record::{Me, SERVICE_TYPE};
use super::state::State;

/// The peer the tests announce.
pub(super) const PEER: u128 = 0xabc;

/// A DNS name.
pub(super) fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("name")
}

/// The peer's DNS-SD full name.
pub(super) fn instance() -> String {
    format!("{}.{SERVICE_TYPE}", NodeId::from_u128(PEER))
}

/// The peer's records, all with `ttl`, as a responder sends them: PTR, SRV, TXT (if
/// `with_txt`), A 10.99.0.1 and AAAA `v6` (if given); SRV port 7000, service `invoice`.
pub(super) fn peer_records(ttl: u32, with_txt: bool, v6: Option<Ipv6Addr>) -> Vec<Record> {
    let host = name("host-abc.local.");
    let mut records = vec![
        Record::from_rdata(name(SERVICE_TYPE), ttl, RData::PTR(PTR(name(&instance())))),
        Record::from_rdata(
            name(&instance()),
            ttl,
            RData::SRV(SRV::new(0, 0, 7000, host.clone())),
        ),
    ];
    if with_txt {
        records.push(Record::from_rdata(
            name(&instance()),
            ttl,
            RData::TXT(TXT::new(vec![
                "svc=invoice".into(),
                format!("id={}", NodeId::from_u128(PEER)),
                format!("pv={PROTOCOL_VERSION}"),
            ])),
        ));
    }
    records.push(Record::from_rdata(
        host.clone(),
        ttl,
        RData::A(A(Ipv4Addr::new(10, 99, 0, 1))),
    ));
    if let Some(v6) = v6 {
        records.push(Record::from_rdata(host, ttl, RData::AAAA(AAAA(v6))));
    }
    records
}

/// The table of node 1 (service `orders`, port 7000), which sees the peer.
pub(super) fn state() -> Arc<Mutex<State>> {
    let me = Me {
        node_id: NodeId::from_u128(1),
        service: "orders".into(),
        port: 7000,
    };
    Arc::new(Mutex::new(State::new(me)))
}
