//! Who gets a published event: one audience per subscriber group, one per ungrouped
//! subscriber instance, and groups remembered for a while after their last instance left.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use shoal_proto::{NodeId, SmolStr, Subscription};

use super::retry::later;
use super::topic;

/// One recipient of an event: it gets exactly one copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Audience {
    /// A subscriber group: one of its instances handles the event.
    Group(SmolStr),
    /// An instance subscribed without a group: it gets its own copy.
    Instance(NodeId),
}

impl Audience {
    /// The group name a copy for this audience carries on the wire.
    pub(crate) fn wire_group(&self) -> Option<&str> {
        match self {
            Self::Group(g) => Some(g),
            Self::Instance(_) => None,
        }
    }
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Group(g) => write!(f, "group `{g}`"),
            Self::Instance(n) => write!(f, "ungrouped subscriber {n}"),
        }
    }
}

/// The audiences of `topic` among live instances and their subscriptions, each with the
/// instances that may take its copy (in no particular order).
pub(crate) fn audiences<'a>(
    topic: &str,
    instances: impl IntoIterator<Item = (NodeId, &'a [Subscription])>,
) -> BTreeMap<Audience, Vec<NodeId>> {
    let mut out: BTreeMap<Audience, Vec<NodeId>> = BTreeMap::new();
    for (node, subs) in instances {
        for sub in subs.iter().filter(|s| topic::matches(&s.pattern, topic)) {
            let audience = match &sub.group {
                Some(g) => Audience::Group(g.clone()),
                None => Audience::Instance(node),
            };
            let nodes = out.entry(audience).or_default();
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    out
}

/// Most departed group subscriptions remembered at once.
const MAX_DEPARTED: usize = 10_000;

/// Grouped subscriptions whose last live instance went away, remembered for `remember` so
/// events published meanwhile are held for the group instead of reaching nobody.
#[derive(Debug)]
pub(crate) struct DepartedGroups {
    /// Each remembered subscription and when it is forgotten.
    until: HashMap<Subscription, Instant>,
    remember: Duration,
}

impl DepartedGroups {
    pub(crate) fn new(remember: Duration) -> Self {
        Self {
            until: HashMap::new(),
            remember,
        }
    }

    /// The last live instance holding `sub` is gone (ungrouped subscriptions are not kept:
    /// their instance is gone for good).
    pub(crate) fn left(&mut self, sub: Subscription, now: Instant) {
        if self.remember.is_zero() {
            return;
        }
        self.remember_until(sub, later(now, self.remember));
    }

    /// Remembers the grouped `sub` at least until `until` (the outbox relay keeps the groups
    /// it has seen remembered this way, across restarts). Says whether it is newly remembered
    /// (not merely kept longer).
    pub(crate) fn remember_until(&mut self, sub: Subscription, until: Instant) -> bool {
        if sub.group.is_none() {
            return false;
        }
        // Bounded: peers that announce many groups and leave, again and again, cannot grow it
        // without limit; the ones forgotten soonest go first.
        if self.until.len() >= MAX_DEPARTED
            && !self.until.contains_key(&sub)
            && let Some(soonest) = self
                .until
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(s, _)| s.clone())
        {
            self.until.remove(&soonest);
        }
        match self.until.entry(sub) {
            Entry::Occupied(mut kept) => {
                let later = (*kept.get()).max(until);
                kept.insert(later);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(until);
                true
            }
        }
    }

    /// Copies for `group` on `topic` are held until `until`: every remembered subscription of
    /// the group matching the topic stays remembered at least that long, so an instance that
    /// comes back while they are held still gets them (README, "Late joiners and departed
    /// groups").
    pub(crate) fn hold_until(&mut self, topic: &str, group: &str, until: Instant) {
        for (sub, t) in &mut self.until {
            if sub.group.as_deref() == Some(group) && topic::matches(&sub.pattern, topic) {
                *t = (*t).max(until);
            }
        }
    }

    /// `sub` has a live instance again, was unsubscribed on purpose, or was forgotten by the
    /// user. Says whether it was remembered.
    pub(crate) fn forget(&mut self, sub: &Subscription) -> bool {
        self.until.remove(sub).is_some()
    }

    /// Drops what is remembered no longer at `now`; says whether anything went.
    #[cfg(any(test, feature = "outbox"))]
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let before = self.until.len();
        self.until.retain(|_, until| now < *until);
        self.until.len() != before
    }

    /// Groups remembered (and not expired at `now`) with a pattern matching `topic`.
    pub(crate) fn matching(&mut self, topic: &str, now: Instant) -> Vec<SmolStr> {
        self.until.retain(|_, until| now < *until);
        let mut groups: Vec<SmolStr> = self
            .until
            .keys()
            .filter(|s| topic::matches(&s.pattern, topic))
            .filter_map(|s| s.group.clone())
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(pattern: &str, group: Option<&str>) -> Subscription {
        Subscription {
            pattern: pattern.into(),
            group: group.map(Into::into),
        }
    }

    fn n(i: u128) -> NodeId {
        NodeId::from_u128(i)
    }

    #[test]
    fn one_audience_per_group_and_per_ungrouped_instance() {
        let billing = [sub("orders.*", Some("billing"))];
        let audit = [sub("orders.>", Some("audit")), sub("orders.created", None)];
        let other = [sub("invoices.*", Some("billing"))];
        let got = audiences(
            "orders.created",
            [
                (n(1), &billing[..]),
                (n(2), &billing[..]),
                (n(3), &audit[..]),
                (n(4), &other[..]),
            ],
        );
        let expected: BTreeMap<Audience, Vec<NodeId>> = [
            (Audience::Group("audit".into()), vec![n(3)]),
            (Audience::Group("billing".into()), vec![n(1), n(2)]),
            (Audience::Instance(n(3)), vec![n(3)]),
        ]
        .into();
        assert_eq!(got, expected);
    }

    #[test]
    fn two_patterns_of_one_group_on_one_instance_make_one_candidate() {
        let subs = [
            sub("orders.*", Some("billing")),
            sub("orders.>", Some("billing")),
        ];
        let got = audiences("orders.created", [(n(1), &subs[..])]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[&Audience::Group("billing".into())], vec![n(1)]);
    }

    #[test]
    fn departed_groups_are_remembered_for_a_while() {
        let start = Instant::now();
        let mut departed = DepartedGroups::new(Duration::from_secs(60));
        departed.left(sub("orders.*", Some("billing")), start);
        departed.left(sub("orders.*", None), start);
        assert_eq!(departed.matching("orders.created", start), vec!["billing"]);
        assert!(departed.matching("invoices.created", start).is_empty());
        let later = start + Duration::from_secs(61);
        assert!(departed.matching("orders.created", later).is_empty());

        departed.left(sub("orders.*", Some("billing")), later);
        assert!(departed.forget(&sub("orders.*", Some("billing"))));
        assert!(!departed.forget(&sub("orders.*", Some("billing"))));
        assert!(departed.matching("orders.created", later).is_empty());

        // Newly remembered, then only kept longer; an every-instance subscription never.
        let until = later + Duration::from_secs(5);
        assert!(departed.remember_until(sub("orders.*", Some("billing")), until));
        assert!(!departed.remember_until(
            sub("orders.*", Some("billing")),
            until + until.duration_since(later)
        ));
        assert!(!departed.remember_until(sub("orders.*", None), until));
        assert_eq!(departed.matching("orders.created", until), vec!["billing"]);
    }

    #[test]
    fn expiry_says_whether_a_group_went() {
        let start = Instant::now();
        let mut departed = DepartedGroups::new(Duration::from_secs(60));
        departed.left(sub("orders.*", Some("billing")), start);
        assert!(!departed.expire(start + Duration::from_secs(59)));
        assert!(departed.expire(start + Duration::from_secs(60)));
        assert!(!departed.expire(start + Duration::from_secs(61)));
    }
}
