//! The order service's API, as code: its message types in release 1 (module `v1`, still
//! served) and release 2, and the contract of each service of the example.
//!
//! Release 2 changed `PlaceOrder` incompatibly (an order has lines, not one item): a new
//! major version of the same message name. Release 2.0.0 of `orders` serves both: v2 with
//! its handler, v1 upcast into it. It publishes `OrderPlaced` in both versions during the
//! deprecation window, so v1 subscribers keep working.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal::contract::ServiceContract;

/// Release 1 of the API. Old senders and subscribers are built with these.
pub(crate) mod v1 {
    use super::*;

    /// Places an order of one item.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
    #[shoal(name = "orders.PlaceOrder", version = 1, kind = "command")]
    pub(crate) struct PlaceOrder {
        pub(crate) order_id: String,
        pub(crate) item: String,
        pub(crate) quantity: u32,
    }

    /// The order was accepted.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
    #[shoal(name = "orders.OrderAccepted", version = 1, kind = "reply")]
    pub(crate) struct OrderAccepted {
        pub(crate) order_id: String,
    }

    /// An order was placed.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
    #[shoal(
        name = "orders.OrderPlaced",
        version = 1,
        kind = "event",
        key = "order_id"
    )]
    pub(crate) struct OrderPlaced {
        pub(crate) order_id: String,
        pub(crate) item: String,
        pub(crate) quantity: u32,
    }
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct Line {
    pub(crate) item: String,
    pub(crate) quantity: u32,
}

/// Places an order for a customer, with one or more lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(
    name = "orders.PlaceOrder",
    version = 2,
    kind = "command",
    key = "customer"
)]
pub(crate) struct PlaceOrder {
    pub(crate) order_id: String,
    /// Orders of one customer are handled in order.
    pub(crate) customer: String,
    pub(crate) lines: Vec<Line>,
    /// Added in 2.0 as optional: senders may leave it out.
    #[serde(default)]
    pub(crate) note: Option<String>,
}

/// The order was accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(name = "orders.OrderAccepted", version = 2, kind = "reply")]
pub(crate) struct OrderAccepted {
    pub(crate) order_id: String,
    /// Added in 2.0; v1 requesters ignore it.
    pub(crate) items: u32,
}

/// An order was placed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(
    name = "orders.OrderPlaced",
    version = 2,
    kind = "event",
    key = "order_id"
)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: String,
    pub(crate) customer: String,
    pub(crate) lines: Vec<Line>,
}

/// The upcaster: a v1 order is an order of one line, for a customer we do not know.
impl From<v1::PlaceOrder> for PlaceOrder {
    fn from(old: v1::PlaceOrder) -> Self {
        Self {
            order_id: old.order_id,
            customer: "unknown".into(),
            lines: vec![Line {
                item: old.item,
                quantity: old.quantity,
            }],
            note: None,
        }
    }
}

/// Upcasting old events (from a publisher not yet on 2.0).
impl From<v1::OrderPlaced> for OrderPlaced {
    fn from(old: v1::OrderPlaced) -> Self {
        Self {
            order_id: old.order_id,
            customer: "unknown".into(),
            lines: vec![Line {
                item: old.item,
                quantity: old.quantity,
            }],
        }
    }
}

/// What v1 subscribers get during the deprecation window: the first line.
impl From<&OrderPlaced> for v1::OrderPlaced {
    fn from(new: &OrderPlaced) -> Self {
        let first = new.lines.first();
        Self {
            order_id: new.order_id.clone(),
            item: first.map(|l| l.item.clone()).unwrap_or_default(),
            quantity: first.map_or(0, |l| l.quantity),
        }
    }
}

/// The order service, release 2.0.0: the API `--print-spec` prints.
pub(crate) fn orders() -> ServiceContract {
    ServiceContract::new("orders", "2.0.0")
        .description("Takes orders and tells the world about them.")
        .accepts::<PlaceOrder>()
        .replies::<OrderAccepted>()
        .accepts::<v1::PlaceOrder>()
        .replies::<v1::OrderAccepted>()
        .deprecated()
        .publishes::<OrderPlaced>("order.placed")
        .publishes::<v1::OrderPlaced>("order.placed")
        .deprecated()
}

/// A shop built against release 2.
pub(crate) fn shop() -> ServiceContract {
    ServiceContract::new("shop", "2.0.0")
        .sends::<PlaceOrder>("orders")
        .replies::<OrderAccepted>()
}

/// A shop still built against release 1.
pub(crate) fn old_shop() -> ServiceContract {
    ServiceContract::new("old-shop", "1.0.0")
        .sends::<v1::PlaceOrder>("orders")
        .replies::<v1::OrderAccepted>()
}

/// Billing still reads release 1 events.
pub(crate) fn billing() -> ServiceContract {
    ServiceContract::new("billing", "1.0.0").subscribes::<v1::OrderPlaced>("order.placed")
}

/// Shipping reads release 2 events, and release 1 ones upcast.
pub(crate) fn shipping() -> ServiceContract {
    ServiceContract::new("shipping", "2.0.0")
        .subscribes::<OrderPlaced>("order.placed")
        .subscribes::<v1::OrderPlaced>("order.placed")
}
