//! Enforcing the authorization policy ([`crate::policy`]) where messages, events and
//! subscriptions arrive, and where this node publishes and subscribes.
//!
//! The service every question names is the one the peer's certificate proves: a [`Conn`]'s
//! `service` is what the transport's handshake checked against the certificate
//! (`transport/handshake.rs`), never a claim of the peer's.
//!
//! - A run of commands, requests, documents or asynchronous replies (`To::Handler`) is asked
//!   `may_send(sender, this service, name)`; a run of event copies (`To::Group`,
//!   `To::Instance`) `may_publish(publisher, topic)`. A refused run is refused whole with a
//!   permanent [`NackCode::NotAuthorized`](shoal_proto::NackCode::NotAuthorized) nack before
//!   the dedup window or any handler sees it, so its sender dead-letters it with the reason.
//! - A peer's subscription the policy refuses is not added to the audiences: it gets no
//!   events. So is a subscription an announcement advertises (discovery), checked against the
//!   service the announcement names; since nothing certifies that name, an announced
//!   instance's advertised subscriptions count only while its connection (if any) is of that
//!   service, and a connection claiming the node id of an instance announced under another
//!   service is refused (`Peers::admit`).
//! - This node's own publishes and subscriptions are checked before anything is sent, and fail
//!   at once with [`Error::NotAuthorized`].
//!
//! Every refusal is counted ([`crate::NodeStats`]'s `unauthorized_*`) and raised as a
//! [`NodeEvent::NotAuthorized`].
//!
//! # Cost
//! [`Guard`] works out once, when the engine is made, which questions the policy can ever
//! answer "no" to. Under the default policy (allow everything) none: a run of messages then
//! costs one branch, whatever its length (a run shares its name or topic and its sender).
//!
//! [`Conn`]: super::conn::Conn

use std::sync::Arc;

use shoal_proto::{Head, NodeId, To};

use super::Engine;
use super::action::ConnId;
use crate::policy::{Decision, Denial, Policy, Section};
use crate::{Error, NodeEvent};

/// The node's policy, with what it can refuse worked out once.
#[derive(Debug)]
pub(super) struct Guard {
    policy: Arc<Policy>,
    /// No run that arrives can be refused: neither this service's accept rules nor any
    /// publish rule can say no.
    pub(super) open_inbound: bool,
    /// No peer's subscription can be refused.
    pub(super) open_peer_subscribe: bool,
    /// This node may publish every topic.
    open_publish: bool,
    /// This node may subscribe to every pattern.
    open_subscribe: bool,
}

impl Guard {
    /// The guard of `policy` for a node of `service`.
    pub(super) fn new(policy: Arc<Policy>, service: &str) -> Self {
        let can = |section, service| policy.can_refuse(section, service);
        Self {
            open_inbound: !can(Section::Accept, Some(service)) && !can(Section::Publish, None),
            open_peer_subscribe: !can(Section::Subscribe, None),
            open_publish: !can(Section::Publish, Some(service)),
            open_subscribe: !can(Section::Subscribe, Some(service)),
            policy,
        }
    }
}

impl<H: Clone> Engine<H> {
    /// Asks the policy about a run of `count` messages under `head` that arrived on `conn`,
    /// unless it cannot refuse anything that arrives (the caller checks
    /// `self.guard.open_inbound` first). Refused: counted, told in an event, and the reason
    /// returned, for the caller to nack every message with.
    pub(super) fn refuse_unauthorized_run(
        &mut self,
        conn: ConnId,
        head: &Head,
        count: usize,
    ) -> Option<String> {
        let c = self.conns.get(conn)?;
        let decision = match &head.to {
            To::Handler => self
                .guard
                .policy
                .may_send(&c.service, &self.service, &head.name),
            To::Group(_) | To::Instance => self.guard.policy.may_publish(&c.service, &head.name),
        };
        let node = c.node;
        let denial = denied(decision)?;
        match head.to {
            To::Handler => self.stats.unauthorized_messages += count as u64,
            To::Group(_) | To::Instance => self.stats.unauthorized_events += count as u64,
        }
        let reason = denial.to_string();
        tracing::warn!(peer = %node, "{reason}");
        self.emit(NodeEvent::NotAuthorized {
            peer: Some(node),
            denial,
        });
        Some(reason)
    }

    /// Whether the subscription to `pattern` that `conn`'s peer announced is refused (counted
    /// and told in an event if so): it is then not added to the audiences.
    pub(super) fn refuses_peer_subscription(&mut self, conn: ConnId, pattern: &str) -> bool {
        if self.guard.open_peer_subscribe {
            return false;
        }
        let Some(c) = self.conns.get(conn) else {
            return false;
        };
        let node = c.node;
        let Some(denial) = denied(self.guard.policy.may_subscribe(&c.service, pattern)) else {
            return false;
        };
        self.stats.unauthorized_subscriptions += 1;
        tracing::warn!(peer = %node, "{denial}");
        self.emit(NodeEvent::NotAuthorized {
            peer: Some(node),
            denial,
        });
        true
    }

    /// Drops from `subs` (the subscriptions `node`'s announcement advertises for `service`)
    /// those the policy refuses that service: they never join the audiences, and no
    /// connection is asked for on their account. Returns the refusals, for
    /// [`Engine::tell_refused_advertised`]. The announced service is not certified: the
    /// audiences also count what a connected instance advertises only while its connection's
    /// certified service is the announced one (`Peers::audiences`).
    pub(super) fn drop_refused_advertised(
        &self,
        service: &str,
        subs: &mut Vec<shoal_proto::Subscription>,
    ) -> Vec<Denial> {
        if self.guard.open_peer_subscribe {
            return Vec::new();
        }
        let mut refused = Vec::new();
        subs.retain(
            |sub| match denied(self.guard.policy.may_subscribe(service, &sub.pattern)) {
                Some(denial) => {
                    refused.push(denial);
                    false
                }
                None => true,
            },
        );
        refused
    }

    /// Counts and tells the advertised subscriptions of `node` the policy refused (once per
    /// announcement that changed what the directory holds, not with every repetition).
    pub(super) fn tell_refused_advertised(&mut self, node: NodeId, refused: Vec<Denial>) {
        for denial in refused {
            self.stats.unauthorized_subscriptions += 1;
            tracing::warn!(peer = %node, "advertised subscription refused: {denial}");
            self.emit(NodeEvent::NotAuthorized {
                peer: Some(node),
                denial,
            });
        }
    }

    /// Checks that this node may publish on `topic`: a forbidden publish fails at once.
    pub(super) fn authorize_publish(&mut self, topic: &str) -> Result<(), Error> {
        if self.guard.open_publish {
            return Ok(());
        }
        let decision = self.guard.policy.may_publish(&self.service, topic);
        self.own_call_refused(decision, |stats| &mut stats.unauthorized_publishes)
    }

    /// Checks that this node may subscribe to `pattern`: a forbidden subscription fails at
    /// once, before any peer hears of it.
    pub(crate) fn authorize_subscribe(&mut self, pattern: &str) -> Result<(), Error> {
        if self.guard.open_subscribe {
            return Ok(());
        }
        let decision = self.guard.policy.may_subscribe(&self.service, pattern);
        self.own_call_refused(decision, |stats| &mut stats.unauthorized_subscriptions)
    }

    /// A call of this node's own: refused (counted with `counter`, told in an event, and the
    /// error for the caller) or allowed.
    fn own_call_refused(
        &mut self,
        decision: Decision,
        counter: impl FnOnce(&mut super::stats::Counters) -> &mut u64,
    ) -> Result<(), Error> {
        let Some(denial) = denied(decision) else {
            return Ok(());
        };
        *counter(&mut self.stats) += 1;
        self.emit(NodeEvent::NotAuthorized {
            peer: None,
            denial: denial.clone(),
        });
        Err(Error::NotAuthorized(Box::new(denial)))
    }
}

/// The denial in `decision`, if it is one.
fn denied(decision: Decision) -> Option<Denial> {
    match decision {
        Decision::Denied(denial) => Some(*denial),
        _ => None,
    }
}
