//! What the mDNS unit tests share: a peer's names and the table of a node that sees it.

use std::sync::{Arc, Mutex};

use hickory_resolver::proto::rr::Name;
use shoal_proto::NodeId;

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

/// The table of node 1 (service `orders`, port 7000), which sees the peer.
pub(super) fn state() -> Arc<Mutex<State>> {
    let me = Me {
        node_id: NodeId::from_u128(1),
        service: "orders".into(),
        port: 7000,
    };
    Arc::new(Mutex::new(State::new(me)))
}
