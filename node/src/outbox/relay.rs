//! The relay: delivers outbox rows through the node's normal delivery path and removes them
//! once acknowledged (the polling publisher, woken at once by commits made through Shoal).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::store::{Destination, OutboxRow, OutboxStore};
use crate::{Error, WeakNode};

/// Rows handed to the delivery path at once.
const WINDOW: usize = 256;

/// Runs until `stop`: reads pending rows in order, delivers them (in row order, so rows with
/// one partition key keep their order), and records each outcome in `store`.
pub(crate) async fn run(
    node: WeakNode,
    store: Arc<dyn OutboxStore>,
    poll: Duration,
    stop: CancellationToken,
) {
    let wake = store.notifier();
    let Some(mut changes) = node.upgrade().map(|n| n.shared().registry.watch()) else {
        return;
    };
    let mut after = 0_i64;
    let mut in_flight: HashSet<i64> = HashSet::new();
    let mut deliveries = FuturesUnordered::new();
    loop {
        let free = WINDOW.saturating_sub(in_flight.len());
        let rows = match store.pending(after, free) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("outbox relay cannot read pending rows: {e}");
                Vec::new()
            }
        };
        for row in rows {
            after = after.max(row.seq);
            if !in_flight.insert(row.seq) {
                continue;
            }
            let Some(delivery) = start(&node, row) else {
                return; // the node is gone
            };
            deliveries.push(delivery);
        }
        tokio::select! {
            Some((seq, result)) = deliveries.next(), if !deliveries.is_empty() => {
                in_flight.remove(&seq);
                let recorded = match result {
                    Ok(()) => store.delivered(&[seq]),
                    Err(Error::DeadLettered(letter)) => store.dead(seq, &letter.last_failure),
                    Err(Error::ShuttingDown) => return,
                    // Anything else (no subscriber yet, a copy dropped because its audience
                    // left): the row stays, and is read again at the next poll or change of
                    // peers.
                    Err(e) => {
                        tracing::debug!(seq, "outbox row not delivered, kept: {e}");
                        Ok(())
                    }
                };
                if let Err(e) = recorded {
                    tracing::warn!(seq, "outbox relay cannot record an outcome: {e}");
                    after = after.min(seq - 1);
                }
            }
            () = wake.notified() => {}
            // Rows kept for later, written by other processes, or left unsent by a crash lie
            // below the cursor: start over when idle, at each poll and when peers change.
            () = tokio::time::sleep(poll) => {
                if in_flight.is_empty() {
                    after = 0;
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                if in_flight.is_empty() {
                    after = 0;
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

type Outcome = (i64, Result<(), Error>);

/// Starts delivering one row; `None` once the node is gone.
fn start(node: &WeakNode, row: OutboxRow) -> Option<Pin<Box<dyn Future<Output = Outcome> + Send>>> {
    let node = node.upgrade()?;
    let seq = row.seq;
    Some(match row.destination {
        Destination::Service(service) => {
            let send = node.send(&service, row.message);
            Box::pin(async move { (seq, send.await.map(|_| ())) })
        }
        Destination::Publish => {
            let publish = node.publish(row.message);
            Box::pin(async move {
                // Store and forward: an event nobody subscribes to yet stays in the outbox.
                let result = publish.await.and_then(|receipt| {
                    if receipt.deliveries.is_empty() {
                        Err(Error::AudienceGone("no subscriber yet".into()))
                    } else {
                        Ok(())
                    }
                });
                (seq, result)
            })
        }
    })
}
