//! The simulation's event loop: it plays the IO for every engine. Frames arrive after their
//! link's delay, handlers finish after the time they said they take, timers fire, and every
//! action an engine produces is acted on at once.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Event, HandlerRun, Sim, SimHandler};
use crate::Message;
use crate::engine::ConnId;
use shoal_proto::MessageKind;

impl Sim {
    /// Runs until nothing is left to do (no frame in flight, no handler running, no timer
    /// pending) or `limit` of virtual time passed. Says whether it went quiet.
    pub(super) fn run_for(&mut self, limit: Duration) -> bool {
        let until = self.now + limit;
        loop {
            let mut next = self.next_time();
            if next.is_none_or(|at| at > until) {
                // The cached deadlines may be stale (answered since): ask the engines.
                for node in &mut self.nodes {
                    node.deadline = node.engine.poll_timeout();
                }
                next = self.next_time();
            }
            match next {
                None => return true,
                Some(at) if at > until => {
                    self.now = until;
                    return false;
                }
                Some(at) => {
                    self.now = self.now.max(at);
                    self.step();
                }
            }
        }
    }

    /// When the next thing happens: an event, or an engine's deadline (as last asked; a
    /// deadline that moved later only makes for a step where nothing is due).
    pub(super) fn next_time(&mut self) -> Option<Instant> {
        let queued = self.queue.peek().map(|Reverse((at, _, _))| *at);
        let timers = self
            .nodes
            .iter()
            .filter(|n| n.alive && !n.timers_stopped)
            .filter_map(|n| n.deadline);
        queued.into_iter().chain(timers).min()
    }

    pub(super) fn step(&mut self) {
        let now = self.now;
        while let Some(Reverse((at, _, index))) = self.queue.peek().copied() {
            if at > now {
                break;
            }
            self.queue.pop();
            self.free.push(index);
            if let Some(event) = self.events[index].take() {
                self.apply(event);
            }
        }
        for node in &mut self.nodes {
            if node.alive && !node.timers_stopped && node.deadline.is_some_and(|at| at <= now) {
                node.engine.handle_timeout(now);
                node.deadline = node.engine.poll_timeout();
            }
        }
        self.settle();
    }

    /// `node`'s engine is never called for its deadlines again: what it still does, it does
    /// in answer to frames, datagrams and handlers.
    pub(super) fn stop_timers(&mut self, node: usize) {
        self.nodes[node].timers_stopped = true;
    }

    pub(super) fn schedule(&mut self, at: Instant, event: Event) {
        self.next_event += 1;
        let index = match self.free.pop() {
            Some(index) => {
                self.events[index] = Some(event);
                index
            }
            None => {
                self.events.push(Some(event));
                self.events.len() - 1
            }
        };
        self.queue.push(Reverse((at, self.next_event, index)));
    }

    pub(super) fn apply(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Frame(packet) => {
                let to = packet.to;
                if !self.nodes[to].alive {
                    return;
                }
                if let Some(frame) = self.net.arrive(packet) {
                    self.nodes[to].engine.handle_frame(frame.0, frame.1, now);
                }
            }
            Event::Spread { node, task, rest } => {
                if self.nodes[node].alive {
                    let now = self.now;
                    self.nodes[node].engine.spread(task, *rest, now);
                }
            }
            Event::HandlerDone {
                node,
                task,
                outcome,
            } => {
                if !self.nodes[node].alive {
                    return;
                }
                let running = &mut self.nodes[node].running;
                let this = running.get_mut(&task).and_then(VecDeque::pop_front);
                if running.get(&task).is_some_and(VecDeque::is_empty) {
                    running.remove(&task);
                }
                if let Some((started, labels)) = this {
                    for (label, id, key) in labels {
                        self.runs.push(HandlerRun {
                            node,
                            label,
                            id,
                            key,
                            started,
                            ended: now,
                            ok: outcome.is_ok(),
                        });
                    }
                }
                self.nodes[node].engine.handler_done(task, outcome, now);
            }
            Event::Lost { node, conn, reason } => {
                if self.nodes[node].alive {
                    self.nodes[node]
                        .engine
                        .connection_lost(conn, &reason, false, now);
                }
            }
            Event::Datagram { to, bytes } => self.datagram_arrives(to, bytes),
            Event::LinkIdle { node } => self.link_idle(node),
            Event::SendStaged { node } => {
                if self.nodes[node].alive {
                    while self.nodes[node].engine.send_staged(now) {}
                }
            }
            Event::Dialled { node, to } => {
                let target = self.nodes.iter().position(|n| n.engine.id() == to);
                if let Some(target) = target
                    && self.nodes[target].alive
                    && self.nodes[node].alive
                {
                    self.link_up(node, target, super::Faults::default(), false);
                }
            }
        }
    }

    /// Takes every action of every node until none is left.
    pub(super) fn settle(&mut self) {
        loop {
            let mut any = false;
            for node in 0..self.nodes.len() {
                while let Some(action) = self.nodes[node].engine.poll_action() {
                    any = true;
                    if self.nodes[node].alive {
                        self.act(node, action);
                    }
                }
            }
            if !any {
                for node in &mut self.nodes {
                    if node.engine.timer_moved() {
                        node.deadline = node.engine.poll_timeout();
                    }
                }
                return;
            }
        }
    }

    pub(super) fn act(&mut self, node: usize, action: crate::engine::Action<SimHandler>) {
        use crate::engine::Action;
        let now = self.now;
        match action {
            Action::Transmit(conn) => self.transmit(node, conn),
            Action::Run(run) => {
                // The message, then each handed over with it, one after the other: each
                // starts when the one before it ended. In an ordered run none runs after a
                // failure; in an unordered one, a handler that takes time is one that has to
                // wait, as the runtime's driver sees it: the rest go back to the engine.
                let mut at = now;
                let ordered = run.more.as_ref().is_none_or(|m| m.ordered());
                let (mut more, mut next) = (run.more, Some(run.message));
                while let Some(message) = next.take() {
                    let message = &message;
                    self.handled += 1;
                    let mut after = Duration::ZERO;
                    let mut replies = smallvec::SmallVec::new();
                    let mut failure = None;
                    let mut labels = Vec::new();
                    for handler in &run.handlers {
                        let (label, f) = &*handler.0;
                        labels.push((
                            label.clone(),
                            message.id(),
                            message.key().map(str::to_owned),
                        ));
                        let handled = f(message);
                        after += handled.after;
                        match handled.result {
                            Ok(body) => replies.push(body),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    let failed = failure.is_some();
                    let outcome = match failure {
                        Some(e) => Err(e),
                        None => Ok(self.replies(message, replies)),
                    };
                    self.nodes[node]
                        .running
                        .entry(run.task)
                        .or_default()
                        .push_back((at, labels));
                    let started = at;
                    at += after;
                    self.schedule(
                        at,
                        Event::HandlerDone {
                            node,
                            task: run.task,
                            outcome,
                        },
                    );
                    if failed && ordered {
                        break;
                    }
                    if !ordered && after > Duration::ZERO {
                        // Handed back after the reports of the messages before it, as the
                        // runtime's driver does (`runtime/handlers.rs`).
                        if let Some(rest) = more.take().filter(|m| !m.is_empty()) {
                            let task = run.task;
                            self.schedule(started, Event::Spread { node, task, rest });
                        }
                        break;
                    }
                    next = more.as_mut().and_then(|m| m.message());
                }
            }
            Action::Complete(op) => {
                if let Some(result) = self.nodes[node].engine.take_result(op) {
                    self.nodes[node].results.insert(op, result);
                }
            }
            Action::Answered { op, index, result } => {
                let at = self.elapsed();
                let before = self.nodes[node].answers.insert((op, index), (at, result));
                assert!(before.is_none(), "request {index} of {op:?} answered twice");
            }
            Action::Close {
                conn,
                reason,
                flush,
            } => {
                if flush {
                    self.transmit(node, conn);
                }
                self.close(node, conn, &reason.to_string());
            }
            Action::PauseReading(conn) => {
                self.net.pause(node, conn, true);
            }
            Action::ResumeReading(conn) => {
                for packet in self.net.pause(node, conn, false) {
                    let at = self.now;
                    self.schedule(at, Event::Frame(packet));
                }
            }
            Action::Event(event) => self.nodes[node].events.push(event),
            Action::PeersChanged => {}
            Action::SendStaged => self.schedule(now, Event::SendStaged { node }),
            Action::BackgroundRoom => self.nodes[node].rooms += 1,
            Action::Multicast(bytes) => self.multicast(node, bytes),
            Action::Connect { node: to, .. } => {
                self.dials.push((node, to));
                let at = now + Duration::from_millis(1);
                self.schedule(at, Event::Dialled { node, to });
            }
        }
    }

    /// The replies to `message` (if it asked for any), made as a node's driver makes them.
    pub(super) fn replies(
        &mut self,
        message: &Message,
        bodies: smallvec::SmallVec<[Option<Bytes>; 1]>,
    ) -> crate::engine::Replies {
        let Some(addr) = message.reply_to() else {
            return crate::engine::Replies::new();
        };
        let channel = addr.channel.clone();
        bodies
            .into_iter()
            .map(|body| {
                let mut reply =
                    self.message(MessageKind::Reply, &channel, body.unwrap_or_default());
                reply.env.correlation_id = Some(message.id());
                reply
            })
            .collect()
    }

    pub(super) fn transmit(&mut self, node: usize, conn: ConnId) {
        let mut buf = bytes::BytesMut::new();
        let mut finish = false;
        loop {
            let t = self.nodes[node]
                .engine
                .poll_transmit(conn, &mut buf, 256 * 1024, self.now);
            finish |= t.finish;
            if !t.more {
                break;
            }
        }
        let packets = self.net.send(node, conn, buf, &mut self.rng, self.now);
        for (at, packet) in packets {
            self.schedule(at, Event::Frame(packet));
        }
        // The goodbye was written: the stream is finished, as the runtime's writer does.
        if finish {
            self.net.finish(node, conn);
        }
    }

    /// Closes the link `conn` of `node` belongs to: what is on the way still arrives, then
    /// both sides lose it.
    pub(super) fn close(&mut self, node: usize, conn: ConnId, reason: &str) {
        if let Some(ends) = self.net.close(node, conn) {
            let at = self.net.drained_at(&ends, self.now);
            for (n, c) in ends {
                self.schedule(
                    at,
                    Event::Lost {
                        node: n,
                        conn: c,
                        reason: reason.to_owned(),
                    },
                );
            }
        }
    }
}
