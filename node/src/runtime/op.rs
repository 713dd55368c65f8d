//! The future a caller awaits for one operation's result.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Driver;
use crate::Error;
use crate::engine::{Done, OpId};

/// Resolves with the result of an operation the engine runs. Dropping it before then tells the
/// engine the caller gave up (a send stops retrying; a request's reply is no longer waited
/// for).
pub(crate) struct OpFuture {
    driver: Arc<Driver>,
    op: Option<OpId>,
}

impl OpFuture {
    pub(crate) fn new(driver: Arc<Driver>, op: OpId) -> Self {
        driver.wakeups.caller_waits();
        Self {
            driver,
            op: Some(op),
        }
    }
}

impl Future for OpFuture {
    type Output = Result<Done, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(op) = self.op else {
            return Poll::Ready(Err(Error::ShuttingDown));
        };
        match self.driver.poll_op(op, cx.waker()) {
            Some(result) => {
                self.op = None;
                Poll::Ready(result)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        self.driver.wakeups.caller_done();
        if let Some(op) = self.op.take() {
            self.driver.cancel_op(op);
        }
    }
}
