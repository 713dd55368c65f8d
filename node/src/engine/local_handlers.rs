//! This node's own handlers and subscriptions: whom a message that arrives is handed to (a
//! handler by its name; subscriptions by topic pattern and group), and what every peer is
//! told this node subscribes to (the first subscription of a pattern and group is announced,
//! the last one withdrawn).

use std::collections::HashMap;

use shoal_proto::{Frame, Subscription, To};
use smallvec::SmallVec;

use super::action::ConnId;
use super::{Engine, topic};

/// A local subscription, as [`crate::Subscription`] handles name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SubId(u64);

/// The handlers by message name, and the subscriptions with their handlers.
#[derive(Debug)]
pub(super) struct LocalHandlers<H> {
    /// Looked up on every run of messages that arrives: foldhash, seeded per process (SipHash
    /// was 3 % of a receiver's instructions for single sends). Only this node's own names are
    /// in it; a peer's names are only looked up.
    handlers: HashMap<String, H, foldhash::fast::RandomState>,
    subs: Vec<(SubId, Subscription, H)>,
    next_sub: u64,
}

impl<H: Clone> LocalHandlers<H> {
    pub(super) fn new() -> Self {
        Self {
            handlers: HashMap::default(),
            subs: Vec::new(),
            next_sub: 0,
        }
    }

    /// This node's own subscriptions (a metrics gauge).
    pub(super) fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// The handlers a message run for `to` with this name or topic goes to.
    pub(super) fn handlers_for(&self, to: &To, name: &str) -> SmallVec<[H; 1]> {
        match to {
            To::Handler => match self.handlers.get(name) {
                Some(handler) => SmallVec::from_buf([handler.clone()]),
                None => SmallVec::new(),
            },
            To::Group(_) | To::Instance => {
                let group = to.group();
                self.subs
                    .iter()
                    .filter(|(_, s, _)| {
                        s.group.as_deref() == group && topic::matches(&s.pattern, name)
                    })
                    .map(|(_, _, h)| h.clone())
                    .collect()
            }
        }
    }

    /// Each distinct pattern and group, as peers know them.
    pub(super) fn distinct_subscriptions(&self) -> Vec<Subscription> {
        let mut out: Vec<Subscription> = Vec::new();
        for (_, sub, _) in &self.subs {
            if !out.contains(sub) {
                out.push(sub.clone());
            }
        }
        out
    }
}

impl<H: Clone> Engine<H> {
    /// Registers the handler for messages named `name`, replacing any earlier one.
    pub(crate) fn set_handler(&mut self, name: String, handler: H) {
        self.inbound.local.handlers.insert(name, handler);
    }

    /// Adds a local subscription; the first with its pattern and group is announced to every
    /// peer (in order with everything else on each connection).
    pub(crate) fn subscribe(&mut self, sub: Subscription, handler: H) -> SubId {
        self.inbound.local.next_sub += 1;
        let id = SubId(self.inbound.local.next_sub);
        let first = !self.inbound.local.subs.iter().any(|(_, s, _)| *s == sub);
        self.inbound.local.subs.push((id, sub.clone(), handler));
        if first {
            self.tell_all(&Frame::Subscribe(sub));
        }
        id
    }

    /// Removes a local subscription; the last with its pattern and group is withdrawn from
    /// every peer. Events already on their way are refused with a retryable nack.
    pub(crate) fn unsubscribe(&mut self, id: SubId) {
        let Some(at) = self
            .inbound
            .local
            .subs
            .iter()
            .position(|(i, _, _)| *i == id)
        else {
            return;
        };
        let (_, sub, _) = self.inbound.local.subs.remove(at);
        if !self.inbound.local.subs.iter().any(|(_, s, _)| *s == sub) {
            self.tell_all(&Frame::Unsubscribe(sub));
        }
    }

    /// Queues `frame` (a subscription's announcement or withdrawal) on every connection.
    pub(super) fn tell_all(&mut self, frame: &Frame) {
        let conns: Vec<ConnId> = self.conns.keys().collect();
        for conn in conns {
            self.queue_control(conn, frame);
        }
    }
}
