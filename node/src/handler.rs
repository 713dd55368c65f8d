//! What handlers return, and how the node stores them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::Message;

/// A handler failed. Tells the sender whether trying again (perhaps on another instance) can
/// help: a retryable error is redelivered under the sender's retry policy, a permanent one
/// dead-letters the message at once.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct HandlerError {
    reason: String,
    retryable: bool,
}

impl HandlerError {
    /// A failure that may go away: a database briefly down, a dependency timing out.
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// A failure that will not: the message is invalid or refers to something that does not exist.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: false,
        }
    }

    /// Whether the sender should retry.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The reason given, shown to the sender and in its dead letters.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// What a handler can return on success: nothing (`()`), or a reply body for requests
/// (`Bytes`, `Vec<u8>`, `String`, `&'static str`). A message that asked for a reply (a
/// [`crate::Node::request`] or a message with a reply channel) always gets one: a handler that
/// returns `()` answers it with an empty body. Messages that asked for none get no reply.
pub trait IntoReply {
    /// The reply body, if any.
    fn into_reply(self) -> Option<Bytes>;
}

impl IntoReply for () {
    fn into_reply(self) -> Option<Bytes> {
        None
    }
}

impl IntoReply for Bytes {
    fn into_reply(self) -> Option<Bytes> {
        Some(self)
    }
}

impl IntoReply for Vec<u8> {
    fn into_reply(self) -> Option<Bytes> {
        Some(self.into())
    }
}

impl IntoReply for String {
    fn into_reply(self) -> Option<Bytes> {
        Some(self.into())
    }
}

impl IntoReply for &'static str {
    fn into_reply(self) -> Option<Bytes> {
        Some(Bytes::from_static(self.as_bytes()))
    }
}

impl<T: IntoReply> IntoReply for Option<T> {
    fn into_reply(self) -> Option<Bytes> {
        self.and_then(IntoReply::into_reply)
    }
}

/// The type-erased future a handler returns.
pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Option<Bytes>, HandlerError>> + Send>>;

/// A handler as stored in the node: shared, callable from any task.
pub(crate) type BoxedHandler = Arc<dyn Fn(Message) -> HandlerFuture + Send + Sync>;

/// Erases a user's handler closure.
pub(crate) fn boxed<F, Fut, R>(f: F) -> BoxedHandler
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    R: IntoReply + 'static,
{
    Arc::new(move |msg| {
        let fut = f(msg);
        Box::pin(async move { fut.await.map(IntoReply::into_reply) })
    })
}
