//! The rules of the breaking-change check, and how serious each is.

/// How serious a change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Level {
    /// Compatible: worth knowing (something added, or relaxed where it does not matter).
    Info,
    /// Possibly breaking: the check could not tell (a message no operation uses, a schema it
    /// cannot read), or a breaking change kept the major version.
    Warning,
    /// Breaks existing senders or receivers.
    Breaking,
}

impl Level {
    /// `breaking`, `warning` or `info`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Breaking => "breaking",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a rule's level is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Severity {
    /// Always this level.
    Fixed(Level),
    /// A payload change: breaking where it matters for the message's direction.
    /// `backward`: new readers can no longer read old data (matters for messages the
    /// service *receives*). `forward`: old readers can no longer read new data (matters for
    /// messages it *sends*).
    Payload { backward: bool, forward: bool },
}

macro_rules! rules {
    ($($variant:ident $id:literal $severity:expr, $summary:literal;)+) => {
        /// One rule of the check. Its [`id`](Rule::id) names it in reports and allowlists.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Rule {
            $(#[doc = $summary] $variant,)+
        }

        impl Rule {
            /// Every rule, in the order of the README's table.
            pub const ALL: &[Rule] = &[$(Rule::$variant,)+];

            /// The rule's id, e.g. `required-field-added`.
            pub fn id(self) -> &'static str {
                match self { $(Self::$variant => $id,)+ }
            }

            /// What the rule catches, in one sentence.
            pub fn summary(self) -> &'static str {
                match self { $(Self::$variant => $summary,)+ }
            }

            pub(crate) fn severity(self) -> Severity {
                match self { $(Self::$variant => $severity,)+ }
            }

            /// The rule with this id.
            pub fn from_id(id: &str) -> Option<Self> {
                match id { $($id => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

use Level::{Breaking, Info, Warning};
use Severity::{Fixed, Payload};

const BACKWARD: Severity = Payload {
    backward: true,
    forward: false,
};
const FORWARD: Severity = Payload {
    backward: false,
    forward: true,
};
const BOTH: Severity = Payload {
    backward: true,
    forward: true,
};
const NEITHER: Severity = Payload {
    backward: false,
    forward: false,
};

rules! {
    ChannelRemoved "channel-removed" Fixed(Breaking),
        "A channel was removed (or renamed: a rename is a removal plus an addition).";
    ChannelAdded "channel-added" Fixed(Info), "A channel was added.";
    AddressChanged "channel-address-changed" Fixed(Breaking),
        "A channel's address (service name or topic) changed.";
    OperationRemoved "operation-removed" Fixed(Breaking), "An operation was removed.";
    OperationAdded "operation-added" Fixed(Info), "An operation was added.";
    ActionChanged "operation-action-changed" Fixed(Breaking),
        "An operation's action changed between send and receive.";
    OperationChannelChanged "operation-channel-changed" Fixed(Breaking),
        "An operation now uses another channel.";
    MessageRemoved "message-removed" Fixed(Breaking),
        "A message (a message type's version) was removed from a channel, an operation or a reply.";
    MessageAdded "message-added" Fixed(Info),
        "A message was added to a channel, an operation or a reply.";
    ReplyRemoved "reply-removed" Fixed(Breaking), "An operation no longer replies.";
    ReplyAdded "reply-added" Fixed(Info), "An operation now replies.";
    ReplyAddressChanged "reply-address-changed" Fixed(Breaking),
        "Where a reply is sent (its address) changed.";
    ContentTypeChanged "content-type-changed" Fixed(Breaking),
        "A message's content type changed (for example JSON to CBOR).";
    CorrelationIdChanged "correlation-id-changed" Fixed(Breaking),
        "Where a message's correlation id is found changed, or it was removed.";
    RequiredFieldAdded "required-field-added" BACKWARD,
        "A required field was added: breaks a receiver (old senders do not send it).";
    OptionalFieldAdded "optional-field-added" NEITHER,
        "An optional field was added: compatible both ways.";
    FieldRemoved "field-removed" FORWARD,
        "A field was removed: breaks a sender (old receivers may need it).";
    FieldBecameRequired "field-became-required" BACKWARD,
        "An optional field became required: breaks a receiver.";
    FieldBecameOptional "field-became-optional" FORWARD,
        "A required field became optional: breaks a sender (old receivers require it).";
    TypeNarrowed "type-narrowed" BACKWARD,
        "A type was narrowed (number to integer, nullable to not, any value to one type): breaks a receiver.";
    TypeWidened "type-widened" FORWARD,
        "A type was widened (integer to number, made nullable, one type to any value): breaks a sender.";
    TypeChanged "type-changed" BOTH, "A type changed to an unrelated one: breaks both.";
    EnumValueRemoved "enum-value-removed" BACKWARD,
        "An enum lost a value: breaks a receiver (old senders may send it).";
    EnumValueAdded "enum-value-added" FORWARD,
        "An enum gained a value: breaks a sender (old receivers do not know it).";
    ConstraintTightened "constraint-tightened" BACKWARD,
        "A constraint was tightened or added (length, range, pattern, format, enum, a narrower number format such as uint64 to uint32): breaks a receiver.";
    ConstraintLoosened "constraint-loosened" FORWARD,
        "A constraint was loosened or removed (a wider number format such as uint32 to uint64 or float to double): breaks a sender.";
    ConstraintChanged "constraint-changed" BOTH,
        "A constraint changed to an unrelated one (a new pattern or format): breaks both.";
    ModelClosed "model-closed" BACKWARD,
        "An object was closed (additionalProperties: false): breaks a receiver.";
    ModelOpened "model-opened" FORWARD,
        "A closed object was opened to other properties: breaks a sender.";
    FieldAddedToClosedModel "field-added-to-closed-model" FORWARD,
        "A field was added to a closed object: breaks a sender (old receivers refuse it).";
    FieldRemovedFromClosedModel "field-removed-from-closed-model" BACKWARD,
        "A field was removed from a closed object: breaks a receiver (it refuses old senders' messages).";
    VariantRemoved "variant-removed" BACKWARD,
        "A oneOf/anyOf alternative (or a value of one that lists values, such as a unit variant) was removed: breaks a receiver.";
    VariantAdded "variant-added" FORWARD,
        "A oneOf/anyOf alternative (or a value of one that lists values, such as a unit variant) was added: breaks a sender.";
    Deprecated "deprecated" Fixed(Info),
        "An operation or message is newly deprecated (`deprecated` or `x-shoal-deprecated`).";
    MajorVersionNotBumped "major-version-not-bumped" Fixed(Warning),
        "There are breaking changes but info.version kept its major version.";
    SchemaNotCompared "schema-not-compared" Fixed(Warning),
        "A schema changed that the check cannot read (another schema format, a $ref outside the document, a schema that refers to itself through nullable unions).";
}

/// Which way a message travels, as the documents' operations say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// The service receives it (a receive operation, or the reply to a send).
    pub(crate) received: bool,
    /// The service sends it (a send operation, or the reply to a receive).
    pub(crate) sent: bool,
}

impl Rule {
    /// The level of this rule for a message used as `usage`.
    pub(crate) fn level(self, usage: Usage) -> Level {
        match self.severity() {
            Fixed(level) => level,
            Payload { backward, forward } => {
                if (usage.received && backward) || (usage.sent && forward) {
                    Breaking
                } else if !usage.received && !usage.sent && (backward || forward) {
                    // No operation says which way it goes: cannot tell.
                    Warning
                } else {
                    Info
                }
            }
        }
    }

    /// `breaking`, `info`, or for payload rules which direction it breaks, for the README.
    pub fn level_text(self) -> &'static str {
        match self.severity() {
            Fixed(level) => level.name(),
            Payload {
                backward: true,
                forward: true,
            } => "breaking",
            Payload { backward: true, .. } => "breaking if received, else info",
            Payload { forward: true, .. } => "breaking if sent, else info",
            Payload { .. } => "info",
        }
    }
}
