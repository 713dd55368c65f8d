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

use std::sync::Arc;
use std::time::Instant;

use super::super::Engine;
use super::super::action::{Following, TaskId};
use super::Task;

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
        // They are the last handed over: the driver reports the messages before them (the
        // waiting one included) in order, before or after this call.
        debug_assert!(
            items.len() <= run.handed.len(),
            "more handed back than over"
        );
        let handed = run
            .handed
            .split_off(run.handed.len().saturating_sub(items.len()));
        let (conn, head, handlers) = (t.conn, Arc::clone(&t.head), t.handlers.clone());
        for ((seq, key, id), item) in handed.into_iter().zip(items) {
            debug_assert_eq!(id, item.id, "handed back out of order");
            let task = self.inbound.tasks.insert(Task {
                conn,
                head: Arc::clone(&head),
                handlers: handlers.clone(),
                ready: None,
                running: None,
                run: None,
            });
            self.admit(task, Some((seq, key, item)), now);
        }
    }
}
