//! What the outbox tests on real sockets share: a scratch database with its CA, and the
//! nodes around it.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::Arc;

use shoal::outbox::{OutboxStore, RelayOptions, SqliteOutbox};
use shoal::{MeshCa, Node};

/// A node of `service` with a certificate from `ca`, trusting it.
pub fn node(ca: &MeshCa, service: &str) -> shoal::NodeBuilder {
    Node::builder(service)
        .identity(ca.issue(service).unwrap())
        .trust(ca.clone())
}

/// A scratch folder holding `orders.db`, and a CA for the test's nodes; the folder goes on drop.
pub struct Fixture {
    pub dir: PathBuf,
    pub path: PathBuf,
    pub ca: MeshCa,
}

impl Fixture {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shoal-outbox-{name}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            path: dir.join("orders.db"),
            ca: MeshCa::generate(&format!("outbox {name} test")).unwrap(),
            dir,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `orders` node, relaying `outbox` with `options`.
pub fn publisher(
    ca: &MeshCa,
    outbox: &Arc<SqliteOutbox>,
    options: RelayOptions,
) -> shoal::NodeBuilder {
    let store = Arc::clone(outbox) as Arc<dyn OutboxStore>;
    node(ca, "orders").outbox(store, options)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
