//! The golden corpus (`tests/corpus/`): every encoded v1 message there is still read by the
//! v2 code, over real nodes: dispatched on its version, decoded by its content type,
//! upcast into the v2 handler, with the value the table below expects.
#![cfg(feature = "contracts")]
#![allow(clippy::unwrap_used)]

mod contracts {
    pub(crate) mod types;
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use contracts::types::{OrderAccepted, OrderPlaced, PlaceOrder, orders_contract, v1};
use shoal::contract::MESSAGE_HEADER;
use shoal::{MeshCa, Message, Node};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// What the v2 handler must see for each corpus file.
fn expected() -> BTreeMap<&'static str, Expected> {
    let order = |id: &str, item: &str, gift| {
        Expected::Order(PlaceOrder {
            order_id: id.into(),
            items: vec![item.into()],
            gift,
            note: None,
        })
    };
    BTreeMap::from([
        (
            "orders.PlaceOrder.v1/minimal.json",
            order("c-1", "book", false),
        ),
        (
            "orders.PlaceOrder.v1/minimal.cbor",
            order("c-1", "book", false),
        ),
        ("orders.PlaceOrder.v1/gift.json", order("c-2", "pen", true)),
        ("orders.PlaceOrder.v1/gift.cbor", order("c-2", "pen", true)),
        (
            "orders.PlaceOrder.v1/from-a-newer-v1-sender.json",
            order("c-3", "mug", false),
        ),
        (
            "orders.PlaceOrder.v1/reordered-unicode-no-gift.json",
            order("c-4", "Füller ✒", false),
        ),
        ("orders.OrderPlaced.v1/placed.json", placed("e-1", "lamp")),
        ("orders.OrderPlaced.v1/placed.cbor", placed("e-1", "lamp")),
    ])
}

fn placed(id: &str, item: &str) -> Expected {
    Expected::Placed(OrderPlaced {
        order_id: id.into(),
        items: vec![item.into()],
    })
}

#[derive(Debug, PartialEq)]
enum Expected {
    Order(PlaceOrder),
    Placed(OrderPlaced),
}

/// Every corpus file, as `<dir>/<file>` and its bytes.
fn corpus() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let name = format!(
                "{}/{}",
                dir.file_name().unwrap().to_string_lossy(),
                file.file_name().unwrap().to_string_lossy()
            );
            files.push((name, file));
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "current_thread")]
async fn every_v1_message_of_the_corpus_is_read_by_the_v2_code() {
    let files = corpus();
    let expected = expected();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        expected.keys().copied().collect::<Vec<_>>(),
        "every corpus file needs an expected value, and every expected value its file"
    );

    let ca = MeshCa::generate("corpus").unwrap();
    let node = |service: &'static str| {
        Node::builder(service)
            .identity(ca.issue(service).unwrap())
            .trust(ca.clone())
    };
    // The v2 code: v2 handlers, v1 upcast into them.
    let v2 = node("orders").start().await.unwrap();
    let v2 = v2
        .typed(
            orders_contract()
                .subscribes::<OrderPlaced>("order.placed")
                .subscribes::<v1::OrderPlaced>("order.placed"),
        )
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let orders_tx = tx.clone();
    v2.handle(move |order: PlaceOrder, _: Message| {
        let id = order.order_id.clone();
        let _ = orders_tx.send(Expected::Order(order));
        async move {
            Ok(OrderAccepted {
                order_id: id,
                items: 1,
            })
        }
    })
    .unwrap();
    v2.upcast::<v1::PlaceOrder, PlaceOrder>().await.unwrap();
    v2.subscribe(move |event: OrderPlaced, _: Message| {
        let _ = tx.send(Expected::Placed(event));
        async { Ok(()) }
    })
    .await
    .unwrap();
    v2.upcast::<v1::OrderPlaced, OrderPlaced>().await.unwrap();

    // An old sender: the corpus bytes as they are, with v1's name, version and content type.
    let old = node("old-shop")
        .peer(v2.node().local_addr())
        .start()
        .await
        .unwrap();
    old.wait_for_subscribers("order.placed", 1, WAIT)
        .await
        .unwrap();
    for (name, path) in &files {
        let (dir, file) = name.split_once('/').unwrap();
        let (message, version) = dir.rsplit_once(".v").unwrap();
        let content_type = match file.rsplit_once('.').unwrap().1 {
            "json" => "application/json",
            "cbor" => "application/cbor",
            other => panic!("{name}: unknown extension {other}"),
        };
        let payload = std::fs::read(path).unwrap();
        let version: u16 = version.parse().unwrap();
        let result = if message == "orders.OrderPlaced" {
            let event = Message::event("order.placed", payload)
                .with_version(version)
                .with_content_type(content_type)
                .with_header(MESSAGE_HEADER, message);
            old.publish(event).await.map(drop)
        } else {
            let command = Message::command(message, payload)
                .with_version(version)
                .with_content_type(content_type);
            old.send("orders", command).await.map(drop)
        };
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(&got, &expected[name.as_str()], "{name}");
    }
    let stats = v2.stats();
    assert_eq!((stats.handled, stats.upcast), (8, 8));
}
