//! Handler slots per peer: a task that ends frees its slot for the next waiting task of the
//! same peer, and the peer's stream is read again once none waits; tasks of a connection that
//! is gone are dropped, their messages forgotten by the dedup window so a redelivery runs them.
//! Messages of a run admitted one by one each get a task of their own ([`Lone`]).

use std::sync::Arc;
use std::time::Instant;

use shoal_proto::{Head, Item};
use smallvec::SmallVec;

use super::super::Engine;
use super::super::action::{Action, ConnId, TaskId};
use super::super::sender::RunKey;
use super::{Ready, Task};

impl<H: Clone> Engine<H> {
    /// `task` is over: its slot frees, and a waiting task of the same peer starts.
    pub(in crate::engine) fn end_task(&mut self, task: TaskId, now: Instant) {
        let Some(conn) = self.inbound.tasks.get(task).map(|t| t.conn) else {
            return;
        };
        self.inbound.tasks.remove(task);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        c.running = c.running.saturating_sub(1);
        while c.running < self.inbound.max_handlers {
            let Some(next) = c.backlog.pop_front() else {
                break;
            };
            if self.inbound.tasks.contains_key(next) {
                c.running += 1;
                self.step(next, now);
                return self.resume_if_drained(conn, now);
            }
        }
        self.resume_if_drained(conn, now);
    }

    /// Reads `conn` again, and lets its peer's multicast channels deliver again, once no
    /// message of it waits for a handler slot.
    pub(in crate::engine) fn resume_if_drained(&mut self, conn: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(conn)
            && c.paused
            && c.backlog.is_empty()
        {
            c.paused = false;
            self.actions.push_back(Action::ResumeReading(conn));
            self.resume_channels(conn, now); // multicast_receive.rs
        }
    }

    /// Drops a task whose connection is gone before it started: its message was never
    /// handled here, so its id is forgotten and a redelivery runs it.
    pub(in crate::engine) fn drop_task(&mut self, task: TaskId) {
        if let Some(t) = self.inbound.tasks.remove(task)
            && let Some(ready) = t.ready
        {
            let (_, key, _) = *ready;
            self.inbound.dedup.forget(key);
        }
    }

    /// `conn` is gone: its waiting tasks will never run, and its last run's head is let go.
    pub(in crate::engine) fn drop_backlog(&mut self, conn: ConnId) {
        self.inbound.heads.forget(conn);
        let backlog: Vec<TaskId> = self
            .conns
            .get_mut(conn)
            .map(|c| c.backlog.drain(..).collect())
            .unwrap_or_default();
        for task in backlog {
            self.drop_task(task);
        }
    }
}

/// What a task of one message shares with the other messages of its run.
pub(super) struct Lone<H> {
    pub(super) conn: ConnId,
    pub(super) head: Arc<Head>,
    pub(super) handlers: SmallVec<[H; 1]>,
}

impl<H: Clone> Lone<H> {
    /// What the messages of `t`'s run share.
    pub(super) fn of(t: &Task<H>) -> Self {
        Self {
            conn: t.conn,
            head: Arc::clone(&t.head),
            handlers: t.handlers.clone(),
        }
    }

    /// Makes a task of `ready` and admits it, for one of its peer's handler slots.
    pub(super) fn admit(&self, engine: &mut Engine<H>, ready: Ready, now: Instant) {
        let task = engine.inbound.tasks.insert(Task {
            conn: self.conn,
            head: Arc::clone(&self.head),
            handlers: self.handlers.clone(),
            ready: None,
            running: None,
            run: None,
        });
        engine.admit(task, Some(ready), now);
    }

    /// Admits each of `items`, numbered from `first` and keyed with `run_key`, in a task of
    /// its own, after the dedup window's check of a reliable message (a copy is answered
    /// instead).
    pub(super) fn admit_each(
        &self,
        engine: &mut Engine<H>,
        (first, run_key): (u64, RunKey),
        items: impl IntoIterator<Item = Item>,
        now: Instant,
    ) {
        for (seq, item) in (first..).zip(items) {
            let key = run_key.key(item.id);
            if self.head.reliable
                && !engine.first_delivery(self.conn, seq, &self.head, &item, key, now)
            {
                continue;
            }
            self.admit(engine, (seq, key, item), now);
        }
    }
}
