//! Dead letters: messages the node gave up on, kept where the user can inspect them.

use std::fmt;

use crate::Message;

/// A message that could not be delivered: every attempt failed, the deadline passed, or the
/// receiver refused it permanently.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The service it was for; empty for a published event (see `group`).
    pub service: String,
    /// For a published event: the audience it was for (a subscriber group, or an ungrouped
    /// subscriber instance).
    pub group: Option<String>,
    /// The message itself, as last sent.
    pub message: Message,
    /// How many delivery attempts were made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_failure: String,
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match &self.group {
            Some(audience) => audience.clone(),
            None => format!("`{}`", self.service),
        };
        write!(
            f,
            "message {} ({}) to {to} dead-lettered after {} attempt(s): {}",
            self.message.id(),
            self.message.name(),
            self.attempts,
            self.last_failure
        )
    }
}
