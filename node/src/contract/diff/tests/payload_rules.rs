//! Tests of the payload rules, one per rule and named after it: each change is made to a
//! message that one operation receives and another sends, and its level is checked on both
//! sides (a change that breaks old senders of a received message may be harmless to old
//! receivers of a sent one, and the other way round).

use serde_json::json;

use super::*;

/// One test per payload rule: the change, and its level when received and when sent.
macro_rules! payload_rule {
    ($test:ident, $rule:ident, $old:expr, $new:expr, $received:ident, $sent:ident) => {
        #[test]
        fn $test() {
            let (received, sent) = payload_change($old, $new);
            assert!(
                received.contains(&(Rule::$rule, Level::$received)),
                "received: {received:?}"
            );
            assert!(
                sent.contains(&(Rule::$rule, Level::$sent)),
                "sent: {sent:?}"
            );
            assert_eq!(Rule::$rule.id().replace('-', "_"), stringify!($test));
        }
    };
}

payload_rule!(
    required_field_added,
    RequiredFieldAdded,
    object(json!({"a": {"type": "string"}}), &["a"]),
    object(
        json!({"a": {"type": "string"}, "b": {"type": "string"}}),
        &["a", "b"]
    ),
    Breaking,
    Info
);
payload_rule!(
    optional_field_added,
    OptionalFieldAdded,
    object(json!({"a": {"type": "string"}}), &["a"]),
    object(
        json!({"a": {"type": "string"}, "b": {"type": "string"}}),
        &["a"]
    ),
    Info,
    Info
);
payload_rule!(
    field_removed,
    FieldRemoved,
    object(
        json!({"a": {"type": "string"}, "b": {"type": "string"}}),
        &["a"]
    ),
    object(json!({"a": {"type": "string"}}), &["a"]),
    Info,
    Breaking
);
payload_rule!(
    field_became_required,
    FieldBecameRequired,
    object(json!({"a": {"type": "string"}}), &[]),
    object(json!({"a": {"type": "string"}}), &["a"]),
    Breaking,
    Info
);
payload_rule!(
    field_became_optional,
    FieldBecameOptional,
    object(json!({"a": {"type": "string"}}), &["a"]),
    object(json!({"a": {"type": "string"}}), &[]),
    Info,
    Breaking
);
payload_rule!(
    type_narrowed,
    TypeNarrowed,
    object(json!({"n": {"type": "number"}}), &["n"]),
    object(json!({"n": {"type": "integer"}}), &["n"]),
    Breaking,
    Info
);
payload_rule!(
    type_widened,
    TypeWidened,
    object(json!({"n": {"type": "integer"}}), &["n"]),
    object(json!({"n": {"type": ["integer", "null"]}}), &["n"]),
    Info,
    Breaking
);
payload_rule!(
    type_changed,
    TypeChanged,
    object(json!({"n": {"type": "integer"}}), &["n"]),
    object(json!({"n": {"type": "string"}}), &["n"]),
    Breaking,
    Breaking
);
payload_rule!(
    enum_value_removed,
    EnumValueRemoved,
    json!({"type": "string", "enum": ["a", "b"]}),
    json!({"type": "string", "enum": ["a"]}),
    Breaking,
    Info
);
payload_rule!(
    enum_value_added,
    EnumValueAdded,
    json!({"type": "string", "enum": ["a"]}),
    json!({"type": "string", "enum": ["a", "b"]}),
    Info,
    Breaking
);
payload_rule!(
    constraint_tightened,
    ConstraintTightened,
    json!({"type": "string", "maxLength": 20}),
    json!({"type": "string", "maxLength": 10}),
    Breaking,
    Info
);
payload_rule!(
    constraint_loosened,
    ConstraintLoosened,
    json!({"type": "integer", "minimum": 1}),
    json!({"type": "integer"}),
    Info,
    Breaking
);
payload_rule!(
    constraint_changed,
    ConstraintChanged,
    json!({"type": "string", "pattern": "^[a-z]+$"}),
    json!({"type": "string", "pattern": "^[0-9]+$"}),
    Breaking,
    Breaking
);
payload_rule!(
    model_closed,
    ModelClosed,
    object(json!({"a": {"type": "string"}}), &["a"]),
    json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
           "additionalProperties": false}),
    Breaking,
    Info
);
payload_rule!(
    model_opened,
    ModelOpened,
    json!({"type": "object", "properties": {"a": {"type": "string"}},
           "additionalProperties": false}),
    json!({"type": "object", "properties": {"a": {"type": "string"}}}),
    Info,
    Breaking
);
payload_rule!(
    field_added_to_closed_model,
    FieldAddedToClosedModel,
    json!({"type": "object", "properties": {"a": {"type": "string"}},
           "additionalProperties": false}),
    json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
           "additionalProperties": false}),
    Info,
    Breaking
);
payload_rule!(
    field_removed_from_closed_model,
    FieldRemovedFromClosedModel,
    json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
           "additionalProperties": false}),
    json!({"type": "object", "properties": {"a": {"type": "string"}},
           "additionalProperties": false}),
    Breaking,
    Info
);
payload_rule!(
    variant_removed,
    VariantRemoved,
    json!({"oneOf": [
        {"type": "object", "properties": {"Card": {"type": "string"}}, "required": ["Card"]},
        {"type": "object", "properties": {"Cash": {"type": "integer"}}, "required": ["Cash"]}]}),
    json!({"oneOf": [
        {"type": "object", "properties": {"Card": {"type": "string"}}, "required": ["Card"]}]}),
    Breaking,
    Info
);
payload_rule!(
    variant_added,
    VariantAdded,
    json!({"oneOf": [{"const": "card"}, {"const": "cash"}]}),
    json!({"oneOf": [{"const": "card"}, {"const": "cash"}, {"const": "voucher"}]}),
    Info,
    Breaking
);
