//! Dead letters: messages the node gave up on, kept where the user can inspect them.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

use crate::Message;
use crate::sync::lock;

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

/// The most recent dead letters, bounded: the oldest is dropped when full (the count of all
/// dead letters is in [`crate::NodeStats::dead_lettered`]).
#[derive(Debug)]
pub(crate) struct DeadLetters {
    recent: Mutex<VecDeque<DeadLetter>>,
    capacity: usize,
}

impl DeadLetters {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            recent: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    pub(crate) fn record(&self, letter: DeadLetter) {
        let mut recent = lock(&self.recent);
        if recent.len() >= self.capacity {
            recent.pop_front();
        }
        if self.capacity > 0 {
            recent.push_back(letter);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<DeadLetter> {
        lock(&self.recent).iter().cloned().collect()
    }
}
