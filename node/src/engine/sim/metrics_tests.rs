//! Per-message metrics on the simulated network (`engine/metrics.rs`): what lost and
//! duplicated frames do to the series, and that nothing is recorded when metrics are off.

use std::time::Duration;

use super::{Faults, Handled, Sim};
use crate::engine::metrics::BUCKETS;

#[test]
fn lost_and_duplicated_frames_show_as_retries_and_duplicates_of_their_pair() {
    let mut sim = Sim::new(8);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    for node in [orders, billing] {
        sim.nodes[node].engine.enable_metrics();
    }
    sim.handle(billing, "charge", |_| {
        Handled::ok_after(Duration::from_millis(3))
    });
    let faults = Faults {
        loss: 0.1,
        duplicate: 0.3,
        ..Faults::default()
    };
    sim.connect_with(orders, billing, faults)
        .expect("connected");
    for i in 0..200 {
        let msg = sim.command("charge", format!("{i}"));
        sim.send(orders, "billing", msg);
        sim.run_for(Duration::from_micros(200));
    }
    assert!(sim.run_for(Duration::from_secs(60)));

    let sender = sim.nodes[orders].engine.metrics_snapshot();
    let totals = sim.nodes[orders].engine.stats();
    assert_eq!(sender.outbound.len(), 1);
    let (service, message, out) = &sender.outbound[0];
    assert_eq!((service.as_str(), message.as_str()), ("billing", "charge"));
    assert_eq!((out.sent, out.acked), (200, 200));
    assert!(out.retried > 0, "10 % loss makes retries");
    assert_eq!(out.retried, totals.retries);
    assert_eq!(out.latency.counts.iter().sum::<u64>(), 200);
    // No ack comes sooner than the handler's 3 ms.
    let below_3ms = BUCKETS
        .iter()
        .take_while(|b| **b < Duration::from_millis(3))
        .count();
    assert_eq!(out.latency.counts[..below_3ms].iter().sum::<u64>(), 0);

    let receiver = sim.nodes[billing].engine.metrics_snapshot();
    let totals = sim.nodes[billing].engine.stats();
    let (service, message, inb) = &receiver.inbound[0];
    assert_eq!((service.as_str(), message.as_str()), ("orders", "charge"));
    assert_eq!((inb.handled, inb.failed), (200, 0));
    assert!(inb.deduplicated > 0, "30 % duplication makes duplicates");
    assert_eq!(inb.deduplicated, totals.duplicates);
    // Every run took the handler's 3 ms: all in the 2.5 to 5 ms bucket.
    let bucket = BUCKETS.partition_point(|b| *b < Duration::from_millis(3));
    assert_eq!(inb.latency.counts[bucket], 200);
    assert_eq!(inb.latency.sum, Duration::from_millis(600));
    assert_eq!(receiver.connections, 1);
}

#[test]
fn off_by_default_records_nothing() {
    let mut sim = Sim::new(9);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    sim.handle(billing, "charge", |_| Handled::ok());
    sim.connect(orders, billing);
    let msg = sim.command("charge", "1");
    sim.send(orders, "billing", msg);
    assert!(sim.run_for(Duration::from_secs(1)));
    assert_eq!(sim.nodes[billing].engine.stats().handled, 1);
    for node in [orders, billing] {
        let snapshot = sim.nodes[node].engine.metrics_snapshot();
        assert!(snapshot.outbound.is_empty() && snapshot.inbound.is_empty());
        assert!(sim.nodes[node].engine.metrics.is_none());
    }
}
