//! [`Revocations`]: the serials a running node refuses, shared between the user and the node's
//! TLS verifiers.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use super::{CertSerial, RevocationList};

/// The certificates a node refuses, by serial: a cheap cloneable handle whose changes take
/// effect at once.
///
/// A handshake with a peer whose certificate is revoked is refused (in both directions, with
/// a reason that names the serial), and the node closes the live connections of peers whose
/// certificate becomes revoked. Give one to [`crate::NodeBuilder::revocations`], or change
/// the node's own set through [`crate::Node::revocations`]. Fill it by hand
/// ([`Revocations::revoke`]) or from the signed lists of the mesh CAs
/// ([`Revocations::replace_with_lists`]).
///
/// Serials are compared without their issuer: Shoal's serials are 16 random bytes, so two CAs
/// never issue the same one by chance.
#[derive(Clone)]
pub struct Revocations {
    set: Arc<watch::Sender<BTreeSet<CertSerial>>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.set.borrow().iter()).finish()
    }
}

impl Revocations {
    /// An empty set: nothing revoked.
    pub fn new() -> Self {
        Self {
            set: Arc::new(watch::Sender::new(BTreeSet::new())),
        }
    }

    /// Revokes `serial`. Returns whether it was new.
    pub fn revoke(&self, serial: CertSerial) -> bool {
        self.set.send_if_modified(|set| set.insert(serial))
    }

    /// Takes `serial` off the set (a mistaken revocation). Returns whether it was there.
    pub fn reinstate(&self, serial: &CertSerial) -> bool {
        self.set.send_if_modified(|set| set.remove(serial))
    }

    /// Makes the set exactly `serials`. Returns whether that changed it.
    pub fn replace(&self, serials: impl IntoIterator<Item = CertSerial>) -> bool {
        let new: BTreeSet<CertSerial> = serials.into_iter().collect();
        self.set.send_if_modified(|set| {
            let changed = *set != new;
            if changed {
                *set = new;
            }
            changed
        })
    }

    /// Makes the set exactly what `lists` revoke together (one list per CA, say). Returns
    /// whether that changed it.
    pub fn replace_with_lists<'a>(
        &self,
        lists: impl IntoIterator<Item = &'a RevocationList>,
    ) -> bool {
        self.replace(lists.into_iter().flat_map(|list| list.serials().cloned()))
    }

    /// Whether `serial` is revoked.
    pub fn is_revoked(&self, serial: &CertSerial) -> bool {
        self.set.borrow().contains(serial)
    }

    /// The revoked serials, in order.
    pub fn serials(&self) -> Vec<CertSerial> {
        self.set.borrow().iter().cloned().collect()
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.set.borrow().len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.set.borrow().is_empty()
    }

    /// A receiver that wakes whenever the set changes (for the node's task that closes the
    /// connections of newly revoked peers).
    pub(crate) fn watch(&self) -> watch::Receiver<BTreeSet<CertSerial>> {
        self.set.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(n: u8) -> CertSerial {
        CertSerial::from_bytes(&[n])
    }

    #[test]
    fn changes_are_shared_by_every_clone_and_wake_watchers() {
        let revocations = Revocations::new();
        let clone = revocations.clone();
        let mut watcher = revocations.watch();
        assert!(revocations.is_empty());

        assert!(revocations.revoke(serial(1)));
        assert!(!clone.revoke(serial(1)), "already revoked");
        assert!(clone.is_revoked(&serial(1)));
        assert!(watcher.has_changed().unwrap_or(false));
        watcher.borrow_and_update();

        assert!(!revocations.replace([serial(1)]), "same set: no change");
        assert!(!watcher.has_changed().unwrap_or(true));
        assert!(revocations.replace([serial(2), serial(3)]));
        assert_eq!(clone.serials(), vec![serial(2), serial(3)]);
        assert!(clone.reinstate(&serial(2)));
        assert!(!clone.reinstate(&serial(2)));
        assert_eq!(revocations.len(), 1);
        assert_eq!(format!("{revocations:?}"), "{CertSerial(03)}");
    }
}
