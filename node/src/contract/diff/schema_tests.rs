//! Payload changes of real Rust types (schemars' schemas, as `shoal spec` writes them):
//! each change is judged as what it does to old senders or receivers, shown by decoding
//! with the old or new type.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Level, Rule, diff};
use crate::contract::schemars::JsonSchema;
use crate::contract::{Codec, ServiceContract};

/// A sum type: schemars writes it as a `oneOf` without `type`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug)]
pub(crate) enum Shape {
    Circle { r: f64 },
    Square { side: f64 },
}

mod old {
    use super::*;

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Drawn", version = 1, kind = "event")]
    pub(crate) struct Drawn {
        pub shape: Shape,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Tagged", version = 1, kind = "event")]
    pub(crate) struct Tagged {
        pub tags: Vec<String>,
        pub notes: HashMap<String, String>,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Draw", version = 1, kind = "command")]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Draw {
        pub id: String,
        pub color: String,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Label", version = 1, kind = "command")]
    pub(crate) struct Label {
        pub tags: Vec<Value>,
        pub notes: HashMap<String, Value>,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Count", version = 1, kind = "command")]
    pub(crate) struct Count {
        pub n: u32,
        pub x: f32,
        pub small: i32,
    }

    #[derive(Serialize, Deserialize, JsonSchema, Debug)]
    pub(crate) enum Mode {
        Fast,
        Custom { level: u8 },
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Configure", version = 1, kind = "command")]
    pub(crate) struct Configure {
        pub mode: Mode,
    }
}

mod new {
    use super::*;

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Drawn", version = 1, kind = "event")]
    pub(crate) struct Drawn {
        pub shape: Option<Shape>,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Tagged", version = 1, kind = "event")]
    pub(crate) struct Tagged {
        pub tags: Vec<Value>,
        pub notes: HashMap<String, Value>,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Draw", version = 1, kind = "command")]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Draw {
        pub id: String,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Label", version = 1, kind = "command")]
    pub(crate) struct Label {
        pub tags: Vec<String>,
        pub notes: HashMap<String, String>,
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Count", version = 1, kind = "command")]
    pub(crate) struct Count {
        pub n: u64,
        pub x: f64,
        pub small: i16,
    }

    #[derive(Serialize, Deserialize, JsonSchema, Debug)]
    pub(crate) enum Mode {
        Fast,
        Slow,
        Custom { level: u8 },
    }

    #[derive(Serialize, Deserialize, JsonSchema, crate::Contract, Debug)]
    #[shoal(name = "shapes.Configure", version = 1, kind = "command")]
    pub(crate) struct Configure {
        pub mode: Mode,
    }
}

/// The changes between two documents, as (level, rule, location, message).
fn changes(old: &ServiceContract, new: &ServiceContract) -> Vec<(Level, Rule, String, String)> {
    let report = diff(&old.asyncapi().unwrap(), &new.asyncapi().unwrap()).unwrap();
    report
        .changes
        .into_iter()
        .map(|c| (c.level, c.rule, c.location, c.message))
        .collect()
}

fn has(found: &[(Level, Rule, String, String)], level: Level, rule: Rule, at: &str) -> bool {
    found
        .iter()
        .any(|(l, r, location, _)| *l == level && *r == rule && location.ends_with(at))
}

#[test]
fn a_sent_field_made_nullable_without_a_type_is_a_widening() {
    let old = ServiceContract::new("shapes", "1.0.0").publishes::<old::Drawn>("shapes.drawn");
    let new = ServiceContract::new("shapes", "1.1.0").publishes::<new::Drawn>("shapes.drawn");
    // What the check must catch: an old receiver refuses the new null.
    let bytes = Codec::Json.encode(&new::Drawn { shape: None }).unwrap();
    assert!(Codec::Json.decode::<old::Drawn>(&bytes).is_err());
    let found = changes(&old, &new);
    assert!(
        has(
            &found,
            Level::Breaking,
            Rule::TypeWidened,
            "/properties/shape"
        ),
        "{found:?}"
    );
    assert!(
        found.iter().any(|c| c.3 == "null is now allowed"),
        "{found:?}"
    );
    // Received, the other way round: a new receiver refuses the old sender's null.
    let old = ServiceContract::new("shapes", "1.0.0").subscribes::<new::Drawn>("shapes.drawn");
    let new = ServiceContract::new("shapes", "1.1.0").subscribes::<old::Drawn>("shapes.drawn");
    let found = changes(&old, &new);
    assert!(
        has(
            &found,
            Level::Breaking,
            Rule::TypeNarrowed,
            "/properties/shape"
        ),
        "{found:?}"
    );
}

#[test]
fn items_and_map_values_that_become_or_stop_being_any_value_are_compared() {
    // Sent: Vec<String> to Vec<Value> (`items: true`); old receivers want strings.
    let old = ServiceContract::new("shapes", "1.0.0").publishes::<old::Tagged>("shapes.tagged");
    let new = ServiceContract::new("shapes", "1.1.0").publishes::<new::Tagged>("shapes.tagged");
    let sent = new::Tagged {
        tags: vec![json!(1)],
        notes: HashMap::from([("a".into(), json!(1))]),
    };
    let bytes = Codec::Json.encode(&sent).unwrap();
    assert!(Codec::Json.decode::<old::Tagged>(&bytes).is_err());
    let found = changes(&old, &new);
    assert!(
        has(&found, Level::Breaking, Rule::TypeWidened, "/tags/items"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Level::Breaking,
            Rule::TypeWidened,
            "/notes/additionalProperties"
        ),
        "{found:?}"
    );
    // Received: Vec<Value> to Vec<String>; old senders send any value.
    let old = ServiceContract::new("shapes", "1.0.0").accepts::<old::Label>();
    let new = ServiceContract::new("shapes", "1.1.0").accepts::<new::Label>();
    let found = changes(&old, &new);
    assert!(
        has(&found, Level::Breaking, Rule::TypeNarrowed, "/tags/items"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Level::Breaking,
            Rule::TypeNarrowed,
            "/notes/additionalProperties"
        ),
        "{found:?}"
    );
    // `false` allows nothing: `false` to `true` widens.
    let doc = |items: Value| {
        json!({"asyncapi": "3.0.0", "info": {"title": "t", "version": "1.0.0"},
            "channels": {"c": {"address": "c", "messages": {"M": {"payload":
                {"type": "array", "items": items}}}}},
            "operations": {"o": {"action": "send", "channel": {"$ref": "#/channels/c"}}}})
    };
    let report = diff(&doc(json!(false)), &doc(json!(true))).unwrap();
    assert_eq!(report.changes[0].rule, Rule::TypeWidened);
    assert_eq!(report.changes[0].level, Level::Breaking);
}

#[test]
fn a_field_removed_from_a_closed_received_model_breaks_old_senders() {
    let old = ServiceContract::new("shapes", "1.0.0").accepts::<old::Draw>();
    let new = ServiceContract::new("shapes", "1.1.0").accepts::<new::Draw>();
    let sent = old::Draw {
        id: "1".into(),
        color: "red".into(),
    };
    let bytes = Codec::Json.encode(&sent).unwrap();
    assert!(Codec::Json.decode::<new::Draw>(&bytes).is_err());
    let found = changes(&old, &new);
    assert!(
        has(
            &found,
            Level::Breaking,
            Rule::FieldRemovedFromClosedModel,
            "/properties/color"
        ),
        "{found:?}"
    );
}

#[test]
fn wider_number_formats_and_regrouped_unit_variants_are_compatible_when_received() {
    let old = ServiceContract::new("shapes", "1.0.0")
        .accepts::<old::Count>()
        .accepts::<old::Configure>();
    let new = ServiceContract::new("shapes", "1.1.0")
        .accepts::<new::Count>()
        .accepts::<new::Configure>();
    let count = old::Count {
        n: u32::MAX,
        x: 1.5,
        small: 7,
    };
    assert!(
        Codec::Json
            .decode::<new::Count>(&Codec::Json.encode(&count).unwrap())
            .is_ok()
    );
    let mode = old::Configure {
        mode: old::Mode::Fast,
    };
    assert!(
        Codec::Json
            .decode::<new::Configure>(&Codec::Json.encode(&mode).unwrap())
            .is_ok()
    );
    let found = changes(&old, &new);
    // Only i32 to i16 narrows (its format, and the range schemars adds).
    assert!(
        found
            .iter()
            .filter(|c| c.0 == Level::Breaking)
            .all(|c| c.2.ends_with("/properties/small")),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Level::Breaking,
            Rule::ConstraintTightened,
            "/properties/small"
        ),
        "{found:?}"
    );
    for field in ["/properties/n", "/properties/x"] {
        assert!(
            has(&found, Level::Info, Rule::ConstraintLoosened, field),
            "{field}: {found:?}"
        );
    }
    assert!(
        found
            .iter()
            .any(|c| c.1 == Rule::VariantAdded && c.3 == "alternative value \"Slow\" added"),
        "{found:?}"
    );
    // Sent, a new unit variant breaks old receivers.
    let old = ServiceContract::new("shapes", "1.0.0").sends::<old::Configure>("shapes");
    let new = ServiceContract::new("shapes", "1.1.0").sends::<new::Configure>("shapes");
    let found = changes(&old, &new);
    assert!(
        has(&found, Level::Breaking, Rule::VariantAdded, "/mode/oneOf/0"),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|c| c.1 == Rule::VariantRemoved),
        "{found:?}"
    );
}

#[test]
fn a_self_referencing_nullable_schema_is_not_compared() {
    let doc = |description: &str| {
        json!({"asyncapi": "3.0.0", "info": {"title": "t", "version": "1.0.0"},
            "channels": {"c": {"address": "c", "messages": {"M": {"payload":
                {"$ref": "#/components/schemas/A"}}}}},
            "operations": {"o": {"action": "receive", "channel": {"$ref": "#/channels/c"}}},
            "components": {"schemas": {"A": {"description": description,
                "anyOf": [{"$ref": "#/components/schemas/A"}, {"type": "null"}]}}}})
    };
    // On a test thread's stack (2 MiB): without a bound this overflowed even 64 MiB.
    let report = diff(&doc("one"), &doc("two")).unwrap();
    let change = &report.changes[0];
    assert_eq!(change.rule, Rule::SchemaNotCompared, "{report:?}");
    assert_eq!(change.location, "channels/c/messages/M/payload");
    assert!(
        change.message.contains("refers to itself"),
        "{}",
        change.message
    );
}
