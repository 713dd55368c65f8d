//! What the probe does: send, request and publish to the services under test, subscribe to
//! what they publish, and stand in for the services they send to, recording what comes in.

use std::sync::Arc;
use std::time::Duration;

use super::mesh::{Shared, TestMesh};
use super::recording::Channel;
use crate::sync::lock;
use crate::{
    Error, HandlerError, IntoReply, Message, Node, PublishOptions, PublishReceipt, Receipt,
    SendOptions,
};

impl TestMesh {
    /// Subscribes the probe to `pattern` (a topic, or `order.*`, `order.>`): every event
    /// published on a matching topic is recorded as [`Channel::Published`]. Returns once every
    /// running node of the mesh knows the subscription, so what they publish from then on
    /// reaches the probe. Subscribe before starting the service when it publishes at start.
    pub async fn subscribe(&self, pattern: &str) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        let subscription = self
            .probe
            .subscribe(pattern, move |event: Message| {
                let topic = event.name().to_owned();
                shared.record(Channel::Published { topic }, event);
                async { Ok(()) }
            })
            .await?;
        let sub = shoal_proto::Subscription {
            pattern: pattern.to_owned(),
            group: Some(self.probe.service().into()),
        };
        lock(&self.subscriptions).push((sub.clone(), subscription));
        let probe = self.probe.id();
        let expected = format!("every node to know the probe subscribes to `{pattern}`");
        self.until(expected, self.timeout(), || {
            for (_, driver) in self.live() {
                if driver.id != probe && !driver.read(|e| e.peer_subscribes(probe, &sub)) {
                    return Err(format!("`{}` ({}) does not yet", driver.service, driver.id));
                }
            }
            Ok(())
        })
        .await
    }

    /// Sends `msg` from the probe to one instance of `service` ([`Node::send`]). A message
    /// with a reply channel ([`Message::with_reply_channel`]) gets its asynchronous reply
    /// recorded as [`Channel::Reply`].
    pub async fn send(&self, service: &str, msg: Message) -> Result<Receipt, Error> {
        self.send_with(service, msg, SendOptions::default()).await
    }

    /// [`send`](Self::send) with per-message options.
    pub async fn send_with(
        &self,
        service: &str,
        msg: Message,
        options: SendOptions,
    ) -> Result<Receipt, Error> {
        if let Some(channel) = msg.reply_to().map(|r| r.channel.clone())
            && !channel.is_empty()
        {
            let shared = Arc::clone(&self.shared);
            let (request, version) = (msg.name().to_owned(), msg.version());
            self.probe.handle(channel, move |reply: Message| {
                let channel = Channel::Reply {
                    request: request.clone(),
                    version,
                };
                shared.record(channel, reply);
                async { Ok(()) }
            });
        }
        self.probe.send_with(service, msg, options).await
    }

    /// Sends `msg` from the probe as a request to `service` and returns the reply, recorded
    /// as [`Channel::Reply`] too. Waits at most the mesh's timeout.
    pub async fn request(&self, service: &str, msg: Message) -> Result<Message, Error> {
        self.request_within(service, msg, self.timeout()).await
    }

    /// [`request`](Self::request) with a timeout of its own.
    pub async fn request_within(
        &self,
        service: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let (request, version) = (msg.name().to_owned(), msg.version());
        let reply = self.probe.request(service, msg, timeout).await?;
        self.shared
            .record(Channel::Reply { request, version }, reply.clone());
        Ok(reply)
    }

    /// Publishes `event` from the probe ([`Node::publish`]), once its topic has a subscriber
    /// (waiting at most the mesh's timeout): a publish reaches only the subscribers known
    /// when it is made, and a test means the service to get it.
    pub async fn publish(&self, event: Message) -> Result<PublishReceipt, Error> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// [`publish`](Self::publish) with per-event options.
    pub async fn publish_with(
        &self,
        event: Message,
        options: PublishOptions,
    ) -> Result<PublishReceipt, Error> {
        let topic = event.name().to_owned();
        if let Err(e) = self
            .probe
            .wait_for_subscribers(&topic, 1, self.timeout())
            .await
        {
            let expected = format!("a subscriber to `{topic}` before publishing");
            return Err(self.failed(
                expected,
                self.timeout(),
                super::expect::Failure::NotReady(e.to_string()),
            ));
        }
        self.probe.publish_with(event, options).await
    }

    /// Starts a node of `service` that stands in for a service the one under test sends to:
    /// register the messages it takes with [`StandIn::record`] or [`StandIn::reply`]; each is
    /// recorded as [`Channel::Sent`]. [`wait_for`](Self::wait_for) then also waits until the
    /// service under test sees the stand-in.
    pub async fn stand_in(&self, service: &str) -> Result<StandIn, Error> {
        let node = self.builder(service)?.start().await?;
        lock(&self.stand_ins).push(service.to_owned());
        Ok(StandIn {
            node,
            shared: Arc::clone(&self.shared),
        })
    }
}

/// A node standing in for a service the service under test sends to (see
/// [`TestMesh::stand_in`]).
#[derive(Clone)]
pub struct StandIn {
    node: Node,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Takes messages named `name`: records each and acknowledges it (a request gets an
    /// empty reply).
    pub fn record(&self, name: &str) {
        self.reply(name, |_| ());
    }

    /// Takes messages named `name`: records each and answers with `reply(&message)` (a body
    /// for requests, or `()`); an `Err` is the handler's failure, so the sender retries or
    /// dead-letters it.
    pub fn reply<R, F>(&self, name: &str, reply: F)
    where
        R: IntoReply + Send + 'static,
        F: Fn(&Message) -> R + Send + Sync + 'static,
    {
        self.handle(name, move |m| Ok(reply(m)));
    }

    /// Takes messages named `name`: records each and returns what `outcome` says (`Err`
    /// makes the sender retry or dead-letter it).
    pub fn handle<R, F>(&self, name: &str, outcome: F)
    where
        R: IntoReply + Send + 'static,
        F: Fn(&Message) -> Result<R, HandlerError> + Send + Sync + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let to = self.node.service().to_owned();
        self.node.handle(name, move |msg: Message| {
            let result = outcome(&msg);
            shared.record(Channel::Sent { to: to.clone() }, msg);
            async move { result }
        });
    }

    /// The stand-in's node.
    pub fn node(&self) -> &Node {
        &self.node
    }
}
