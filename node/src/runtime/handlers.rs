//! Running handlers: each panic caught, replies made, the first poll given in place, and a
//! task only for a handler that has to wait.
//!
//! The first poll runs where the message was read, on every runtime. A spawned task would
//! run on the same thread anyway (a current-thread runtime has no other; tokio's multi-thread
//! scheduler runs a task spawned by the running one next, on its worker). Polling in place
//! saves a task for each handler that does not wait, and lets every handler that finished
//! report in one call, so their acks leave in one write. A handler's code up to its first
//! wait holds up the reading of its connection: CPU-heavy work belongs in
//! `tokio::task::spawn_blocking`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use smallvec::SmallVec;

use super::Driver;
use crate::Message;
use crate::engine::{Engine, Following, HandlerOutcome, Lifecycle, Replies, Run, TaskId};
use crate::handler::{BoxedHandler, HandlerError};

/// What a driver trip through the handlers of some runs collects, for the engine under one
/// lock ([`Trip::report`]), and the handlers that have to wait, started after that
/// ([`Driver::start_waiting`]).
#[derive(Default)]
pub(super) struct Trip {
    /// The handlers that finished in their first poll. Each entry is a task, the number of
    /// its messages that succeeded (without replies) one after the other, then the outcome
    /// of the next one.
    finished: SmallVec<[(TaskId, usize, HandlerOutcome); 8]>,
    /// The messages of unordered runs after a handler that has to wait, each run with its
    /// task, for [`Engine::spread`].
    spread: SmallVec<[(TaskId, Box<Following>); 1]>,
    /// Handlers that have to wait, each with its task's handlers and the rest of its ordered
    /// run. Started only once the engine has the reports of the messages before them in
    /// their runs: a task started at once, on another worker, could report its outcome first,
    /// and the engine would take it for the outcome of the message before.
    waiting: SmallVec<[Waiter; 2]>,
}

/// A handler that has to wait, not started yet (see [`Trip::waiting`]).
struct Waiter {
    task: TaskId,
    waiting: Waiting,
    handlers: SmallVec<[BoxedHandler; 1]>,
    more: Option<Box<Following>>,
}

impl Trip {
    /// Whether the engine has anything to hear of this trip.
    pub(super) fn has_reports(&self) -> bool {
        !self.finished.is_empty() || !self.spread.is_empty()
    }

    /// Tells `engine` what finished, in order, and hands it the rest of the unordered runs
    /// whose handler has to wait.
    pub(super) fn report(&mut self, engine: &mut Engine<BoxedHandler>, now: Instant) {
        // Drained, not moved: moving the vector by value copies its whole inline array.
        for (task, succeeded, outcome) in self.finished.drain(..) {
            for _ in 0..succeeded {
                engine.handler_done(task, Ok(Replies::new()), now);
            }
            engine.handler_done(task, outcome, now);
        }
        for (task, rest) in self.spread.drain(..) {
            engine.spread(task, *rest, now);
        }
    }
}

/// A handler's future that did not finish in its first poll.
enum Waiting {
    /// The one handler's own future (it makes no reply).
    One(crate::handler::HandlerFuture),
    /// Every handler in turn, with the replies.
    All(Pin<Box<dyn Future<Output = HandlerOutcome> + Send>>),
}

impl Waiting {
    /// Waits for the outcome (a panic counts as a permanent failure).
    async fn finish(self) -> HandlerOutcome {
        match self {
            Self::One(handled) => CatchUnwind(AssertUnwindSafe(handled))
                .await
                .unwrap_or_else(|()| Err(panicked()))
                .map(|_| Replies::new()),
            Self::All(handled) => handled.await,
        }
    }
}

impl Driver {
    /// Starts the handlers of `run`: on its message, then on each of the ones handed over
    /// with it ([`Run::more`]), in an ordered run each once the one before it succeeded. The
    /// outcomes of those that finished in their first poll go into `trip` (the caller
    /// reports them, in order). The first that has to wait goes into `trip` too, with the
    /// rest of an ordered run, which go on in its task once it is started (none runs after a
    /// failure); the rest of an unordered run go to the engine, to make a task of each. None
    /// runs once the node is killed.
    pub(super) fn run_handlers(self: &Arc<Self>, run: Run<BoxedHandler>, trip: &mut Trip) {
        let Run {
            task,
            mut handlers,
            message,
            more,
        } = run;
        // Killed meanwhile (by a handler, or from another thread): like a crashed process,
        // it starts nothing more.
        if self.is_killed() {
            return;
        }
        let finished = &mut trip.finished;
        let Some(mut more) = more else {
            match first_poll(&mut handlers, message, true) {
                Ok(outcome) => finished.push((task, 0, outcome)),
                Err(waiting) => trip.waiting.push(Waiter {
                    task,
                    waiting,
                    handlers,
                    more: None,
                }),
            }
            return;
        };
        let ordered = more.ordered();
        let mut succeeded = 0;
        let mut next = Some(message);
        while let Some(message) = next {
            match first_poll(&mut handlers, message, false) {
                Ok(Ok(replies)) if replies.is_empty() => succeeded += 1,
                Ok(outcome) => {
                    let failed = outcome.is_err();
                    finished.push((task, succeeded, outcome));
                    succeeded = 0;
                    if failed && ordered {
                        return;
                    }
                }
                Err(waiting) => {
                    if succeeded > 0 {
                        finished.push((task, succeeded - 1, Ok(Replies::new())));
                    }
                    let more = if ordered {
                        Some(more)
                    } else {
                        if !more.is_empty() {
                            trip.spread.push((task, more));
                        }
                        None
                    };
                    trip.waiting.push(Waiter {
                        task,
                        waiting,
                        handlers,
                        more,
                    });
                    return;
                }
            }
            if self.is_killed() {
                break;
            }
            next = more.message();
        }
        if succeeded > 0 {
            finished.push((task, succeeded - 1, Ok(Replies::new())));
        }
    }

    /// Starts the handlers of `trip` that have to wait, once the engine has its reports.
    pub(super) fn start_waiting(self: &Arc<Self>, trip: &mut Trip) {
        for waiter in trip.waiting.drain(..) {
            self.spawn_handler(waiter);
        }
    }

    /// Runs a handler that has to wait in a task of its own, which reports its outcome, then
    /// runs the handlers on each message of its ordered run's rest in turn (as long as they
    /// succeed), reporting each.
    fn spawn_handler(self: &Arc<Self>, waiter: Waiter) {
        let Waiter {
            task,
            waiting,
            mut handlers,
            mut more,
        } = waiter;
        let driver = Arc::clone(self);
        let killed = self.killed.clone();
        self.handler_tasks.spawn(async move {
            let Some(mut outcome) = killed.run_until_cancelled(waiting.finish()).await else {
                return;
            };
            loop {
                let failed = outcome.is_err();
                // Asked under the lock the kill takes too: once the engine is killed, the
                // rest handed over stays unhandled, as in a crashed process.
                let dead = driver.call(|engine, now| {
                    engine.handler_done(task, outcome, now);
                    engine.lifecycle() == Lifecycle::Killed
                });
                let Some(message) = more
                    .as_mut()
                    .filter(|_| !failed && !dead)
                    .and_then(|m| m.message())
                else {
                    return;
                };
                let next = match first_poll(&mut handlers, message, false) {
                    Ok(outcome) => Some(outcome),
                    Err(waiting) => killed.run_until_cancelled(waiting.finish()).await,
                };
                let Some(next) = next else {
                    return;
                };
                outcome = next;
            }
        });
    }
}

/// Calls `handlers` on `message` and polls them once: the outcome when they finished, the
/// future to wait for otherwise. With `last` (no message follows for them), handlers that
/// make replies, or several, are taken into the future that runs them, rather than copied.
fn first_poll(
    handlers: &mut SmallVec<[BoxedHandler; 1]>,
    message: Message,
    last: bool,
) -> Result<HandlerOutcome, Waiting> {
    let mut cx = Context::from_waker(Waker::noop());
    if let [handler] = handlers.as_slice()
        && message.reply_to().is_none()
    {
        // The usual case: one handler, no reply to make. Its own (boxed) future is polled
        // directly, without an outer future around it.
        let mut handled = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            crate::trace::call_handler(handler, message).0
        })) {
            Ok(future) => future,
            Err(_) => return Ok(Err(panicked())),
        };
        return match std::panic::catch_unwind(AssertUnwindSafe(|| handled.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(result)) => Ok(result.map(|_| Replies::new())),
            Ok(Poll::Pending) => Err(Waiting::One(handled)),
            Err(_) => Ok(Err(panicked())),
        };
    }
    let handlers = if last {
        std::mem::take(handlers)
    } else {
        handlers.clone()
    };
    let mut handled = Box::pin(call_all(handlers, message));
    // A future that is not ready registers this no-op waker, then its own task's at the
    // task's first poll, where well-behaved futures look at their state again.
    match handled.as_mut().poll(&mut cx) {
        Poll::Ready(outcome) => Ok(outcome),
        Poll::Pending => Err(Waiting::All(handled)),
    }
}

/// The failure a panicking handler counts as.
fn panicked() -> HandlerError {
    HandlerError::permanent("handler panicked")
}

/// Runs every handler on the message in order, and makes the replies it asked for. Stops at
/// the first failure; a panicking handler counts as a permanent failure.
async fn call_all(handlers: SmallVec<[BoxedHandler; 1]>, message: Message) -> HandlerOutcome {
    let request = message
        .reply_to()
        .map(|addr| (message.id(), addr.channel.clone()));
    let mut bodies: SmallVec<[ReplyBody; 1]> = SmallVec::new();
    let mut message = Some(message);
    let last = handlers.len().saturating_sub(1);
    for (i, handler) in handlers.iter().enumerate() {
        // The last handler (usually the only one) takes the message itself.
        let this = if i == last {
            message.take()
        } else {
            message.clone()
        };
        let Some(this) = this else { break };
        bodies.push(call(handler, this).await?);
    }
    Ok(request.map_or_else(Replies::new, |(id, channel)| replies(id, &channel, bodies)))
}

/// Calls one handler (in its `shoal.handle` span: `crate::trace`), turning a panic (in the
/// closure or in its future) into a permanent failure so one bad handler does not take the
/// node down. Returns the reply body with the handler's trace context.
async fn call(handler: &BoxedHandler, msg: Message) -> Result<ReplyBody, HandlerError> {
    let Ok((future, ctx)) = std::panic::catch_unwind(AssertUnwindSafe(|| {
        crate::trace::call_handler(handler, msg)
    })) else {
        return Err(panicked());
    };
    let body = CatchUnwind(AssertUnwindSafe(future))
        .await
        .unwrap_or_else(|()| Err(panicked()))?;
    Ok((body, ctx))
}

/// Catches a panic in the wrapped future.
struct CatchUnwind<F>(AssertUnwindSafe<F>);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut inner.0).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// What one handler returned for a reply: its body, and the trace context it ran in.
type ReplyBody = (Option<bytes::Bytes>, Option<crate::TraceContext>);

/// The replies to request `request` on `channel` (empty for a synchronous request), one per
/// handler body: a message that asked for a reply always gets one, an empty body if its
/// handler returned none. Each carries the trace context of the handler that made it (a
/// handler's reply is a message it sends, and continues its trace).
fn replies(
    request: shoal_proto::MessageId,
    channel: &str,
    bodies: SmallVec<[ReplyBody; 1]>,
) -> Replies {
    bodies
        .into_iter()
        .map(|(body, ctx)| {
            let reply =
                Message::reply_to_request(request, channel.to_owned(), body.unwrap_or_default());
            crate::trace::with_handler_context(reply, ctx.as_ref())
        })
        .collect()
}
