//! The dispatch behind typed handlers: one byte handler (or byte subscription) per message
//! name (or per topic pattern and group) looks up the typed route for the message's
//! (name, major version), decodes the payload and calls the typed handler.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::contract::codec::Codec;
use crate::contract::message::{Contract, MessageRef};
use crate::{HandlerError, Message};

/// The header that names an event's message type (an event's envelope name is its topic).
pub const MESSAGE_HEADER: &str = "shoal-message";
/// The header of an event published in several versions at once ("1,2"): each subscriber
/// handles the highest of them it knows and acknowledges the others unhandled.
pub const VERSIONS_HEADER: &str = "shoal-versions";

/// What the byte API runs for a message.
pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Option<Bytes>, HandlerError>> + Send>>;

/// A typed handler of `T`: the decoded value, the message it came in, and the codec to write
/// the reply with (the request's own).
pub(crate) type TypedHandler<T> = Arc<dyn Fn(T, Message, Codec) -> HandlerFuture + Send + Sync>;

/// What typed dispatch did on this node, since the [`TypedNode`](super::TypedNode) was made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContractStats {
    /// Messages decoded and given to a typed handler (whatever the handler returned).
    pub handled: u64,
    /// Of those, messages of an old version given to a newer version's handler through an
    /// upcaster ([`TypedNode::upcast`](super::TypedNode::upcast)).
    pub upcast: u64,
    /// Messages refused with a permanent nack because no handler takes their message type
    /// and major version here (an unknown name or version).
    pub refused_unknown: u64,
    /// Messages refused with a permanent nack because their payload did not decode, or its
    /// content type names no codec.
    pub refused_undecodable: u64,
    /// Copies of an event published in several versions at once that were acknowledged
    /// without running a handler, because a newer version of the same event was handled.
    pub superseded: u64,
}

/// The counters behind [`ContractStats`], shared with every route.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    handled: AtomicU64,
    upcast: AtomicU64,
    refused_unknown: AtomicU64,
    refused_undecodable: AtomicU64,
    superseded: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ContractStats {
        ContractStats {
            handled: self.handled.load(Relaxed),
            upcast: self.upcast.load(Relaxed),
            refused_unknown: self.refused_unknown.load(Relaxed),
            refused_undecodable: self.refused_undecodable.load(Relaxed),
            superseded: self.superseded.load(Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

fn refuse(reason: String) -> HandlerFuture {
    Box::pin(std::future::ready(Err(HandlerError::permanent(reason))))
}

/// The route of one (name, major version): decodes, counts, calls the typed handler.
#[derive(Clone)]
pub(crate) struct Route {
    call: Arc<dyn Fn(Message) -> HandlerFuture + Send + Sync>,
}

impl Route {
    /// A route to `handler`; payloads without a content type are decoded with `codec`.
    /// `upcast`: the route converts an old version for a newer version's handler.
    pub(crate) fn new<T: Contract>(
        handler: TypedHandler<T>,
        codec: Codec,
        counters: Arc<Counters>,
        upcast: bool,
    ) -> Self {
        let call = move |msg: Message| -> HandlerFuture {
            let used = match msg.content_type() {
                "" => codec,
                content_type => match Codec::from_content_type(content_type) {
                    Some(codec) => codec,
                    None => {
                        bump(&counters.refused_undecodable);
                        return refuse(format!(
                            "{} arrived as `{content_type}`, which no codec reads (JSON and \
                             CBOR are)",
                            MessageRef::of::<T>()
                        ));
                    }
                },
            };
            match used.decode::<T>(msg.payload()) {
                Ok(value) => {
                    bump(&counters.handled);
                    if upcast {
                        bump(&counters.upcast);
                    }
                    handler(value, msg, used)
                }
                Err(e) => {
                    bump(&counters.refused_undecodable);
                    refuse(format!(
                        "could not decode {} ({used}): {e}",
                        MessageRef::of::<T>()
                    ))
                }
            }
        };
        Self {
            call: Arc::new(call),
        }
    }
}

/// Routes by message name and major version.
#[derive(Default)]
pub(crate) struct Table {
    routes: RwLock<HashMap<&'static str, BTreeMap<u16, Route>>>,
}

impl Table {
    pub(crate) fn insert(&self, id: MessageRef, route: Route) {
        crate::sync::write(&self.routes)
            .entry(id.name)
            .or_default()
            .insert(id.version, route);
    }

    fn get(&self, name: &str, version: u16) -> Option<Route> {
        crate::sync::read(&self.routes)
            .get(name)
            .and_then(|versions| versions.get(&version))
            .cloned()
    }

    fn versions(&self, name: &str) -> Vec<u16> {
        crate::sync::read(&self.routes)
            .get(name)
            .map(|versions| versions.keys().copied().collect())
            .unwrap_or_default()
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = crate::sync::read(&self.routes).keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Why `name` v`version` has no route: the versions and names that do.
    fn unknown(&self, who: &str, name: &str, version: u16) -> String {
        let versions = self.versions(name);
        let known = if versions.is_empty() {
            format!("it takes {}", self.names().join(", "))
        } else {
            let list: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
            format!("it handles {}", list.join(", "))
        };
        format!("{who} has no handler for {name} v{version} ({known})")
    }
}

/// Dispatches a point-to-point message to the route of its (name, major version); refuses
/// an unknown version for good, naming it.
pub(crate) fn dispatch_message(
    table: &Table,
    counters: &Counters,
    service: &str,
    msg: Message,
) -> HandlerFuture {
    match table.get(msg.name(), msg.version()) {
        Some(route) => (route.call)(msg),
        None => {
            bump(&counters.refused_unknown);
            refuse(table.unknown(&format!("service `{service}`"), msg.name(), msg.version()))
        }
    }
}

/// Dispatches an event: its message type is named by [`MESSAGE_HEADER`] (or, without it, is
/// the subscription's only one); of an event published in several versions at once, only
/// the highest version this subscriber knows is handled.
pub(crate) fn dispatch_event(
    table: &Table,
    counters: &Counters,
    subscriber: &str,
    msg: Message,
) -> HandlerFuture {
    let name = match msg.header(MESSAGE_HEADER) {
        Some(name) => name.to_owned(),
        None => match table.names().as_slice() {
            [only] => (*only).to_owned(),
            names => {
                bump(&counters.refused_unknown);
                return refuse(format!(
                    "{subscriber}: event on `{}` names no message type (header \
                     `{MESSAGE_HEADER}`), and this subscription takes {}",
                    msg.name(),
                    names.join(", ")
                ));
            }
        },
    };
    if let Some(offered) = msg.header(VERSIONS_HEADER) {
        let known = table.versions(&name);
        let best = offered
            .split(',')
            .filter_map(|v| v.trim().parse::<u16>().ok())
            .filter(|v| known.contains(v))
            .max();
        if let Some(best) = best
            && best != msg.version()
        {
            bump(&counters.superseded);
            return Box::pin(std::future::ready(Ok(None)));
        }
    }
    match table.get(&name, msg.version()) {
        Some(route) => (route.call)(msg),
        None => {
            bump(&counters.refused_unknown);
            refuse(table.unknown(subscriber, &name, msg.version()))
        }
    }
}
