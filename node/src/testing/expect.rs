//! [`Expect`]: which recorded message a test waits for; [`ExpectationFailed`]: what it got
//! instead.

use std::sync::Arc;
use std::time::Duration;

use super::recording::{Channel, Recorded, show_payload};
use crate::Message;
use crate::engine::topic;

type Predicate = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// Which channel an expectation looks at.
#[derive(Clone, Debug)]
enum On {
    Any,
    Published(String),
    Sent(String),
    Reply,
}

/// A description of a message the probe should (or should not) see:
/// [`TestMesh::expect`](super::TestMesh::expect) waits for one,
/// [`TestMesh::expect_none`](super::TestMesh::expect_none) for a window without any.
///
/// ```
/// use std::time::Duration;
/// use shoal::testing::Expect;
///
/// let invoice = Expect::published("invoice.created")
///     .payload("order-42")
///     .within(Duration::from_secs(2));
/// let booked = Expect::sent("ledger", "ledger.book").matching(|m| m.key() == Some("order-42"));
/// # let _ = (invoice, booked);
/// ```
#[derive(Clone)]
pub struct Expect {
    on: On,
    name: Option<String>,
    version: Option<u16>,
    conditions: Vec<(String, Predicate)>,
    pub(crate) within: Option<Duration>,
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expect({self})")
    }
}

impl Expect {
    fn on(on: On) -> Self {
        Self {
            on,
            name: None,
            version: None,
            conditions: Vec::new(),
            within: None,
        }
    }

    /// Any message the probe records.
    pub fn any() -> Self {
        Self::on(On::Any)
    }

    /// An event published on a topic matching `topic` (a topic, or a pattern such as
    /// `invoice.*`). The probe must [`subscribe`](super::TestMesh::subscribe) to it.
    pub fn published(topic: impl Into<String>) -> Self {
        Self::on(On::Published(topic.into()))
    }

    /// A message named `name` sent point-to-point to `service` (a
    /// [`stand_in`](super::TestMesh::stand_in) records it).
    pub fn sent(service: impl Into<String>, name: impl Into<String>) -> Self {
        Self::on(On::Sent(service.into())).named(name)
    }

    /// A reply to one of the probe's requests (narrow it with [`to`](Self::to)).
    pub fn reply() -> Self {
        Self::on(On::Reply)
    }

    /// A message of the type `T` (its name and major version; for events, the type the
    /// `shoal-message` header names), on any channel. Replies carry no type of their own:
    /// expect them with [`Expect::reply`], [`to`](Self::to) and [`decoded`](Self::decoded).
    #[cfg(feature = "contracts")]
    pub fn of<T: crate::contract::Contract>() -> Self {
        Self::any().of_type::<T>()
    }

    /// Only messages of the type `T` (see [`Expect::of`]).
    #[cfg(feature = "contracts")]
    pub fn of_type<T: crate::contract::Contract>(mut self) -> Self {
        self.version = Some(T::VERSION);
        self.that(format!("of type {}", T::NAME), |m| {
            m.header(crate::contract::MESSAGE_HEADER)
                .unwrap_or(m.name())
                == T::NAME
        })
    }

    /// Only messages whose payload, decoded as `T` (by content type, JSON without one),
    /// satisfies `predicate`.
    #[cfg(feature = "contracts")]
    pub fn decoded<T, F>(self, predicate: F) -> Self
    where
        T: serde::de::DeserializeOwned,
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        let what = format!("whose payload as {} matches", std::any::type_name::<T>());
        self.that(what, move |m| {
            let codec = match m.content_type() {
                "" => Some(crate::contract::Codec::Json),
                other => crate::contract::Codec::from_content_type(other),
            };
            codec
                .and_then(|c| c.decode::<T>(m.payload()).ok())
                .is_some_and(|value| predicate(&value))
        })
    }

    /// Only messages named `name` (for events, the topic).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only replies to requests named `request`.
    pub fn to(mut self, request: impl Into<String>) -> Self {
        self.on = On::Reply;
        self.name = Some(request.into());
        self
    }

    /// Only messages of schema version `version` (for replies, the request's).
    pub fn version(mut self, version: u16) -> Self {
        self.version = Some(version);
        self
    }

    /// Only messages whose payload is exactly `payload`.
    pub fn payload(self, payload: impl AsRef<[u8]>) -> Self {
        let payload = payload.as_ref().to_vec();
        let what = format!("with payload {}", show_payload(&payload));
        self.that(what, move |m| m.payload()[..] == payload[..])
    }

    /// Only messages with the header `key` set to `value`.
    pub fn header(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        let what = format!("with header {key}={value}");
        self.that(what, move |m| m.header(&key) == Some(value.as_str()))
    }

    /// Only messages `predicate` accepts.
    pub fn matching(self, predicate: impl Fn(&Message) -> bool + Send + Sync + 'static) -> Self {
        self.that("matching the predicate".into(), predicate)
    }

    /// How long to wait ([`expect`](super::TestMesh::expect)) or to watch
    /// ([`expect_none`](super::TestMesh::expect_none)); the mesh's default otherwise.
    pub fn within(mut self, limit: Duration) -> Self {
        self.within = Some(limit);
        self
    }

    fn that(
        mut self,
        what: String,
        predicate: impl Fn(&Message) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.conditions.push((what, Arc::new(predicate)));
        self
    }

    /// Whether `recorded` is such a message.
    pub(crate) fn matches(&self, recorded: &Recorded) -> bool {
        let m = &recorded.message;
        let on = match (&self.on, &recorded.channel) {
            (On::Any, _) | (On::Reply, Channel::Reply { .. }) => true,
            (On::Published(pattern), Channel::Published { topic }) => {
                pattern == topic || topic::matches(pattern, topic)
            }
            (On::Sent(service), Channel::Sent { to }) => service == to,
            _ => false,
        };
        let name = match (&self.name, &recorded.channel) {
            (None, _) => true,
            // A reply is named by its channel; match on what it answers.
            (Some(name), Channel::Reply { request, .. }) => name == request,
            (Some(name), _) => name == m.name(),
        };
        let version = self.version.is_none_or(|v| match &recorded.channel {
            Channel::Reply { version, .. } => *version == v,
            _ => m.version() == v,
        });
        on && name && version && self.conditions.iter().all(|(_, p)| p(m))
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.on {
            On::Any => f.write_str("a message")?,
            On::Published(topic) => write!(f, "an event published on `{topic}`")?,
            On::Sent(service) => write!(f, "a message sent to `{service}`")?,
            On::Reply => f.write_str("a reply")?,
        }
        if let Some(name) = &self.name {
            write!(f, " named `{name}`")?;
        }
        if let Some(v) = self.version {
            write!(f, " v{v}")?;
        }
        for (what, _) in &self.conditions {
            write!(f, " {what}")?;
        }
        Ok(())
    }
}

/// Why an expectation failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Failure {
    /// No such message came in time.
    NotSeen,
    /// Such messages came though none should have (`expect_none`).
    Unexpected(Vec<Recorded>),
    /// The mesh did not get where the test waited for (idle, connected, subscribed): what
    /// it was still doing.
    NotReady(String),
}

/// An expectation of a [`TestMesh`](super::TestMesh) failed: what was expected, what went
/// wrong, and everything the probe saw, so the failure explains itself.
///
/// Its `Debug` is its report too: a test that returns `Result<(), shoal::Error>` prints it
/// that way when it fails.
#[derive(Clone)]
#[non_exhaustive]
pub struct ExpectationFailed {
    /// What the test expected, in words.
    pub expected: String,
    /// How long it waited or watched.
    pub within: Duration,
    /// What went wrong.
    pub failure: Failure,
    /// Every message the probe recorded, each with whether an earlier expectation claimed
    /// it.
    pub seen: Vec<(Recorded, bool)>,
    /// The mesh's seed: run again with `SHOAL_TEST_SEED=<seed>` to draw the same faults.
    pub seed: u64,
}

impl std::fmt::Debug for ExpectationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExpectationFailed:\n{self}")
    }
}

impl std::fmt::Display for ExpectationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.failure {
            Failure::NotSeen => write!(
                f,
                "expected {} within {:?}, but none came",
                self.expected, self.within
            )?,
            Failure::Unexpected(found) => {
                write!(
                    f,
                    "expected no {} within {:?}, but {} came:",
                    self.expected,
                    self.within,
                    found.len()
                )?;
                for r in found {
                    write!(f, "\n  {r}")?;
                }
            }
            Failure::NotReady(doing) => write!(
                f,
                "expected {} within {:?}, but: {doing}",
                self.expected, self.within
            )?,
        }
        write!(
            f,
            "\nthe probe saw {} message(s) (seed {}; SHOAL_TEST_SEED={} replays the faults):",
            self.seen.len(),
            self.seed,
            self.seed
        )?;
        for (r, claimed) in &self.seen {
            write!(f, "\n  {r}")?;
            if *claimed {
                f.write_str(" (claimed by an earlier expect)")?;
            }
        }
        Ok(())
    }
}
