//! The message types of the contract tests: the order service's API in its release 1 (v1)
//! and release 2 (v2), as two services would compile them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shoal::contract::ServiceContract;

/// Release 2 of the order service: v2 and (deprecated) v1 of PlaceOrder, both versions of
/// OrderPlaced published.
pub(crate) fn orders_contract() -> ServiceContract {
    ServiceContract::new("orders", "2.0.0")
        .description("Takes orders.")
        .accepts::<PlaceOrder>()
        .replies::<OrderAccepted>()
        .accepts::<v1::PlaceOrder>()
        .replies::<v1::OrderAccepted>()
        .deprecated()
        .publishes::<OrderPlaced>("order.placed")
        .publishes::<v1::OrderPlaced>("order.placed")
        .deprecated()
}

/// Release 1 of the order API, as v1 senders and subscribers still compile it.
pub(crate) mod v1 {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
    #[shoal(name = "orders.PlaceOrder", version = 1, kind = "command")]
    pub(crate) struct PlaceOrder {
        pub(crate) order_id: String,
        pub(crate) item: String,
        #[serde(default)]
        pub(crate) gift: bool,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
    #[shoal(name = "orders.OrderAccepted", version = 1, kind = "reply")]
    pub(crate) struct OrderAccepted {
        pub(crate) order_id: String,
    }

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
    }
}

/// Release 2: an order has several items (a breaking change, so a new major version) and
/// an optional note (additive).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(name = "orders.PlaceOrder", version = 2, kind = "command")]
pub(crate) struct PlaceOrder {
    pub(crate) order_id: String,
    pub(crate) items: Vec<String>,
    #[serde(default)]
    pub(crate) gift: bool,
    #[serde(default)]
    pub(crate) note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(name = "orders.OrderAccepted", version = 2, kind = "reply")]
pub(crate) struct OrderAccepted {
    pub(crate) order_id: String,
    #[serde(default)]
    pub(crate) items: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, shoal::Contract)]
#[shoal(
    name = "orders.OrderPlaced",
    version = 2,
    kind = "event",
    key = "order_id"
)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: String,
    pub(crate) items: Vec<String>,
}

impl From<v1::PlaceOrder> for PlaceOrder {
    fn from(old: v1::PlaceOrder) -> Self {
        Self {
            order_id: old.order_id,
            items: vec![old.item],
            gift: old.gift,
            note: None,
        }
    }
}

impl From<v1::OrderPlaced> for OrderPlaced {
    fn from(old: v1::OrderPlaced) -> Self {
        Self {
            order_id: old.order_id,
            items: vec![old.item],
        }
    }
}

/// What v1 subscribers get during the deprecation window.
impl From<&OrderPlaced> for v1::OrderPlaced {
    fn from(new: &OrderPlaced) -> Self {
        Self {
            order_id: new.order_id.clone(),
            item: new.items.first().cloned().unwrap_or_default(),
        }
    }
}
