//! A subscriber that joins the channel after events went on it: under a policy that
//! restricts subscriptions the channel changes its key first (the joiner gets only the new
//! one, and cannot open what was sealed before it came); under an open policy it does not.

use std::sync::Arc;

use super::super::multicast::clean;
use super::{Handled, MS, Sim};
use crate::config::Config;
use crate::policy::Policy;

/// The channel's rekeys when a third node subscribes after ten events went to the second.
fn rekeys_on_a_late_join(policy: Option<Policy>) -> u64 {
    let config = || Config {
        policy: policy.clone().map_or_else(Default::default, Arc::new),
        ..Config::default()
    };
    let mut sim = Sim::new(5);
    let publisher = sim.lan_node_with("orders", clean(), config());
    let early = sim.lan_node_with("billing", clean(), config());
    sim.connect(publisher, early);
    sim.subscribe(early, "order.*", Some("billing"), |_| Handled::ok());
    sim.run_for(5 * MS);
    for i in 0..10 {
        let event = sim.event("order.created", format!("{i}"));
        sim.publish_event(publisher, event);
    }
    sim.run_for(20 * MS);
    let rekeys = |sim: &Sim| sim.nodes[publisher].engine.channel_stats().rekeys;
    let before = rekeys(&sim);
    let late = sim.lan_node_with("audit", clean(), config());
    sim.connect(publisher, late);
    sim.subscribe(late, "order.*", Some("audit"), |_| Handled::ok());
    sim.run_for(20 * MS);
    rekeys(&sim) - before
}

#[test]
fn a_late_joiner_gets_a_new_key_only_where_a_policy_restricts_subscriptions() {
    let restricted = Policy::builder()
        .subscribe("billing", ["order.*"])
        .subscribe("audit", ["order.*"])
        .build()
        .expect("a valid policy");
    assert_eq!(rekeys_on_a_late_join(Some(restricted)), 1);
    assert_eq!(rekeys_on_a_late_join(None), 0);
}
