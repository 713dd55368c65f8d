//! [`Node`]: the handle a service uses to send, request and handle messages.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::Either;
use shoal_proto::{MessageId, NodeId, ReturnAddress, SmolStr};

use crate::engine::Done;
use crate::handler::{self, HandlerError, IntoReply};
use crate::runtime::Driver;
use crate::runtime::gather::Bound;
use crate::runtime::op::OpFuture;
use crate::trace::{self, Sending};
use crate::{Error, Message, Receipt, SendOptions};

/// A running Shoal node: one instance of one service.
///
/// `Node` is a cheap handle (an `Arc`): clone it into handlers and tasks. The node's work runs
/// in background tasks on the Tokio runtime that started it. Call [`Node::shutdown`] to stop
/// gracefully; dropping the last handle stops the node abruptly, like [`Node::abort`].
#[derive(Clone)]
pub struct Node {
    owner: Arc<Owner>,
}

/// A handle that does not keep the node alive (for the node's own long-running tasks, which
/// would otherwise keep it from stopping when the user drops the last [`Node`]).
#[cfg(feature = "outbox")]
#[derive(Clone)]
pub(crate) struct WeakNode(std::sync::Weak<Owner>);

#[cfg(feature = "outbox")]
impl WeakNode {
    /// The node, if a user still holds it.
    pub(crate) fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|owner| Node { owner })
    }
}

/// Stops the node when the last handle goes away.
struct Owner {
    driver: Arc<Driver>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Also when a shutdown was started but its future dropped before it finished.
        if !self.driver.finished.load(Ordering::Acquire) {
            self.driver.kill();
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("service", &self.service())
            .field("id", &self.id())
            .finish()
    }
}

impl Node {
    /// Starts configuring a node that is an instance of `service`.
    pub fn builder(service: impl Into<String>) -> crate::NodeBuilder {
        crate::NodeBuilder::new(service)
    }

    /// A handle that does not keep the node alive.
    #[cfg(feature = "outbox")]
    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.owner))
    }

    pub(crate) fn from_driver(driver: Arc<Driver>) -> Self {
        Self {
            owner: Arc::new(Owner { driver }),
        }
    }

    pub(crate) fn driver(&self) -> &Arc<Driver> {
        &self.owner.driver
    }

    /// This node's id (random per start).
    pub fn id(&self) -> NodeId {
        self.driver().id
    }

    /// The service this node is an instance of.
    pub fn service(&self) -> &str {
        &self.driver().service
    }

    /// The address the node accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.driver()
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Registers the handler for messages named `name` (commands, documents, events and
    /// asynchronous replies alike), replacing any earlier one.
    ///
    /// The message is acknowledged when the returned future completes with `Ok`; an `Err`
    /// sends a negative acknowledgement ([`HandlerError::retryable`] or
    /// [`HandlerError::permanent`]). A handler that returns a body (`Ok(bytes)`) answers a
    /// request. Handlers run concurrently, up to the configured limit. Each gets its first
    /// poll where its message was read, on any runtime, and goes on in a task of its own only
    /// if it has to wait: keep its work before its first wait short (hand CPU-heavy work to
    /// `tokio::task::spawn_blocking`), since reading that peer's connection waits for it.
    ///
    /// Retried messages carry the same id and are filtered by this node's dedup window, but a
    /// message may still reach a second instance if the first one crashed before acking: keep
    /// handlers idempotent, or use [`Message::is_redelivery`] to take care.
    pub fn handle<F, Fut, R>(&self, name: impl Into<String>, handler: F)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
        R: IntoReply + 'static,
    {
        let (name, handler) = (name.into(), handler::boxed(handler));
        self.driver()
            .call(|engine, _| engine.set_handler(name, handler));
    }

    /// Sends `msg` to one instance of `service` and resolves when that instance's handler has
    /// finished and acknowledged it.
    ///
    /// Picks the least busy live instance; without an ack in time, or when the connection
    /// drops, it retries with exponential backoff and jitter, on another instance when there is
    /// one. If no instance is connected yet it waits for one (within the retry deadline). When
    /// attempts or time run out it returns [`Error::DeadLettered`] and records the message in
    /// [`Node::dead_letters`]. Waits while the instance has the maximum of unacknowledged
    /// messages; use [`Node::send_with`] to fail fast instead.
    ///
    /// A message with a partition key ([`Message::with_key`]) goes to the instance the key
    /// maps to (rendezvous hashing), and messages with one key are handled one at a time in
    /// the order `send` was *called*, retries included.
    ///
    /// The message is on its way from the call on: the node delivers it whether or not the
    /// returned future is polled. Dropping the future stops retrying.
    ///
    /// An unkeyed command sent with the default options while other calls of the node wait
    /// joins the commands sent to `service` in the same turn of the runtime, and they go to
    /// the engine as one operation, each still handled on its own and with a receipt or
    /// error of its own (README, "Calls gathered in one turn").
    /// Dropping the future before that hand-over takes the message back; after it, the
    /// message is delivered with the others.
    pub fn send(
        &self,
        service: &str,
        msg: Message,
    ) -> impl Future<Output = Result<Receipt, Error>> + Send + 'static {
        self.send_with(service, msg, SendOptions::default())
    }

    /// [`Node::send`] with per-message options (retry policy, fail-fast).
    pub fn send_with(
        &self,
        service: &str,
        mut msg: Message,
        options: SendOptions,
    ) -> impl Future<Output = Result<Receipt, Error>> + Send + 'static {
        let driver = Arc::clone(self.driver());
        msg.address_replies(&driver.service, driver.id);
        let span = trace::traced_send(Sending::Send, Some(service), std::slice::from_mut(&mut msg));
        // While other calls wait, it joins the commands sent to `service` in this turn
        // (`runtime/gather.rs`).
        let started = if driver.gathers_command(&msg, &options) {
            Either::Left(driver.gather(Bound::Service(SmolStr::new(service)), msg))
        } else {
            let started = trace::within(&span, || {
                // After keyed commands gathered before it (`runtime/gather.rs`).
                driver.call_in_order(msg.key().is_some(), |engine, now| {
                    engine.send(service, msg, &options, now)
                })
            });
            Either::Right(started.map(|op| OpFuture::new(driver, op)))
        };
        trace::instrumented(
            async move {
                let done = match started {
                    Either::Left(gathered) => gathered.await?,
                    Either::Right(op) => op?.await?,
                };
                match done {
                    Done::Sent(receipt) => Ok(receipt),
                    other => Err(unexpected(&other)),
                }
            },
            span,
        )
    }

    /// Sends `msg` to one instance of `service` without waiting for it to be handled: returns
    /// its id as soon as the node holds it. For a service streaming commands, as
    /// [`crate::PublishOptions::background`] is for events.
    ///
    /// The command is delivered as [`Node::send`] delivers one (acknowledged once handled,
    /// retried on another instance, kept in order with the others of its partition key),
    /// with the node's retry policy. One not delivered when that policy gives up is a dead
    /// letter ([`Node::dead_letters`]); nothing else tells of it. A graceful [`Node::shutdown`] delivers those still on their way within
    /// its grace period; those left, and all of them on [`Node::abort`], are dead letters.
    ///
    /// Commands sent this way while others are on their way go to the engine together, each
    /// still handled on its own (README, "Delivery guarantees", "Commands in the background").
    ///
    /// Fails at once, keeping nothing, with [`Error::Backlog`] when the node holds as many
    /// background messages as it may (`NodeBuilder::max_background_publishes` and
    /// `max_background_bytes`; try again once some are delivered), or with the error a
    /// [`Node::send`] of `msg` would fail with before anything is sent (a stopping node, an
    /// empty service name, a message that breaks the limits).
    pub fn send_background(&self, service: &str, mut msg: Message) -> Result<MessageId, Error> {
        let driver = self.driver();
        msg.address_replies(&driver.service, driver.id);
        let span = trace::traced_send(Sending::Send, Some(service), std::slice::from_mut(&mut msg));
        trace::within(&span, || {
            driver.call_background(msg.key().is_some(), |engine, clock| {
                engine.send_background(service, msg, || clock.now())
            })
        })
    }

    /// Waits until the node can take background messages again: until it holds at most half
    /// of what its caps allow (`NodeBuilder::max_background_publishes`,
    /// `max_background_bytes`), and little enough for the call refused last to be taken (a
    /// batch or a large message may need more), or it stops. Resolves at once if that holds
    /// now.
    ///
    /// For a producer refused with [`Error::Backlog`]: awaiting this, rather than trying again
    /// at once, leaves the CPU to the node delivering what it holds, and wakes the producer
    /// once for many messages. Another producer may take the room first: then the call is
    /// refused again, and waits again. The backlog drains as receivers acknowledge, or as
    /// their messages run out of retries (events for a group without a live instance are held
    /// for the hold time first), so the wait is bounded by the retry policy and the hold.
    ///
    /// ```no_run
    /// # use shoal::{Error, Message, Node};
    /// # async fn produce(node: Node, commands: Vec<Message>) -> Result<(), Error> {
    /// for command in commands {
    ///     // A refused call keeps nothing: the same command (and id) is sent again.
    ///     while let Err(e) = node.send_background("billing", command.clone()) {
    ///         match e {
    ///             Error::Backlog { .. } => node.wait_for_background_room().await,
    ///             e => return Err(e),
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_background_room(&self) {
        self.driver().wait_for_background_room().await;
    }

    /// Sends `msg` as a request to one instance of `service` and waits for its reply, at most
    /// `timeout` from this call (then [`Error::Timeout`], and the request is not retried any
    /// more). The receiver's handler answers by returning a body. A partition key orders
    /// requests like [`Node::send`] does. A request with the id of one still waiting for its
    /// reply (a cloned `Message`) fails at once with [`Error::DuplicateRequest`]: its reply
    /// could answer only one of them.
    ///
    /// An unkeyed request made while other calls of the node wait joins the requests to
    /// `service` with the same `timeout` made in the same turn of the runtime, and they go to
    /// the engine as one operation; each is still handled on its own, and each caller gets
    /// its own reply as soon as it comes (README, "Calls gathered in one turn"). Dropping the
    /// future before that hand-over takes the request back.
    pub fn request(
        &self,
        service: &str,
        mut msg: Message,
        timeout: Duration,
    ) -> impl Future<Output = Result<Message, Error>> + Send + 'static {
        let driver = Arc::clone(self.driver());
        msg.env.reply_to = Some(ReturnAddress {
            service: SmolStr::new(&driver.service),
            node: Some(driver.id),
            channel: SmolStr::default(),
        });
        let span = trace::traced_send(
            Sending::Request,
            Some(service),
            std::slice::from_mut(&mut msg),
        );
        // The engine ends the request with `Error::Timeout` once `timeout` has passed. While
        // other calls wait, it joins the requests to `service` made in this turn
        // (`runtime/gather.rs`).
        let started = if driver.gathers_request(&msg) {
            let bound = Bound::Request {
                service: SmolStr::new(service),
                timeout,
            };
            Either::Left(driver.gather(bound, msg))
        } else {
            let started = trace::within(&span, || {
                driver.call_in_order(msg.key().is_some(), |engine, now| {
                    engine.request(service, msg, timeout, now)
                })
            });
            Either::Right(started.map(|op| OpFuture::new(driver, op)))
        };
        trace::instrumented(
            async move {
                let done = match started {
                    Either::Left(gathered) => gathered.await?,
                    Either::Right(op) => op?.await?,
                };
                match done {
                    Done::Replied(reply) => Ok(reply),
                    other => Err(unexpected(&other)),
                }
            },
            span,
        )
    }

    /// Stops gracefully: takes no new work (new sends fail with [`Error::ShuttingDown`], new
    /// deliveries are refused with a retryable nack so senders go elsewhere), waits for running
    /// handlers and background deliveries (at most the shutdown grace period), flushes their
    /// acks, says goodbye to every peer and closes the connections.
    pub async fn shutdown(&self) {
        self.driver().shutdown().await;
    }

    /// Stops at once, as if the process had crashed: no goodbyes, running handlers dropped,
    /// unsent acks lost, and no handler started afterwards (not even on the rest of a batch
    /// already handed over). Peers see the connections close and retry elsewhere. Meant for tests
    /// and emergencies; prefer [`Node::shutdown`].
    pub fn abort(&self) {
        self.driver().kill();
    }
}

/// An operation ended with a result of another kind than asked for: a bug, said plainly
/// rather than with a panic.
pub(crate) fn unexpected(done: &Done) -> Error {
    Error::Internal(format!("unexpected result {done:?}"))
}
