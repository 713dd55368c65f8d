//! A handler's error longer than a nack's reason may be ([`shoal_proto::Limits`]'s
//! `max_reason_len`) still reaches the sender, cut: its dead letter says why.

#![cfg(test)]

use std::time::Duration;

use super::{Handled, Sim};
use crate::config::Config;
use crate::{Error, HandlerError};

#[test]
fn a_handler_error_longer_than_a_reason_reaches_the_sender_cut() {
    let mut sim = Sim::new(9);
    let (orders, billing) = (sim.node("orders"), sim.node("billing"));
    let trace = "at frame 42 in charge.rs\n".repeat(200);
    sim.handle(billing, "charge", move |_| {
        Handled::fail(HandlerError::permanent(trace.clone()))
    });
    sim.connect(orders, billing);
    let msg = sim.command("charge", "x");
    let op = sim.send(orders, "billing", msg);
    assert!(sim.run_for(Duration::from_secs(1)));
    let limit = Config::default().limits.max_reason_len;
    match sim.result(orders, op) {
        Some(Err(Error::DeadLettered(letter))) => {
            assert_eq!(letter.attempts, 1, "{letter}");
            assert!(letter.last_failure.contains("at frame 42"), "{letter}");
            assert!(letter.last_failure.len() <= limit + 64, "{letter}");
            assert!(letter.last_failure.ends_with('…'), "{letter}");
        }
        other => panic!("not dead-lettered: {other:?}"),
    }
}
