//! Receiving: what each message that arrives gets (a handler run, an ack, a nack, nothing),
//! the dedup window, handler slots per peer, and replies.
//!
//! A run of messages ([`Messages`]) is refused whole when the node is stopping or said goodbye
//! on its connection (closing it for being idle), when nothing here handles its name or
//! topic, or (an ordered batch) when it is too large to track. Each reliable message is then
//! checked against the dedup window: a message handled before is acknowledged again (a
//! request is answered with its kept reply instead), one being handled now is answered when
//! its handler finishes, and a new one gets a handler run. Handler runs take a slot of their
//! peer's; when all are taken the peer's stream is not read until one frees, so QUIC flow
//! control slows that peer only.
//!
//! The items of an ordered run are handled one after the other; the first failure stops the
//! run and the items after it are refused as [`NackCode::Skipped`], so the sender retries
//! them in order.
//!
//! The items of an unordered run (events or commands sent one by one that travelled
//! together) go to their one handler together too, in one task and one [`Run`], as long as
//! each handler finishes in its first poll; each is still acknowledged, or refused, on its
//! own, and a failure stops nothing. The first handler that has to wait keeps the task, and
//! the items after it become tasks of their own (`receive/unordered.rs`), so handlers that
//! wait run side by side as before, within the peer's handler slots.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use shoal_proto::{Head, Item, MessageId, Messages, NackCode, To};
use slotmap::SlotMap;
use smallvec::SmallVec;

use super::action::{Action, ConnId, Following, Run, TaskId};
use super::conn::Conn;
use super::dedup::{DedupWindow, Seen};
use super::local_handlers::LocalHandlers;
use super::replies::ReplyCache;
use super::sender::{RunKey, SenderKeys};
use super::{Engine, Lifecycle};
use crate::Message;
use crate::config::Config;

mod finish;
mod shared_head;
mod slots;
mod unordered;

use slots::Lone;

use shared_head::SharedHeads;

/// Copies of one message kept waiting while its handler runs (each is answered as the handler
/// finishes). A sender retrying a slow handler's message makes one per ack timeout; more are
/// refused with a retryable nack.
pub(super) const MAX_WAITING_COPIES: usize = 64;

/// A message admitted for its handlers: its number on its connection, its dedup key, and
/// the message.
pub(super) type Ready = (u64, MessageId, Item);

/// One handler run: a message (or, for a run, its messages in turn) of one peer.
#[derive(Debug)]
struct Task<H> {
    conn: ConnId,
    head: Arc<Head>,
    handlers: SmallVec<[H; 1]>,
    /// The message admitted and not yet handed to a handler (waiting for a slot). Boxed:
    /// only a message that waits is parked here (one with a free slot goes to its handlers
    /// at once, in `admit`), and every other task stays smaller without it.
    ready: Option<Box<Ready>>,
    /// The message whose handlers run: its number, dedup key and id.
    running: Option<(u64, MessageId, MessageId)>,
    /// A run's messages; `None` for a task of one message (boxed, so that a task stays
    /// small, as it moves in and out of its slot).
    run: Option<Box<TaskRun>>,
}

/// What a task of a run keeps of the run.
#[derive(Debug, Default)]
struct TaskRun {
    /// An ordered run's messages each wait for the one before to succeed; an unordered
    /// run's do not (a failure stops nothing, and a handler that waits hands the rest back:
    /// `receive/unordered.rs`).
    ordered: bool,
    /// The messages handed over with the running one ([`Run::more`]), in order: each runs
    /// once the one before it ended (in an ordered run, succeeded). Empty unless handed over
    /// together.
    handed: VecDeque<(u64, MessageId, MessageId)>,
    /// The messages after the current one (the run's own vector, taken over without a copy),
    /// the first of them numbered `rest_seq`.
    rest: VecDeque<Item>,
    rest_seq: u64,
    /// The sender's and group's part of the `rest` messages' dedup keys, worked out once for
    /// the run.
    rest_key: RunKey,
}

/// The receiving side's state.
#[derive(Debug)]
pub(super) struct Inbound<H> {
    /// This node's handlers and subscriptions ([`super::local_handlers`]).
    pub(super) local: LocalHandlers<H>,
    pub(super) dedup: DedupWindow,
    pub(super) replies: ReplyCache,
    /// Works out the sender's part of dedup keys, once per connection ([`super::sender`]).
    pub(super) senders: SenderKeys,
    tasks: SlotMap<TaskId, Task<H>>,
    /// The head of each connection's last run, for the next run with the same one.
    heads: SharedHeads,
    /// Where duplicates of messages being handled now came from: they are answered too.
    waiters: HashMap<MessageId, Vec<(ConnId, u64)>>,
    max_handlers: usize,
    dedup_capacity: usize,
}

impl<H: Clone> Inbound<H> {
    pub(super) fn new(config: &Config, dedup_keys: [u64; 2], reply_keys: [u64; 2]) -> Self {
        Self {
            local: LocalHandlers::new(),
            dedup: DedupWindow::new(config.dedup_capacity, config.dedup_max_age, dedup_keys),
            replies: ReplyCache::new(config.reply_cache_size, config.dedup_max_age, reply_keys),
            // The same secret as the dedup window's hash: both keep ids a peer cannot steer.
            senders: SenderKeys::new(dedup_keys),
            tasks: SlotMap::with_key(),
            heads: SharedHeads::default(),
            waiters: HashMap::new(),
            max_handlers: config.max_concurrent_handlers.max(1),
            dedup_capacity: config.dedup_capacity,
        }
    }

    /// Handler runs in progress (or waiting for a slot).
    pub(super) fn running(&self) -> usize {
        self.tasks.len()
    }
}

impl<H: Clone> Engine<H> {
    /// A run of messages arrived on `conn`.
    pub(super) fn on_messages(&mut self, conn: ConnId, run: Messages, now: Instant) {
        let Messages {
            first_seq,
            head,
            items,
        } = run;
        let count = items.len();
        self.batched |= count > 1;
        let reliable = head.reliable;
        let refuse = |engine: &mut Self, retryable, code, reason: String| {
            if reliable {
                for seq in first_seq..first_seq + count as u64 {
                    engine.nack(conn, seq, retryable, code, reason.clone());
                }
            }
        };
        // Stopping, or closing `conn` (this node said goodbye on it, for being idle): once the
        // peer has the goodbye it sends what is unanswered elsewhere, so a message that
        // crossed the goodbye is refused here, not run on two instances.
        let closing = self.conns.get(conn).is_some_and(Conn::said_goodbye);
        if self.lifecycle != Lifecycle::Running || closing {
            let what = match self.lifecycle {
                Lifecycle::Running => "closing this connection",
                _ => "shutting down",
            };
            let reason = format!("{} is {what}", self.id);
            return refuse(self, true, NackCode::ShuttingDown, reason);
        }
        // The policy (authz.rs), before the dedup window or any handler: a sender that may
        // not send this is refused for good, and learns nothing of what is handled here. One
        // branch per run under a policy that allows everything.
        if !self.guard.open_inbound
            && let Some(reason) = self.refuse_unauthorized_run(conn, &head, count)
        {
            return refuse(self, false, NackCode::NotAuthorized, reason);
        }
        // A return address that is not the sender's own (sender.rs): refused for good. One
        // branch per run without one.
        if head.reply_to.is_some()
            && let Some(reason) = self.refuse_forged_return(conn, &head, count)
        {
            return refuse(self, false, NackCode::Invalid, reason);
        }
        let handlers = self.inbound.local.handlers_for(&head.to, &head.name);
        if handlers.is_empty() {
            self.stats.unhandled += count as u64;
            let (code, reason) = match &head.to {
                // Retryable: the handler may be registered a moment after start, or another
                // instance (a newer version during a rolling deploy) may have it.
                To::Handler => (
                    NackCode::NoHandler,
                    format!(
                        "service `{}` has no handler for `{}`",
                        self.service, head.name
                    ),
                ),
                // Unsubscribed while the event was on its way: the publisher has the
                // unsubscribe (it came first on this stream) and takes a retry elsewhere.
                to => (
                    NackCode::NoSubscription,
                    format!(
                        "no subscription of group {} for `{}` here",
                        to.group().unwrap_or("(ungrouped)"),
                        head.name
                    ),
                ),
            };
            return refuse(self, true, code, reason);
        }
        // Each event of an ordered batch is tracked on its own (a retried batch skips what was
        // handled); a batch that would push most of the window out is refused.
        if head.ordered && head.reliable && count > self.inbound.dedup_capacity / 2 {
            let reason = format!(
                "a batch of {count} events is larger than half this node's dedup window ({})",
                self.inbound.dedup_capacity
            );
            return refuse(self, false, NackCode::Invalid, reason);
        }
        let head = self.inbound.heads.share(conn, head);
        let run_key = RunKey::new(self.sender_key(conn), head.to.group_key());
        // An unordered run goes to its handler in one task too, when `hand_over` may hand it
        // over together (`receive/unordered.rs`).
        let together = !head.ordered
            && count > 1
            && hands_over_together(self.metrics.is_some(), &head, handlers.len());
        if head.ordered || together {
            let task = self.inbound.tasks.insert(Task {
                conn,
                head,
                handlers,
                ready: None,
                running: None,
                run: Some(Box::new(TaskRun {
                    ordered: !together,
                    handed: VecDeque::new(),
                    rest: VecDeque::from(items),
                    rest_seq: first_seq,
                    rest_key: run_key,
                })),
            });
            return self.admit(task, None, now);
        }
        let lone = Lone {
            conn,
            head,
            handlers,
        };
        lone.admit_each(self, (first_seq, run_key), items, now);
    }

    /// Checks a reliable message against the dedup window: `true` for a first delivery. A
    /// copy of a message already handled is acked again (a request gets its kept reply
    /// instead); a copy of one being handled now is answered when that handler finishes.
    pub(super) fn first_delivery(
        &mut self,
        conn: ConnId,
        seq: u64,
        head: &Head,
        item: &Item,
        key: MessageId,
        now: Instant,
    ) -> bool {
        match self.inbound.dedup.check(key, now) {
            Seen::New => true,
            Seen::InProgress => {
                self.stats.duplicates += 1;
                self.note_duplicate(conn, &head.name); // metrics/hooks.rs
                let waiting = self.inbound.waiters.entry(key).or_default();
                if waiting.len() < MAX_WAITING_COPIES {
                    waiting.push((conn, seq));
                } else {
                    // Copies make no handler task, so nothing else holds a peer that sends
                    // them by the million back: past a few, they are refused for a retry.
                    let reason = format!(
                        "{MAX_WAITING_COPIES} copies of message {} already wait for its handler",
                        item.id
                    );
                    self.nack(conn, seq, true, NackCode::LimitExceeded, reason);
                }
                false
            }
            Seen::Done => {
                self.stats.duplicates += 1;
                self.note_duplicate(conn, &head.name); // metrics/hooks.rs
                self.answer_again(conn, seq, head, item.id, key, now);
                false
            }
        }
    }

    /// Runs `handlers` on one message that came by other means than `conn`'s stream (a
    /// multicast channel's event from the publisher on `conn`), in `conn`'s handler slots.
    /// `seq` is the message's number where it came from. Admitted as a message of `conn` is.
    pub(super) fn start_task(
        &mut self,
        conn: ConnId,
        head: Arc<Head>,
        handlers: SmallVec<[H; 1]>,
        message: Ready,
        now: Instant,
    ) -> TaskId {
        let task = self.inbound.tasks.insert(Task {
            conn,
            head,
            handlers,
            ready: None,
            running: None,
            run: None,
        });
        self.admit(task, Some(message), now);
        task
    }

    /// Starts `task` if its peer has a free handler slot, on `message` (a task of one
    /// message) or on its run; queues it otherwise, with `message` parked in it (and
    /// stops reading the peer).
    fn admit(&mut self, task: TaskId, message: Option<Ready>, now: Instant) {
        let Some(t) = self.inbound.tasks.get_mut(task) else {
            return;
        };
        let Some(c) = self.conns.get_mut(t.conn) else {
            // Never handled here: forgotten, so a redelivery runs it (as in `drop_task`).
            if let Some((_, key, _)) = message {
                self.inbound.dedup.forget(key);
            }
            return self.drop_task(task);
        };
        if c.running >= self.inbound.max_handlers {
            t.ready = message.map(Box::new);
            c.backlog.push_back(task);
            if !c.paused {
                c.paused = true;
                self.actions.push_back(Action::PauseReading(t.conn));
            }
            return;
        }
        c.running += 1;
        match message {
            Some((seq, key, item)) => self.hand_over(task, seq, key, Some(item), now),
            None => self.step(task, now),
        }
    }

    /// Hands the task's next message to its handlers, or ends the task when none is left.
    pub(super) fn step(&mut self, task: TaskId, now: Instant) {
        let Some(t) = self.inbound.tasks.get_mut(task) else {
            return;
        };
        if let Some(ready) = t.ready.take() {
            let (seq, key, item) = *ready;
            return self.hand_over(task, seq, key, Some(item), now);
        }
        loop {
            let Some(t) = self.inbound.tasks.get_mut(task) else {
                return;
            };
            // The item stays in the run until its fate is known: a new one moves once, from the
            // run straight into its envelope (`hand_over`).
            let Some(run) = t.run.as_deref_mut() else {
                return self.end_task(task, now);
            };
            let Some(id) = run.rest.front().map(|item| item.id) else {
                return self.end_task(task, now);
            };
            let seq = run.rest_seq;
            run.rest_seq += 1;
            let key = run.rest_key.key(id);
            let seen = if t.head.reliable {
                self.inbound.dedup.check(key, now)
            } else {
                Seen::New
            };
            if seen == Seen::New {
                return self.hand_over(task, seq, key, None, now);
            }
            let Some(t) = self.inbound.tasks.get_mut(task) else {
                return;
            };
            let (conn, head) = (t.conn, Arc::clone(&t.head));
            let Some(run) = t.run.as_deref_mut() else {
                return;
            };
            let item = run.rest.pop_front();
            if !run.ordered {
                // A copy in an unordered run is answered as a lone one is, and the run goes on.
                if let Some(item) = item {
                    self.first_delivery(conn, seq, &head, &item, key, now);
                }
                continue;
            }
            self.stats.duplicates += 1;
            self.note_duplicate(conn, &head.name); // metrics/hooks.rs
            if seen == Seen::Done {
                self.answer_again(conn, seq, &head, id, key, now);
            } else {
                // Another delivery (a single publish of the same event) is handling it: this
                // run must not go on before that one finishes.
                let reason =
                    format!("event {id} of this batch is being handled by another delivery");
                self.nack(conn, seq, true, NackCode::HandlerFailed, reason);
                self.skip_rest(task);
            }
        }
    }

    /// Runs the task's handlers on its message `seq` (dedup key `key`): `item`, or (`None`) the
    /// first of its run's rest. The message becomes the task's running one, and an
    /// [`Action::Run`] hands it to the handlers.
    ///
    /// The new messages right after it in a run go in the same [`Run`], counted as running
    /// from now: the driver runs them in turn and reports each, without a trip through the
    /// engine between two (a lock, a clock read and the actions taken, per message). Only
    /// where [`hands_over_together`].
    fn hand_over(
        &mut self,
        task: TaskId,
        seq: u64,
        key: MessageId,
        item: Option<Item>,
        now: Instant,
    ) {
        let metrics = self.metrics.is_some();
        let inbound = &mut self.inbound;
        let Some(t) = inbound.tasks.get_mut(task) else {
            return;
        };
        let from_rest = item.is_none();
        let Some(item) = item.or_else(|| t.run.as_deref_mut()?.rest.pop_front()) else {
            return;
        };
        t.running = Some((seq, key, item.id));
        let message = Message::from_envelope(item.into_envelope(&t.head));
        // One handler, usually: cloned as such (a vector's clone goes through its generic
        // extend).
        let handlers = match t.handlers.as_slice() {
            [one] => SmallVec::from_buf([one.clone()]),
            all => all.iter().cloned().collect(),
        };
        let mut more = None;
        let mut rest_alone = false;
        if from_rest
            && hands_over_together(metrics, &t.head, t.handlers.len())
            && let Some(run) = t.run.as_deref_mut()
        {
            // The new messages at the front of the rest (one seen before stays for `step`,
            // at its turn). Usually all: the run's own vector goes, without a copy.
            let mut new = 0;
            run.handed.reserve(run.rest.len());
            // Bounded as a batch is (`on_messages`): each reliable message handed over counts
            // as being handled in the dedup window.
            let most = match t.head.reliable {
                true => (inbound.dedup_capacity / 2).max(1) as u64,
                false => u64::MAX,
            };
            for item in &run.rest {
                if new == most {
                    break;
                }
                let key = run.rest_key.key(item.id);
                if t.head.reliable && inbound.dedup.check(key, now) != Seen::New {
                    break;
                }
                run.handed.push_back((run.rest_seq + new, key, item.id));
                new += 1;
            }
            if new > 0 {
                let items = if new == run.rest.len() as u64 {
                    std::mem::take(&mut run.rest)
                } else {
                    let after = run.rest.split_off(new as usize);
                    std::mem::replace(&mut run.rest, after)
                };
                run.rest_seq += new;
                more = Some(Box::new(Following::new(
                    Arc::clone(&t.head),
                    items,
                    run.ordered,
                )));
            }
            rest_alone = !run.ordered && !run.rest.is_empty();
        }
        self.actions.push_back(Action::Run(Run {
            task,
            handlers,
            message,
            more,
        }));
        self.note_handler_started(task, now); // metrics/hooks.rs
        if rest_alone {
            self.run_the_rest_alone(task, now); // receive/unordered.rs
        }
    }
}

/// Whether the new messages of a run go to their handlers together, in one [`Run`]: for one
/// handler without replies to make, and without metrics (which time each message from its
/// hand-over).
fn hands_over_together(metrics: bool, head: &Head, handlers: usize) -> bool {
    !metrics && handlers == 1 && head.reply_to.is_none()
}
