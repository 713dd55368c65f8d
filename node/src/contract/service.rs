//! [`ServiceContract`]: what a service accepts, replies, publishes, subscribes to and sends.

use std::collections::HashSet;

use crate::contract::codec::Codec;
use crate::contract::message::{Contract, MessageRef, MessageType, kind_name};
use crate::{Error, Group, MessageKind};

/// The API of one service: the commands it accepts (and their replies), the events it
/// publishes and subscribes to, and the commands it sends to other services, each a typed
/// message with a version. The AsyncAPI document ([`ServiceContract::asyncapi`]) is written
/// from it, and a [`TypedNode`](crate::contract::TypedNode) serves exactly what it declares.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use shoal::contract::schemars::JsonSchema;
/// use shoal::contract::{Codec, ServiceContract};
/// # #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// # #[shoal(name = "orders.PlaceOrder", version = 2, kind = "command")]
/// # struct PlaceOrder { order_id: String }
/// # #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// # #[shoal(name = "orders.OrderAccepted", version = 2, kind = "reply")]
/// # struct OrderAccepted { order_id: String }
/// # #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// # #[shoal(name = "orders.OrderPlaced", version = 2, kind = "event")]
/// # struct OrderPlaced { order_id: String }
/// # #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// # #[shoal(name = "payments.PaymentCaptured", version = 1, kind = "event")]
/// # struct PaymentCaptured { order_id: String }
/// # #[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
/// # #[shoal(name = "stock.Reserve", version = 1, kind = "command")]
/// # struct Reserve { order_id: String }
/// let contract = ServiceContract::new("orders", "1.4.0")
///     .description("Takes orders and tells the world")
///     .accepts::<PlaceOrder>().replies::<OrderAccepted>()
///     .publishes::<OrderPlaced>("order.placed")
///     .subscribes::<PaymentCaptured>("payment.captured").group("orders-payments")
///     .sends::<Reserve>("stock").codec(Codec::Cbor);
/// assert!(contract.validate().is_ok());
/// ```
///
/// The modifiers [`replies`](Self::replies), [`group`](Self::group),
/// [`every_instance`](Self::every_instance), [`codec`](Self::codec) and
/// [`deprecated`](Self::deprecated) apply to the entry declared just before them; a modifier
/// that does not fit that entry makes [`validate`](Self::validate) fail with the reason (as do
/// duplicate entries and kinds that do not fit their role).
#[derive(Clone, Debug)]
pub struct ServiceContract {
    pub(crate) service: String,
    pub(crate) version: String,
    pub(crate) description: Option<String>,
    pub(crate) codec: Codec,
    pub(crate) entries: Vec<Entry>,
    problems: Vec<String>,
}

/// One declared use of a message type.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) role: Role,
    pub(crate) message: MessageType,
    /// For `accepts` and `sends`: the reply to a request.
    pub(crate) reply: Option<MessageType>,
    /// `None`: the contract's default codec.
    pub(crate) codec: Option<Codec>,
    pub(crate) deprecated: bool,
}

/// What a service does with a message type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Handles it point-to-point (a command or document sent to this service).
    Accepts,
    /// Sends it point-to-point to `service`.
    Sends { service: String },
    /// Publishes it on `topic`.
    Publishes { topic: String },
    /// Subscribes to it on `pattern`, in `group`.
    Subscribes { pattern: String, group: Group },
}

impl Role {
    fn describe(&self) -> String {
        match self {
            Self::Accepts => "accepts".into(),
            Self::Sends { service } => format!("sends to `{service}`"),
            Self::Publishes { topic } => format!("publishes on `{topic}`"),
            Self::Subscribes { pattern, .. } => format!("subscribes to `{pattern}`"),
        }
    }
}

impl Entry {
    /// The codec of this entry's messages.
    pub(crate) fn codec(&self, contract: &ServiceContract) -> Codec {
        self.codec.unwrap_or(contract.codec)
    }
}

impl ServiceContract {
    /// The contract of `service` (the name its nodes are started with), at API version
    /// `version` (the document's `info.version`; semantic versioning is expected, and the
    /// breaking-change check warns when a breaking change keeps the major version).
    pub fn new(service: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            version: version.into(),
            description: None,
            codec: Codec::Json,
            entries: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// A description of the service, for the document.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// The codec of every channel that names none with [`codec`](Self::codec) (JSON unless
    /// set).
    pub fn default_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// This service handles `T` sent to it point-to-point (a command or a document).
    pub fn accepts<T: Contract>(self) -> Self {
        self.entry::<T>(Role::Accepts)
    }

    /// The request declared just before ([`accepts`](Self::accepts) or
    /// [`sends`](Self::sends)) is answered with `R`.
    pub fn replies<R: Contract>(mut self) -> Self {
        let reply = MessageType::of::<R>();
        match self.entries.last_mut() {
            Some(entry) if matches!(entry.role, Role::Accepts | Role::Sends { .. }) => {
                if let Some(earlier) = entry.reply.replace(reply) {
                    let problem = format!(
                        "{} already replies with {}; one reply type per request",
                        entry.message.id, earlier.id
                    );
                    self.problems.push(problem);
                }
            }
            _ => self.misplaced("replies", "accepts() or sends()"),
        }
        self
    }

    /// This service publishes `T` on `topic`.
    pub fn publishes<T: Contract>(self, topic: impl Into<String>) -> Self {
        self.entry::<T>(Role::Publishes {
            topic: topic.into(),
        })
    }

    /// This service subscribes to `T` on topics matching `pattern`, in its own group (each
    /// event handled once by one of its instances) unless [`group`](Self::group) or
    /// [`every_instance`](Self::every_instance) follows.
    pub fn subscribes<T: Contract>(self, pattern: impl Into<String>) -> Self {
        self.entry::<T>(Role::Subscribes {
            pattern: pattern.into(),
            group: Group::Service,
        })
    }

    /// The subscription declared just before joins the subscriber group `name`.
    pub fn group(self, name: impl Into<String>) -> Self {
        self.set_group(Group::Named(name.into()), "group")
    }

    /// The subscription declared just before takes every event on every instance.
    pub fn every_instance(self) -> Self {
        self.set_group(Group::EveryInstance, "every_instance")
    }

    /// This service sends `T` point-to-point to `service`.
    pub fn sends<T: Contract>(self, service: impl Into<String>) -> Self {
        self.entry::<T>(Role::Sends {
            service: service.into(),
        })
    }

    /// The entry declared just before is encoded with `codec`.
    pub fn codec(mut self, codec: Codec) -> Self {
        match self.entries.last_mut() {
            Some(entry) => entry.codec = Some(codec),
            None => self.misplaced("codec", "an entry (use default_codec for all)"),
        }
        self
    }

    /// The entry declared just before is deprecated (`x-shoal-deprecated` in the document):
    /// still served, about to go.
    pub fn deprecated(mut self) -> Self {
        match self.entries.last_mut() {
            Some(entry) => entry.deprecated = true,
            None => self.misplaced("deprecated", "an entry"),
        }
        self
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The API version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Checks the contract: modifiers in place, no message declared twice for one role,
    /// kinds that fit their role (commands and documents are accepted and sent, events and
    /// documents published and subscribed to, replies are replies).
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = self.problems.clone();
        if self.service.is_empty() {
            problems.push("the service name is empty".into());
        }
        let mut seen = HashSet::new();
        for entry in &self.entries {
            let id = entry.message.id;
            if !seen.insert((role_key(&entry.role), id)) {
                problems.push(format!("{id} is declared twice: {}", entry.role.describe()));
            }
            let fits = match entry.role {
                Role::Accepts | Role::Sends { .. } => {
                    matches!(
                        entry.message.kind,
                        MessageKind::Command | MessageKind::Document
                    )
                }
                Role::Publishes { .. } | Role::Subscribes { .. } => {
                    matches!(
                        entry.message.kind,
                        MessageKind::Event | MessageKind::Document
                    )
                }
            };
            if !fits {
                problems.push(format!(
                    "{id} is {}; it cannot be declared as {}",
                    with_article(kind_name(entry.message.kind)),
                    entry.role.describe()
                ));
            }
            if let Some(reply) = entry.reply
                && !matches!(reply.kind, MessageKind::Reply | MessageKind::Document)
            {
                problems.push(format!(
                    "{} is {}; only a reply or a document answers a request",
                    reply.id,
                    with_article(kind_name(reply.kind))
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Contract(format!(
                "the contract of `{}` is invalid: {}",
                self.service,
                problems.join("; ")
            )))
        }
    }

    /// The entries for message type `id` in roles `role` accepts.
    pub(crate) fn entries_for(
        &self,
        id: MessageRef,
        role: impl Fn(&Role) -> bool,
    ) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| e.message.id == id && role(&e.role))
    }

    fn entry<T: Contract>(mut self, role: Role) -> Self {
        self.entries.push(Entry {
            role,
            message: MessageType::of::<T>(),
            reply: None,
            codec: None,
            deprecated: false,
        });
        self
    }

    fn set_group(mut self, group: Group, modifier: &str) -> Self {
        match self.entries.last_mut() {
            Some(Entry {
                role: Role::Subscribes { group: g, .. },
                ..
            }) => *g = group,
            _ => self.misplaced(modifier, "subscribes()"),
        }
        self
    }

    fn misplaced(&mut self, modifier: &str, after: &str) {
        let last = self.entries.last().map_or("nothing".to_owned(), |e| {
            format!("{} ({})", e.message.id, e.role.describe())
        });
        self.problems.push(format!(
            "{modifier}() must follow {after}, but follows {last}"
        ));
    }
}

fn with_article(kind: &str) -> String {
    if kind.starts_with('e') {
        format!("an {kind}")
    } else {
        format!("a {kind}")
    }
}

/// Entries that may not repeat a message type: one per role and place.
fn role_key(role: &Role) -> String {
    match role {
        Role::Accepts => "accepts".into(),
        Role::Sends { service } => format!("sends {service}"),
        // One topic and one subscription per message type: `publish` needs no topic, and a
        // subscriber's handler is registered once.
        Role::Publishes { .. } => "publishes".into(),
        Role::Subscribes { .. } => "subscribes".into(),
    }
}
