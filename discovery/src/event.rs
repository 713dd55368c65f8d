//! The contract between discovery sources and the node.

use std::net::{SocketAddr, SocketAddrV4};

use shoal_proto::{NodeId, Subscription};
use thiserror::Error;

/// The channel a source sends its events on.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<DiscoveryEvent>;

/// What the local node tells a source about itself, so the source can announce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// This node's id.
    pub node_id: NodeId,
    /// The service this node is an instance of.
    pub service: String,
    /// The addresses this node accepts QUIC connections on.
    pub addrs: Vec<SocketAddr>,
    /// The topic patterns (with groups) this node subscribes to, to advertise where the source
    /// can, so publishers learn of them without connecting ([`Discovery::update`] is called
    /// when they change).
    pub subscriptions: Vec<Subscription>,
    /// The multicast group and port this node sends and receives events on, when it has
    /// multicast on; sources that announce advertise it (TXT `mc`, see [`crate::advert`]) so
    /// operators see who is on which group. `None`: multicast is off (nothing is advertised).
    pub multicast: Option<SocketAddrV4>,
}

/// Which kind of source produced an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// A configured static peer or seed address.
    Static,
    /// An mDNS/DNS-SD announcement.
    Mdns,
    /// A DNS-SD record set served by a unicast DNS server.
    DnsSd,
}

/// A hint that an instance may be reachable. Fields a source does not know are `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHint {
    /// The instance's node id, if the source knows it (mDNS does, static addresses do not).
    pub node_id: Option<NodeId>,
    /// The instance's service, if the source knows it.
    pub service: Option<String>,
    /// Where to dial it.
    pub addrs: Vec<SocketAddr>,
    /// Where the hint came from.
    pub source: Source,
    /// The subscriptions the instance advertises, if its announcement says (`Some(vec![])`:
    /// it says it has none). `None`: unknown, so the node connects to learn them.
    pub subscriptions: Option<Vec<Subscription>>,
    /// The multicast group and port the instance advertises (TXT `mc`, see
    /// [`crate::advert`]). `None`: multicast is off there, the instance is older, the source
    /// does not say (static peers, SRV-only DNS-SD), or the value was not an IPv4 multicast
    /// group with a port (ignored, the announcement still counts). For information only:
    /// whether two nodes share a group is settled over their connection.
    pub multicast: Option<SocketAddrV4>,
}

/// Something a discovery source noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryEvent {
    /// An instance appeared.
    Up(PeerHint),
    /// An instance already seen changed (for example its addresses). Its node id is the one
    /// it was seen with: an instance whose node id changes, or whose node is unknown and whose
    /// addresses change (the addresses are all that name it), is reported as `Down` (the old
    /// hint) then `Up` (the new one).
    Updated(PeerHint),
    /// An instance said goodbye or its announcement expired.
    Down(PeerHint),
}

/// Why a discovery source could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The source's configuration is unusable.
    #[error("invalid discovery configuration: {0}")]
    Config(String),
    /// The source could not open what it needs (sockets, interfaces).
    #[error("discovery could not start: {0}")]
    Start(String),
}

/// What a source currently believes and what it refused, for logs and `/status`-style output.
///
/// Sources fill in what they know; the default is an empty report. Build one with
/// [`DiscoveryReport::default`] and set the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryReport {
    /// Which kind of source wrote the report (`None` for the trait's default report).
    pub source: Option<Source>,
    /// Whether the source is started and not yet stopped.
    pub running: bool,
    /// The instances the source currently reports as up.
    pub peers: Vec<PeerHint>,
    /// Recently refused announcements, one human-readable line each (bounded by the source).
    pub rejected: Vec<String>,
    /// How many announcements the source refused since it started.
    pub rejected_total: u64,
    /// Anything else worth showing (errors from the network layer, interface changes).
    pub notes: Vec<String>,
}

/// A source of [`DiscoveryEvent`]s. The node starts each configured source once and stops it
/// on shutdown.
pub trait Discovery: Send + 'static {
    /// Starts announcing `local` (if this source announces) and sending events to `events`.
    fn start(&mut self, local: &LocalNode, events: EventSender) -> Result<(), DiscoveryError>;

    /// The local node's announcement changed (its subscriptions): sources that announce
    /// announce the new one. Called from the node's runtime; must not block for long.
    fn update(&mut self, local: &LocalNode) {
        let _ = local;
    }

    /// Stops the source; sources that announce send their goodbyes here.
    fn stop(&mut self) {}

    /// A snapshot of the source's state, for diagnostics. Cheap; never blocks on the network.
    fn report(&self) -> DiscoveryReport {
        DiscoveryReport::default()
    }
}
