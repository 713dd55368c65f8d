//! The simulated handlers: what one does with a message ([`Handled`]), how the engines
//! store it ([`SimHandler`]), and the record of each run ([`HandlerRun`]).

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_proto::MessageId;

use crate::Message;
use crate::handler::HandlerError;

/// What a simulated handler does with one message: takes `after`, then succeeds (with a reply
/// body, for requests) or fails.
pub(in crate::engine) struct Handled {
    pub(in crate::engine) after: Duration,
    pub(in crate::engine) result: Result<Option<Bytes>, HandlerError>,
}

impl Handled {
    /// Succeeds at once.
    pub(in crate::engine) fn ok() -> Self {
        Self::ok_after(Duration::ZERO)
    }

    /// Succeeds after `after`.
    pub(in crate::engine) fn ok_after(after: Duration) -> Self {
        Self {
            after,
            result: Ok(None),
        }
    }

    /// Fails at once.
    pub(in crate::engine) fn fail(error: HandlerError) -> Self {
        Self {
            after: Duration::ZERO,
            result: Err(error),
        }
    }

    /// Replies `body` at once.
    pub(in crate::engine) fn reply(body: impl Into<Bytes>) -> Self {
        Self {
            after: Duration::ZERO,
            result: Ok(Some(body.into())),
        }
    }
}

/// A handler as the simulated engines store it: a label (the message name, or the group of a
/// subscription) for the record, and the closure.
#[derive(Clone)]
pub(in crate::engine) struct SimHandler(pub(in crate::engine) Rc<(String, HandlerFn)>);

/// What a simulated handler does.
pub(in crate::engine) type HandlerFn = Box<dyn Fn(&Message) -> Handled>;

/// A handler run in progress: when it started, and each handler's label with the message's
/// id and key.
pub(in crate::engine) type Running = (Instant, Vec<(String, MessageId, Option<String>)>);

impl std::fmt::Debug for SimHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimHandler({})", self.0.0)
    }
}

/// One handler run that finished, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::engine) struct HandlerRun {
    pub(in crate::engine) node: usize,
    /// The handler's label: the message name, or the subscription's group.
    pub(in crate::engine) label: String,
    pub(in crate::engine) id: MessageId,
    pub(in crate::engine) key: Option<String>,
    pub(in crate::engine) started: Instant,
    pub(in crate::engine) ended: Instant,
    pub(in crate::engine) ok: bool,
}
