//! Tests of every rule of the check (each rule's test is named after it, as the README's
//! table lists them), of directions, allowlists and reports.
//!
//! The documents and helpers the tests share are here; the test of each payload rule is in
//! [`payload_rules`], of each structure rule in [`structure_rules`]. This file checks that
//! every rule has its test, and what crosses rules: renames, directions, references,
//! documents that are not AsyncAPI 3, allowlists and the reports.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;

mod payload_rules;
mod structure_rules;

/// A document whose channel `in` carries message `M` to a receive operation and whose
/// channel `out` carries `M` from a send operation, with the payloads given.
fn two_way(payload: &Value, version: &str) -> Value {
    json!({
        "asyncapi": "3.0.0",
        "info": {"title": "t", "version": version},
        "channels": {
            "in": {"address": "in", "messages": {"M": {"payload": payload}}},
            "out": {"address": "out", "messages": {"M": {"payload": payload}}},
        },
        "operations": {
            "receive": {"action": "receive", "channel": {"$ref": "#/channels/in"},
                        "messages": [{"$ref": "#/channels/in/messages/M"}]},
            "send": {"action": "send", "channel": {"$ref": "#/channels/out"},
                     "messages": [{"$ref": "#/channels/out/messages/M"}]},
        },
    })
}

/// The (rule, level) pairs found in the received and in the sent copy of a payload change.
type Found = Vec<(Rule, Level)>;

fn payload_change(old: Value, new: Value) -> (Found, Found) {
    let report = diff(&two_way(&old, "1.0.0"), &two_way(&new, "2.0.0")).expect("diff");
    let side = |channel: &str| {
        report
            .changes
            .iter()
            .filter(|c| c.location.starts_with(&format!("channels/{channel}/")))
            .map(|c| (c.rule, c.level))
            .collect::<Vec<_>>()
    };
    (side("in"), side("out"))
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required})
}

/// A small document with one receive operation that replies, for structure rules.
fn service() -> Value {
    json!({
        "asyncapi": "3.0.0",
        "info": {"title": "orders", "version": "1.0.0"},
        "defaultContentType": "application/json",
        "channels": {
            "orders": {"address": "orders", "messages": {
                "Place": {"$ref": "#/components/messages/Place"}}},
            "replies": {"address": null, "messages": {
                "Accepted": {"$ref": "#/components/messages/Accepted"}}},
            "placed": {"address": "order.placed", "messages": {
                "Placed": {"payload": {"type": "object"}}}},
        },
        "operations": {
            "place": {
                "action": "receive",
                "channel": {"$ref": "#/channels/orders"},
                "messages": [{"$ref": "#/channels/orders/messages/Place"}],
                "reply": {
                    "address": {"location": "$message.header#/reply_to"},
                    "channel": {"$ref": "#/channels/replies"},
                    "messages": [{"$ref": "#/channels/replies/messages/Accepted"}],
                },
            },
            "publish": {"action": "send", "channel": {"$ref": "#/channels/placed"}},
        },
        "components": {"messages": {
            "Place": {"payload": {"type": "object", "properties": {"id": {"type": "string"}}},
                      "correlationId": {"location": "$message.header#/id"}},
            "Accepted": {"payload": {"type": "object"}},
        }},
    })
}

/// The changes from [`service`] to the document `edit` makes of it (at version 2.0.0).
fn structure_change(edit: impl FnOnce(&mut Value)) -> Vec<(Rule, Level)> {
    let mut new = service();
    new["info"]["version"] = json!("2.0.0");
    edit(&mut new);
    let report = diff(&service(), &new).expect("diff");
    report.changes.iter().map(|c| (c.rule, c.level)).collect()
}

fn remove(value: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    value
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent")
        .remove(key);
}

#[test]
fn every_rule_has_a_test_named_after_it() {
    let source = [
        include_str!("tests.rs"),
        include_str!("tests/payload_rules.rs"),
        include_str!("tests/structure_rules.rs"),
    ]
    .concat();
    for rule in Rule::ALL {
        let test = format!("fn {}()", rule.id().replace('-', "_"));
        let generated = format!("\n    {},", rule.id().replace('-', "_"));
        let generated_structure = format!("structure_rule!({},", rule.id().replace('-', "_"));
        assert!(
            source.contains(&test)
                || source.contains(&generated)
                || source.contains(&generated_structure),
            "no test for rule {}",
            rule.id()
        );
        assert_eq!(Rule::from_id(rule.id()), Some(*rule));
    }
}

#[test]
fn a_rename_is_a_removal_plus_an_addition() {
    let found = structure_change(|d| {
        let channel = d["channels"]["placed"].take();
        remove(d, "/channels/placed");
        d["channels"]["order-placed"] = channel;
    });
    assert!(found.contains(&(Rule::ChannelRemoved, Level::Breaking)));
    assert!(found.contains(&(Rule::ChannelAdded, Level::Info)));
}

#[test]
fn a_message_no_operation_uses_gets_warnings_not_breaking() {
    let doc = |payload: Value| {
        json!({"asyncapi": "3.0.0", "info": {"title": "t", "version": "1"},
               "channels": {"c": {"address": "c", "messages": {"M": {"payload": payload}}}}})
    };
    let old = doc(object(json!({"a": {"type": "string"}}), &[]));
    let new = doc(object(json!({"a": {"type": "string"}}), &["a"]));
    let report = diff(&old, &new).unwrap();
    assert_eq!(report.changes[0].rule, Rule::FieldBecameRequired);
    assert_eq!(report.changes[0].level, Level::Warning);
    assert!(!report.has_breaking());
}

#[test]
fn replies_travel_the_other_way() {
    // The reply of a receive operation is sent: removing one of its fields breaks.
    let mut new = service();
    new["components"]["messages"]["Accepted"]["payload"] = json!({"type": "object",
        "properties": {"x": {"type": "string"}}, "required": ["x"]});
    let mut old = service();
    old["components"]["messages"]["Accepted"]["payload"] = json!({"type": "object",
        "properties": {"x": {"type": "string"}, "y": {"type": "string"}}, "required": ["x"]});
    let report = diff(&old, &new).unwrap();
    let change = report
        .changes
        .iter()
        .find(|c| c.rule == Rule::FieldRemoved)
        .expect("found");
    assert_eq!(change.level, Level::Breaking);
    assert_eq!(
        change.location,
        "channels/replies/messages/Accepted/payload/properties/y"
    );
}

#[test]
fn references_nullable_unions_and_nested_objects_are_followed() {
    let old = json!({"type": "object", "properties": {
        "customer": {"$ref": "#/components/schemas/Customer"},
        "note": {"anyOf": [{"$ref": "#/components/schemas/Note"}, {"type": "null"}]}}});
    let with = |customer: Value, note: Value| {
        let mut doc = two_way(&old, "1.0.0");
        doc["components"] = json!({"schemas": {"Customer": customer, "Note": note}});
        doc
    };
    let before = with(
        object(json!({"name": {"type": "string"}}), &["name"]),
        json!({"type": "string"}),
    );
    let after = with(
        object(
            json!({"name": {"type": "string"}, "vip": {"type": "boolean"}}),
            &["name", "vip"],
        ),
        json!({"type": "string", "maxLength": 10}),
    );
    let report = diff(&before, &after).unwrap();
    let locations: Vec<(&str, Rule, Level)> = report
        .changes
        .iter()
        .filter(|c| c.location.starts_with("channels/in/"))
        .map(|c| (c.location.as_str(), c.rule, c.level))
        .collect();
    assert!(locations.contains(&(
        "channels/in/messages/M/payload/properties/customer/properties/vip",
        Rule::RequiredFieldAdded,
        Level::Breaking
    )));
    assert!(locations.contains(&(
        "channels/in/messages/M/payload/properties/note",
        Rule::ConstraintTightened,
        Level::Breaking
    )));
    // Option<T> read as "T or null": making it non-nullable narrows the type.
    let nullable = object(json!({"n": {"type": ["string", "null"]}}), &[]);
    let plain = object(json!({"n": {"type": "string"}}), &[]);
    let (received, _) = payload_change(nullable, plain);
    assert!(
        received.contains(&(Rule::TypeNarrowed, Level::Breaking)),
        "{received:?}"
    );
}

#[test]
fn recursive_and_looping_references_end() {
    let mut doc = two_way(&json!({"$ref": "#/components/schemas/Tree"}), "1.0.0");
    doc["components"] = json!({"schemas": {
        "Tree": {"type": "object", "properties": {"kids": {"type": "array",
            "items": {"$ref": "#/components/schemas/Tree"}}}},
        "A": {"$ref": "#/components/schemas/B"},
        "B": {"$ref": "#/components/schemas/A"},
    }});
    let mut changed = doc.clone();
    changed["components"]["schemas"]["Tree"]["properties"]["name"] = json!({"type": "string"});
    changed["channels"]["out"]["messages"]["M"]["payload"] =
        json!({"$ref": "#/components/schemas/A"});
    let report = diff(&doc, &changed).expect("ends");
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.rule == Rule::SchemaNotCompared && c.message.contains("`$ref`s in a row"))
    );
}

#[test]
fn only_asyncapi_3_documents_are_read() {
    let v2 = json!({"asyncapi": "2.6.0", "info": {}});
    let err = diff(&v2, &service()).unwrap_err();
    assert!(err.to_string().contains("AsyncAPI 2.6.0"), "{err}");
    let err = parse_document("{\"openapi\": \"3.1.0\"}", "x.json").unwrap_err();
    assert!(
        err.to_string().contains("x.json: not an AsyncAPI document"),
        "{err}"
    );
    let err = parse_document("{ broken", "y.json").unwrap_err();
    assert!(
        err.to_string().starts_with("y.json: not JSON or YAML"),
        "{err}"
    );
    let yaml = "asyncapi: 3.0.0\ninfo:\n  title: t\n  version: '1'\n";
    assert_eq!(
        parse_document(yaml, "z.yaml").unwrap()["info"]["title"],
        "t"
    );
}

#[test]
fn an_allowlist_accepts_changes_by_rule_and_location() {
    let mut new = service();
    remove(&mut new, "/channels/placed");
    remove(&mut new, "/operations/publish");
    new["info"]["version"] = json!("2.0.0");
    let mut report = diff(&service(), &new).unwrap();
    assert_eq!(report.count(Level::Breaking), 2);
    let allowlist = Allowlist::parse(
        "# retired on purpose\n\
         channel-removed channels/placed\n\
         *  operations/pub*   # any rule under a prefix\n\
         message-removed channels/nothing-here\n",
        "allow.txt",
    )
    .unwrap();
    report.allow(&allowlist);
    assert!(!report.has_breaking());
    assert!(
        report
            .changes
            .iter()
            .filter(|c| c.level == Level::Breaking)
            .all(|c| c.allowed)
    );
    assert_eq!(
        report.unused_allowances,
        ["message-removed channels/nothing-here"]
    );
    let text = report.to_text();
    assert!(text.contains("breaking channel-removed"), "{text}");
    assert!(text.contains("(allowed)"), "{text}");
    assert!(
        text.contains("note: allowlist entry matched nothing"),
        "{text}"
    );
    assert!(
        text.ends_with("0 breaking, 0 warning(s), 0 info (2 allowed)\n"),
        "{text}"
    );

    let err = Allowlist::parse("chanel-removed x\n", "allow.txt").unwrap_err();
    assert_eq!(
        err.to_string(),
        "allow.txt: line 1: unknown rule `chanel-removed`"
    );
    let err = Allowlist::parse("channel-removed\n", "allow.txt").unwrap_err();
    assert!(
        err.to_string().contains("expected `RULE LOCATION`"),
        "{err}"
    );
}

#[test]
fn the_json_report_counts_and_lists_changes() {
    let found = diff(&service(), &{
        let mut d = service();
        remove(&mut d, "/channels/placed");
        d
    })
    .unwrap()
    .to_json();
    // The channel, and the message the operation that used it listed.
    assert_eq!(found["breaking"], 2);
    assert_eq!(found["warnings"], 1);
    assert_eq!(found["changes"][0]["level"], "breaking");
    assert_eq!(found["changes"][0]["rule"], "channel-removed");
    assert_eq!(found["changes"][0]["location"], "channels/placed");
    assert_eq!(found["changes"][0]["allowed"], false);
}

#[test]
fn the_readme_lists_every_rule_with_its_level_and_test() {
    let readme = include_str!("../../../../README.md");
    for rule in Rule::ALL {
        let row = format!(
            "| `{}` | {} | {} | `{}` |",
            rule.id(),
            rule.level_text(),
            rule.summary(),
            rule.id().replace('-', "_")
        );
        assert!(readme.contains(&row), "README.md lacks the row\n{row}");
    }
}
