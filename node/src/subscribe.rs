//! Subscribing: the node's own subscriptions, which the engine announces to every peer.
//!
//! A subscription is a topic pattern (see `engine::topic`), a group and a handler. Peers
//! learn of it through a `Subscribe` frame on their connection (and of every subscription
//! when they connect), so a publisher always knows whom to send to without asking anybody.
//! Frames about subscriptions and deliveries share one ordered stream per connection: a
//! publisher never sees an event's delivery overtake the subscription it is for, nor a
//! withdrawn subscription come back.

use std::future::Future;
use std::sync::Arc;

use shoal_proto::Frame;

use crate::engine::{SubId, topic};
use crate::handler::{self, HandlerError, IntoReply};
use crate::runtime::Driver;
use crate::{Error, Message, Node};

/// Which group a subscription belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Group {
    /// The subscribing service's name: each event is handled once per service, by one of its
    /// instances. The default.
    #[default]
    Service,
    /// A group of this name: each event is handled once by one member of the group, whichever
    /// service its instances belong to.
    Named(String),
    /// No group: this instance gets its own copy of every matching event.
    EveryInstance,
}

/// What to subscribe to: a topic pattern and a [`Group`].
///
/// ```
/// use shoal::{Group, SubscribeOptions};
/// let invoices = SubscribeOptions::new("orders.created"); // group = this service
/// let audit = SubscribeOptions::new("orders.>").group("audit");
/// let cache = SubscribeOptions::new("prices.*").every_instance();
/// assert_eq!(cache.group_choice(), &Group::EveryInstance);
/// # let _ = (invoices, audit);
/// ```
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    pattern: String,
    group: Group,
}

impl SubscribeOptions {
    /// Subscribes to topics matching `pattern` (`orders.created`, `orders.*`, `orders.>`), in
    /// the service's own group.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            group: Group::Service,
        }
    }

    /// Joins the group `name` instead of the service's own.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Group::Named(name.into());
        self
    }

    /// Takes every matching event on this instance, whatever other instances do.
    pub fn every_instance(mut self) -> Self {
        self.group = Group::EveryInstance;
        self
    }

    /// The group chosen so far.
    pub fn group_choice(&self) -> &Group {
        &self.group
    }
}

/// A live subscription of this node. Dropping it keeps the subscription; call
/// [`Subscription::unsubscribe`] to end it.
#[derive(Clone)]
pub struct Subscription {
    driver: Arc<Driver>,
    id: SubId,
    wire: shoal_proto::Subscription,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.wire.pattern)
            .field("group", &self.wire.group)
            .finish()
    }
}

impl Subscription {
    /// The topic pattern.
    pub fn pattern(&self) -> &str {
        &self.wire.pattern
    }

    /// The group, or `None` for a subscription of every instance.
    pub fn group(&self) -> Option<&str> {
        self.wire.group.as_deref()
    }

    /// Ends the subscription: its handler runs no more, and peers stop sending its events here
    /// (unless another subscription of this node has the same pattern and group). Events
    /// already on their way are refused with a retryable nack, so their publisher takes them
    /// to another instance of the group.
    pub async fn unsubscribe(self) {
        let id = self.id;
        self.driver.call(|engine, _| engine.unsubscribe(id));
        self.driver.subscriptions_changed();
    }
}

impl Node {
    /// Stops holding events for the subscriber `group` of `pattern`, gone for good (a
    /// decommissioned service), and says whether it was remembered. A group whose last
    /// instance left is remembered for [`crate::NodeBuilder::remember_groups_for`] (and by the
    /// outbox relay for `outbox::RelayOptions::remember_groups_for`, feature `outbox`, in its
    /// database), and events are held for it meanwhile; after this call the copies held for it
    /// end as dropped (in [`crate::PublishReceipt::dropped`]) and new events no longer wait
    /// for it. A group declared with `outbox::RelayOptions::expect_group` must be removed
    /// there too, or the relay remembers it again.
    pub async fn forget_group(&self, pattern: &str, group: &str) -> Result<bool, Error> {
        let sub = shoal_proto::Subscription {
            pattern: pattern.to_owned(),
            group: Some(group.into()),
        };
        let mut forgotten = false;
        // The store first: the relay re-reads its groups from it at every poll.
        #[cfg(feature = "outbox")]
        if let Some(store) = self.driver().outbox.get() {
            let (store, p, g) = (Arc::clone(store), sub.pattern.clone(), group.to_owned());
            forgotten |= tokio::task::spawn_blocking(move || store.forget_group(&p, &g))
                .await
                .map_err(|e| {
                    crate::outbox::OutboxError::Database(format!("store call failed: {e}"))
                })??;
        }
        forgotten |= self
            .driver()
            .call(|engine, now| engine.forget_group(&sub, now));
        Ok(forgotten)
    }

    /// Subscribes this service to events on topics matching `pattern`, each handled by one of
    /// its instances (the service's group). Shorthand for [`Node::subscribe_with`].
    pub async fn subscribe<F, Fut, R>(
        &self,
        pattern: &str,
        handler: F,
    ) -> Result<Subscription, Error>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.subscribe_with(SubscribeOptions::new(pattern), handler)
            .await
    }

    /// Subscribes with a chosen group. `handler` runs for each event delivered for this
    /// subscription; its `Ok` acknowledges the event, an `Err` sends it back to the publisher
    /// (retried on another instance of the group, or dead-lettered), as with
    /// [`Node::handle`]. A handler that returns a body answers an event that carries a return
    /// address ([`Message::with_reply_channel`]).
    ///
    /// Fails with [`Error::NotAuthorized`] when the node's policy does not allow its service
    /// to subscribe to `pattern` ([`crate::NodeBuilder::policy`]); publishers refuse such a
    /// subscription too, by their own policy, and send it no events.
    ///
    /// Every connected peer is told before this returns (the frames are queued on each
    /// connection); peers that connect later are told when they connect; discovery sources
    /// that can (mDNS) advertise it in this node's announcement, so publishers that are not
    /// connected learn of it too. Events published before a publisher learned of the
    /// subscription are not delivered to it.
    pub async fn subscribe_with<F, Fut, R>(
        &self,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<Subscription, Error>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
        R: IntoReply + 'static,
    {
        let driver = self.driver();
        if driver.is_stopping() {
            return Err(Error::ShuttingDown);
        }
        topic::check_pattern(&options.pattern).map_err(Error::Topic)?;
        let group = match options.group {
            Group::Service => Some(driver.service.clone()),
            Group::Named(name) if name.is_empty() => {
                return Err(Error::Topic("a group name cannot be empty".into()));
            }
            Group::Named(name) => Some(name),
            Group::EveryInstance => None,
        };
        let wire = shoal_proto::Subscription {
            pattern: options.pattern,
            group: group.map(Into::into),
        };
        shoal_proto::validate_frame(&Frame::Subscribe(wire.clone()), &driver.config.limits)
            .map_err(|v| Error::Topic(v.to_string()))?;
        let (sub, handler) = (wire.clone(), handler::boxed(handler));
        // A pattern this node's policy forbids fails here, before any peer hears of it.
        let id = driver.call(|engine, _| {
            engine.authorize_subscribe(&sub.pattern)?;
            Ok::<_, Error>(engine.subscribe(sub, handler))
        })?;
        // Announced too, so publishers that are not connected learn of it.
        driver.subscriptions_changed();
        Ok(Subscription {
            driver: Arc::clone(driver),
            id,
            wire,
        })
    }
}
