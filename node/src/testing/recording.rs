//! What the probe saw: every message the services under test published to it, sent to its
//! stand-ins, or replied, in the order it arrived, with where and when.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::expect::Expect;
use crate::Message;
use crate::sync::lock;

/// Where a recorded message came in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Channel {
    /// An event published on `topic` (the probe subscribes to it).
    Published {
        /// The topic (the event's name).
        topic: String,
    },
    /// A command or document sent point-to-point to `to` (a stand-in the mesh runs).
    Sent {
        /// The service it was sent to.
        to: String,
    },
    /// A reply to the probe's request `request` (version `version`): the answer of a
    /// [`request`](super::TestMesh::request), or an asynchronous reply on the reply channel
    /// of a [`send`](super::TestMesh::send).
    Reply {
        /// The name of the request answered.
        request: String,
        /// Its version.
        version: u16,
    },
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Published { topic } => write!(f, "published on `{topic}`"),
            Self::Sent { to } => write!(f, "sent to `{to}`"),
            Self::Reply { request, version } => write!(f, "reply to `{request}` v{version}"),
        }
    }
}

/// One message the probe saw.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Recorded {
    /// Where it came in.
    pub channel: Channel,
    /// The message, as the handler got it (id, attempt, headers, payload...).
    pub message: Message,
    /// When, since the mesh started (tokio's clock: virtual under `tokio::time::pause`).
    pub at: Duration,
    /// Why it breaks the service's contract, when the mesh checks one
    /// ([`TestMesh::check_conformance`](super::TestMesh::check_conformance)) and it does.
    pub violation: Option<String>,
}

impl Recorded {
    /// Decodes the payload as `T`, by its content type (or, without one, as JSON).
    #[cfg(feature = "contracts")]
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::Error> {
        use crate::contract::Codec;
        let codec = match self.message.content_type() {
            "" => Codec::Json,
            other => Codec::from_content_type(other).ok_or_else(|| crate::Error::Payload {
                message: self.message.name().to_owned(),
                reason: format!("content type `{other}` names no codec"),
            })?,
        };
        codec
            .decode(self.message.payload())
            .map_err(|reason| crate::Error::Payload {
                message: self.message.name().to_owned(),
                reason,
            })
    }
}

impl std::fmt::Display for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.message;
        write!(
            f,
            "+{:.3}s {}: {:?} `{}` v{}",
            self.at.as_secs_f64(),
            self.channel,
            m.kind(),
            m.name(),
            m.version()
        )?;
        if let Some(typed) = m.header("shoal-message") {
            write!(f, " ({typed})")?;
        }
        if let Some(key) = m.key() {
            write!(f, ", key `{key}`")?;
        }
        if m.is_redelivery() {
            write!(f, ", attempt {}", m.attempt())?;
        }
        write!(f, ", payload {}", show_payload(m.payload()))?;
        if let Some(why) = &self.violation {
            write!(f, " [breaks the contract: {why}]")?;
        }
        Ok(())
    }
}

/// A payload for people: its text when it is UTF-8 (cut at 80 characters), else its size.
pub(crate) fn show_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) if text.chars().count() > 80 => {
            format!("{:?}...", text.chars().take(80).collect::<String>())
        }
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("({} bytes)", payload.len()),
    }
}

/// The probe's log. [`Expect`]ations claim entries: each recorded message satisfies at most
/// one `expect`, so two expectations of one kind need two messages.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    entries: Mutex<Vec<(Recorded, bool)>>,
    added: Notify,
}

impl Recording {
    pub(crate) fn push(&self, recorded: Recorded) {
        tracing::debug!(%recorded, "test probe recorded");
        lock(&self.entries).push((recorded, false));
        self.added.notify_waiters();
    }

    /// Everything recorded so far.
    pub(crate) fn all(&self) -> Vec<Recorded> {
        lock(&self.entries).iter().map(|(r, _)| r.clone()).collect()
    }

    /// Everything recorded so far, each with whether an expectation claimed it.
    pub(crate) fn snapshot(&self) -> Vec<(Recorded, bool)> {
        lock(&self.entries).clone()
    }

    /// Claims the first unclaimed entry `expect` matches.
    pub(crate) fn claim(&self, expect: &Expect) -> Option<Recorded> {
        let mut entries = lock(&self.entries);
        let (recorded, claimed) = entries
            .iter_mut()
            .find(|(r, claimed)| !*claimed && expect.matches(r))?;
        *claimed = true;
        Some(recorded.clone())
    }

    /// The unclaimed entries `expect` matches.
    pub(crate) fn unclaimed(&self, expect: &Expect) -> Vec<Recorded> {
        lock(&self.entries)
            .iter()
            .filter(|(r, claimed)| !*claimed && expect.matches(r))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The recorded messages that break the contract.
    pub(crate) fn violations(&self) -> Vec<Recorded> {
        lock(&self.entries)
            .iter()
            .filter(|(r, _)| r.violation.is_some())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Resolves when something new is recorded (create it before looking, then await it).
    pub(crate) fn added(&self) -> tokio::sync::futures::Notified<'_> {
        self.added.notified()
    }
}
