//! [`TypedNode`]: typed handlers, subscriptions, sends, requests and publishes over a
//! [`Node`]'s byte API, checked against the service's [`ServiceContract`].

mod client;
mod routes;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

pub use self::client::{Version, Versions};
#[cfg(feature = "testing")]
pub(crate) use self::client::{encode, finish};
pub use self::routes::{ContractStats, MESSAGE_HEADER, VERSIONS_HEADER};
use self::routes::{Counters, Route, Table, TypedHandler};
use crate::contract::codec::Codec;
use crate::contract::message::{Contract, MessageRef};
use crate::contract::service::{Entry, Role, ServiceContract};
use crate::sync::lock;
use crate::{Error, Group, HandlerError, Message, Node, SubscribeOptions, Subscription};

/// A [`Node`] serving a [`ServiceContract`]: typed handlers dispatched on (message name,
/// major version), typed subscriptions, and typed `send`, `request` and `publish`, all over
/// the node's byte API (which stays usable beside it).
///
/// Everything typed goes through the contract: a handler for a message the contract does not
/// accept, or a publish of an event it does not publish, is refused with
/// [`Error::Contract`], so the AsyncAPI document written from the contract is what the
/// service really does.
///
/// On the receiving side, a message of a name and major version no handler takes is refused
/// with a permanent nack that names it (the sender dead-letters it with that reason), as is a
/// payload that does not decode (the reason is the decode error); both are counted in
/// [`TypedNode::stats`]. Nothing from the network makes it panic.
///
/// Make one per node (it owns the node's handlers for its message names) and clone it: it is
/// a cheap handle.
///
/// ```
/// # use std::time::Duration;
/// # use serde::{Deserialize, Serialize};
/// # use shoal::contract::schemars::JsonSchema;
/// use shoal::contract::ServiceContract;
/// use shoal::{MeshCa, Message, Node};
///
/// #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// #[shoal(name = "pricing.Quote", version = 1, kind = "command")]
/// struct Quote { item: String }
///
/// #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// #[shoal(name = "pricing.Price", version = 1, kind = "reply")]
/// struct Price { cents: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ca = MeshCa::generate("example mesh")?;
/// let node = Node::builder("pricing").identity(ca.issue("pricing")?).trust(ca.clone()).start().await?;
/// let pricing = node.typed(ServiceContract::new("pricing", "1.0.0").accepts::<Quote>().replies::<Price>())?;
/// pricing.handle(|quote: Quote, _msg: Message| async move {
///     Ok(Price { cents: 100 * quote.item.len() as u64 })
/// })?;
///
/// let shop = Node::builder("shop").identity(ca.issue("shop")?).trust(ca).peer(node.local_addr()).start().await?;
/// let shop = shop.typed(ServiceContract::new("shop", "1.0.0").sends::<Quote>("pricing").replies::<Price>())?;
/// let price: Price = shop.request("pricing", &Quote { item: "book".into() }, Duration::from_secs(5)).await?;
/// assert_eq!(price.cents, 400);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TypedNode {
    inner: Arc<Inner>,
}

struct Inner {
    node: Node,
    contract: ServiceContract,
    counters: Arc<Counters>,
    state: Mutex<State>,
    /// Held while a byte subscription is made, so two typed subscriptions to one pattern and
    /// group share it.
    subscribing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Point-to-point routes, one table (and one byte handler) per message name.
    messages: HashMap<&'static str, Arc<Table>>,
    /// Event routes, one table (and one byte subscription) per pattern and group.
    subscriptions: Vec<Subscribed>,
    /// Every typed handler registered, as a `Slot<T>`, for routes and upcasters to call.
    handlers: HashMap<MessageRef, Arc<dyn Any + Send + Sync>>,
}

struct Subscribed {
    pattern: String,
    group: Group,
    table: Arc<Table>,
    subscription: Subscription,
}

impl std::fmt::Debug for TypedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedNode")
            .field("service", &self.inner.contract.service)
            .field("version", &self.inner.contract.version)
            .finish()
    }
}

impl Node {
    /// Serves `contract` on this node: see [`TypedNode`]. Fails if the contract is invalid
    /// ([`ServiceContract::validate`]) or is another service's.
    pub fn typed(&self, contract: ServiceContract) -> Result<TypedNode, Error> {
        TypedNode::new(self.clone(), contract)
    }
}

impl TypedNode {
    /// Serves `contract` on `node` (see [`Node::typed`]).
    pub fn new(node: Node, contract: ServiceContract) -> Result<Self, Error> {
        contract.validate()?;
        if contract.service != node.service() {
            return Err(Error::Contract(format!(
                "the contract is for `{}` but the node is an instance of `{}`",
                contract.service,
                node.service()
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                node,
                contract,
                counters: Arc::default(),
                state: Mutex::default(),
                subscribing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The node underneath, for the byte API.
    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    /// The contract served.
    pub fn contract(&self) -> &ServiceContract {
        &self.inner.contract
    }

    /// What typed dispatch did so far: messages handled, upcast, refused, superseded.
    pub fn stats(&self) -> ContractStats {
        self.inner.counters.snapshot()
    }

    /// Registers the handler of `T`, a message the contract [accepts](ServiceContract::accepts),
    /// replacing an earlier one. It gets the decoded value and the message it came in (id,
    /// headers, attempt...), and returns the reply the contract declares for `T` (or `()` if
    /// it declares none); an error nacks the message like a byte handler's.
    ///
    /// Messages of `T`'s name are dispatched on their major version: register one handler
    /// per version, or upcast old versions to a newer one's handler
    /// ([`upcast`](Self::upcast)).
    pub fn handle<T, F, Fut, R>(&self, handler: F) -> Result<(), Error>
    where
        T: Contract,
        F: Fn(T, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
        R: TypedReply,
    {
        let id = MessageRef::of::<T>();
        let entry = self.entry(id, "accepts", |r| matches!(r, Role::Accepts))?;
        check_reply(entry, R::reply_type())?;
        let typed = self.register::<T>(Arc::new(move |value, msg, codec| {
            let reply = handler(value, msg);
            Box::pin(async move { reply.await?.encode(codec) })
        }));
        let route = Route::new(
            typed,
            entry.codec(&self.inner.contract),
            Arc::clone(&self.inner.counters),
            false,
        );
        self.install_message(&mut lock(&self.inner.state), id, route);
        Ok(())
    }

    /// Subscribes the handler of `T`, an event the contract
    /// [subscribes](ServiceContract::subscribes) to, on the contract's pattern and group.
    /// Typed subscriptions to one pattern and group share one subscription of the node,
    /// which dispatches on the event's message type and major version.
    pub async fn subscribe<T, F, Fut>(&self, handler: F) -> Result<Subscription, Error>
    where
        T: Contract,
        F: Fn(T, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let id = MessageRef::of::<T>();
        let entry = self.entry(id, "subscribes to", |r| {
            matches!(r, Role::Subscribes { .. })
        })?;
        let typed = self.register::<T>(Arc::new(move |value, msg, _codec| {
            let done = handler(value, msg);
            Box::pin(async move { done.await.map(|()| None) })
        }));
        let route = Route::new(
            typed,
            entry.codec(&self.inner.contract),
            Arc::clone(&self.inner.counters),
            false,
        );
        self.install_event(entry, id, route).await
    }

    /// Serves the old version `Old` with the handler already registered for `New`: each
    /// `Old` message is decoded as `Old`, converted with `Into<New>` and handled by `New`'s
    /// handler. Use it to keep answering old senders (or old publishers) after moving to a
    /// new major version: both versions stay live, one handler does the work.
    ///
    /// The contract must declare `Old` where it is received (accepted, subscribed to, or
    /// both), and a handler for `New` must be registered first. For a request, `New`'s
    /// handler's reply answers the old sender as well, so the contract must declare a version
    /// of the same reply type for both (an old requester reads the newer reply tolerantly:
    /// keep the reply's changes additive, or register a handler for `Old` instead).
    pub async fn upcast<Old, New>(&self) -> Result<(), Error>
    where
        Old: Contract + Into<New>,
        New: Contract,
    {
        let (old, new) = (MessageRef::of::<Old>(), MessageRef::of::<New>());
        let target = self.registered::<New>().ok_or_else(|| {
            Error::Contract(format!(
                "register the handler for {new} before upcasting {old} to it"
            ))
        })?;
        let typed: TypedHandler<Old> =
            Arc::new(move |value: Old, msg, codec| target(value.into(), msg, codec));
        let contract = &self.inner.contract;
        let entries: Vec<&Entry> = contract
            .entries_for(old, |r| {
                matches!(r, Role::Accepts | Role::Subscribes { .. })
            })
            .collect();
        if entries.is_empty() {
            return Err(Error::Contract(format!(
                "`{}` neither accepts nor subscribes to {old} in its contract; declare it to \
                 upcast it",
                contract.service
            )));
        }
        for entry in &entries {
            if entry.role == Role::Accepts {
                let new_reply = contract
                    .entries_for(new, |r| matches!(r, Role::Accepts))
                    .next()
                    .and_then(|e| e.reply);
                let old_reply = entry.reply;
                if old_reply.map(|m| m.id.name) != new_reply.map(|m| m.id.name) {
                    let name = |m: Option<crate::contract::message::MessageType>| {
                        m.map_or("nothing".to_owned(), |m| m.id.to_string())
                    };
                    return Err(Error::Contract(format!(
                        "{old} replies with {} but {new} with {}: an upcast {old} is answered \
                         by {new}'s handler, so both must reply with versions of one type",
                        name(old_reply),
                        name(new_reply)
                    )));
                }
            }
        }
        let typed = self.register::<Old>(typed);
        for entry in entries {
            let route = Route::new(
                Arc::clone(&typed),
                entry.codec(contract),
                Arc::clone(&self.inner.counters),
                true,
            );
            if entry.role == Role::Accepts {
                let mut state = lock(&self.inner.state);
                self.install_message(&mut state, old, route);
            } else {
                self.install_event(entry, old, route).await?;
            }
        }
        Ok(())
    }

    /// Makes `handler` the handler of `T` (replacing an earlier one everywhere it is called
    /// from, upcasters included); returns a handler that calls whichever is current.
    fn register<T: Contract>(&self, handler: TypedHandler<T>) -> TypedHandler<T> {
        let id = MessageRef::of::<T>();
        let mut state = lock(&self.inner.state);
        if let Some(slot) = state
            .handlers
            .get(&id)
            .and_then(|s| s.downcast_ref::<Slot<T>>())
        {
            *crate::sync::write(slot) = handler;
            return through(Arc::clone(slot));
        }
        let slot: Slot<T> = Arc::new(RwLock::new(handler));
        state.handlers.insert(id, Arc::new(Arc::clone(&slot)));
        through(slot)
    }

    /// The current handler of `T`, if one is registered.
    fn registered<T: Contract>(&self) -> Option<TypedHandler<T>> {
        let state = lock(&self.inner.state);
        let slot = state.handlers.get(&MessageRef::of::<T>())?;
        slot.downcast_ref::<Slot<T>>().cloned().map(through)
    }

    /// The contract's entry for `id` in a role `role` accepts, or why there is none.
    fn entry(
        &self,
        id: MessageRef,
        verb: &str,
        role: impl Fn(&Role) -> bool,
    ) -> Result<&Entry, Error> {
        let contract = &self.inner.contract;
        contract.entries_for(id, role).next().ok_or_else(|| {
            Error::Contract(format!(
                "`{}` {verb} no {id} in its contract (version {}); declare it there first",
                contract.service, contract.version
            ))
        })
    }

    /// Adds a point-to-point route, installing the byte handler of its message name first.
    fn install_message(&self, state: &mut State, id: MessageRef, route: Route) {
        let table = state.messages.entry(id.name).or_insert_with(|| {
            let table = Arc::new(Table::default());
            let (tbl, counters) = (Arc::clone(&table), Arc::clone(&self.inner.counters));
            let service = self.inner.contract.service.clone();
            self.inner.node.handle(id.name, move |msg: Message| {
                routes::dispatch_message(&tbl, &counters, &service, msg)
            });
            table
        });
        table.insert(id, route);
    }

    /// Adds an event route to the subscription of `entry`'s pattern and group, subscribing
    /// the node first if this is its first route.
    async fn install_event(
        &self,
        entry: &Entry,
        id: MessageRef,
        route: Route,
    ) -> Result<Subscription, Error> {
        let Role::Subscribes { pattern, group } = &entry.role else {
            return Err(Error::Contract(format!("{id} is not subscribed to")));
        };
        let _one_at_a_time = self.inner.subscribing.lock().await;
        {
            let state = lock(&self.inner.state);
            if let Some(sub) = state
                .subscriptions
                .iter()
                .find(|s| s.pattern == *pattern && s.group == *group)
            {
                sub.table.insert(id, route);
                return Ok(sub.subscription.clone());
            }
        }
        let table = Arc::new(Table::default());
        table.insert(id, route);
        let (tbl, counters) = (Arc::clone(&table), Arc::clone(&self.inner.counters));
        let who = format!(
            "subscriber `{}` of `{pattern}`",
            self.inner.contract.service
        );
        let options = match group {
            Group::Named(name) => SubscribeOptions::new(pattern.clone()).group(name.clone()),
            Group::EveryInstance => SubscribeOptions::new(pattern.clone()).every_instance(),
            Group::Service => SubscribeOptions::new(pattern.clone()),
        };
        let subscription = self
            .inner
            .node
            .subscribe_with(options, move |msg: Message| {
                routes::dispatch_event(&tbl, &counters, &who, msg)
            })
            .await?;
        lock(&self.inner.state).subscriptions.push(Subscribed {
            pattern: pattern.clone(),
            group: group.clone(),
            table,
            subscription: subscription.clone(),
        });
        Ok(subscription)
    }
}

/// Where the current handler of one message type is kept: replacing it reaches every route
/// and upcaster that calls it.
type Slot<T> = Arc<RwLock<TypedHandler<T>>>;

/// A handler that calls the one in `slot` now.
fn through<T: Contract>(slot: Slot<T>) -> TypedHandler<T> {
    Arc::new(move |value, msg, codec| {
        let current = Arc::clone(&*crate::sync::read(&slot));
        current(value, msg, codec)
    })
}

/// Checks a handler's reply type against the one the contract declares.
fn check_reply(entry: &Entry, reply: Option<MessageRef>) -> Result<(), Error> {
    let declared = entry.reply.map(|m| m.id);
    if declared == reply {
        return Ok(());
    }
    let says = |r: Option<MessageRef>| r.map_or("nothing".to_owned(), |r| r.to_string());
    Err(Error::Contract(format!(
        "the contract says {} is answered with {}, but the handler returns {}",
        entry.message.id,
        says(declared),
        says(reply)
    )))
}

/// What a typed handler returns: a typed reply (any [`Contract`] type), or `()` for none.
pub trait TypedReply: Send + 'static {
    /// The reply's message type, checked against the contract; `None` for `()`.
    fn reply_type() -> Option<MessageRef>;

    /// The reply body in `codec` (the request's own codec).
    fn encode(self, codec: Codec) -> Result<Option<Bytes>, HandlerError>;
}

impl TypedReply for () {
    fn reply_type() -> Option<MessageRef> {
        None
    }

    fn encode(self, _codec: Codec) -> Result<Option<Bytes>, HandlerError> {
        Ok(None)
    }
}

impl<T: Contract> TypedReply for T {
    fn reply_type() -> Option<MessageRef> {
        Some(MessageRef::of::<T>())
    }

    fn encode(self, codec: Codec) -> Result<Option<Bytes>, HandlerError> {
        codec.encode(&self).map(Some).map_err(|e| {
            HandlerError::permanent(format!(
                "the reply {} could not be encoded as {codec}: {e}",
                MessageRef::of::<T>()
            ))
        })
    }
}
