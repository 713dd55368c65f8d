//! The test kit's contract conformance (`shoal::testing`, with typed contracts): what the
//! probe records is checked against the service's AsyncAPI document, and consumers' example
//! messages (a `Pact`) against the provider's.
#![cfg(all(feature = "testing", feature = "contracts"))]
#![allow(clippy::unwrap_used)]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal::contract::ServiceContract;
use shoal::testing::{Conformance, Expect, Pact, TestMesh, typed_event};
use shoal::{Error, Message};

#[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(name = "orders.OrderPlaced", version = 1, kind = "event")]
struct OrderPlaced {
    order_id: String,
    item: String,
}

#[derive(Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(name = "orders.PlaceOrder", version = 1, kind = "command")]
struct PlaceOrder {
    order_id: String,
}

fn contract() -> ServiceContract {
    ServiceContract::new("orders", "1.0.0")
        .accepts::<PlaceOrder>()
        .publishes::<OrderPlaced>("order.placed")
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn messages_that_break_the_contract_are_reported() -> Result<(), Error> {
    let mesh = TestMesh::start().await?;
    mesh.subscribe("order.placed").await?;
    mesh.check_conformance(Conformance::of(&contract())?);
    let orders = mesh.builder("orders")?.start().await?;
    mesh.wait_for("orders").await?;

    let good = OrderPlaced {
        order_id: "o-1".into(),
        item: "chair".into(),
    };
    orders.publish(typed_event("order.placed", &good)?).await?;
    // The item is missing: what a service whose code and contract drifted apart sends.
    let bad = Message::event("order.placed", r#"{"order_id":"o-2"}"#)
        .with_header("shoal-message", "orders.OrderPlaced")
        .with_content_type("application/json");
    orders.publish(bad).await?;
    // A type the document does not publish there.
    let other = Message::event("order.placed", r#"{"order_id":"o-3"}"#)
        .with_header("shoal-message", "orders.OrderShipped");
    orders.publish(other).await?;

    let first = mesh.expect(Expect::of::<OrderPlaced>()).await?;
    assert_eq!(first.violation, None);
    let placed: OrderPlaced = first.decode()?;
    assert_eq!(placed.item, "chair");
    mesh.wait_idle().await?;
    let violations = mesh.violations();
    assert_eq!(violations.len(), 2, "{violations:?}");
    let err = mesh.verify().unwrap_err().to_string();
    assert!(err.contains("item"), "{err}");
    assert!(
        err.contains("publishes no orders.OrderShipped v1 on `order.placed`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_pact_fails_when_the_provider_does_not_promise_what_the_consumer_reads() {
    let provider = Conformance::of(&contract()).unwrap();
    let placed = serde_json::json!({ "order_id": "o-1", "item": "chair" });
    let relies = Pact::new("billing", "orders")
        .event("an order", "order.placed", "orders.OrderPlaced", 1, placed)
        .command(
            "an order to place",
            "orders.PlaceOrder",
            1,
            serde_json::json!({ "order_id": "o-1" }),
        );
    relies.verify(&provider).unwrap();
    // The pact survives its file.
    let path = std::env::temp_dir().join(format!("shoal-pact-{}.json", std::process::id()));
    relies.save(&path).unwrap();
    assert_eq!(Pact::load(&path).unwrap(), relies);
    let _ = std::fs::remove_file(&path);

    // A field the provider never declared, a version it does not publish, a command it
    // does not take: each fails the provider's build, named.
    let with_price = serde_json::json!({ "order_id": "o-1", "item": "chair", "cents": 5 });
    let broken = Pact::new("billing", "orders")
        .event(
            "an order with a price",
            "order.placed",
            "orders.OrderPlaced",
            1,
            with_price,
        )
        .event(
            "a v2 order",
            "order.placed",
            "orders.OrderPlaced",
            2,
            serde_json::json!({}),
        )
        .command("a refund", "orders.Refund", 1, serde_json::json!({}));
    let err = broken.verify(&provider).unwrap_err().to_string();
    assert!(err.contains("breaks 3 example(s)"), "{err}");
    assert!(err.contains("cents"), "{err}");
    assert!(err.contains("a v2 order"), "{err}");
    assert!(err.contains("no longer accepts it"), "{err}");
}
