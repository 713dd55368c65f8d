//! Which outbox rows are waiting for a receiver that is away.
//!
//! A row for a service with no live instance, or an event one of whose subscriber groups is
//! remembered but has no live instance, stays in flight (its delivery waits for that
//! receiver) possibly for hours. Such rows must not count against the relay's window, or a
//! few hundred of them would stop every other row. The relay asks this module at a row's start
//! and again whenever the peers change.

use std::collections::HashMap;

use super::store::{Destination, OutboxRow};
use crate::Node;

/// Who a row in flight is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Receiver {
    /// A point-to-point message to this service.
    Service(String),
    /// An event on this topic, for every audience.
    Topic(String),
}

impl Receiver {
    /// The receiver of `row`.
    pub(super) fn of(row: &OutboxRow) -> Self {
        match &row.destination {
            Destination::Service(service) => Self::Service(service.clone()),
            Destination::Publish => Self::Topic(row.message.name().to_owned()),
        }
    }
}

/// Answers "is this receiver away?" against the node's peers, once per receiver per pass.
pub(super) struct Absence<'a> {
    node: &'a Node,
    known: HashMap<Receiver, bool>,
}

impl<'a> Absence<'a> {
    /// A pass over the peers as they are now.
    pub(super) fn new(node: &'a Node) -> Self {
        Self {
            node,
            known: HashMap::new(),
        }
    }

    /// Whether a delivery to `receiver` waits for an instance to appear: a service with no
    /// live instance, or a topic with an audience (a remembered or expected group) that has
    /// none. A topic nobody subscribes to is not waiting: such a row ends at once and is read
    /// again later.
    pub(super) fn away(&mut self, receiver: &Receiver) -> bool {
        if let Some(&away) = self.known.get(receiver) {
            return away;
        }
        let away = match receiver {
            Receiver::Service(service) => !self.node.has_live_instance(service),
            Receiver::Topic(topic) => self
                .node
                .subscribers(topic)
                .iter()
                .any(|(_, instances)| instances.is_empty()),
        };
        self.known.insert(receiver.clone(), away);
        away
    }
}
