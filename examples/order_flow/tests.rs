//! The order flow's invoice service tested as a black box with Shoal's test kit
//! (`shoal::testing`): orders go in as `order.created` events from the probe, and only what
//! the service publishes (`invoice.created`) is checked, under duplicates, a lost ack and a
//! crash. Virtual time: the 5 s ack timeout and the restart cost no real time.

#![allow(clippy::unwrap_used)] // tests: a failed set-up step should panic, with its error

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal::testing::{Expect, Fault, TestMesh};
use shoal::{Error, Message, Node};

use crate::services::{ORDER_CREATED, start_handling};

/// One invoice instance of the order flow, on the mesh's database (a restart opens it again).
async fn invoice(mesh: &TestMesh, instance: &str) -> Node {
    let db = mesh.dir().join("invoice.db");
    let builder = mesh.builder("invoice").unwrap();
    let node = start_handling(builder, &db, "invoice", instance, true)
        .await
        .unwrap();
    mesh.wait_for("invoice").await.unwrap();
    node
}

fn order(id: u64) -> Message {
    Message::event(ORDER_CREATED, id.to_string()).with_key(format!("order-{id}"))
}

fn invoiced(id: u64) -> Expect {
    Expect::published("invoice.created").payload(id.to_string())
}

async fn mesh() -> TestMesh {
    let mesh = TestMesh::start().await.unwrap();
    mesh.subscribe("invoice.created").await.unwrap();
    mesh
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_duplicated_order_created_invoices_once() -> Result<(), Error> {
    let mesh = mesh().await;
    let invoice = invoice(&mesh, "invoice-a").await;
    let twice = mesh.inject(Fault::duplicate(1.0).to("invoice").channel(ORDER_CREATED));

    mesh.publish(order(1)).await?;
    mesh.expect(invoiced(1)).await?;
    mesh.wait_idle().await?;
    mesh.expect_none(Expect::published("invoice.created"))
        .await?;
    // The handler did run for the copy: the inbox, not the dedup window, kept it to one.
    assert_eq!(mesh.hits(twice), 1);
    assert_eq!(invoice.stats().handled, 2);
    Ok(())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dropped_ack_leads_to_one_invoice_and_a_retry() -> Result<(), Error> {
    let mesh = mesh().await;
    let _invoice = invoice(&mesh, "invoice-a").await;
    let lost = Fault::drop_acks(1.0).to("probe").from("invoice");
    mesh.inject(lost.channel(ORDER_CREATED).times(1));

    let receipt = mesh.publish(order(1)).await?;
    mesh.expect(invoiced(1)).await?;
    mesh.wait_idle().await?;
    mesh.expect_none(Expect::published("invoice.created"))
        .await?;
    assert_eq!(receipt.deliveries[0].attempts, 2, "{receipt:?}");
    assert_eq!(mesh.probe().stats().retries, 1);
    Ok(())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_invoice_instance_killed_mid_stream_loses_nothing() -> Result<(), Error> {
    const ORDERS: u64 = 40;
    let mesh = mesh().await;
    let first = invoice(&mesh, "invoice-a").await;
    mesh.probe()
        .wait_for_subscribers(ORDER_CREATED, 1, Duration::from_secs(5))
        .await?;
    // Half the orders take 20 ms to arrive, so some are on their way when the instance dies.
    mesh.inject(
        Fault::delay(Duration::from_millis(20))
            .with_probability(0.5)
            .to("invoice"),
    );

    // All orders at once, as the orders service's relay sends them.
    let mut orders = tokio::task::JoinSet::new();
    for id in 0..ORDERS {
        let probe = mesh.probe().clone();
        orders.spawn(async move { probe.publish(order(id)).await });
    }
    let seen = mesh.expect(Expect::published("invoice.created")).await?;
    mesh.kill(&first).await?;
    // The restart opens the same database: its inbox, and its outbox with invoices committed
    // but not yet published when the first instance died.
    let _second = invoice(&mesh, "invoice-b").await;
    while let Some(published) = orders.join_next().await {
        published.expect("a publishing task")?;
    }

    mesh.wait_idle().await?;
    let first_invoiced: u64 = String::from_utf8_lossy(seen.message.payload())
        .parse()
        .unwrap();
    for id in (0..ORDERS).filter(|id| *id != first_invoiced) {
        mesh.expect(invoiced(id)).await?;
    }
    mesh.expect_none(Expect::published("invoice.created"))
        .await?;
    // One invoice per order: a relay's resend after the crash would carry the same id.
    let mut ids: BTreeMap<String, BTreeSet<shoal::MessageId>> = BTreeMap::new();
    for r in mesh.recorded() {
        let order = String::from_utf8_lossy(r.message.payload()).into_owned();
        ids.entry(order).or_default().insert(r.message.id());
    }
    assert_eq!(ids.len() as u64, ORDERS);
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    // The crash did land mid-stream: some orders went to the second instance.
    assert!(mesh.probe().stats().retries > 0);
    Ok(())
}
