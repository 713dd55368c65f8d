//! [`Node`]: the handle a service uses to send, request and handle messages.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use shoal_proto::{MessageId, NodeId, ReturnAddress};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::dedup::DedupWindow;
use crate::core::replies::ReplyCache;
use crate::dead_letter::DeadLetters;
use crate::diagnose::DialFailures;
use crate::handler::{self, BoxedHandler, HandlerError, IntoReply};
use crate::outbound::{self, Delivery, SendOptions};
use crate::registry::{Registry, Route, Target};
use crate::stats::Counters;
use crate::sync::lock;
use crate::{Error, Message, NodeBuilder, NodeEvent};

/// State shared by the node's handle and its background tasks.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) service: String,
    pub(crate) config: Config,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) registry: Registry,
    pub(crate) handlers: RwLock<HashMap<String, BoxedHandler>>,
    pub(crate) dedup: Mutex<DedupWindow>,
    /// Replies to recent synchronous requests, for retries of them.
    pub(crate) replies: Mutex<ReplyCache>,
    /// The outbox's store, when the node relays one ([`Node::forget_group`] edits it).
    #[cfg(feature = "outbox")]
    pub(crate) outbox: std::sync::OnceLock<Arc<dyn crate::outbox::OutboxStore>>,
    /// Synchronous requests waiting for their reply, by request id.
    pub(crate) pending: Mutex<HashMap<MessageId, oneshot::Sender<Message>>>,
    pub(crate) counters: Counters,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    /// Cancelled when shutdown starts: no new work is taken.
    pub(crate) stopping: CancellationToken,
    /// Set with `stopping`, for cheap checks.
    pub(crate) stopping_flag: std::sync::atomic::AtomicBool,
    /// Cancelled when the node stops at once: running handlers are dropped.
    pub(crate) killed: CancellationToken,
    /// Running handlers, so shutdown can wait for them.
    pub(crate) handler_tasks: TaskTracker,
    /// Set when a graceful shutdown has completed.
    pub(crate) finished: std::sync::atomic::AtomicBool,
    /// Background tasks (accept loop, dialers, discovery), stopped on shutdown.
    pub(crate) tasks: TaskTracker,
    pub(crate) discovery: Mutex<Vec<Box<dyn shoal_discovery::Discovery>>>,
    pub(crate) static_peers: Vec<SocketAddr>,
    /// Held while a handler is admitted, and while shutdown starts: see `inbound::on_deliver`.
    pub(crate) admission: Mutex<()>,
    pub(crate) dial_failures: DialFailures,
    /// This node's subscriptions and their handlers.
    pub(crate) subscriptions: RwLock<crate::subscribe::LocalSubscriptions>,
    /// Held while subscriptions change or are announced to a new peer, so peers learn of
    /// changes in the order they happened.
    pub(crate) subscription_gate: tokio::sync::Mutex<()>,
    /// Whether handlers get their first poll in the read loop (on a current-thread runtime,
    /// where a spawned task would run on the same thread anyway).
    pub(crate) inline_handlers: bool,
    /// Turns of messages with a partition key, per destination and key.
    pub(crate) key_order: Arc<crate::ordering::KeyOrder>,
    /// Certificate lifecycle hook (certs branch): the node's certificate, trusted CAs and
    /// revocations, read by every handshake and swapped by `Node::reload_tls`.
    pub(crate) tls: crate::tls::LiveTls,
}

impl Shared {
    pub(crate) fn emit(&self, event: NodeEvent) {
        tracing::debug!(?event, node = %self.id, "node event");
        let _ = self.events.send(event);
    }

    /// Whether shutdown has started. Read for every frame and handler, so it is an atomic
    /// flag (a cancellation token's check takes a lock).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping_flag
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts stopping: no new work is taken.
    fn begin_stopping(&self) {
        self.stopping_flag
            .store(true, std::sync::atomic::Ordering::Release);
        self.stopping.cancel();
    }

    /// Stops at once, like a crash: connections are closed without goodbyes, running handlers
    /// are dropped, nothing is flushed.
    pub(crate) fn kill(&self) {
        self.begin_stopping();
        self.killed.cancel();
        self.endpoint
            .close(crate::net::CLOSE_KILLED, b"node stopped abruptly");
        let mut sources = std::mem::take(&mut *lock(&self.discovery));
        // Stopping a source may block (mDNS goodbyes); this may run outside any runtime.
        let _ = std::thread::Builder::new()
            .name("shoal-discovery-stop".into())
            .spawn(move || sources.iter_mut().for_each(|s| s.stop()));
    }

    /// Stops the discovery sources on a blocking thread and puts them back (their reports stay
    /// readable after shutdown).
    async fn stop_discovery(self: &Arc<Self>) {
        let mut sources = std::mem::take(&mut *lock(&self.discovery));
        let stopped = tokio::task::spawn_blocking(move || {
            sources.iter_mut().for_each(|s| s.stop());
            sources
        });
        if let Ok(sources) = stopped.await {
            *lock(&self.discovery) = sources;
        }
    }
}

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
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Also when a shutdown was started but its future dropped before it finished.
        if !self
            .shared
            .finished
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.shared.kill();
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

/// Proof that a message was handled: returned by [`Node::send`] once the receiver acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The message's id.
    pub id: MessageId,
    /// The instance whose handler finished it.
    pub node: NodeId,
    /// Delivery attempts it took (1 if the first one succeeded).
    pub attempts: u32,
}

/// A live peer, as listed by [`Node::peers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node: NodeId,
    /// The service it is an instance of.
    pub service: String,
    /// Its address as seen from here.
    pub addr: SocketAddr,
    /// QUIC's smoothed round-trip estimate.
    pub rtt: Duration,
    /// Messages sent to it and not yet acknowledged.
    pub in_flight: usize,
}

impl Node {
    /// Starts configuring a node that is an instance of `service`.
    pub fn builder(service: impl Into<String>) -> NodeBuilder {
        NodeBuilder::new(service)
    }

    /// A handle that does not keep the node alive.
    #[cfg(feature = "outbox")]
    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.owner))
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self {
            owner: Arc::new(Owner { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// This node's id (random per start).
    pub fn id(&self) -> NodeId {
        self.shared().id
    }

    /// The service this node is an instance of.
    pub fn service(&self) -> &str {
        &self.shared().service
    }

    /// The address the node accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared()
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
    /// request. Handlers run concurrently, up to the configured limit.
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
        let mut handlers = crate::sync::write(&self.shared().handlers);
        handlers.insert(name.into(), handler::boxed(handler));
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
    /// the order `send` was *called* (not the order the futures are polled), retries included.
    ///
    /// Dropping the returned future stops retrying.
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
        let shared = Arc::clone(self.shared());
        msg.address_replies(&shared.service, shared.id);
        let policy = options.retry.unwrap_or_else(|| shared.config.retry.clone());
        let route = Route::Service(Target::service(service));
        let mut delivery = Delivery::new(&shared, route, policy, &msg);
        delivery.fail_fast = options.fail_fast;
        async move { outbound::deliver(&shared, delivery, msg, &shared.stopping).await }
    }

    /// Sends `msg` as a request to one instance of `service` and waits for its reply, at most
    /// `timeout`. The receiver's handler answers by returning a body. A partition key orders
    /// requests like [`Node::send`] does.
    pub fn request(
        &self,
        service: &str,
        mut msg: Message,
        timeout: Duration,
    ) -> impl Future<Output = Result<Message, Error>> + Send + 'static {
        let shared = Arc::clone(self.shared());
        msg.env.reply_to = Some(ReturnAddress {
            service: shared.service.clone(),
            node: Some(shared.id),
            channel: String::new(),
        });
        // The delivery keeps its own deadline: `timeout` below ends the whole request, so an
        // answer that is merely late is a timeout, not a dead letter.
        let policy = shared.config.retry.clone();
        let route = Route::Service(Target::service(service));
        let delivery = Delivery::new(&shared, route, policy, &msg);
        async move {
            let id = msg.id();
            let (tx, mut rx) = oneshot::channel();
            lock(&shared.pending).insert(id, tx);
            let _cleanup = PendingGuard {
                shared: &shared,
                id,
            };
            let send = outbound::deliver(&shared, delivery, msg, &shared.stopping);
            let wait = async {
                tokio::pin!(send);
                tokio::select! {
                    biased;
                    reply = &mut rx => reply.map_err(|_| Error::ShuttingDown),
                    sent = &mut send => match sent {
                        Ok(_) => rx.await.map_err(|_| Error::ShuttingDown),
                        Err(e) => Err(e),
                    },
                }
            };
            tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| Error::Timeout(timeout))?
        }
    }

    /// Stops gracefully: takes no new work (new sends fail with [`Error::ShuttingDown`], new
    /// deliveries are refused with a retryable nack so senders go elsewhere), waits for running
    /// handlers (at most the shutdown grace period), flushes their acks, says goodbye to every
    /// peer and closes the connections.
    pub async fn shutdown(&self) {
        let shared = self.shared();
        if shared.is_stopping() {
            return;
        }
        {
            let _admission = lock(&shared.admission);
            shared.begin_stopping();
        }
        // Goodbyes on discovery first, so peers stop dialling, concurrently with the rest.
        let discovery = tokio::spawn({
            let shared = Arc::clone(shared);
            async move { shared.stop_discovery().await }
        });
        let grace = shared.config.shutdown_grace;
        shared.handler_tasks.close();
        if tokio::time::timeout(grace, shared.handler_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("handlers still running after {grace:?}; dropping them");
            shared.killed.cancel();
        }
        let mut closes = tokio::task::JoinSet::new();
        for peer in shared.registry.all() {
            closes.spawn(async move { peer.close_gracefully("shutdown", grace).await });
        }
        while closes.join_next().await.is_some() {}
        shared
            .endpoint
            .close(crate::net::CLOSE_SHUTDOWN, b"shutdown");
        shared.tasks.close();
        let _ = tokio::time::timeout(grace, shared.tasks.wait()).await;
        let _ = tokio::time::timeout(grace, shared.endpoint.wait_idle()).await;
        let _ = discovery.await;
        shared
            .finished
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops at once, as if the process had crashed: no goodbyes, running handlers dropped,
    /// unsent acks lost. Peers see the connections close and retry elsewhere. Meant for tests
    /// and emergencies; prefer [`Node::shutdown`].
    pub fn abort(&self) {
        self.shared().kill();
    }
}

/// Removes a request's pending entry however the request ends.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: MessageId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.id);
    }
}
