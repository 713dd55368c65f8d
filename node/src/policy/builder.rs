//! [`PolicyBuilder`]: a [`Policy`] in code, checked when it is built.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{AcceptRule, DefaultRule, Policy, ServiceRules};
use crate::engine::topic;
use crate::error::Error;
use crate::identity::validate_service_name;

/// Builds a [`Policy`]; names and patterns are checked by [`PolicyBuilder::build`].
///
/// ```
/// use shoal::policy::{DefaultRule, Policy};
///
/// let policy = Policy::builder()
///     // Only `shop` may send `invoice.*` commands to `billing`, and anyone `health`.
///     .accept("billing", "shop", ["invoice.*"])
///     .accept("billing", "*", ["health"])
///     // `billing` publishes only its own topics.
///     .publish("billing", ["billing.>"])
///     .build()?;
/// assert!(policy.may_send("shop", "billing", "invoice.create").is_allowed());
/// assert!(policy.may_send("ops", "billing", "health").is_allowed());
/// assert!(!policy.may_send("ops", "billing", "invoice.create").is_allowed());
/// assert!(policy.may_subscribe("billing", "order.>").is_allowed()); // not set: the default
///
/// // A service locked down entirely, then opened for one message.
/// let locked = Policy::builder()
///     .lock_down("vault")
///     .accept("vault", "billing", ["secret.get"])
///     .build()?;
/// assert!(!locked.may_publish("vault", "anything").is_allowed());
/// # Ok::<(), shoal::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct PolicyBuilder {
    default: DefaultRule,
    services: BTreeMap<String, Draft>,
}

/// A service's rules as given, checked at `build`.
#[derive(Clone, Debug, Default)]
struct Draft {
    accept: Option<Vec<(String, Vec<String>)>>,
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
}

impl PolicyBuilder {
    /// What applies where a service has no rules of a kind. Default [`DefaultRule::Allow`].
    pub fn default_rule(mut self, default: DefaultRule) -> Self {
        self.default = default;
        self
    }

    /// Allows `from` (a service name, or `*` for any) to send messages whose name matches one
    /// of `messages` to `to`. Once `to` has an accept rule, only what its accept rules list
    /// reaches it. Repeatable.
    pub fn accept<S: Into<String>>(
        mut self,
        to: &str,
        from: &str,
        messages: impl IntoIterator<Item = S>,
    ) -> Self {
        let draft = self.draft(to);
        draft.accept.get_or_insert_with(Vec::new).push((
            from.to_owned(),
            messages.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Allows `service` to publish the topics matching `patterns` (and only those, once it has
    /// a publish rule; an empty list allows none). Repeatable.
    pub fn publish<S: Into<String>>(
        mut self,
        service: &str,
        patterns: impl IntoIterator<Item = S>,
    ) -> Self {
        let list = self.draft(service).publish.get_or_insert_with(Vec::new);
        list.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Allows `service` to subscribe to patterns that `patterns` cover (and only those, once it
    /// has a subscribe rule; an empty list allows none). Repeatable.
    pub fn subscribe<S: Into<String>>(
        mut self,
        service: &str,
        patterns: impl IntoIterator<Item = S>,
    ) -> Self {
        let list = self.draft(service).subscribe.get_or_insert_with(Vec::new);
        list.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Sets `service`'s accept rules without adding one: it accepts nothing, except what accept
    /// rules added before or after allow.
    pub fn lock_accept(mut self, service: &str) -> Self {
        self.draft(service).accept.get_or_insert_with(Vec::new);
        self
    }

    /// Locks `service` down: it accepts nothing, may publish nothing and subscribe to nothing,
    /// except what rules added before or after allow.
    pub fn lock_down(mut self, service: &str) -> Self {
        let draft = self.draft(service);
        draft.accept.get_or_insert_with(Vec::new);
        draft.publish.get_or_insert_with(Vec::new);
        draft.subscribe.get_or_insert_with(Vec::new);
        self
    }

    /// Checks every name and pattern and builds the policy. Errors ([`Error::Policy`]) name the
    /// rule: `services.billing.accept[0].messages[1]: ...`.
    pub fn build(self) -> Result<Policy, Error> {
        let mut services = BTreeMap::new();
        for (service, draft) in self.services {
            let at = format!("services.{service}");
            check_service(&at, &service)?;
            let accept = draft
                .accept
                .map(|rules| {
                    rules
                        .into_iter()
                        .enumerate()
                        .map(|(i, (from, messages))| {
                            let at = format!("{at}.accept[{i}]");
                            let from = match from.as_str() {
                                "*" => None,
                                _ => {
                                    check_service(&format!("{at}.from"), &from)?;
                                    Some(from)
                                }
                            };
                            let messages = patterns(&format!("{at}.messages"), messages)?;
                            Ok(AcceptRule { from, messages })
                        })
                        .collect::<Result<Vec<_>, Error>>()
                })
                .transpose()?;
            let publish = draft
                .publish
                .map(|list| patterns(&format!("{at}.publish"), list))
                .transpose()?;
            let subscribe = draft
                .subscribe
                .map(|list| patterns(&format!("{at}.subscribe"), list))
                .transpose()?;
            let rules = ServiceRules {
                accept,
                publish,
                subscribe,
            };
            services.insert(service, rules);
        }
        Ok(Policy {
            default: self.default,
            services,
        })
    }

    /// Names `service` without giving it rules (a `[services.NAME]` table with no sections),
    /// so its name is still checked.
    pub(super) fn declare(mut self, service: &str) -> Self {
        self.draft(service);
        self
    }

    fn draft(&mut self, service: &str) -> &mut Draft {
        self.services.entry(service.to_owned()).or_default()
    }
}

fn check_service(at: &str, service: &str) -> Result<(), Error> {
    validate_service_name(service).map_err(|e| match e {
        Error::Identity(msg) => Error::Policy(format!("{at}: {msg}")),
        other => other,
    })
}

/// Checks a list of patterns; `at` names the list in errors.
fn patterns(at: &str, list: Vec<String>) -> Result<Vec<Arc<str>>, Error> {
    list.into_iter()
        .enumerate()
        .map(|(i, pattern)| {
            topic::check_pattern(&pattern)
                .map(|()| Arc::from(pattern))
                .map_err(|e| Error::Policy(format!("{at}[{i}]: {e}")))
        })
        .collect()
}
