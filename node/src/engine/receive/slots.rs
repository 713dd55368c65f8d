//! Handler slots per peer: a task that ends frees its slot for the next waiting task of the
//! same peer, and the peer's stream is read again once none waits; tasks of a connection that
//! is gone are dropped, their messages forgotten by the dedup window so a redelivery runs them.

use std::time::Instant;

use super::super::Engine;
use super::super::action::{Action, ConnId, TaskId};

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
