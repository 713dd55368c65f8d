//! The example's own tests (`cargo test -p shoal-examples`): the flow runs, the committed
//! document is the code's, and it has no breaking change since the last release.

use serde_json::Value;
use shoal::contract::diff::{self, Level, Rule};

use crate::api;

const CURRENT: &str = include_str!("asyncapi.json");
const LAST_RELEASE: &str = include_str!("asyncapi-1.0.0.json");

#[tokio::test(flavor = "current_thread")]
async fn both_versions_are_live_and_each_event_is_handled_once_per_subscriber() {
    let summary = crate::run(2).await.expect("the flow runs");
    assert_eq!((summary.orders.handled, summary.orders.upcast), (4, 2));
    assert_eq!(summary.billing.len(), 4);
    assert_eq!(summary.shipping.len(), 4);
    let mut ids: Vec<&str> = summary
        .shipping
        .iter()
        .map(|e| e.order_id.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["new-1", "new-2", "old-1", "old-2"]);
    // v1 orders became one-line v2 orders; v1 subscribers got the first line.
    let old = summary
        .billing
        .iter()
        .find(|e| e.order_id == "old-1")
        .expect("old-1");
    assert_eq!((old.item.as_str(), old.quantity), ("chair", 1));
}

#[test]
fn the_committed_document_is_the_one_the_code_writes() {
    let written = api::orders().asyncapi().expect("valid contract");
    let committed: Value = serde_json::from_str(CURRENT).expect("JSON");
    assert!(
        written == committed,
        "examples/typed_orders/asyncapi.json is stale: regenerate it with\n  cargo run -p \
         shoal-examples --example typed-orders -- --print-spec > \
         examples/typed_orders/asyncapi.json"
    );
}

#[test]
fn release_2_breaks_nothing_of_release_1() {
    let old: Value = serde_json::from_str(LAST_RELEASE).expect("JSON");
    let new: Value = serde_json::from_str(CURRENT).expect("JSON");
    let report = diff::diff(&old, &new).expect("both are AsyncAPI 3");
    assert!(!report.has_breaking(), "{}", report.to_text());
    assert_eq!(report.count(Level::Warning), 0, "{}", report.to_text());
    // v1 is served on, deprecated.
    assert!(
        report.changes.iter().any(|c| c.rule == Rule::Deprecated
            && c.location == "operations/receive.orders.PlaceOrder.v1")
    );
    // What 2.0.0 added: the v2 messages and operations.
    let added: Vec<&str> = report
        .changes
        .iter()
        .filter(|c| c.rule == Rule::OperationAdded)
        .map(|c| c.location.as_str())
        .collect();
    assert_eq!(
        added,
        [
            "operations/publish.orders.OrderPlaced.v2",
            "operations/receive.orders.PlaceOrder.v2"
        ]
    );
}

#[test]
fn retiring_v1_later_would_be_caught() {
    let old: Value = serde_json::from_str(CURRENT).expect("JSON");
    let retired = shoal::contract::ServiceContract::new("orders", "3.0.0")
        .accepts::<api::PlaceOrder>()
        .replies::<api::OrderAccepted>()
        .publishes::<api::OrderPlaced>("order.placed")
        .asyncapi()
        .expect("valid");
    let report = diff::diff(&old, &retired).expect("diff");
    let breaking: Vec<(Rule, &str)> = report
        .changes
        .iter()
        .filter(|c| c.level == Level::Breaking)
        .map(|c| (c.rule, c.location.as_str()))
        .collect();
    assert!(breaking.contains(&(
        Rule::OperationRemoved,
        "operations/receive.orders.PlaceOrder.v1"
    )));
    assert!(breaking.contains(&(
        Rule::MessageRemoved,
        "channels/events.order.placed/messages/orders.OrderPlaced.v1"
    )));
}
