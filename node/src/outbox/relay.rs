//! The relay: delivers outbox rows through the node's normal delivery path and removes them
//! once acknowledged (the polling publisher, woken at once by commits made through Shoal).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::store::{Destination, OutboxRow, OutboxStore};
use crate::{Error, PublishOptions, RetryPolicy, SendOptions, WeakNode};

/// How the relay works; see [`crate::NodeBuilder::outbox`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RelayOptions {
    /// How often the relay looks for rows it was not woken for (written by other processes,
    /// left by a crash, kept for later). Default 1 s.
    pub poll: Duration,
    /// How long a row keeps being retried, and waits for a receiver, before it is marked
    /// dead. Default 24 hours.
    pub keep_trying: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            keep_trying: Duration::from_secs(24 * 3600),
        }
    }
}

impl RelayOptions {
    /// Options with this poll interval.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Options with this retry span.
    pub fn keep_trying(mut self, span: Duration) -> Self {
        self.keep_trying = span;
        self
    }
}

/// Rows handed to the delivery path at once.
const WINDOW: usize = 256;

/// A destination and partition key: rows sharing one go one at a time, in row order.
type KeySlot = (String, String);

fn key_slot(row: &OutboxRow) -> Option<KeySlot> {
    let key = row.message.key()?;
    Some((row.destination.to_column(), key.to_owned()))
}

/// Runs until `stop`: reads pending rows in order, delivers them, and records each outcome in
/// `store`. Rows with a partition key go one at a time per destination and key, the next only
/// after the previous one left the outbox (delivered or dead): a row kept for later (no
/// subscriber yet) holds back the later rows of its key until it goes.
pub(crate) async fn run(
    node: WeakNode,
    store: Arc<dyn OutboxStore>,
    options: RelayOptions,
    stop: CancellationToken,
) {
    let poll = options.poll;
    let wake = store.notifier();
    let Some(mut changes) = node.upgrade().map(|n| n.shared().registry.watch()) else {
        return;
    };
    let mut after = 0_i64;
    let mut in_flight: HashMap<i64, Option<KeySlot>> = HashMap::new();
    // Keys with a row in flight, and keys whose earliest row was kept for later.
    let mut busy: HashSet<KeySlot> = HashSet::new();
    let mut blocked: HashSet<KeySlot> = HashSet::new();
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
        // The cursor stops before the first row held back, so it is read again later.
        let mut first_held: Option<i64> = None;
        let mut last = after;
        for row in rows {
            last = last.max(row.seq);
            if in_flight.contains_key(&row.seq) {
                continue;
            }
            let slot = key_slot(&row);
            if let Some(slot) = &slot {
                if busy.contains(slot) || blocked.contains(slot) {
                    first_held.get_or_insert(row.seq);
                    continue;
                }
                busy.insert(slot.clone());
            }
            in_flight.insert(row.seq, slot);
            let Some(delivery) = start(&node, row, options.keep_trying) else {
                return; // the node is gone
            };
            deliveries.push(delivery);
        }
        after = first_held.map_or(last, |seq| seq - 1);
        tokio::select! {
            Some((seq, result)) = deliveries.next(), if !deliveries.is_empty() => {
                let slot = in_flight.remove(&seq).flatten();
                if let Some(slot) = &slot {
                    busy.remove(slot);
                }
                let recorded = match result {
                    Ok(()) => store.delivered(&[seq]),
                    Err(Error::DeadLettered(letter)) => store.dead(seq, &letter.last_failure),
                    Err(Error::ShuttingDown) => return,
                    // Anything else (no subscriber yet, a copy dropped because its audience
                    // left): the row stays, and is read again at the next poll or change of
                    // peers; the later rows of its key wait for it.
                    Err(e) => {
                        tracing::debug!(seq, "outbox row not delivered, kept: {e}");
                        if let Some(slot) = slot {
                            blocked.insert(slot);
                        }
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
            // (Rows in flight are skipped when read again.)
            () = tokio::time::sleep(poll) => {
                after = 0;
                blocked.clear();
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                after = 0;
                blocked.clear();
            }
            () = stop.cancelled() => return,
        }
    }
}

type Outcome = (i64, Result<(), Error>);

/// Starts delivering one row; `None` once the node is gone.
fn start(
    node: &WeakNode,
    row: OutboxRow,
    keep_trying: Duration,
) -> Option<Pin<Box<dyn Future<Output = Outcome> + Send>>> {
    let node = node.upgrade()?;
    let seq = row.seq;
    // Store and forward: keep trying (and waiting for a receiver) far longer than a live call.
    let policy = RetryPolicy {
        max_attempts: u32::MAX,
        deadline: keep_trying,
        ..RetryPolicy::default()
    };
    Some(match row.destination {
        Destination::Service(service) => {
            let send = node.send_with(&service, row.message, SendOptions::with_retry(policy));
            Box::pin(async move { (seq, send.await.map(|_| ())) })
        }
        Destination::Publish => {
            let options = PublishOptions::default()
                .with_retry(policy)
                .hold_for(keep_trying);
            let publish = node.publish_with(row.message, options);
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
