//! Publishing: one event, encoded once, to every audience of its topic.
//!
//! The audiences of a topic are its subscriber groups (one copy each, to one instance) and
//! its ungrouped subscriber instances (one copy each), as peers announced them
//! ([`crate::subscribe`]). Each audience's copy is delivered on its own, concurrently with the
//! others: acknowledged, retried on another instance of the group, dead-lettered, exactly
//! like a point-to-point message. A slow audience holds back only its own copy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use shoal_proto::{MessageId, NodeId};

use crate::engine::Done;
use crate::engine::send::{Events, Publishing};
use crate::runtime::Driver;
use crate::runtime::gather::Bound;
use crate::runtime::op::OpFuture;
use crate::trace::{self, Sending};
use crate::{Error, Message, Node, PublishOptions, PublishReceipt};

impl Node {
    /// Publishes `event` on the topic named by its name (`Message::event("order.created",
    /// ...)`) and resolves when every audience has acknowledged it: each subscriber group
    /// once, by one of its instances, and each ungrouped subscriber instance. Shorthand for
    /// [`Node::publish_with`] with default options.
    pub fn publish(
        &self,
        event: Message,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        self.publish_with(event, PublishOptions::default())
    }

    /// Publishes `event` with per-event options.
    ///
    /// The event is encoded once and each audience's copy is written to its connection. The
    /// audiences are the subscriptions this node knows of when `publish` is called: a
    /// subscriber that appears later does not get the event. A group whose last instance left
    /// recently (see [`crate::NodeBuilder::remember_groups_for`]) still counts: its copy is held
    /// until an instance appears, at most the hold time, then dead-lettered.
    ///
    /// With a partition key ([`Message::with_key`]), each group's copy goes to the instance
    /// the key maps to, and copies for one group and key are handled one at a time in the
    /// order `publish` was called, retries included.
    ///
    /// A topic the node's policy does not allow its service to publish fails at once with
    /// [`Error::NotAuthorized`], before anything is sent ([`crate::NodeBuilder::policy`]);
    /// subscribers check the publisher's right again by their own policy, and refuse a copy
    /// it does not allow with a permanent nack (the copy is dead-lettered).
    ///
    /// Reliable publishing returns [`Error::DeadLettered`] if any audience's copy was
    /// dead-lettered (the other audiences were still served; every dead letter is in
    /// [`Node::dead_letters`]). A topic with no subscribers is not an error: the receipt
    /// lists no deliveries, and [`crate::NodeStats::events_unrouted`] counts it.
    ///
    /// Events published one by one travel together when they are published together: copies
    /// queued for one connection leave in one write, sharing their common header, and are
    /// acknowledged in ranges. A lone reliable event published with the default options
    /// while other calls of the node wait joins the events published on its topic in the
    /// same turn of the runtime, and they go to the engine as one operation, each still
    /// handled on its own and with a receipt or error of its own
    /// (README, "Calls gathered in one turn"). Dropping this future before that hand-over
    /// takes the event back; after it, the event is delivered with the others.
    pub fn publish_with(
        &self,
        event: Message,
        options: PublishOptions,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        self.start_publish(smallvec::smallvec![event], false, options)
    }

    /// Publishes several events on one topic as one batch: each audience gets them in one
    /// frame and handles them in order. Shorthand for [`Node::publish_batch_with`] with default
    /// options.
    pub fn publish_batch(
        &self,
        events: Vec<Message>,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        self.publish_batch_with(events, PublishOptions::default())
    }

    /// Publishes a batch with per-batch options.
    ///
    /// The events must share one topic and one partition key (or none), and the batch must
    /// fit in one frame (`Limits::max_frame_len`, 4 MiB by default); otherwise it is refused
    /// with [`Error::InvalidBatch`] or [`Error::Encode`] before anything is sent. Each audience
    /// handles the events in order, one after the other, and acknowledges each; the first
    /// failure stops the rest of the batch there, and the events not acknowledged are retried
    /// (in order, on another instance of the group when there is one) while the receiver's
    /// dedup window skips those already handled. Everything [`Node::publish_with`] says holds
    /// for the batch as a unit: audiences, holding, ordering by key, dead letters (one per
    /// event not delivered). The receipt's `id` is the first event's.
    pub fn publish_batch_with(
        &self,
        events: Vec<Message>,
        options: PublishOptions,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        self.start_publish(events.into(), true, options)
    }

    fn start_publish(
        &self,
        mut events: Events,
        batched: bool,
        options: PublishOptions,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        let driver = Arc::clone(self.driver());
        let span = addressed(&driver, &mut events);
        // While other calls wait, a lone event joins those published in this turn
        // (`runtime/gather.rs`).
        if !batched
            && let [event] = events.as_slice()
            && driver.gathers_event(event, &options)
        {
            let event = events.pop().expect("one event");
            let bound = Bound::Topic(event.envelope().name.clone());
            let gathered = driver.gather(bound, event);
            return Either::Left(trace::instrumented(
                async move {
                    match gathered.await? {
                        Done::Published(receipt) => Ok(receipt),
                        other => Err(crate::node::unexpected(&other)),
                    }
                },
                span,
            ));
        }
        let started = trace::within(&span, || start(&driver, events, batched, &options));
        let started = started.map(|publishing| match publishing {
            Publishing::Waiting(op) => Err(OpFuture::new(driver, op)),
            Publishing::Done(receipt) => Ok(receipt),
        });
        Either::Right(trace::instrumented(
            async move {
                match started? {
                    Ok(receipt) => Ok(receipt),
                    Err(op) => match op.await? {
                        Done::Published(receipt) => Ok(receipt),
                        other => Err(crate::node::unexpected(&other)),
                    },
                }
            },
            span,
        ))
    }

    /// Publishes `event` reliably without waiting for its acks: returns its id as soon as the
    /// node holds it. The synchronous form of [`Node::publish_with`] with
    /// [`PublishOptions::background`] (no future to poll, and no receipt: a background
    /// publish's lists no deliveries), as [`Node::send_background`] is for commands.
    ///
    /// Each audience's copy is delivered as [`Node::publish`] delivers it (acknowledged,
    /// retried on another instance of its group, held for a group without a live instance,
    /// kept in order with the others of its partition key), with the node's retry policy and
    /// hold time. A copy not delivered is a dead letter ([`Node::dead_letters`]); nothing else
    /// tells of it. A graceful [`Node::shutdown`] delivers those still on their way within
    /// its grace period; those left, and all of them on [`Node::abort`], are dead letters.
    ///
    /// Unkeyed events published this way while others are on their way go to the engine
    /// together, each still handled on its own (`engine/send/staged.rs` says which do not;
    /// README, "Reliable events").
    ///
    /// Fails at once, keeping nothing, with [`Error::Backlog`] when the node holds as many
    /// background messages as it may (`NodeBuilder::max_background_publishes` and
    /// `max_background_bytes`; await [`Node::wait_for_background_room`] and try again), or with
    /// the error a [`Node::publish`] of `event` would fail with before anything is sent (a
    /// stopping node, a bad topic, a topic the node's policy forbids, an event that breaks
    /// the limits).
    ///
    /// ```no_run
    /// # use shoal::{Error, Message, Node};
    /// # async fn stream(node: Node, ticks: Vec<bytes::Bytes>) -> Result<(), Error> {
    /// for tick in ticks {
    ///     let event = Message::event("prices.tick", tick);
    ///     // A refused call keeps nothing: the same event (and id) is published again.
    ///     while let Err(e) = node.publish_background(event.clone()) {
    ///         match e {
    ///             Error::Backlog { .. } => node.wait_for_background_room().await,
    ///             e => return Err(e),
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish_background(&self, mut event: Message) -> Result<MessageId, Error> {
        let driver = self.driver();
        let span = addressed(driver, std::slice::from_mut(&mut event));
        trace::within(&span, || {
            driver.call_background(event.key().is_some(), |engine, clock| {
                engine.publish_background(event, || clock.now())
            })
        })
    }

    /// [`Node::publish_batch_with`] in the background, without a future: the batch's first
    /// id once the node holds it (a typed publish of several versions of one event).
    #[cfg(feature = "contracts")]
    pub(crate) fn publish_batch_background(
        &self,
        events: Vec<Message>,
    ) -> Result<MessageId, Error> {
        let driver = self.driver();
        let mut events: Events = events.into();
        let span = addressed(driver, &mut events);
        let options = PublishOptions::background();
        match trace::within(&span, || start(driver, events, true, &options))? {
            Publishing::Done(receipt) => Ok(receipt.id),
            // Never: a background publish is not waited for (`engine/send/publish.rs`).
            Publishing::Waiting(op) => {
                driver.cancel_op(op);
                Err(Error::Internal("a background batch was waited for".into()))
            }
        }
    }

    /// Waits until `topic` has at least `audiences` audiences with a live instance (subscriber
    /// groups plus ungrouped subscriber instances), at most `timeout`. Useful before the first
    /// publish of a process, since events reach only the subscribers known when published.
    pub async fn wait_for_subscribers(
        &self,
        topic: &str,
        audiences: usize,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.wait_until(
            timeout,
            || self.live_audiences(topic) >= audiences,
            || {
                format!(
                    "{audiences} audience(s) of topic `{topic}` ({} live)",
                    self.live_audiences(topic)
                )
            },
        )
        .await
    }

    /// The subscriber groups (by name) and ungrouped subscriber instances (`None`) an event
    /// on `topic` would go to now, each with its live instances. A group remembered after its
    /// last instance left is listed with none.
    pub fn subscribers(&self, topic: &str) -> Vec<(Option<String>, Vec<NodeId>)> {
        self.driver()
            .call(|engine, now| engine.subscribers(topic, now))
    }

    fn live_audiences(&self, topic: &str) -> usize {
        self.subscribers(topic)
            .iter()
            .filter(|(_, nodes)| !nodes.is_empty())
            .count()
    }
}

/// Fills in the return addresses of `events` (this node's) and opens their publish's trace
/// span.
fn addressed(driver: &Driver, events: &mut [Message]) -> tracing::Span {
    for event in events.iter_mut() {
        event.address_replies(&driver.service, driver.id);
    }
    trace::traced_send(Sending::Publish, None, events)
}

/// Hands `events` to the engine. Keyed events go after the keyed calls gathered before them
/// (`runtime/gather.rs`); an unkeyed background event may be staged, with no clock read.
fn start(
    driver: &Arc<Driver>,
    events: Events,
    batched: bool,
    options: &PublishOptions,
) -> Result<Publishing, Error> {
    let keyed = events.iter().any(|e| e.key().is_some());
    if options.background {
        return driver.call_background(keyed, |engine, clock| {
            engine.publish(events, batched, options, || clock.now())
        });
    }
    driver.call_in_order(keyed, |engine, now| {
        engine.publish(events, batched, options, || now)
    })
}
