//! Sends that go after the call that asked for them keep the trace of that call: the outbox
//! relay's send continues the trace of the enqueue, and a typed client's send and request
//! read the trace context (and start) at the call, as `Node`'s do.
#![allow(clippy::unwrap_used)]

#[cfg(feature = "contracts")]
#[allow(dead_code)]
#[path = "contracts/types.rs"]
mod types;

use std::time::Duration;

use shoal::{MeshCa, Message, Node, TraceContext};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// The trace the caller works in, as an HTTP request would have brought it.
const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn builder(ca: &MeshCa, service: &str, peer: Option<&Node>) -> shoal::NodeBuilder {
    Node::builder(service)
        .identity(ca.issue(service).unwrap())
        .trust(ca.clone())
        .peers(peer.map(Node::local_addr))
}

#[cfg(feature = "outbox")]
#[tokio::test(flavor = "current_thread")]
async fn an_outbox_message_continues_the_trace_of_its_enqueue() {
    use std::sync::Arc;

    use shoal::outbox::{Destination, RelayOptions, SqliteOutbox};

    let ca = MeshCa::generate("traces").unwrap();
    let stock = builder(&ca, "stock", None).start().await.unwrap();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    stock.handle("reserve", move |msg: Message| {
        let _ = seen_tx.send(msg.header("traceparent").map(str::to_owned));
        async { Ok(()) }
    });
    let dir = std::env::temp_dir().join(format!("shoal-traces-later-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outbox.db");
    let _ = std::fs::remove_file(&path);
    let outbox = Arc::new(SqliteOutbox::open(&path).unwrap());
    let shop = builder(&ca, "shop", Some(&stock))
        .outbox(outbox.clone(), RelayOptions::default())
        .start()
        .await
        .unwrap();
    let ctx = TraceContext::parse(INCOMING, None).unwrap();
    // Enqueued in the trace; the relay sends it later, from a task of its own.
    ctx.clone().in_scope(|| {
        let mut conn = outbox.connect().unwrap();
        let tx = conn.transaction().unwrap();
        outbox
            .enqueue(
                &tx,
                &Destination::Service("stock".into()),
                &Message::command("reserve", "book"),
            )
            .unwrap();
        outbox.commit(tx).unwrap();
    });
    let header = timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap();
    assert_eq!(header, Some(ctx.traceparent()));
    shop.shutdown().await;
    stock.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "contracts")]
#[tokio::test(flavor = "current_thread")]
async fn a_typed_send_and_request_start_at_the_call_in_its_trace() {
    use shoal::contract::ServiceContract;
    use types::{OrderAccepted, PlaceOrder, orders_contract};

    let ca = MeshCa::generate("traces").unwrap();
    let orders = builder(&ca, "orders", None).start().await.unwrap();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let typed_orders = orders.typed(orders_contract()).unwrap();
    typed_orders
        .handle(move |order: PlaceOrder, msg: Message| {
            let _ = seen_tx.send(msg.header("traceparent").map(str::to_owned));
            async move {
                Ok(OrderAccepted {
                    order_id: order.order_id,
                    items: order.items.len() as u32,
                })
            }
        })
        .unwrap();
    let shop = builder(&ca, "shop", Some(&orders)).start().await.unwrap();
    shop.wait_for_instances("orders", 1, WAIT).await.unwrap();
    let typed = shop
        .typed(
            ServiceContract::new("shop", "1.0.0")
                .sends::<PlaceOrder>("orders")
                .replies::<OrderAccepted>(),
        )
        .unwrap();
    let order = PlaceOrder {
        order_id: "o-1".into(),
        items: vec!["book".into()],
        gift: false,
        note: None,
    };
    let ctx = TraceContext::parse(INCOMING, None).unwrap();

    // The send's future is polled only after its handler ran: the call sent it, in the trace.
    let send = ctx.clone().in_scope(|| typed.send("orders", &order));
    let header = timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap();
    assert_eq!(header, Some(ctx.traceparent()));
    timeout(WAIT, send).await.unwrap().unwrap();

    let request = ctx
        .clone()
        .in_scope(|| typed.request::<PlaceOrder, OrderAccepted>("orders", &order, WAIT));
    let header = timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap();
    assert_eq!(header, Some(ctx.traceparent()));
    let accepted = timeout(WAIT, request).await.unwrap().unwrap();
    assert_eq!(accepted.items, 1);
    shop.shutdown().await;
    orders.shutdown().await;
}
