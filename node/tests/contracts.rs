//! Typed contracts over real nodes on loopback: dispatch on (name, major version), v1 and v2
//! side by side with an upcaster, refusals of unknown versions and undecodable payloads
//! (dead-lettered at the sender with the reason, counted, never retried), the tolerant
//! reader, CBOR channels, publishing two versions in one call, and the contract's checks.
#![cfg(feature = "contracts")]
#![allow(clippy::unwrap_used)]

mod contracts {
    pub(crate) mod types;
}

use std::time::Duration;

use contracts::types::{OrderAccepted, OrderPlaced, PlaceOrder, orders_contract, v1};
use shoal::contract::{Codec, ServiceContract, TypedNode};
use shoal::{Error, MeshCa, Message, Node};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn start(ca: &MeshCa, service: &str, peer: Option<&Node>) -> Node {
    Node::builder(service)
        .identity(ca.issue(service).unwrap())
        .trust(ca.clone())
        .peers(peer.map(Node::local_addr))
        .start()
        .await
        .unwrap()
}

/// The order service: v2 handled, v1 upcast into the v2 handler.
async fn orders(ca: &MeshCa) -> TypedNode {
    let node = start(ca, "orders", None).await;
    let typed = node.typed(orders_contract()).unwrap();
    typed
        .handle(|order: PlaceOrder, _msg: Message| async move {
            if order.items.is_empty() {
                return Err(shoal::HandlerError::permanent("an order needs items"));
            }
            Ok(OrderAccepted {
                order_id: order.order_id,
                items: order.items.len() as u32,
            })
        })
        .unwrap();
    typed.upcast::<v1::PlaceOrder, PlaceOrder>().await.unwrap();
    typed
}

async fn client(
    ca: &MeshCa,
    service: &str,
    server: &TypedNode,
    contract: ServiceContract,
) -> TypedNode {
    let node = start(ca, service, Some(server.node())).await;
    node.wait_for_instances("orders", 1, WAIT).await.unwrap();
    node.typed(contract).unwrap()
}

fn shop_v2() -> ServiceContract {
    ServiceContract::new("shop", "1.0.0")
        .sends::<PlaceOrder>("orders")
        .replies::<OrderAccepted>()
}

fn shop_v1() -> ServiceContract {
    ServiceContract::new("old-shop", "1.0.0")
        .sends::<v1::PlaceOrder>("orders")
        .replies::<v1::OrderAccepted>()
}

#[tokio::test(flavor = "current_thread")]
async fn v1_and_v2_requests_are_served_side_by_side() {
    let ca = MeshCa::generate("contracts").unwrap();
    let orders = orders(&ca).await;
    let new = client(&ca, "shop", &orders, shop_v2()).await;
    let old = client(&ca, "old-shop", &orders, shop_v1()).await;

    let order = PlaceOrder {
        order_id: "o-2".into(),
        items: vec!["book".into(), "pen".into()],
        gift: false,
        note: Some("leave at the door".into()),
    };
    let accepted: OrderAccepted = new.request("orders", &order, WAIT).await.unwrap();
    assert_eq!(
        accepted,
        OrderAccepted {
            order_id: "o-2".into(),
            items: 2
        }
    );

    // A v1 sender is answered by the v2 handler through the upcaster, and reads the v2
    // reply as its v1 reply (the unknown `items` field is ignored).
    let old_order = v1::PlaceOrder {
        order_id: "o-1".into(),
        item: "book".into(),
        gift: true,
    };
    let accepted: v1::OrderAccepted = old.request("orders", &old_order, WAIT).await.unwrap();
    assert_eq!(
        accepted,
        v1::OrderAccepted {
            order_id: "o-1".into()
        }
    );

    // A typed send resolves on the handler's ack, like the byte API's.
    let receipt = new.send("orders", &order).await.unwrap();
    assert_eq!(receipt.attempts, 1);

    let stats = orders.stats();
    assert_eq!((stats.handled, stats.upcast), (3, 1));
    assert_eq!((stats.refused_unknown, stats.refused_undecodable), (0, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn a_replaced_handler_serves_its_upcast_versions_too() {
    let ca = MeshCa::generate("contracts").unwrap();
    let orders = orders(&ca).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    orders
        .handle(move |order: PlaceOrder, msg: Message| {
            let _ = tx.send((order.order_id.clone(), msg.version()));
            async move {
                Ok(OrderAccepted {
                    order_id: order.order_id,
                    items: 0,
                })
            }
        })
        .unwrap();
    let old = client(&ca, "old-shop", &orders, shop_v1()).await;
    let order = v1::PlaceOrder {
        order_id: "o-7".into(),
        item: "cup".into(),
        gift: false,
    };
    old.send("orders", &order).await.unwrap();
    assert_eq!(rx.try_recv().unwrap(), ("o-7".to_owned(), 1));
    // In the background: the id at once, then the handler runs it, upcast as well.
    let later = v1::PlaceOrder {
        order_id: "o-8".into(),
        ..order
    };
    old.send_background("orders", &later).unwrap();
    let handled = timeout(WAIT, rx.recv()).await.unwrap();
    assert_eq!(handled, Some(("o-8".to_owned(), 1)));
    // One message type, one version: publishing it twice in one call is refused.
    let placed = OrderPlaced {
        order_id: "o".into(),
        items: vec![],
    };
    let err = orders.publish(&(placed.clone(), placed)).await.unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
}

/// The receiver's reason in a dead letter (after "<node> refused: ").
fn reason(letter: &shoal::DeadLetter) -> String {
    let (_, reason) = letter.last_failure.split_once(" refused: ").unwrap();
    reason.to_owned()
}

/// Sends a byte message to `orders` and returns why it was dead-lettered.
async fn refused(client: &Node, msg: Message) -> String {
    match client.send("orders", msg).await {
        Err(Error::DeadLettered(letter)) => {
            assert_eq!(letter.attempts, 1, "a permanent refusal is not retried");
            reason(&letter)
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_versions_and_bad_payloads_are_refused_for_good_with_the_reason() {
    let ca = MeshCa::generate("contracts").unwrap();
    let orders = orders(&ca).await;
    let client = start(&ca, "shop", Some(orders.node())).await;
    client.wait_for_instances("orders", 1, WAIT).await.unwrap();

    let v3 = Message::command("orders.PlaceOrder", r#"{"order_id":"o"}"#)
        .with_version(3)
        .with_content_type("application/json");
    let reason = refused(&client, v3).await;
    assert_eq!(
        reason,
        "service `orders` has no handler for orders.PlaceOrder v3 (it handles v1, v2)"
    );

    let truncated = Message::command("orders.PlaceOrder", r#"{"order_id":"o","items":["#)
        .with_version(2)
        .with_content_type("application/json");
    let reason = refused(&client, truncated).await;
    assert!(
        reason.starts_with("could not decode orders.PlaceOrder v2 (application/json): EOF"),
        "{reason}"
    );

    let missing = Message::command("orders.PlaceOrder", r#"{"items":[]}"#).with_version(2);
    let reason = refused(&client, missing).await;
    assert!(reason.contains("missing field `order_id`"), "{reason}");

    let garbage_cbor = Message::command("orders.PlaceOrder", &b"\xff\xff\x00"[..])
        .with_version(2)
        .with_content_type("application/cbor");
    let reason = refused(&client, garbage_cbor).await;
    assert!(
        reason.starts_with("could not decode orders.PlaceOrder v2 (application/cbor)"),
        "{reason}"
    );

    let text = Message::command("orders.PlaceOrder", "order o")
        .with_version(2)
        .with_content_type("text/plain");
    let reason = refused(&client, text).await;
    assert!(
        reason.contains("arrived as `text/plain`, which no codec reads"),
        "{reason}"
    );

    // The handler's own permanent error travels the same way.
    let empty =
        Message::command("orders.PlaceOrder", r#"{"order_id":"o","items":[]}"#).with_version(2);
    assert_eq!(refused(&client, empty).await, "an order needs items");

    let stats = orders.stats();
    assert_eq!(stats.refused_unknown, 1);
    assert_eq!(stats.refused_undecodable, 4);
    assert_eq!(stats.handled, 1);
    // Every refusal is in the sender's dead letters, with its reason.
    let letters = client.dead_letters();
    assert_eq!(letters.len(), 6);
    assert!(letters[0].last_failure.contains("orders.PlaceOrder v3"));
}

#[tokio::test(flavor = "current_thread")]
async fn the_reader_is_tolerant_and_decodes_by_the_envelopes_content_type() {
    let ca = MeshCa::generate("contracts").unwrap();
    let orders = orders(&ca).await;
    let client = start(&ca, "shop", Some(orders.node())).await;
    client.wait_for_instances("orders", 1, WAIT).await.unwrap();
    let typed = client.typed(shop_v2()).unwrap();

    // Unknown fields (from a newer sender) are ignored; missing optional ones default; a
    // message without a content type is read with the contract's codec (JSON).
    let newer = Message::command(
        "orders.PlaceOrder",
        r#"{"order_id":"o-9","items":["a"],"priority":"high","coupon":{"code":"X"}}"#,
    )
    .with_version(2);
    let reply = client.request("orders", newer, WAIT).await.unwrap();
    let accepted: OrderAccepted = typed.decode(&reply).unwrap();
    assert_eq!(
        accepted,
        OrderAccepted {
            order_id: "o-9".into(),
            items: 1
        }
    );

    // A CBOR sender is read as CBOR and answered in CBOR, whatever the receiver's default.
    let cbor = ServiceContract::new("shop", "1.0.0")
        .sends::<PlaceOrder>("orders")
        .replies::<OrderAccepted>()
        .codec(Codec::Cbor);
    let cbor = TypedNode::new(client.clone(), cbor).unwrap();
    let order = PlaceOrder {
        order_id: "o-c".into(),
        items: vec!["x".into(); 3],
        gift: true,
        note: None,
    };
    let msg = cbor.command("orders", &order).unwrap();
    assert_eq!(msg.content_type(), "application/cbor");
    assert_eq!((msg.name(), msg.version()), ("orders.PlaceOrder", 2));
    let accepted: OrderAccepted = cbor.request("orders", &order, WAIT).await.unwrap();
    assert_eq!(accepted.items, 3);
}

#[tokio::test(flavor = "current_thread")]
async fn both_versions_published_in_one_call_reach_each_subscriber_once() {
    let ca = MeshCa::generate("contracts").unwrap();
    let orders = orders(&ca).await;

    // An old subscriber (v1 only), and a new one (v2, with v1 upcast into the same handler).
    let (old_tx, mut old_rx) = mpsc::unbounded_channel();
    let billing = start(&ca, "billing", Some(orders.node())).await;
    let billing = billing
        .typed(
            ServiceContract::new("billing", "1.0.0").subscribes::<v1::OrderPlaced>("order.placed"),
        )
        .unwrap();
    billing
        .subscribe(move |event: v1::OrderPlaced, _msg: Message| {
            let _ = old_tx.send(event);
            async { Ok(()) }
        })
        .await
        .unwrap();
    let (new_tx, mut new_rx) = mpsc::unbounded_channel();
    let shipping = start(&ca, "shipping", Some(orders.node())).await;
    let shipping = shipping
        .typed(
            ServiceContract::new("shipping", "2.0.0")
                .subscribes::<OrderPlaced>("order.placed")
                .subscribes::<v1::OrderPlaced>("order.placed"),
        )
        .unwrap();
    let first = shipping
        .subscribe(move |event: OrderPlaced, msg: Message| {
            let _ = new_tx.send((event, msg.version()));
            async { Ok(()) }
        })
        .await
        .unwrap();
    shipping
        .upcast::<v1::OrderPlaced, OrderPlaced>()
        .await
        .unwrap();
    assert_eq!(first.pattern(), "order.placed");
    orders
        .node()
        .wait_for_subscribers("order.placed", 2, WAIT)
        .await
        .unwrap();

    let placed = OrderPlaced {
        order_id: "o-5".into(),
        items: vec!["lamp".into()],
    };
    let old_copy = v1::OrderPlaced::from(&placed);
    let receipt = orders
        .publish(&(placed.clone(), old_copy.clone()))
        .await
        .unwrap();
    assert_eq!(
        receipt.deliveries.len(),
        2,
        "one copy of the batch per group"
    );

    let got_old = timeout(WAIT, old_rx.recv()).await.unwrap().unwrap();
    assert_eq!(got_old, old_copy);
    let got_new = timeout(WAIT, new_rx.recv()).await.unwrap().unwrap();
    assert_eq!(got_new, (placed.clone(), 2));
    // Each handled exactly one of the two versions; the other was acknowledged unhandled.
    assert!(old_rx.try_recv().is_err() && new_rx.try_recv().is_err());
    assert_eq!(
        (billing.stats().handled, billing.stats().superseded),
        (1, 1)
    );
    assert_eq!(
        (shipping.stats().handled, shipping.stats().superseded),
        (1, 1)
    );

    // A v1 event alone (an old publisher) reaches the new subscriber through the upcaster.
    let old_orders = start(&ca, "orders", Some(shipping.node())).await;
    let old_orders = old_orders
        .typed(ServiceContract::new("orders", "1.0.0").publishes::<v1::OrderPlaced>("order.placed"))
        .unwrap();
    old_orders
        .node()
        .wait_for_subscribers("order.placed", 1, WAIT)
        .await
        .unwrap();
    let event = old_orders.event(&old_copy).unwrap().remove(0);
    assert_eq!(
        event.key(),
        Some("o-5"),
        "the key field is the partition key"
    );
    assert_eq!(
        event.header(shoal::contract::MESSAGE_HEADER),
        Some("orders.OrderPlaced")
    );
    old_orders.publish(&old_copy).await.unwrap();
    let (upcast, version) = timeout(WAIT, new_rx.recv()).await.unwrap().unwrap();
    assert_eq!((upcast, version), (placed.clone(), 1));
    assert_eq!(shipping.stats().upcast, 1);

    // In the background: the id at once, then the handler runs it, upcast as well.
    old_orders.publish_background(&old_copy).unwrap();
    let (upcast, version) = timeout(WAIT, new_rx.recv()).await.unwrap().unwrap();
    assert_eq!((upcast, version), (placed.clone(), 1));
    assert_eq!(shipping.stats().upcast, 2);
    // Both versions in the background: one batch, each subscriber handles its version.
    orders
        .publish_background(&(placed.clone(), old_copy.clone()))
        .unwrap();
    let got_old = timeout(WAIT, old_rx.recv()).await.unwrap().unwrap();
    assert_eq!(got_old, old_copy);
    let got_new = timeout(WAIT, new_rx.recv()).await.unwrap().unwrap();
    assert_eq!(got_new, (placed, 2));
}

#[tokio::test(flavor = "current_thread")]
async fn an_event_of_a_type_the_subscription_does_not_take_is_refused_by_name() {
    let ca = MeshCa::generate("contracts").unwrap();
    let publisher = start(&ca, "orders", None).await;
    let billing = start(&ca, "billing", Some(&publisher)).await;
    let billing = billing
        .typed(
            ServiceContract::new("billing", "1.0.0").subscribes::<v1::OrderPlaced>("order.placed"),
        )
        .unwrap();
    billing
        .subscribe(|_: v1::OrderPlaced, _: Message| async { Ok(()) })
        .await
        .unwrap();
    publisher
        .wait_for_subscribers("order.placed", 1, WAIT)
        .await
        .unwrap();

    // Without the header, the subscription's only type is assumed.
    let plain = Message::event("order.placed", r#"{"order_id":"o","item":"i"}"#);
    publisher.publish(plain).await.unwrap();
    let other =
        Message::event("order.placed", "{}").with_header("shoal-message", "orders.OrderCancelled");
    match publisher.publish(other).await {
        Err(Error::DeadLettered(letter)) => assert_eq!(
            reason(&letter),
            "subscriber `billing` of `order.placed` has no handler for orders.OrderCancelled v1 \
             (it takes orders.OrderPlaced)"
        ),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert_eq!(
        (billing.stats().handled, billing.stats().refused_unknown),
        (1, 1)
    );
}

#[test]
fn typed_calls_outside_the_contract_are_refused_before_anything_is_sent() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = MeshCa::generate("contracts").unwrap();
        let node = start(&ca, "orders", None).await;
        let err = node.typed(shop_v2()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "contract: the contract is for `shop` but the node is an instance of `orders`"
        );
        let typed = node
            .typed(
                ServiceContract::new("orders", "1.0.0")
                    .accepts::<v1::PlaceOrder>()
                    .replies::<v1::OrderAccepted>(),
            )
            .unwrap();
        let err = typed
            .handle(|_: PlaceOrder, _: Message| async { Ok(()) })
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`orders` accepts no orders.PlaceOrder v2"),
            "{err}"
        );
        let err = typed
            .handle(|_: v1::PlaceOrder, _: Message| async { Ok(()) })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "contract: the contract says orders.PlaceOrder v1 is answered with \
             orders.OrderAccepted v1, but the handler returns nothing"
        );
        let err = typed
            .upcast::<v1::PlaceOrder, PlaceOrder>()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("register the handler for orders.PlaceOrder v2"),
            "{err}"
        );
        let err = typed
            .send(
                "billing",
                &PlaceOrder {
                    order_id: "o".into(),
                    items: vec![],
                    gift: false,
                    note: None,
                },
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("sends no orders.PlaceOrder v2 to `billing`"),
            "{err}"
        );
        let err = typed
            .publish(&OrderPlaced {
                order_id: "o".into(),
                items: vec![],
            })
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("publishes no orders.OrderPlaced v2"),
            "{err}"
        );
        node.shutdown().await;
    });
}
