//! Tests of contracts and of the documents written from them.
#![allow(clippy::unwrap_used)]

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schemars::JsonSchema;
use super::*;
use crate::Error;

/// Places an order.
#[derive(Serialize, Deserialize, JsonSchema, crate::Contract)]
#[shoal(
    name = "orders.PlaceOrder",
    version = 2,
    kind = "command",
    key = "customer"
)]
struct PlaceOrder {
    order_id: String,
    customer: String,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, crate::Contract)]
#[shoal(name = "orders.PlaceOrder", version = 1, kind = "command")]
struct PlaceOrderV1 {
    order_id: String,
}

#[derive(Serialize, Deserialize, JsonSchema, crate::Contract)]
#[shoal(name = "orders.OrderAccepted", version = 1, kind = "reply")]
struct OrderAccepted {
    order_id: String,
}

#[derive(Serialize, Deserialize, JsonSchema, crate::Contract)]
#[shoal(name = "orders.OrderPlaced", version = 1, kind = "event")]
struct OrderPlaced {
    order_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lines: Vec<Line>,
}

/// A tree: recursive types need a shared schema in the document.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    #[serde(default)]
    parts: Vec<Self>,
}

#[derive(Serialize, Deserialize, JsonSchema, crate::Contract)]
#[shoal(name = "payments.PaymentCaptured", version = 1, kind = "event")]
struct PaymentCaptured {
    order_id: String,
}

fn orders() -> ServiceContract {
    ServiceContract::new("orders", "2.0.0")
        .description("Takes orders.")
        .accepts::<PlaceOrder>()
        .replies::<OrderAccepted>()
        .accepts::<PlaceOrderV1>()
        .replies::<OrderAccepted>()
        .deprecated()
        .publishes::<OrderPlaced>("order.placed")
        .subscribes::<PaymentCaptured>("payment.*")
        .group("orders-payments")
        .sends::<PlaceOrder>("warehouse")
        .codec(Codec::Cbor)
}

fn doc() -> Value {
    orders().asyncapi().expect("valid contract")
}

#[test]
fn the_document_has_channels_operations_and_messages_as_documented() {
    let doc = doc();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "orders");
    assert_eq!(doc["info"]["version"], "2.0.0");
    assert_eq!(doc["defaultContentType"], "application/json");
    let commands = &doc["channels"]["commands.orders"];
    assert_eq!(commands["address"], "orders");
    assert_eq!(commands["x-shoal-delivery"], "point-to-point");
    let channel_messages: Vec<&String> = commands["messages"].as_object().unwrap().keys().collect();
    assert_eq!(
        channel_messages,
        ["orders.PlaceOrder.v2", "orders.PlaceOrder.v1"]
    );
    assert_eq!(
        doc["channels"]["events.order.placed"]["address"],
        "order.placed"
    );
    assert_eq!(doc["channels"]["events.payment._"]["address"], "payment.*");
    assert_eq!(
        doc["channels"]["commands.warehouse"]["address"],
        "warehouse"
    );
    assert!(doc["channels"]["replies.orders"]["address"].is_null());

    let receive = &doc["operations"]["receive.orders.PlaceOrder.v2"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(receive["channel"]["$ref"], "#/channels/commands.orders");
    assert_eq!(
        receive["messages"][0]["$ref"],
        "#/channels/commands.orders/messages/orders.PlaceOrder.v2"
    );
    assert_eq!(
        receive["reply"]["address"]["location"],
        "$message.header#/reply_to"
    );
    assert_eq!(
        receive["reply"]["messages"][0]["$ref"],
        "#/channels/replies.orders/messages/orders.OrderAccepted.v1"
    );
    assert_eq!(
        doc["operations"]["receive.orders.PlaceOrder.v1"]["x-shoal-deprecated"],
        true
    );
    let subscribe = &doc["operations"]["subscribe.payments.PaymentCaptured.v1"];
    assert_eq!(subscribe["action"], "receive");
    assert_eq!(subscribe["x-shoal-group"], "orders-payments");
    assert_eq!(
        doc["operations"]["publish.orders.OrderPlaced.v1"]["action"],
        "send"
    );
    assert_eq!(
        doc["operations"]["send.warehouse.orders.PlaceOrder.v2"]["action"],
        "send"
    );

    // The same type sent as CBOR (and described for writing) is a message of its own.
    assert_eq!(
        doc["channels"]["commands.warehouse"]["messages"]["orders.PlaceOrder.v2"]["$ref"],
        "#/components/messages/orders.PlaceOrder.v2.sent.cbor"
    );
    assert_eq!(
        doc["components"]["messages"]["orders.PlaceOrder.v2.sent.cbor"]["contentType"],
        "application/cbor"
    );
    let message = &doc["components"]["messages"]["orders.PlaceOrder.v2"];
    assert_eq!(message["name"], "orders.PlaceOrder");
    assert_eq!(message["x-shoal-version"], 2);
    assert_eq!(message["x-shoal-kind"], "command");
    assert_eq!(message["x-shoal-partition-key"], "customer");
    assert_eq!(message["summary"], "Places an order.");
    assert_eq!(message["correlationId"]["location"], "$message.header#/id");
    let reply = &doc["components"]["messages"]["orders.OrderAccepted.v1"];
    assert_eq!(
        reply["correlationId"]["location"],
        "$message.header#/correlation_id"
    );
    let event = &doc["components"]["messages"]["orders.OrderPlaced.v1"];
    assert_eq!(
        event["headers"]["properties"]["shoal-message"]["const"],
        "orders.OrderPlaced"
    );
}

#[test]
fn payloads_are_draft07_for_reading_what_is_received_and_writing_what_is_sent() {
    let doc = doc();
    let messages = &doc["components"]["messages"];
    // Received: a `#[serde(default)]` field is optional to the reader.
    let received = &messages["orders.PlaceOrder.v2"]["payload"];
    assert_eq!(received["type"], "object");
    assert!(received.get("$schema").is_none());
    let required: Vec<&str> = received["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["order_id", "customer"]);
    // Sent: a field skipped when empty may be absent.
    let sent = &messages["orders.OrderPlaced.v1"]["payload"];
    assert_eq!(sent["required"], serde_json::json!(["order_id"]));
    // The recursive type lives in components.schemas and is referred to from there.
    assert!(doc["components"]["schemas"]["Line"].is_object());
    let text = serde_json::to_string(&doc).unwrap();
    assert!(text.contains("\"$ref\":\"#/components/schemas/Line\""));
    assert!(!text.contains("#/definitions"));
}

#[test]
fn the_document_is_the_same_every_time_and_has_a_yaml_form() {
    let contract = orders();
    assert_eq!(
        contract.asyncapi_json().unwrap(),
        contract.asyncapi_json().unwrap()
    );
    let yaml = contract.asyncapi_yaml().unwrap();
    let back = diff::parse_document(&yaml, "yaml").expect("YAML reads back");
    assert_eq!(back, doc());
}

#[test]
fn an_invalid_contract_says_every_problem() {
    let contract = ServiceContract::new("orders", "1.0.0")
        .replies::<OrderAccepted>()
        .publishes::<PlaceOrder>("orders.placed")
        .accepts::<OrderPlaced>()
        .group("g")
        .accepts::<PlaceOrderV1>()
        .accepts::<PlaceOrderV1>()
        .replies::<OrderPlaced>()
        .sends::<PlaceOrder>("a")
        .sends::<PlaceOrder>("b")
        .codec(Codec::Cbor);
    let Err(Error::Contract(text)) = contract.validate() else {
        panic!("invalid contract accepted");
    };
    for expected in [
        "replies() must follow accepts() or sends(), but follows nothing",
        "orders.PlaceOrder v2 is a command; it cannot be declared as publishes on `orders.placed`",
        "orders.OrderPlaced v1 is an event; it cannot be declared as accepts",
        "group() must follow subscribes(), but follows orders.OrderPlaced v1 (accepts)",
        "orders.PlaceOrder v1 is declared twice: accepts",
        "orders.OrderPlaced v1 is an event; only a reply or a document answers a request",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
    assert!(contract.asyncapi().is_err());
}

#[test]
fn print_spec_prints_the_document_only_when_asked() {
    let contract = orders();
    let mut out = Vec::new();
    assert!(!print_spec_from(["--port", "7"], &contract, &mut out).unwrap());
    assert!(out.is_empty());
    assert!(print_spec_from(["--print-spec"], &contract, &mut out).unwrap());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        contract.asyncapi_json().unwrap()
    );
    let mut out = Vec::new();
    assert!(print_spec_from(["--print-spec=yaml"], &contract, &mut out).unwrap());
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("asyncapi: 3.0.0")
    );
    let err = print_spec_from(["--print-spec=xml"], &contract, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("json and yaml"), "{err}");
}

#[test]
fn a_document_compared_with_itself_has_no_changes() {
    let report = diff::diff(&doc(), &doc()).unwrap();
    assert_eq!(report.changes, []);
    assert_eq!(report.summary(), "no changes");
}

#[derive(Serialize, Deserialize, JsonSchema, crate::Contract)]
#[shoal(name = "cache.Invalidated", version = 1, kind = "event")]
struct Invalidated {
    key: String,
    #[serde(default)]
    reason: String,
}

#[test]
fn an_event_published_and_subscribed_on_one_topic_keeps_both_schemas() {
    let doc = ServiceContract::new("cache", "1.0.0")
        .publishes::<Invalidated>("cache.invalidated")
        .subscribes::<Invalidated>("cache.invalidated")
        .every_instance()
        .asyncapi()
        .unwrap();
    // Follows an operation's message to its payload's `required` list.
    let required = |operation: &str| {
        let reference = doc["operations"][operation]["messages"][0]["$ref"]
            .as_str()
            .unwrap();
        let in_channel = doc.pointer(reference.trim_start_matches('#')).unwrap();
        let component = in_channel["$ref"].as_str().unwrap();
        let message = doc.pointer(component.trim_start_matches('#')).unwrap();
        message["payload"]["required"].clone()
    };
    // Written, `reason` is always there; read, it may be missing.
    assert_eq!(
        required("publish.cache.Invalidated.v1"),
        serde_json::json!(["key", "reason"])
    );
    assert_eq!(
        required("subscribe.cache.Invalidated.v1"),
        serde_json::json!(["key"])
    );
    let messages = doc["channels"]["events.cache.invalidated"]["messages"]
        .as_object()
        .unwrap();
    let keys: Vec<&str> = messages.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["cache.Invalidated.v1", "cache.Invalidated.v1.received"]
    );
    // Every message of the components is used by the channel.
    for component in doc["components"]["messages"].as_object().unwrap().keys() {
        let target = format!("#/components/messages/{component}");
        assert!(
            messages.values().any(|m| m["$ref"] == target.as_str()),
            "{component} is not in the channel"
        );
    }
}
