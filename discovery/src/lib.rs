//! How Shoal nodes find each other.
//!
//! A discovery source turns "somewhere out there" into [`DiscoveryEvent`]s: hints that an
//! instance may be reachable at some addresses. Hints are not trusted: the node dials them and
//! the mutually authenticated TLS handshake proves who is there.
//!
//! Sources: [`StaticDiscovery`] (a fixed address list), [`MdnsDiscovery`] (mDNS/DNS-SD on
//! the interfaces its [`MdnsConfig`] selects) and [`DnsSdDiscovery`] (DNS-SD records, or SRV
//! records, served by a unicast DNS server; see [`dns_sd`]).
//!
//! ```
//! use shoal_discovery::{Discovery, DiscoveryEvent, LocalNode, StaticDiscovery};
//! use shoal_proto::NodeId;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut source = StaticDiscovery::new(["127.0.0.1:7001".parse().unwrap()]);
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let local = LocalNode {
//!     node_id: NodeId::from_u128(1),
//!     service: "invoice".into(),
//!     addrs: vec!["127.0.0.1:7000".parse().unwrap()],
//!     subscriptions: vec![],
//!     multicast: None,
//! };
//! source.start(&local, tx).unwrap();
//! let Some(DiscoveryEvent::Up(hint)) = rx.recv().await else { panic!("expected a hint") };
//! assert_eq!(hint.addrs, vec!["127.0.0.1:7001".parse().unwrap()]);
//! # }
//! ```
//!
//! # Features
//!
//! * `netns`: the `netns` module, helpers that build LANs of Linux network namespaces for tests and
//!   benchmarks (needs root at run time).

pub mod advert;
pub mod dns_sd;
mod event;
pub mod mdns;
#[cfg(all(feature = "netns", target_os = "linux"))]
pub mod netns;
mod root_netns;
mod static_peers;

pub use dns_sd::{DnsSdConfig, DnsSdDiscovery};
pub use event::{
    Discovery, DiscoveryError, DiscoveryEvent, DiscoveryReport, EventSender, LocalNode, PeerHint,
    Source,
};
pub use mdns::{Browser, InterfaceSelector, MdnsConfig, MdnsDiagnostics, MdnsDiscovery};
pub use root_netns::in_root_netns;
pub use static_peers::StaticDiscovery;
