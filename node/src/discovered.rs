//! What discovery announced, apart from what is connected: [`Node::discovered`], and this
//! node's own announcement following its subscriptions.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_discovery::{LocalNode, Source};
use shoal_proto::{NodeId, Subscription};

use crate::Node;
use crate::runtime::Driver;
use crate::sync::lock;

/// How long a change of subscriptions waits before the announcement is updated, so the
/// subscriptions a service makes at start go out in one announcement.
const ANNOUNCE_AFTER: Duration = Duration::from_millis(50);

/// An instance a discovery source announced, as [`Node::discovered`] lists it. Discovering an
/// instance is not connecting to it: `connected` says whether a connection stands for it now
/// (one is made when something is sent to it).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveredInstance {
    /// Its node id.
    pub node: NodeId,
    /// The service it is an instance of.
    pub service: String,
    /// Where its announcement says it listens.
    pub addrs: Vec<SocketAddr>,
    /// Which kind of source announced it.
    pub source: Source,
    /// The subscriptions its announcement advertises; `None` when it does not say (this node
    /// then stays connected to it, to learn them over the connection).
    pub subscriptions: Option<Vec<Subscription>>,
    /// The multicast group and port its announcement advertises (TXT `mc`): `None` when it
    /// has multicast off, is an older node, or its source does not say. A node with multicast
    /// on logs a warning for an instance on another group: events between the two go by
    /// unicast (see [`crate::NodeBuilder::multicast`]).
    pub multicast: Option<SocketAddrV4>,
    /// Whether a live connection stands for it.
    pub connected: bool,
}

impl Node {
    /// The instances discovery sources announced (mDNS, DNS-SD; static peer addresses are not
    /// announcements), connected or not, sorted by service and node id. [`Node::peers`] lists
    /// the connected ones.
    pub fn discovered(&self) -> Vec<DiscoveredInstance> {
        let mut found: Vec<DiscoveredInstance> = self
            .driver()
            .read(|engine| engine.discovered_instances())
            .into_iter()
            .map(|d| DiscoveredInstance {
                node: d.node,
                service: d.known.service,
                addrs: d.known.addrs,
                source: d.known.source,
                subscriptions: d.known.subscriptions,
                multicast: d.known.multicast,
                connected: d.connected,
            })
            .collect();
        found.sort_by(|a, b| (&a.service, a.node).cmp(&(&b.service, b.node)));
        found
    }
}

/// Keeps this node's announcement in step with its subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Announcer {
    /// An update is scheduled and has not run yet.
    pending: AtomicBool,
}

impl Driver {
    /// This node's subscriptions changed: the discovery sources announce them (shortly, so
    /// changes made together go out together).
    pub(crate) fn subscriptions_changed(self: &Arc<Self>) {
        if self.announcer.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let driver = Arc::clone(self);
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(ANNOUNCE_AFTER) => {}
                () = driver.stopping.cancelled() => return,
            }
            driver.announcer.pending.store(false, Ordering::Release);
            let local = LocalNode {
                node_id: driver.id,
                service: driver.service.clone(),
                addrs: driver.endpoint.local_addr().into_iter().collect(),
                subscriptions: driver.read(|engine| engine.local_subscriptions()),
                multicast: driver.config.multicast_group(),
            };
            // Sources only queue the new announcement (mDNS hands it to its daemon thread).
            for source in lock(&driver.discovery).iter_mut() {
                source.update(&local);
            }
        });
    }
}
