//! Helpers shared by the mDNS namespace tests: node ids, starting a source inside a namespace,
//! waiting for its events, and checking where the mDNS daemon threads run.
//!
//! Each test file includes this with `mod support;`.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_discovery::netns;
use shoal_discovery::{
    Discovery, DiscoveryEvent, LocalNode, MdnsConfig, MdnsDiscovery, PeerHint, in_root_netns,
};
use shoal_proto::NodeId;
use tokio::sync::mpsc::UnboundedReceiver;

/// Generous bound for one discovery step; typical times are tens of milliseconds.
pub(crate) const STEP: Duration = Duration::from_secs(5);

/// Goodbyes are TTL 0, which receivers keep for one more second (RFC 6762 §10.1).
pub(crate) const GOODBYE: Duration = Duration::from_secs(5);

/// Whether this process can build network namespaces; if not, prints a skip line for `test`.
pub(crate) fn netns_or_skip(test: &str) -> bool {
    netns::can_create_netns_or_say_skipped(test)
}

/// A fresh random node id.
pub(crate) fn random_id() -> NodeId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hi = RandomState::new().build_hasher();
    hi.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut lo = RandomState::new().build_hasher();
    lo.write_u128(Instant::now().elapsed().as_nanos());
    NodeId::from_u128(u128::from(hi.finish()) << 64 | u128::from(lo.finish()))
}

/// A local node with one listen address.
pub(crate) fn local(node_id: NodeId, service: &str, addr: &str) -> LocalNode {
    LocalNode {
        node_id,
        service: service.into(),
        addrs: vec![addr.parse().expect("listen address")],
        subscriptions: Vec::new(),
        multicast: None,
    }
}

/// A started source and its event stream. Drop stops it (goodbyes) before the LAN goes.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) mdns: MdnsDiscovery,
    events: UnboundedReceiver<DiscoveryEvent>,
    /// Events received while waiting for something else, oldest first.
    pub(crate) backlog: Vec<DiscoveryEvent>,
}

impl Node {
    /// Waits (at most `within`) for an event matching `pred`, looking at the backlog first.
    /// Events that do not match stay in the backlog.
    pub(crate) fn wait_for(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&DiscoveryEvent) -> bool,
    ) -> Option<DiscoveryEvent> {
        if let Some(pos) = self.backlog.iter().position(&mut pred) {
            return Some(self.backlog.remove(pos));
        }
        let rt = runtime();
        let deadline = Instant::now() + within;
        // Bounded by time and by count.
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rt.block_on(async { tokio::time::timeout(left, self.events.recv()).await }) {
                Ok(Some(event)) if pred(&event) => return Some(event),
                Ok(Some(event)) => self.backlog.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        None
    }

    pub(crate) fn expect_up(&mut self, peer: NodeId, within: Duration) -> PeerHint {
        match self.wait_for(within, is_up_of(peer)) {
            Some(DiscoveryEvent::Up(hint)) => hint,
            _ => panic!(
                "{} did not see {peer} come up within {within:?}; other events: {:?}; diagnostics: {:#?}",
                self.id,
                self.backlog,
                self.mdns.diagnostics()
            ),
        }
    }

    pub(crate) fn expect_down(&mut self, peer: NodeId, within: Duration) -> PeerHint {
        match self.wait_for(within, is_down_of(peer)) {
            Some(DiscoveryEvent::Down(hint)) => hint,
            _ => panic!(
                "{} did not see {peer} go down within {within:?}; other events: {:?}",
                self.id, self.backlog
            ),
        }
    }
}

/// Starts a source on a new thread inside namespace `ns`.
pub(crate) fn start_in(ns: &str, config: MdnsConfig, local: LocalNode) -> Node {
    let id = local.node_id;
    let (mdns, events) = netns::run_in(ns, move || {
        assert!(
            !in_root_netns(),
            "about to start mDNS in the root network namespace"
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut mdns = config.build();
        mdns.start(&local, tx).expect("start mDNS");
        (mdns, rx)
    })
    .expect("enter namespace");
    Node {
        id,
        mdns,
        events,
        backlog: Vec::new(),
    }
}

/// A single-threaded runtime to wait on an event channel from synchronous test code.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn is_up_of(id: NodeId) -> impl FnMut(&DiscoveryEvent) -> bool {
    move |e| matches!(e, DiscoveryEvent::Up(h) if h.node_id == Some(id))
}

fn is_down_of(id: NodeId) -> impl FnMut(&DiscoveryEvent) -> bool {
    move |e| matches!(e, DiscoveryEvent::Down(h) if h.node_id == Some(id))
}

/// Every mdns-sd daemon thread in the process is outside the root namespace, and each of
/// `namespaces` has at least one (so the daemon thread inherited its creator's namespace).
pub(crate) fn audit_daemon_threads(namespaces: &[&str]) {
    let root = netns::root_netns_inode().expect("root netns inode");
    let wanted: Vec<u64> = namespaces
        .iter()
        .map(|ns| netns::netns_inode(ns).expect("netns inode"))
        .collect();
    // A new thread names itself after it starts: poll briefly (bounded) for the names.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let threads = netns::mdns_daemon_thread_netns().expect("list threads");
        assert!(
            !threads.contains(&root),
            "an mDNS daemon thread runs in the root network namespace"
        );
        let missing: Vec<&&str> = namespaces
            .iter()
            .zip(&wanted)
            .filter(|(_, inode)| !threads.contains(inode))
            .map(|(ns, _)| ns)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no mDNS daemon thread in {missing:?}: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ip:port` as a socket address.
pub(crate) fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}
