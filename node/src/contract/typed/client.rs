//! The sending side of a [`TypedNode`]: typed commands, requests and events, encoded as the
//! contract declares them, over the node's byte API.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;

use super::TypedNode;
use super::routes::{MESSAGE_HEADER, VERSIONS_HEADER};
use crate::contract::codec::Codec;
use crate::contract::message::{Contract, MessageRef};
use crate::contract::service::{Entry, Role};
use crate::{
    Error, Message, MessageId, MessageKind, PublishOptions, PublishReceipt, Receipt, SendOptions,
};

impl TypedNode {
    /// The byte message for sending `value` to `service`, as the contract declares it
    /// ([`sends`](crate::contract::ServiceContract::sends)): named by its message type, with
    /// its major version, content type and partition key. Add headers to it and send it with
    /// the node's byte API, or use [`send`](Self::send) and [`request`](Self::request).
    pub fn command<T: Contract>(&self, service: &str, value: &T) -> Result<Message, Error> {
        let (entry, codec) = self.sends::<T>(service)?;
        let body = encode(value, codec)?;
        let msg = match entry.message.kind {
            MessageKind::Document => Message::document(T::NAME, body),
            _ => Message::command(T::NAME, body),
        };
        Ok(finish(
            msg,
            MessageRef::of::<T>(),
            codec,
            value.partition_key(),
        ))
    }

    /// Sends `value` to one instance of `service` and resolves when its handler has finished
    /// ([`Node::send`](crate::Node::send)). A receiver that does not take this version
    /// refuses it for good: the result is [`Error::DeadLettered`] with its reason.
    ///
    /// As with `Node::send`, the value is encoded and the message on its way from the call
    /// on (the returned future need not be polled for it to go), and the trace context is
    /// the one current at the call: `ctx.in_scope(|| typed.send(..))` is enough.
    pub fn send<T: Contract>(
        &self,
        service: &str,
        value: &T,
    ) -> impl Future<Output = Result<Receipt, Error>> + Send + 'static {
        self.send_with(service, value, SendOptions::default())
    }

    /// [`send`](Self::send) with per-message options.
    pub fn send_with<T: Contract>(
        &self,
        service: &str,
        value: &T,
        options: SendOptions,
    ) -> impl Future<Output = Result<Receipt, Error>> + Send + 'static {
        let started = self
            .command(service, value)
            .map(|msg| self.inner.node.send_with(service, msg, options));
        then(started)
    }

    /// Sends `value` to one instance of `service` in the background, as
    /// [`Node::send_background`](crate::Node::send_background) does: returns the message's id
    /// once the node holds it; one not delivered is a dead letter. Fails at once if `value`
    /// does not encode, or as `Node::send_background` fails.
    pub fn send_background<T: Contract>(
        &self,
        service: &str,
        value: &T,
    ) -> Result<MessageId, Error> {
        let msg = self.command(service, value)?;
        self.inner.node.send_background(service, msg)
    }

    /// Sends `value` as a request to one instance of `service` and decodes its reply as `R`,
    /// the reply the contract declares for it. Waits at most `timeout` from the call, which
    /// starts the request (and reads the trace context) as [`send`](Self::send) does.
    pub fn request<T: Contract, R: Contract>(
        &self,
        service: &str,
        value: &T,
        timeout: Duration,
    ) -> impl Future<Output = Result<R, Error>> + Send + 'static {
        replied::<R>(self.start_request::<T, R>(service, value, timeout))
    }

    /// Checks that the contract answers `T` with `R`, and starts the request.
    fn start_request<T: Contract, R: Contract>(
        &self,
        service: &str,
        value: &T,
        timeout: Duration,
    ) -> Result<
        (
            impl Future<Output = Result<Message, Error>> + Send + 'static,
            Codec,
        ),
        Error,
    > {
        let (entry, codec) = self.sends::<T>(service)?;
        let expected = Some(MessageRef::of::<R>());
        if entry.reply.map(|m| m.id) != expected {
            return Err(Error::Contract(format!(
                "the contract says {} is answered with {}, not {}",
                entry.message.id,
                entry
                    .reply
                    .map_or("nothing".to_owned(), |m| m.id.to_string()),
                MessageRef::of::<R>()
            )));
        }
        let msg = self.command(service, value)?;
        Ok((self.inner.node.request(service, msg, timeout), codec))
    }

    /// The byte events for publishing `event` (one value, or several versions of one event
    /// as a tuple), as the contract declares them
    /// ([`publishes`](crate::contract::ServiceContract::publishes)).
    pub fn event<V: Versions>(&self, event: &V) -> Result<Vec<Message>, Error> {
        let versions = event.versions();
        let first = versions
            .first()
            .ok_or_else(|| Error::Contract("nothing to publish".into()))?;
        let mut topic: Option<&str> = None;
        let mut messages = Vec::with_capacity(versions.len());
        let listed: Vec<String> = versions.iter().map(|v| v.id.version.to_string()).collect();
        for (i, version) in versions.iter().enumerate() {
            if versions[..i].iter().any(|v| v.id == version.id) {
                return Err(Error::Contract(format!(
                    "{} is listed twice in one publish",
                    version.id
                )));
            }
            if version.id.name != first.id.name {
                return Err(Error::Contract(format!(
                    "versions published together must be of one message type, not {} and {}",
                    first.id, version.id
                )));
            }
            let entry = self.publishes(version.id)?;
            let Role::Publishes { topic: this } = &entry.role else {
                continue;
            };
            if topic.is_some_and(|t| t != this) {
                return Err(Error::Contract(format!(
                    "the versions of {} are published on different topics",
                    version.id.name
                )));
            }
            topic = Some(this);
            let codec = entry.codec(&self.inner.contract);
            let body = (version.encode)(codec).map_err(|reason| Error::Payload {
                message: format!("{} ({codec})", version.id),
                reason,
            })?;
            let mut msg = match entry.message.kind {
                MessageKind::Document => Message::document(this.clone(), body),
                _ => Message::event(this.clone(), body),
            }
            .with_header(MESSAGE_HEADER, version.id.name);
            if versions.len() > 1 {
                msg = msg.with_header(VERSIONS_HEADER, listed.join(","));
            }
            messages.push(finish(msg, version.id, codec, first.key.clone()));
        }
        Ok(messages)
    }

    /// Publishes `event` on the topic the contract declares for it, to every subscriber
    /// group ([`Node::publish`](crate::Node::publish)).
    ///
    /// During a deprecation window, publish the old and the new version in one call, as a
    /// tuple: `typed.publish(&(placed_v2, placed_v1))`. Both go out as one batch (each
    /// audience gets both in one delivery, acked once), marked as versions of one event:
    /// every subscriber handles the highest version it knows, once, and acknowledges the
    /// other unhandled, so old subscribers keep working and new ones see the event once.
    ///
    /// Like [`send`](Self::send), the publish starts (and reads the trace context) at the call.
    pub fn publish<V: Versions>(
        &self,
        event: &V,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        self.publish_with(event, PublishOptions::default())
    }

    /// [`publish`](Self::publish) with per-event options.
    pub fn publish_with<V: Versions>(
        &self,
        event: &V,
        options: PublishOptions,
    ) -> impl Future<Output = Result<PublishReceipt, Error>> + Send + 'static {
        let started = self.event(event).map(|mut messages| {
            if messages.len() == 1 {
                let only = messages.remove(0);
                Either::Left(self.inner.node.publish_with(only, options))
            } else {
                Either::Right(self.inner.node.publish_batch_with(messages, options))
            }
        });
        then(started)
    }

    /// Publishes `event` in the background, as
    /// [`Node::publish_background`](crate::Node::publish_background) does: returns the
    /// (first) message's id once the node holds it; a copy not delivered is a dead letter.
    /// Several versions of one event, as a tuple, go as one batch, as with
    /// [`publish`](Self::publish). Fails at once if `event` does not encode, or as
    /// `Node::publish_background` fails.
    pub fn publish_background<V: Versions>(&self, event: &V) -> Result<MessageId, Error> {
        let mut messages = self.event(event)?;
        if messages.len() == 1 {
            return self.inner.node.publish_background(messages.remove(0));
        }
        self.inner.node.publish_batch_background(messages)
    }

    /// Decodes a byte message as `T` (by its content type; without one, by the codec the
    /// contract declares for `T`, or JSON). Checks nothing else: for messages received
    /// through the byte API.
    pub fn decode<T: Contract>(&self, msg: &Message) -> Result<T, Error> {
        let id = MessageRef::of::<T>();
        let codec = self
            .inner
            .contract
            .entries
            .iter()
            .find(|e| e.message.id == id || e.reply.is_some_and(|r| r.id == id))
            .map_or(Codec::Json, |e| e.codec(&self.inner.contract));
        decode_as(msg, codec)
    }

    /// The contract's `sends` entry for `T` to `service`, and its codec.
    fn sends<T: Contract>(&self, service: &str) -> Result<(&Entry, Codec), Error> {
        let contract = &self.inner.contract;
        let id = MessageRef::of::<T>();
        let entry = contract
            .entries_for(
                id,
                |r| matches!(r, Role::Sends { service: s } if s == service),
            )
            .next()
            .ok_or_else(|| {
                Error::Contract(format!(
                    "`{}` sends no {id} to `{service}` in its contract (version {}); declare \
                     .sends::<{}>(\"{service}\")",
                    contract.service,
                    contract.version,
                    short_type_name::<T>()
                ))
            })?;
        Ok((entry, entry.codec(contract)))
    }

    fn publishes(&self, id: MessageRef) -> Result<&Entry, Error> {
        let contract = &self.inner.contract;
        contract
            .entries_for(id, |r| matches!(r, Role::Publishes { .. }))
            .next()
            .ok_or_else(|| {
                Error::Contract(format!(
                    "`{}` publishes no {id} in its contract (version {})",
                    contract.service, contract.version
                ))
            })
    }
}

/// The rest of an operation started at the call, or the error that refused it then. Outside
/// the generic methods, so the future holds neither their type parameters nor their borrows.
async fn then<F, T>(started: Result<F, Error>) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>>,
{
    started?.await
}

/// The rest of a typed request started at the call: its reply, decoded as `R`.
async fn replied<R: Contract>(
    started: Result<(impl Future<Output = Result<Message, Error>>, Codec), Error>,
) -> Result<R, Error> {
    let (request, codec) = started?;
    decode_as::<R>(&request.await?, codec)
}

pub(crate) fn encode<T: Contract>(value: &T, codec: Codec) -> Result<Bytes, Error> {
    codec.encode(value).map_err(|reason| Error::Payload {
        message: format!("{} ({codec})", MessageRef::of::<T>()),
        reason,
    })
}

/// Decodes a message's payload as `T`, by the message's content type or else `codec`.
fn decode_as<T: Contract>(msg: &Message, codec: Codec) -> Result<T, Error> {
    let codec = match msg.content_type() {
        "" => codec,
        content_type => Codec::from_content_type(content_type).ok_or_else(|| Error::Payload {
            message: MessageRef::of::<T>().to_string(),
            reason: format!("content type `{content_type}` names no codec"),
        })?,
    };
    codec
        .decode(msg.payload())
        .map_err(|reason| Error::Payload {
            message: format!("{} ({codec})", MessageRef::of::<T>()),
            reason,
        })
}

/// Version, content type and key, as every typed message carries them.
pub(crate) fn finish(msg: Message, id: MessageRef, codec: Codec, key: Option<String>) -> Message {
    let msg = msg
        .with_version(id.version)
        .with_content_type(codec.content_type());
    match key {
        Some(key) => msg.with_key(key),
        None => msg,
    }
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// One version of an event, ready to encode (see [`Versions`]).
pub struct Version<'a> {
    id: MessageRef,
    key: Option<String>,
    encode: Box<dyn Fn(Codec) -> Result<Bytes, String> + 'a>,
}

impl std::fmt::Debug for Version<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version").field("id", &self.id).finish()
    }
}

impl<'a> Version<'a> {
    fn of<T: Contract>(value: &'a T) -> Self {
        Self {
            id: MessageRef::of::<T>(),
            key: value.partition_key(),
            encode: Box::new(move |codec| codec.encode(value)),
        }
    }
}

/// What [`TypedNode::publish`] takes: one typed event, or several versions of one event as a
/// tuple (`(v2, v1)`, up to four), published together.
pub trait Versions {
    /// Each version, in order.
    fn versions(&self) -> Vec<Version<'_>>;
}

impl<T: Contract> Versions for T {
    fn versions(&self) -> Vec<Version<'_>> {
        vec![Version::of(self)]
    }
}

macro_rules! versions_for_tuples {
    ($(($($t:ident . $i:tt),+)),+) => {$(
        impl<$($t: Contract),+> Versions for ($($t,)+) {
            fn versions(&self) -> Vec<Version<'_>> {
                vec![$(Version::of(&self.$i)),+]
            }
        }
    )+};
}

versions_for_tuples!((A.0, B.1), (A.0, B.1, C.2), (A.0, B.1, C.2, D.3));
