//! The introduction: a node that just learnt from its start-up query that instances are on the
//! link tells them about itself at once, with one datagram to the mDNS group.
//!
//! # Why
//!
//! The start-up query ([`super::oneshot`]) lets a new node learn the instances already running
//! within milliseconds. The other direction relies on the new node's multicast announcements,
//! which mdns-sd sends twice, a second apart, and then holds back: a record is multicast at
//! most once a second (RFC 6762 §6). When many nodes start together (a deployment, a 200-node
//! mesh), the link carries hundreds of announcements and answers in the same second and
//! receive buffers overflow; a node that missed a newcomer's announcements learns of it only
//! at the newcomer's next one (`MdnsConfig::reannounce`).
//!
//! So once an instance has answered the start-up query on an interface, the new node sends
//! the same PTR, SRV, TXT and address records mdns-sd announces for it, with the same TTLs, to
//! the mDNS group on that interface: a third copy, from the query's socket, which mdns-sd's
//! once-a-second limit does not hold back, sent when the link is known to have listeners.
//! Shoal's listener ([`super::listen`]) and mdns-sd's browse both take it in as an
//! announcement. One datagram per interface, only at start, only on the selected interfaces.
//! (It went by unicast to each answering address before the listener: a node's listener
//! hears only the group, and unicast datagrams to port 5353 stay mdns-sd's.)
//!
//! The datagram comes from the start-up query's ephemeral port. RFC 6762 §6 asks receivers to
//! ignore responses from a source port other than 5353; Shoal and mdns-sd do not check it,
//! and other responders that do simply ignore the introduction and learn of the node from its
//! multicast announcements as before.

use std::net::{IpAddr, Ipv4Addr};

use hickory_resolver::proto::op::{Message, MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::{A, PTR, SRV, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record};

use super::announce::AnnouncePlan;
use super::record::{self, SERVICE_TYPE};
use crate::event::LocalNode;

/// TTL of host records (SRV, A), as mdns-sd sets them (RFC 6762 §10: 120 s).
const HOST_TTL: u32 = 120;
/// TTL of the other records (PTR, TXT), as mdns-sd sets them (RFC 6762 §10: 75 minutes).
const OTHER_TTL: u32 = 4500;

/// What this node introduces itself with: its own records, less the address, which depends on
/// the interface the introduction goes out of.
#[derive(Debug)]
pub(super) struct Introduction {
    instance: Name,
    host: Name,
    port: u16,
    txt: Vec<String>,
    plan: AnnouncePlan,
}

impl Introduction {
    /// The introduction of `local`, announced as `plan` says.
    pub(super) fn new(local: &LocalNode, plan: &AnnouncePlan) -> Result<Self, String> {
        let id = local.node_id.to_string();
        let name = |text: &str| Name::from_ascii(text).map_err(|e| format!("{text}: {e}"));
        Ok(Self {
            instance: name(&format!("{id}.{SERVICE_TYPE}"))?,
            host: name(&format!("{id}.local."))?,
            port: plan.port,
            txt: record::txt_entries(local)
                .into_iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
            plan: plan.clone(),
        })
    }

    /// The wire form of the introduction sent out of the interface whose IPv4 address is `ip`,
    /// or `None` if this node announces no address there.
    pub(super) fn message(&self, ip: Ipv4Addr) -> Option<Vec<u8>> {
        if !self.plan.announces(IpAddr::V4(ip)) {
            return None;
        }
        let service = Name::from_ascii(SERVICE_TYPE).ok()?;
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.metadata.authoritative = true;
        message.add_answer(Record::from_rdata(
            service,
            OTHER_TTL,
            RData::PTR(PTR(self.instance.clone())),
        ));
        message.add_additional(Record::from_rdata(
            self.instance.clone(),
            HOST_TTL,
            RData::SRV(SRV::new(0, 0, self.port, self.host.clone())),
        ));
        message.add_additional(Record::from_rdata(
            self.instance.clone(),
            OTHER_TTL,
            RData::TXT(TXT::new(self.txt.clone())),
        ));
        message.add_additional(Record::from_rdata(
            self.host.clone(),
            HOST_TTL,
            RData::A(A(ip)),
        ));
        message.to_vec().ok()
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::NodeId;

    use super::*;
    use crate::mdns::message::announcements;

    fn local(addr: &str) -> LocalNode {
        LocalNode {
            node_id: NodeId::from_u128(0x5e),
            service: "orders".into(),
            addrs: vec![addr.parse().expect("addr")],
            subscriptions: Vec::new(),
            multicast: Some("239.255.83.72:7451".parse().expect("group")),
        }
    }

    fn introduction(addr: &str) -> Introduction {
        let local = local(addr);
        let plan = AnnouncePlan::new(&local).expect("plan");
        Introduction::new(&local, &plan).expect("introduction")
    }

    #[test]
    fn the_introduction_reads_back_as_this_node_and_passes_the_checks() {
        let ip = Ipv4Addr::new(10, 99, 0, 3);
        let wire = introduction("0.0.0.0:7003").message(ip).expect("sent");
        let message = Message::from_vec(&wire).expect("decodes");
        assert_eq!(message.metadata.message_type, MessageType::Response);
        let found = announcements(&message);
        assert_eq!(found.len(), 1);
        let a = &found[0];
        assert_eq!(a.port, 7003);
        assert_eq!(a.addrs.len(), 1);
        assert_eq!(a.addrs[0].ip, IpAddr::V4(ip));
        // What a peer's checks make of it: this node, of service `orders`.
        let me = record::Me {
            node_id: NodeId::from_u128(1),
            service: "invoice".into(),
            port: 7000,
        };
        let record::Verdict::Peer(peer) = record::check(a, &me) else {
            panic!("not a valid announcement: {:?}", record::check(a, &me));
        };
        assert_eq!(peer.node_id, NodeId::from_u128(0x5e));
        assert_eq!(peer.service, "orders");
        assert_eq!(
            peer.multicast,
            Some("239.255.83.72:7451".parse().expect("group"))
        );
    }

    #[test]
    fn nothing_is_introduced_where_nothing_is_announced() {
        let listening_on_one_address = introduction("10.99.0.3:7003");
        assert!(
            listening_on_one_address
                .message(Ipv4Addr::new(10, 99, 0, 3))
                .is_some()
        );
        assert!(
            listening_on_one_address
                .message(Ipv4Addr::new(192, 168, 1, 3))
                .is_none(),
            "an address the node does not listen on is not announced"
        );
    }
}
