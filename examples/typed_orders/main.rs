//! Typed contracts and a v1 → v2 evolution with both versions live.
//!
//! ```sh
//! cargo run -p shoal-examples --example typed-orders                  # the flow
//! cargo run -p shoal-examples --example typed-orders -- --print-spec  # its AsyncAPI document
//! ```
//!
//! Five services on loopback in one process: `orders` at release 2.0.0 (handles
//! `PlaceOrder` v2, and v1 upcast into the same handler; publishes `OrderPlaced` in both
//! versions), a v2 `shop` and a v1 `old-shop` placing orders, `billing` still on v1 events
//! and `shipping` on v2. Each order is handled once, each event once per subscriber, in the
//! version that subscriber reads.
//!
//! `asyncapi.json` beside this file is the document of release 2.0.0 (`--print-spec`), and
//! `asyncapi-1.0.0.json` that of the last release; the tests check that the first is up to
//! date and that `shoal spec diff asyncapi-1.0.0.json asyncapi.json` finds nothing breaking.

mod api;
#[cfg(test)]
mod tests;

use std::time::Duration;

use api::{Line, OrderAccepted, OrderPlaced, PlaceOrder, v1};
use clap::Parser;
use shoal::contract::{TypedNode, print_spec_if_asked};
use shoal::{MeshCa, Message, Node};
use tokio::sync::mpsc;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Bound on every wait of the example.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(about = "Shoal's typed-contracts example: orders v1 and v2 side by side")]
#[command(
    after_help = "--print-spec[=yaml]  Print the orders service's AsyncAPI document and exit"
)]
struct Args {
    /// Orders each shop places.
    #[arg(long, default_value_t = 3)]
    orders: u32,
}

fn main() -> std::process::ExitCode {
    // First thing: a service binary prints its own document when asked.
    match print_spec_if_asked(&api::orders()) {
        Ok(true) => return std::process::ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("typed-orders: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(run(args.orders)));
    match result {
        Ok(summary) => {
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("typed-orders: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What each service saw.
#[derive(Debug)]
struct Summary {
    orders: shoal::contract::ContractStats,
    billing: Vec<v1::OrderPlaced>,
    shipping: Vec<OrderPlaced>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "done: orders handled {} (of which {} upcast from v1); billing got {} v1 events, \
             shipping {} v2 events, each once",
            self.orders.handled,
            self.orders.upcast,
            self.billing.len(),
            self.shipping.len()
        )
    }
}

async fn node(ca: &MeshCa, service: &str, peer: Option<&Node>) -> Result<Node> {
    Ok(Node::builder(service)
        .identity(ca.issue(service)?)
        .trust(ca.clone())
        .peers(peer.map(Node::local_addr))
        .start()
        .await?)
}

/// The whole flow: `count` orders from each shop.
async fn run(count: u32) -> Result<Summary> {
    let ca = MeshCa::generate("typed-orders example")?;

    // orders, release 2.0.0: one handler for v2; v1 upcast into it. Each accepted order is
    // published in both versions in one call (the deprecation window of v1).
    let orders = node(&ca, "orders", None).await?.typed(api::orders())?;
    let publisher = orders.clone();
    orders.handle(move |order: PlaceOrder, msg: Message| {
        let publisher = publisher.clone();
        async move {
            println!(
                "orders: {} for {} ({} line(s)), arrived as v{}",
                order.order_id,
                order.customer,
                order.lines.len(),
                msg.version()
            );
            let items = order.lines.iter().map(|l| l.quantity).sum();
            let placed = OrderPlaced {
                order_id: order.order_id.clone(),
                customer: order.customer,
                lines: order.lines,
            };
            let old = v1::OrderPlaced::from(&placed);
            publisher
                .publish(&(placed, old))
                .await
                .map_err(|e| shoal::HandlerError::retryable(e.to_string()))?;
            Ok(OrderAccepted {
                order_id: order.order_id,
                items,
            })
        }
    })?;
    orders.upcast::<v1::PlaceOrder, PlaceOrder>().await?;

    // The subscribers: billing on v1, shipping on v2 (v1 events upcast).
    let (billing_tx, mut billing_rx) = mpsc::unbounded_channel();
    let billing = node(&ca, "billing", Some(orders.node()))
        .await?
        .typed(api::billing())?;
    billing
        .subscribe(move |event: v1::OrderPlaced, _: Message| {
            let _ = billing_tx.send(event);
            async { Ok(()) }
        })
        .await?;
    let (shipping_tx, mut shipping_rx) = mpsc::unbounded_channel();
    let shipping = node(&ca, "shipping", Some(orders.node()))
        .await?
        .typed(api::shipping())?;
    shipping
        .subscribe(move |event: OrderPlaced, _: Message| {
            let _ = shipping_tx.send(event);
            async { Ok(()) }
        })
        .await?;
    shipping.upcast::<v1::OrderPlaced, OrderPlaced>().await?;
    orders
        .node()
        .wait_for_subscribers("order.placed", 2, WAIT)
        .await?;

    // The shops: one on release 2, one still on release 1.
    let shop = client(&ca, "shop", &orders, api::shop()).await?;
    let old_shop = client(&ca, "old-shop", &orders, api::old_shop()).await?;
    for n in 1..=count {
        let order = PlaceOrder {
            order_id: format!("new-{n}"),
            customer: format!("customer-{}", n % 2),
            lines: vec![Line {
                item: "lamp".into(),
                quantity: n,
            }],
            note: None,
        };
        let accepted: OrderAccepted = shop.request("orders", &order, WAIT).await?;
        println!(
            "shop (v2): {} accepted, {} item(s)",
            accepted.order_id, accepted.items
        );
        let old_order = v1::PlaceOrder {
            order_id: format!("old-{n}"),
            item: "chair".into(),
            quantity: 1,
        };
        let accepted: v1::OrderAccepted = old_shop.request("orders", &old_order, WAIT).await?;
        println!("old-shop (v1): {} accepted", accepted.order_id);
    }

    // Every order reached each subscriber once, in the version it reads.
    let expected = 2 * count as usize;
    let mut summary = Summary {
        orders: orders.stats(),
        billing: Vec::new(),
        shipping: Vec::new(),
    };
    while summary.billing.len() < expected {
        let event = tokio::time::timeout(WAIT, billing_rx.recv())
            .await?
            .ok_or("billing stopped")?;
        summary.billing.push(event);
    }
    while summary.shipping.len() < expected {
        let event = tokio::time::timeout(WAIT, shipping_rx.recv())
            .await?
            .ok_or("shipping stopped")?;
        summary.shipping.push(event);
    }
    println!(
        "billing (v1 events) saw {}; shipping (v2 events) saw {}",
        summary.billing.len(),
        summary.shipping.len()
    );
    for typed in [&shop, &old_shop, &billing, &shipping, &orders] {
        typed.node().shutdown().await;
    }
    Ok(summary)
}

async fn client(
    ca: &MeshCa,
    service: &str,
    orders: &TypedNode,
    contract: shoal::contract::ServiceContract,
) -> Result<TypedNode> {
    let node = node(ca, service, Some(orders.node())).await?;
    node.wait_for_instances("orders", 1, WAIT).await?;
    Ok(node.typed(contract)?)
}
