//! Publishing: one event, encoded once, to every audience of its topic.
//!
//! The audiences of a topic are its subscriber groups (one copy each, to one instance) and
//! its ungrouped subscriber instances (one copy each), as peers announced them
//! ([`crate::subscribe`]). Each audience's copy is delivered on its own, concurrently with the
//! others: acked, retried on another instance of the group, dead-lettered, exactly like a
//! point-to-point message ([`crate::outbound`]). A slow audience holds back only its own
//! copy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use shoal_proto::codec::PreparedEvent;
use shoal_proto::{Envelope, MessageId, NodeId};

use crate::core::fanout::Audience;
use crate::core::topic;
use crate::node::Shared;
use crate::ordering::Ticket;
use crate::outbound::{self, Delivery};
use crate::peer::Outgoing;
use crate::registry::Route;
use crate::stats::Counters;
use crate::{Error, Message, Node, Receipt, RetryPolicy};

/// How hard a publish tries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reliability {
    /// Every audience acknowledges its copy; unacknowledged copies are retried (on another
    /// instance of the group when there is one) and dead-lettered when attempts run out.
    #[default]
    Reliable,
    /// Each copy is written once and not acknowledged: for telemetry-like events where the
    /// next one soon replaces a lost one. A copy that finds its subscriber's queue full, or
    /// no live instance, is dropped and counted in [`crate::NodeStats::events_dropped`].
    BestEffort,
}

/// Per-publish options for [`Node::publish_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Reliable (the default) or best-effort.
    pub reliability: Reliability,
    /// Return at once instead of waiting for the acks; the reliable copies are delivered (and
    /// retried, or dead-lettered) in the background.
    pub background: bool,
    /// Overrides the node's retry policy for this event.
    pub retry: Option<RetryPolicy>,
    /// Overrides how long a copy waits for its group to have a live instance
    /// ([`crate::NodeBuilder::hold_events_for`]).
    pub hold_for: Option<Duration>,
}

impl PublishOptions {
    /// Best-effort delivery: written once, no acks, drops counted.
    pub fn best_effort() -> Self {
        Self {
            reliability: Reliability::BestEffort,
            ..Self::default()
        }
    }

    /// Reliable delivery that does not wait for the acks.
    pub fn background() -> Self {
        Self {
            background: true,
            ..Self::default()
        }
    }

    /// Holds copies for a group with no live instance at most `hold` before dead-lettering
    /// them.
    pub fn hold_for(mut self, hold: Duration) -> Self {
        self.hold_for = Some(hold);
        self
    }

    /// Uses `policy` instead of the node's retry policy.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// What became of a published event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The event's message id.
    pub id: MessageId,
    /// One entry per audience: acknowledged (reliable) or queued (best-effort). Empty for a
    /// background publish, which returns before any copy is sent.
    pub deliveries: Vec<EventDelivery>,
    /// Copies that were dropped, named by audience: best-effort copies that found their
    /// subscriber's queue full or no live instance, and reliable copies whose audience
    /// unsubscribed while they were on the way ([`Error::AudienceGone`]).
    pub dropped: Vec<String>,
}

/// One audience's copy of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventDelivery {
    /// The subscriber group, or `None` for an ungrouped subscriber instance.
    pub group: Option<String>,
    /// The instance that took the copy.
    pub node: NodeId,
    /// Delivery attempts (1 when the first one was acked; 1 for best-effort copies).
    pub attempts: u32,
}

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
    /// The event is encoded once and each audience's copy is written to its connection
    /// concurrently. The audiences are the subscriptions this node knows of when `publish` is
    /// called: a subscriber that appears later does not get the event. A group whose last
    /// instance left recently (see [`crate::NodeBuilder::remember_groups_for`]) still counts:
    /// its copy is held until an instance appears, at most the hold time, then
    /// dead-lettered.
    ///
    /// With a partition key ([`Message::with_key`]), each group's copy goes to the instance
    /// the key maps to, and copies for one group and key are handled one at a time in the
    /// order `publish` was called, retries included.
    ///
    /// Reliable publishing returns [`Error::DeadLettered`] if any audience's copy was
    /// dead-lettered (the other audiences were still served; every dead letter is in
    /// [`Node::dead_letters`]). A topic with no subscribers is not an error: the receipt
    /// lists no deliveries, and [`crate::NodeStats::events_unrouted`] counts it.
    pub fn publish_with(
        &self,
        event: Message,
        options: PublishOptions,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        let shared = Arc::clone(self.shared());
        let plan = Plan::new(&shared, vec![event], false, options);
        async move { plan?.run(&shared).await }
    }

    /// Publishes several events on one topic as one batch: each audience gets them in one
    /// frame, handles them in order and acknowledges them once, so a batch costs about what
    /// one event costs in acks, timers and bookkeeping. Shorthand for
    /// [`Node::publish_batch_with`] with default options.
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
    /// with [`Error::InvalidBatch`] or [`Error::Encode`] before anything is sent. Everything
    /// [`Node::publish_with`] says holds for the batch as a unit: audiences, retries (the
    /// batch is retried whole; each event is also deduplicated on its own, so the receiver
    /// skips the events it already handled), holding, ordering by key, dead letters (one per
    /// event of a dead-lettered batch). The receipt's `id` is the first event's.
    pub fn publish_batch_with(
        &self,
        events: Vec<Message>,
        options: PublishOptions,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        let shared = Arc::clone(self.shared());
        let plan = Plan::new(&shared, events, true, options);
        async move { plan?.run(&shared).await }
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
        self.wait_until(timeout, || self.live_audiences(topic) >= audiences)
            .await
    }

    /// The subscriber groups (by name) and ungrouped subscriber instances (`None`) an event
    /// on `topic` would go to now, each with its live instances. A group remembered after its
    /// last instance left is listed with none.
    pub fn subscribers(&self, topic: &str) -> Vec<(Option<String>, Vec<NodeId>)> {
        self.shared()
            .registry
            .audiences(topic)
            .iter()
            .map(|(audience, nodes)| (audience.wire_group().map(str::to_owned), nodes.clone()))
            .collect()
    }

    fn live_audiences(&self, topic: &str) -> usize {
        self.subscribers(topic)
            .iter()
            .filter(|(_, nodes)| !nodes.is_empty())
            .count()
    }
}

/// Most events in one batch: a receiver tracks each in its dedup window (100,000 ids by
/// default), and a batch must not push most of it out.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// One publish, decided when `publish` is called: the event encoded once, and one copy per
/// audience with its place in its key's order.
struct Plan {
    /// The event (a batch's first event): what the delivery loop sends, orders by key and
    /// dead-letters.
    event: Message,
    /// For a batch: its id and all its events.
    batch: Option<(MessageId, Vec<Envelope>)>,
    prepared: PreparedEvent,
    copies: Vec<(Route, Option<Ticket>)>,
    reliable: bool,
    background: bool,
    policy: RetryPolicy,
    hold: Duration,
    /// When `publish` was called.
    created: std::time::Instant,
}

impl Plan {
    fn new(
        shared: &Shared,
        mut events: Vec<Message>,
        batched: bool,
        options: PublishOptions,
    ) -> Result<Self, Error> {
        if shared.is_stopping() {
            return Err(Error::ShuttingDown);
        }
        let Some(first) = events.first() else {
            return Err(Error::InvalidBatch(
                "a batch needs at least one event".into(),
            ));
        };
        let topic = first.name().to_owned();
        topic::check_topic(&topic).map_err(Error::Topic)?;
        let key = first.key().map(str::to_owned);
        if events
            .iter()
            .any(|e| e.name() != topic || e.key() != key.as_deref())
        {
            return Err(Error::InvalidBatch(
                "the events of a batch must share one topic and one partition key".into(),
            ));
        }
        if events.len() > MAX_BATCH_EVENTS {
            return Err(Error::InvalidBatch(format!(
                "{} events; a batch holds at most {MAX_BATCH_EVENTS}",
                events.len()
            )));
        }
        let count = events.len() as u64;
        for event in &mut events {
            event.address_replies(&shared.service, shared.id);
            event.env.attempt = 1;
        }
        let reliable = options.reliability == Reliability::Reliable;
        let limits = &shared.config.limits;
        let (event, prepared, batch) = if batched {
            let id = crate::message::fresh_id(crate::message::unix_ms());
            let event = events[0].clone();
            let envelopes: Vec<Envelope> = events.into_iter().map(|e| e.env).collect();
            let prepared = PreparedEvent::new_batch(id, &envelopes, reliable, limits)?;
            (event, prepared, Some((id, envelopes)))
        } else {
            let prepared = PreparedEvent::new(&events[0].env, reliable, limits)?;
            (events.swap_remove(0), prepared, None)
        };
        shared
            .counters
            .published
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);

        let audiences = shared.registry.audiences(&topic);
        if audiences.is_empty() {
            shared
                .counters
                .events_unrouted
                .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        }
        let policy = options.retry.unwrap_or_else(|| shared.config.retry.clone());
        let copies = audiences
            .iter()
            .map(|(audience, _)| {
                let route = Route::Audience {
                    topic: topic.clone(),
                    audience: audience.clone(),
                };
                // Best-effort copies are not retried, so they need no turn.
                let ticket = reliable
                    .then(|| outbound::ticket_for(shared, &route, &event))
                    .flatten();
                (route, ticket)
            })
            .collect();
        Ok(Self {
            event,
            batch,
            prepared,
            copies,
            reliable,
            background: options.background,
            policy,
            hold: options.hold_for.unwrap_or(shared.config.event_hold),
            created: std::time::Instant::now(),
        })
    }

    fn delivery(&self, route: Route, ticket: Option<Ticket>) -> Delivery<'_> {
        // An ungrouped subscriber that is gone is gone for good (a restart is a new node):
        // its copy is not held, only a group's is.
        let hold = match &route {
            Route::Audience {
                audience: Audience::Instance(_),
                ..
            } => Duration::ZERO,
            _ => self.hold,
        };
        Delivery {
            route,
            policy: self.policy.clone(),
            fail_fast: false,
            hold: Some(hold),
            event: Some(&self.prepared),
            batch: self.batch.as_ref().map(|(id, envs)| (*id, envs.as_slice())),
            ticket,
            created: self.created,
        }
    }

    async fn run(self, shared: &Arc<Shared>) -> Result<PublishReceipt, Error> {
        if self.reliable && !self.background {
            self.deliver(shared).await
        } else if self.reliable {
            Ok(self.spawn(shared))
        } else {
            Ok(self.best_effort(shared))
        }
    }

    /// The delivery loop dead-lettered the first event of a batch: the others share its fate.
    fn dead_letter_rest(&self, shared: &Shared, result: &Result<Receipt, Error>) {
        let (Some((_, envelopes)), Err(Error::DeadLettered(first))) = (&self.batch, result) else {
            return;
        };
        for env in &envelopes[1..] {
            let mut letter = (**first).clone();
            letter.message = Message::from_envelope(env.clone());
            Counters::bump(&shared.counters.dead_lettered);
            shared.dead_letters.record(letter);
        }
    }

    /// Delivers every copy concurrently and waits for all of them.
    async fn deliver(mut self, shared: &Arc<Shared>) -> Result<PublishReceipt, Error> {
        let copies = std::mem::take(&mut self.copies);
        let this = &self;
        let deliveries = copies.into_iter().map(|(route, ticket)| {
            let group = audience_group(&route);
            let delivery = this.delivery(route, ticket);
            async move {
                let result =
                    outbound::deliver(shared, delivery, this.event.clone(), &shared.stopping).await;
                this.dead_letter_rest(shared, &result);
                let receipt = result?;
                Ok::<_, Error>(EventDelivery {
                    group,
                    node: receipt.node,
                    attempts: receipt.attempts,
                })
            }
        });
        let mut receipt = PublishReceipt {
            id: self.event.id(),
            deliveries: Vec::new(),
            dropped: Vec::new(),
        };
        let mut first_error = None;
        for result in join_all(deliveries).await {
            match result {
                Ok(d) => receipt.deliveries.push(d),
                Err(Error::AudienceGone(audience)) => {
                    Counters::bump(&shared.counters.events_dropped);
                    receipt.dropped.push(audience);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(receipt), Err)
    }

    /// Delivers every copy in the background. Tracked with the handlers: a graceful shutdown
    /// waits for them (within its grace period) as it does for replies; a copy still not
    /// delivered when the node stops is dead-lettered with that reason, never dropped unseen.
    fn spawn(mut self, shared: &Arc<Shared>) -> PublishReceipt {
        let id = self.event.id();
        let copies = std::mem::take(&mut self.copies);
        let plan = Arc::new(self);
        for (route, ticket) in copies {
            let (shared2, plan) = (Arc::clone(shared), Arc::clone(&plan));
            shared.handler_tasks.spawn(async move {
                let shared = shared2;
                let delivery = plan.delivery(route.clone(), ticket);
                let stop = shared.killed.clone();
                let mut result =
                    outbound::deliver(&shared, delivery, plan.event.clone(), &stop).await;
                match &result {
                    Err(Error::ShuttingDown) => {
                        let reason = "the node stopped before this copy was delivered";
                        let msg = plan.event.clone();
                        result = Err(outbound::dead_letter(
                            &shared,
                            &route,
                            msg,
                            0,
                            reason.into(),
                        ));
                    }
                    Err(Error::AudienceGone(_)) => Counters::bump(&shared.counters.events_dropped),
                    _ => {}
                }
                plan.dead_letter_rest(&shared, &result);
            });
        }
        PublishReceipt {
            id,
            deliveries: Vec::new(),
            dropped: Vec::new(),
        }
    }

    /// Writes one copy per audience without waiting: a full queue or a missing instance drops
    /// that copy (counted), never the others.
    fn best_effort(self, shared: &Shared) -> PublishReceipt {
        let mut receipt = PublishReceipt {
            id: self.event.id(),
            deliveries: Vec::new(),
            dropped: Vec::new(),
        };
        for (route, _) in self.copies {
            let Route::Audience { audience, .. } = &route else {
                continue;
            };
            let peer = shared.registry.choose(&route, &[], self.event.key());
            let sent = peer.and_then(|peer| {
                let frame = self
                    .prepared
                    .frame_for(audience.wire_group(), &shared.config.limits)
                    .ok()?;
                peer.try_push(Outgoing::Event(frame)).ok()?;
                Some(peer.node)
            });
            match sent {
                Some(node) => receipt.deliveries.push(EventDelivery {
                    group: audience.wire_group().map(str::to_owned),
                    node,
                    attempts: 1,
                }),
                None => {
                    Counters::bump(&shared.counters.events_dropped);
                    tracing::debug!(id = %receipt.id, "best-effort copy for {audience} dropped");
                    receipt.dropped.push(audience.to_string());
                }
            }
        }
        receipt
    }
}

fn audience_group(route: &Route) -> Option<String> {
    match route {
        Route::Audience { audience, .. } => audience.wire_group().map(str::to_owned),
        Route::Service(_) => None,
    }
}
