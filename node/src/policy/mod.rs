//! Who may say what: an authorization [`Policy`] per service.
//!
//! Mutual TLS decides who is in the mesh; a policy decides, per service, what each member may
//! do:
//!
//! - **accept**: which services may send which commands and requests (by message name) to it;
//! - **publish**: which topics it may publish;
//! - **subscribe**: which topic patterns it may subscribe to.
//!
//! The service a rule talks about is always the one proven by the peer's certificate (its
//! `<service>.svc.shoal.mesh` name), never what a peer claims.
//!
//! # Enforcement
//!
//! Give a policy to [`crate::NodeBuilder::policy`]; every node checks what reaches it before
//! any handler runs. A refused command, request or event is nacked "not authorized" for good
//! and dead-lettered at its sender with the [`Denial`]'s sentence; a refused subscription is
//! not added, so it gets no events; this node's own forbidden publish or subscribe fails at
//! once with [`crate::Error::NotAuthorized`]. Refusals are raised as
//! [`crate::NodeEvent::NotAuthorized`] and counted in [`crate::NodeStats`].
//!
//! # The default, and locking a service down
//!
//! A section that is not set falls back to the policy's default, which is **allow** unless the
//! policy says otherwise ([`Policy::allow_all`], the node's default, allows everything within
//! the mesh). A section that is set is an allow-list: only what it lists is allowed, so an
//! empty list allows nothing. To lock a service down, set its sections
//! ([`PolicyBuilder::lock_down`] sets all three to empty lists, then add what it needs), or
//! make the default deny and list what every service may do.
//!
//! # Patterns
//!
//! Message names, topics and patterns are matched NATS-style, token by token (tokens are
//! separated by dots): `*` matches exactly one token and `>` one or more tokens at the end.
//! So `invoice.*` matches `invoice.create` but not `invoice` or `invoice.line.add`, and `>`
//! matches every name. A service in an accept rule is a name or `*`, any service.
//! A subscription is allowed when an allowed pattern covers every topic it could match:
//! `order.>` allows subscribing to `order.*` and `order.eu.>`, but not to `>`.
//!
//! ```
//! use shoal::policy::{Decision, Policy};
//!
//! let policy = Policy::from_toml(r#"
//!     [services.billing]
//!     accept = [{ from = "shop", messages = ["invoice.*"] }]
//!     publish = ["billing.>"]
//!     subscribe = []
//! "#)?;
//! assert!(policy.may_send("shop", "billing", "invoice.create").is_allowed());
//! assert!(!policy.may_send("stranger", "billing", "invoice.create").is_allowed());
//! assert_eq!(policy.may_send("shop", "pricing", "quote"), Decision::AllowedByDefault);
//! assert!(!policy.may_subscribe("billing", "order.>").is_allowed());
//! # Ok::<(), shoal::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::engine::topic;

mod builder;
mod file;
#[cfg(test)]
mod tests;

pub use builder::PolicyBuilder;

/// What applies where a service has no rules of a kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DefaultRule {
    /// Allowed (the default: a quick start, every member of the mesh may do everything).
    #[default]
    Allow,
    /// Refused: only what rules list is allowed.
    Deny,
}

/// The three kinds of rules a service can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Section {
    /// Who may send which commands and requests to the service.
    Accept,
    /// Which topics the service may publish.
    Publish,
    /// Which topic patterns the service may subscribe to.
    Subscribe,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Accept => "accept",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        })
    }
}

/// The answer of a policy to one question.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// No rule is about this, and the policy's default is to allow.
    AllowedByDefault,
    /// A rule allows it: the rule's pattern (for accept rules, the message pattern).
    Allowed {
        /// The pattern that matched.
        pattern: Arc<str>,
    },
    /// Refused; [`Denial`]'s `Display` is the sentence to log or send back.
    Denied(Box<Denial>),
}

impl Decision {
    /// Whether it is allowed.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Denied(_))
    }

    /// Why it is refused, if it is.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Self::Denied(denial) => Some(denial),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AllowedByDefault => f.write_str("allowed (the policy's default)"),
            Self::Allowed { pattern } => write!(f, "allowed (by the rule `{pattern}`)"),
            Self::Denied(denial) => denial.fmt(f),
        }
    }
}

/// Why something was refused. Its `Display` starts with "not authorized", names what was
/// asked and which rules refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Denial {
    /// The kind of rule that refused it.
    pub section: Section,
    /// The service whose rules refused it: the receiver for [`Section::Accept`], the publisher
    /// or subscriber otherwise.
    pub service: String,
    /// For [`Section::Accept`], the sending service.
    pub from: Option<String>,
    /// The message name, topic or pattern asked for.
    pub subject: String,
    /// Whether the default refused it (the service has no rules of this kind) rather than
    /// its own allow-list.
    pub by_default: bool,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            section,
            service,
            subject,
            ..
        } = self;
        match section {
            Section::Accept => {
                let from = self.from.as_deref().unwrap_or("?");
                write!(
                    f,
                    "not authorized: `{service}` does not accept `{subject}` from `{from}`"
                )?;
            }
            Section::Publish => {
                write!(f, "not authorized: `{service}` may not publish `{subject}`")?;
            }
            Section::Subscribe => write!(
                f,
                "not authorized: `{service}` may not subscribe to `{subject}`"
            )?,
        }
        if self.by_default {
            write!(
                f,
                " (the policy denies by default and services.{service}.{section} is not set)"
            )
        } else {
            write!(f, " (services.{service}.{section} does not allow it)")
        }
    }
}

/// Who may send what to which service, publish which topics, and subscribe to which patterns.
///
/// Built with [`Policy::builder`] or read from a TOML or JSON file ([`Policy::load`]; the
/// format is in the README's Security section). Decisions are pure functions of the policy
/// and the question: [`Policy::may_send`], [`Policy::may_publish`], [`Policy::may_subscribe`].
/// Give it to a node with [`crate::NodeBuilder::policy`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    default: DefaultRule,
    services: BTreeMap<String, ServiceRules>,
}

/// The rules of one service. `None` for a section means "not set": the policy's default
/// applies; `Some` is an allow-list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServiceRules {
    accept: Option<Vec<AcceptRule>>,
    publish: Option<Vec<Arc<str>>>,
    subscribe: Option<Vec<Arc<str>>>,
}

/// `from` (a service, or any with `None`) may send messages matching `messages`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AcceptRule {
    from: Option<String>,
    messages: Vec<Arc<str>>,
}

impl Policy {
    /// Everything allowed within the mesh: the node's default.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Nothing allowed: deny by default, and no rules. (To allow a few things on top, build
    /// with [`PolicyBuilder::default_rule`]`(DefaultRule::Deny)` and add rules.)
    pub fn deny_all() -> Self {
        Self {
            default: DefaultRule::Deny,
            services: BTreeMap::new(),
        }
    }

    /// Starts building a policy (default: allow).
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// What applies where a service has no rules of a kind.
    pub fn default_rule(&self) -> DefaultRule {
        self.default
    }

    /// The services that have rules.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// May `from` send the command or request `message` to `to`?
    ///
    /// Asked by the receiving node for every command, request, document and asynchronous
    /// reply, with `from` the service of the sender's certificate. (The reply to a
    /// synchronous request answers a question the receiver asked, so it is not asked.)
    pub fn may_send(&self, from: &str, to: &str, message: &str) -> Decision {
        let denial = |by_default| Denial {
            section: Section::Accept,
            service: to.to_owned(),
            from: Some(from.to_owned()),
            subject: message.to_owned(),
            by_default,
        };
        let Some(rules) = self.services.get(to).and_then(|r| r.accept.as_deref()) else {
            return default_decision(self.default, || denial(true));
        };
        let found = rules
            .iter()
            .filter(|rule| rule.from.as_deref().is_none_or(|f| f == from))
            .flat_map(|rule| &rule.messages)
            .find(|pattern| topic::matches(pattern, message));
        allowed_by(found, || denial(false))
    }

    /// May `service` publish events on `topic`?
    ///
    /// Asked by the publishing node before it publishes (so a forbidden publish fails at once)
    /// and by every subscriber's node when the event arrives, with the publisher's
    /// certificate service.
    pub fn may_publish(&self, service: &str, topic: &str) -> Decision {
        let list = self
            .services
            .get(service)
            .and_then(|r| r.publish.as_deref());
        decide_patterns(
            self.default,
            Section::Publish,
            service,
            topic,
            list,
            topic::matches,
        )
    }

    /// May `service` subscribe to `pattern`? Allowed when one allowed pattern covers every
    /// topic `pattern` can match.
    ///
    /// Asked by the subscribing node (so a forbidden subscribe fails at once) and by every
    /// publisher's node when the subscription is announced, with the subscriber's certificate
    /// service: a refused subscription is not added to the audience and gets no events.
    pub fn may_subscribe(&self, service: &str, pattern: &str) -> Decision {
        let list = self
            .services
            .get(service)
            .and_then(|r| r.subscribe.as_deref());
        decide_patterns(
            self.default,
            Section::Subscribe,
            service,
            pattern,
            list,
            covers,
        )
    }
}

impl Policy {
    /// Whether a question of `section` can ever be refused: about `service` when given, about
    /// any service otherwise. `false` when the default allows and no service concerned has a
    /// rule of that kind set, so the engine can skip asking (see `engine/authz.rs`): under the
    /// default policy, checking costs one branch per run of messages.
    pub(crate) fn can_refuse(&self, section: Section, service: Option<&str>) -> bool {
        if self.default == DefaultRule::Deny {
            return true;
        }
        let set = |rules: &ServiceRules| match section {
            Section::Accept => rules.accept.is_some(),
            Section::Publish => rules.publish.is_some(),
            Section::Subscribe => rules.subscribe.is_some(),
        };
        match service {
            Some(service) => self.services.get(service).is_some_and(set),
            None => self.services.values().any(set),
        }
    }
}

fn default_decision(default: DefaultRule, denial: impl FnOnce() -> Denial) -> Decision {
    match default {
        DefaultRule::Allow => Decision::AllowedByDefault,
        DefaultRule::Deny => Decision::Denied(Box::new(denial())),
    }
}

/// Decides with `list` (a service's publish or subscribe patterns, if set): allowed if one
/// pattern `allows` the subject.
fn decide_patterns(
    default: DefaultRule,
    section: Section,
    service: &str,
    subject: &str,
    list: Option<&[Arc<str>]>,
    allows: fn(&str, &str) -> bool,
) -> Decision {
    let denial = |by_default| Denial {
        section,
        service: service.to_owned(),
        from: None,
        subject: subject.to_owned(),
        by_default,
    };
    let Some(list) = list else {
        return default_decision(default, || denial(true));
    };
    let found = list.iter().find(|allowed| allows(allowed, subject));
    allowed_by(found, || denial(false))
}

/// Allowed by the rule `found`, or refused by the list that has no such rule.
fn allowed_by(found: Option<&Arc<str>>, denial: impl FnOnce() -> Denial) -> Decision {
    match found {
        Some(pattern) => Decision::Allowed {
            pattern: Arc::clone(pattern),
        },
        None => Decision::Denied(Box::new(denial())),
    }
}

/// Whether every topic `requested` matches is matched by `allowed` (both checked patterns).
fn covers(allowed: &str, requested: &str) -> bool {
    let requested: Vec<&str> = requested.split('.').collect();
    let mut count = 0;
    for (i, token) in allowed.split('.').enumerate() {
        count = i + 1;
        if token == ">" {
            return requested.len() > i;
        }
        match (token, requested.get(i)) {
            (_, None) | ("*", Some(&">")) => return false,
            ("*", Some(_)) => {}
            (literal, Some(asked)) if literal == *asked => {}
            _ => return false,
        }
    }
    requested.len() == count
}
