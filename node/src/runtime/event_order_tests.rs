//! The node's events reach subscribers in the order the engine made them, whichever runtime
//! thread called into the engine.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::timeout;

use crate::{MeshCa, Node, NodeEvent};

/// Runtime threads calling into the engine at once.
const THREADS: u64 = 2;
/// Events each of them makes in a round: a round's events fit in the event channel (1,024),
/// so a receiver that reads them only at the round's end misses none.
const EVENTS_PER_THREAD: u64 = 500;
/// Rounds (each takes milliseconds): a race that shows in one round of five shows here.
const ROUNDS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_on_several_threads_reach_subscribers_in_the_engines_order() {
    let ca = MeshCa::generate("event order").unwrap();
    let node = Node::builder("events")
        .identity(ca.issue("events").unwrap())
        .trust(ca)
        .start()
        .await
        .unwrap();
    let mut events = node.events();
    let driver = Arc::clone(node.driver());
    // Numbered under the engine's lock: the number is the engine's order.
    let made = Arc::new(AtomicU64::new(0));
    let per_round = THREADS * EVENTS_PER_THREAD;
    for round in 0..ROUNDS {
        let callers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (driver, made) = (Arc::clone(&driver), Arc::clone(&made));
                tokio::spawn(async move {
                    for _ in 0..EVENTS_PER_THREAD {
                        driver.call(|engine, _| {
                            let n = made.fetch_add(1, Ordering::Relaxed);
                            engine.emit_for_test(NodeEvent::ProtocolError {
                                addr: "127.0.0.1:9".parse().unwrap(),
                                reason: n.to_string(),
                            });
                        });
                    }
                })
            })
            .collect();
        for caller in callers {
            timeout(Duration::from_secs(30), caller)
                .await
                .unwrap()
                .unwrap();
        }

        let mut received: Vec<u64> = Vec::new();
        while received.len() < per_round as usize {
            match timeout(Duration::from_secs(5), events.recv())
                .await
                .unwrap()
            {
                Ok(NodeEvent::ProtocolError { reason, .. }) => {
                    received.push(reason.parse().unwrap());
                }
                Ok(_) => {}
                Err(e) => panic!("the event channel failed: {e}"),
            }
        }
        let out_of_order = received.windows(2).filter(|w| w[0] > w[1]).count();
        let expected: Vec<u64> = (round * per_round..(round + 1) * per_round).collect();
        assert!(
            received == expected,
            "round {round}: {out_of_order} times an event reached the subscriber after one the \
             engine made later"
        );
    }
    node.shutdown().await;
}
