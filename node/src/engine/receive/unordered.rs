//! An unordered run whose messages went to their handler together (`receive.rs`), and a
//! handler that has to wait.
//!
//! Events or commands sent one by one that travelled together arrive as one unordered run.
//! Its new messages go to their one handler in one task and one [`crate::engine::Run`]: the
//! driver calls the handler on each in turn, without a trip through the engine between two.
//! That is only as fast as a task per message while every handler finishes in its first
//! poll. A handler that waits (a database write, a call to another service) would hold up
//! the messages after it, which a task each would have run side by side.
//!
//! So the driver runs none of the rest once a handler has to wait, and hands them back
//! ([`Engine::spread`]): each becomes a task of its own, admitted for one of the peer's
//! handler slots as a message that arrived alone. The waiting handler keeps the run's task
//! (and its slot); the messages already handled were reported, each acknowledged on its own.
//! The messages of a run that are not handed over with the others (after a copy of one seen
//! before, or past the hand-over's bound) become tasks of their own at once
//! ([`Engine::run_the_rest_alone`]), so nothing of the run waits behind its task.
//!
//! The driver reports the messages before the waiting one and hands the rest back before it
//! starts the waiting handler's task (`runtime/handlers.rs`): the engine pairs each report
//! with the message it handed over next, and a task that reported first, on another worker,
//! would be taken for the message before it.

use std::time::Instant;

use super::super::Engine;
use super::super::action::{Following, TaskId};
use super::Lone;

impl<H: Clone> Engine<H> {
    /// The handler of `task`, an unordered run's, has to wait on one of its messages: `rest`,
    /// the messages handed over after it that the driver did not run, become tasks of their
    /// own (see the module docs). Nothing for an ordered run's task, or one that is gone.
    pub(crate) fn spread(&mut self, task: TaskId, rest: Following, now: Instant) {
        let Some(t) = self.inbound.tasks.get_mut(task) else {
            return;
        };
        let Some(run) = t.run.as_deref_mut().filter(|r| !r.ordered) else {
            return;
        };
        let items = rest.into_items();
        // The driver reported the messages before them; the waiting one's outcome is still
        // to come, and it is the task's running message now.
        debug_assert_eq!(items.len(), run.handed.len(), "all the rest handed back");
        let handed = run
            .handed
            .split_off(run.handed.len().saturating_sub(items.len()));
        let lone = Lone::of(t);
        for ((seq, key, id), item) in handed.into_iter().zip(items) {
            debug_assert_eq!(id, item.id, "handed back in order");
            lone.admit(self, (seq, key, item), now);
        }
    }

    /// The messages of `task`'s unordered run that were not handed over with the others
    /// (they came after a copy of a message seen before, or past the hand-over's bound)
    /// become tasks of their own, each checked against the dedup window as a lone message
    /// is (`on_messages`): the run's task then holds only what its driver runs, and a
    /// handler of it that has to wait holds up none of them.
    pub(super) fn run_the_rest_alone(&mut self, task: TaskId, now: Instant) {
        let Some(t) = self.inbound.tasks.get_mut(task) else {
            return;
        };
        let Some(run) = t.run.as_deref_mut().filter(|r| !r.ordered) else {
            return;
        };
        let (first, rest_key) = (run.rest_seq, run.rest_key);
        let rest = std::mem::take(&mut run.rest);
        run.rest_seq += rest.len() as u64;
        Lone::of(t).admit_each(self, (first, rest_key), rest, now);
    }
}
