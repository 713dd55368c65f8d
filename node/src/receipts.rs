//! What a call ends with: proof of delivery, and what the node tells about its peers.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::{MessageId, NodeId};

/// Proof that a message was handled: returned by [`crate::Node::send`] once the receiver acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The message's id.
    pub id: MessageId,
    /// The instance whose handler finished it.
    pub node: NodeId,
    /// Delivery attempts it took (1 if the first one succeeded).
    pub attempts: u32,
}

/// What became of a published event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The event's message id.
    pub id: MessageId,
    /// One entry per audience: acknowledged (reliable) or queued (best-effort). Empty for a
    /// background publish, which returns before any copy is sent.
    pub deliveries: Deliveries,
    /// Copies that were dropped, named by audience: best-effort copies that found their
    /// subscriber's queue full or no live instance, and reliable copies whose audience
    /// unsubscribed while they were on the way ([`crate::Error::AudienceGone`]).
    pub dropped: Vec<String>,
}

/// The audiences' copies of an event ([`PublishReceipt::deliveries`]): a list of
/// [`EventDelivery`], read as a slice (`len`, `iter`, `[i]`, `for d in &deliveries`, `to_vec`).
///
/// Cheap to clone: the events of calls gathered in one turn (README, "Calls gathered in one
/// turn") went to the same audiences together, and their receipts share one list rather
/// than each holding a copy.
///
/// ```
/// # fn show(receipt: &shoal::PublishReceipt) {
/// for copy in &receipt.deliveries {
///     println!("{:?} took it after {} attempt(s)", copy.group, copy.attempts);
/// }
/// let groups: Vec<_> = receipt.deliveries.iter().filter_map(|d| d.group.as_deref()).collect();
/// # let _ = groups;
/// # }
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Deliveries(Option<Arc<[EventDelivery]>>);

impl Deref for Deliveries {
    type Target = [EventDelivery];

    fn deref(&self) -> &[EventDelivery] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl<'a> IntoIterator for &'a Deliveries {
    type Item = &'a EventDelivery;
    type IntoIter = std::slice::Iter<'a, EventDelivery>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// By value, as a `Vec` was: each entry is cloned out of the shared list.
impl IntoIterator for Deliveries {
    type Item = EventDelivery;
    type IntoIter = std::vec::IntoIter<EventDelivery>;

    fn into_iter(self) -> Self::IntoIter {
        let owned: Vec<EventDelivery> = self.iter().cloned().collect();
        owned.into_iter()
    }
}

impl From<Vec<EventDelivery>> for Deliveries {
    /// The entries move into one shared allocation; none when empty (a background
    /// publish's receipt).
    fn from(copies: Vec<EventDelivery>) -> Self {
        Self((!copies.is_empty()).then(|| copies.into()))
    }
}

impl fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One audience's copy of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventDelivery {
    /// The subscriber group, or `None` for an ungrouped subscriber instance.
    pub group: Option<String>,
    /// The instance that took the copy.
    pub node: NodeId,
    /// Delivery attempts (1 when the first one was acked; 1 for best-effort copies).
    pub attempts: u32,
}

/// A live peer, as listed by [`crate::Node::peers`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's node id.
    pub node: NodeId,
    /// The service it is an instance of.
    pub service: String,
    /// Its address as seen from here.
    pub addr: SocketAddr,
    /// QUIC's smoothed round-trip estimate.
    pub rtt: Duration,
    /// Messages sent to it and not yet acknowledged.
    pub in_flight: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(group: Option<&str>, attempts: u32) -> EventDelivery {
        EventDelivery {
            group: group.map(str::to_owned),
            node: NodeId::from_u128(7),
            attempts,
        }
    }

    #[test]
    fn deliveries_read_as_a_slice_and_print_as_a_list() {
        let list = vec![copy(Some("billing"), 1), copy(None, 2)];
        let deliveries = Deliveries::from(list.clone());
        assert_eq!(deliveries.len(), 2);
        assert_eq!(deliveries[1].attempts, 2);
        let groups: Vec<_> = (&deliveries).into_iter().map(|d| d.group.clone()).collect();
        assert_eq!(groups, [Some("billing".to_owned()), None]);
        assert_eq!(format!("{deliveries:?}"), format!("{list:?}"));
        assert_eq!(deliveries.clone(), deliveries);
        let owned: Vec<EventDelivery> = deliveries.into_iter().collect();
        assert_eq!(owned, list);
    }

    #[test]
    fn no_copies_is_the_empty_list() {
        let none = Deliveries::from(Vec::new());
        assert_eq!(none, Deliveries::default());
        assert!(none.is_empty());
        assert_eq!(format!("{none:?}"), "[]");
    }
}
