//! Tests of the structure rules, one per rule and named after it: each edits a small service
//! document (channels, operations, messages, replies, content types) and checks the change
//! is found at its level; and the warning for a breaking change without a new major version.

use serde_json::json;

use super::*;

macro_rules! structure_rule {
    ($test:ident, $rule:ident, $level:ident, $edit:expr) => {
        #[test]
        fn $test() {
            let found = structure_change($edit);
            assert!(found.contains(&(Rule::$rule, Level::$level)), "{found:?}");
            assert_eq!(Rule::$rule.id().replace('-', "_"), stringify!($test));
        }
    };
}

structure_rule!(channel_removed, ChannelRemoved, Breaking, |d| remove(
    d,
    "/channels/placed"
));
structure_rule!(channel_added, ChannelAdded, Info, |d| {
    d["channels"]["new"] = json!({"address": "new"});
});
structure_rule!(channel_address_changed, AddressChanged, Breaking, |d| {
    d["channels"]["placed"]["address"] = json!("orders.placed");
});
structure_rule!(operation_removed, OperationRemoved, Breaking, |d| remove(
    d,
    "/operations/publish"
));
structure_rule!(operation_added, OperationAdded, Info, |d| {
    d["operations"]["again"] = json!({"action": "send", "channel": {"$ref": "#/channels/placed"}});
});
structure_rule!(operation_action_changed, ActionChanged, Breaking, |d| {
    d["operations"]["publish"]["action"] = json!("receive");
});
structure_rule!(
    operation_channel_changed,
    OperationChannelChanged,
    Breaking,
    |d| {
        d["operations"]["publish"]["channel"] = json!({"$ref": "#/channels/orders"});
    }
);
structure_rule!(message_removed, MessageRemoved, Breaking, |d| remove(
    d,
    "/channels/orders/messages/Place"
));
structure_rule!(message_added, MessageAdded, Info, |d| {
    d["channels"]["orders"]["messages"]["Cancel"] = json!({"payload": {"type": "object"}});
});
structure_rule!(reply_removed, ReplyRemoved, Breaking, |d| remove(
    d,
    "/operations/place/reply"
));
structure_rule!(reply_added, ReplyAdded, Info, |d| {
    d["operations"]["publish"]["reply"] = json!({"channel": {"$ref": "#/channels/replies"}});
});
structure_rule!(reply_address_changed, ReplyAddressChanged, Breaking, |d| {
    d["operations"]["place"]["reply"]["address"]["location"] = json!("$message.header#/back");
});
structure_rule!(content_type_changed, ContentTypeChanged, Breaking, |d| {
    d["components"]["messages"]["Place"]["contentType"] = json!("application/cbor");
});
structure_rule!(
    correlation_id_changed,
    CorrelationIdChanged,
    Breaking,
    |d| {
        remove(d, "/components/messages/Place/correlationId");
    }
);
structure_rule!(schema_not_compared, SchemaNotCompared, Warning, |d| {
    d["components"]["messages"]["Accepted"]["payload"] = json!({
        "schemaFormat": "application/vnd.apache.avro;version=1.9.0",
        "schema": {"type": "record", "name": "Accepted", "fields": []},
    });
});

structure_rule!(deprecated, Deprecated, Info, |d| {
    d["operations"]["publish"]["x-shoal-deprecated"] = json!(true);
    d["components"]["messages"]["Place"]["deprecated"] = json!(true);
});

#[test]
fn major_version_not_bumped() {
    let mut new = service();
    remove(&mut new, "/channels/placed");
    let report = diff(&service(), &new).unwrap();
    let found: Vec<_> = report.changes.iter().map(|c| (c.rule, c.level)).collect();
    assert!(
        found.contains(&(Rule::MajorVersionNotBumped, Level::Warning)),
        "{found:?}"
    );
    new["info"]["version"] = json!("2.0.0");
    let report = diff(&service(), &new).unwrap();
    assert!(
        !report
            .changes
            .iter()
            .any(|c| c.rule == Rule::MajorVersionNotBumped)
    );
}
