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

use smallvec::SmallVec;

use super::{Driver, ReplyBody, replies};
use crate::Message;
use crate::engine::{HandlerOutcome, Replies, Run, TaskId};
use crate::handler::{BoxedHandler, HandlerError};

impl Driver {
    /// Starts the handlers of `run`. Returns the outcome when they finished in their first
    /// poll (the caller reports it); otherwise they go on in a task that reports it.
    pub(super) fn run_handlers(
        self: &Arc<Self>,
        run: Run<BoxedHandler>,
    ) -> Option<(TaskId, HandlerOutcome)> {
        let Run {
            task,
            mut handlers,
            message,
        } = run;
        if handlers.len() == 1
            && message.reply_to().is_none()
            && let Some(handler) = handlers.pop()
        {
            // The usual case: one handler, no reply to make. Its own (boxed) future is polled
            // directly, without an outer future around it.
            let mut handled = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                crate::trace::call_handler(&handler, message).0
            })) {
                Ok(future) => future,
                Err(_) => return Some((task, Err(panicked()))),
            };
            let mut cx = Context::from_waker(Waker::noop());
            match std::panic::catch_unwind(AssertUnwindSafe(|| handled.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(result)) => return Some((task, result.map(|_| Replies::new()))),
                Ok(Poll::Pending) => {}
                Err(_) => return Some((task, Err(panicked()))),
            }
            self.spawn_handler(task, async move {
                CatchUnwind(AssertUnwindSafe(handled))
                    .await
                    .unwrap_or_else(|()| Err(panicked()))
                    .map(|_| Replies::new())
            });
            return None;
        }
        let mut handled = Box::pin(call_all(handlers, message));
        // A future that is not ready registers this no-op waker, then its own task's at the
        // task's first poll, where well-behaved futures look at their state again.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(outcome) = handled.as_mut().poll(&mut cx) {
            return Some((task, outcome));
        }
        self.spawn_handler(task, handled);
        None
    }

    /// Runs a handler that has to wait in a task of its own, which reports its outcome.
    fn spawn_handler(
        self: &Arc<Self>,
        task: TaskId,
        handled: impl Future<Output = HandlerOutcome> + Send + 'static,
    ) {
        let driver = Arc::clone(self);
        let killed = self.killed.clone();
        self.handler_tasks.spawn(async move {
            if let Some(outcome) = killed.run_until_cancelled(handled).await {
                driver.call(|engine, now| engine.handler_done(task, outcome, now));
            }
        });
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
