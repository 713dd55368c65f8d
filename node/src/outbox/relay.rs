//! The relay: delivers outbox rows through the node's normal delivery path and removes them
//! once acknowledged (the polling publisher, woken at once by commits made through Shoal).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;

use super::store::{Destination, OutboxError, OutboxRow, OutboxStore};
use crate::message::unix_ms;
use crate::{Error, PublishOptions, RetryPolicy, SendOptions, WeakNode};
use shoal_proto::Subscription;

/// How the relay works; see [`crate::NodeBuilder::outbox`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayOptions {
    /// How often the relay looks for rows it was not woken for (written by other processes,
    /// left by a crash, kept for later). Default 1 s.
    pub poll: Duration,
    /// How long a row keeps being retried, and waits for a receiver, before it is marked
    /// dead. Default 24 hours.
    pub keep_trying: Duration,
    /// How long a subscriber group, once seen, stays an audience of the outbox's events while
    /// it is away (its copies are held for it, up to `keep_trying`), even across restarts of
    /// this node: the relay records the groups it sees in the store. Default 7 days.
    pub remember_groups_for: Duration,
    /// Subscriber groups (`(pattern, group)`) that must get the outbox's events even before
    /// they were ever seen: a new deployment whose publisher starts first loses nothing.
    pub expected_groups: Vec<(String, String)>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            keep_trying: Duration::from_secs(24 * 3600),
            remember_groups_for: Duration::from_secs(7 * 24 * 3600),
            expected_groups: Vec::new(),
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

    /// Options with this memory of subscriber groups.
    pub fn remember_groups_for(mut self, span: Duration) -> Self {
        self.remember_groups_for = span;
        self
    }

    /// Options where the subscriber `group` of events matching `pattern` is an audience from
    /// the start, as if it had been seen (see [`RelayOptions::expected_groups`]).
    pub fn expect_group(mut self, pattern: impl Into<String>, group: impl Into<String>) -> Self {
        self.expected_groups.push((pattern.into(), group.into()));
        self
    }
}

/// Rows handed to the delivery path at once.
const WINDOW: usize = 256;

/// How long acknowledged rows wait before they are removed from the store, so one write
/// removes many, and the service's own transactions seldom wait for the relay's lock (with
/// SQLite, a writer that finds the lock taken sleeps at least a millisecond).
const RECORD_DELAY: Duration = Duration::from_millis(5);

/// A destination and partition key: rows sharing one go one at a time, in row order.
type KeySlot = (String, String);

fn key_slot(row: &OutboxRow) -> Option<KeySlot> {
    let key = row.message.key()?;
    Some((row.destination.to_column(), key.to_owned()))
}

/// Runs a store call on a blocking thread (SQLite may wait for another writer's lock), so the
/// node's runtime never stalls on the database. `None` if the call panicked.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn OutboxStore>,
    call: impl FnOnce(&dyn OutboxStore) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, OutboxError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .unwrap_or_else(|e| Err(OutboxError::Database(format!("store call failed: {e}"))))
}

/// The relay's bookkeeping: which rows are in flight and which keys may not go yet.
#[derive(Default)]
struct Relay {
    /// Rows are read from after this `seq`.
    after: i64,
    in_flight: HashMap<i64, Option<KeySlot>>,
    /// Keys with a row in flight.
    busy: HashSet<KeySlot>,
    /// Keys whose earliest row was kept for later: their later rows wait for it.
    blocked: HashSet<KeySlot>,
    /// The store must be read: woken by a commit, a poll, a change of peers, or a failure.
    read: bool,
    /// The last read filled every free slot: more rows may be waiting behind it.
    more: bool,
    /// The last read held rows back behind their key: read again when a keyed row finishes.
    held: bool,
    /// Rows acknowledged, and rows dead-lettered (with the reason), not yet recorded in the
    /// store: outcomes are written in batches, at most [`RECORD_DELAY`] after the first.
    delivered: Vec<i64>,
    dead: Vec<(i64, String)>,
    /// When the outcomes above must be written.
    record_at: Option<tokio::time::Instant>,
}

impl Relay {
    /// Rows below the cursor (kept for later, written by other processes, left unsent by a
    /// crash) are read again from the start; rows in flight are skipped then.
    fn rescan(&mut self) {
        self.after = 0;
        self.blocked.clear();
        self.read = true;
    }

    /// Whether to read the store now: when told to, or when half the window is free and the
    /// last read suggested more rows (not after every single ack: most such reads would find
    /// nothing new).
    fn should_read(&self, free: usize) -> bool {
        free > 0 && (self.read || (self.more && free >= WINDOW / 2))
    }

    /// Whether the row's outcome is known but not yet written (it must not go again).
    fn unrecorded(&self, seq: i64) -> bool {
        self.delivered.contains(&seq) || self.dead.iter().any(|(s, _)| *s == seq)
    }

    /// A row's delivery ended: its key may go on.
    fn finished(&mut self, seq: i64) -> Option<KeySlot> {
        let slot = self.in_flight.remove(&seq).flatten();
        if let Some(slot) = &slot {
            self.busy.remove(slot);
            self.read |= self.held;
        }
        slot
    }
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
    let wake = store.notifier();
    let Some(mut changes) = node.upgrade().map(|n| n.shared().registry.watch()) else {
        return;
    };
    // The groups seen before (by an earlier run of this node, too) are audiences from the
    // first row on.
    remember_groups(&node, &store, &options).await;
    let mut relay = Relay {
        read: true,
        ..Relay::default()
    };
    let mut deliveries = FuturesUnordered::new();
    // Not a sleep in the select below: that would never fire while deliveries keep ending.
    let mut tick = tokio::time::interval(options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let free = WINDOW.saturating_sub(relay.in_flight.len());
        let after = relay.after;
        let read = relay.should_read(free);
        let rows = if read {
            relay.read = false;
            let rows = blocking(&store, move |s| s.pending(after, free))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!("outbox relay cannot read pending rows: {e}");
                    Vec::new()
                });
            relay.more = rows.len() == free;
            rows
        } else {
            Vec::new()
        };
        // The cursor stops before the first row held back, so it is read again later.
        let mut first_held: Option<i64> = None;
        let mut last = relay.after;
        let mut expired = Vec::new();
        for row in rows {
            last = last.max(row.seq);
            if relay.in_flight.contains_key(&row.seq) || relay.unrecorded(row.seq) {
                continue;
            }
            let slot = key_slot(&row);
            if let Some(slot) = &slot {
                if relay.busy.contains(slot) || relay.blocked.contains(slot) {
                    first_held.get_or_insert(row.seq);
                    continue;
                }
            }
            // keep_trying counts from the row's creation, across restarts of the sender.
            let age = Duration::from_millis(unix_ms().saturating_sub(row.created_ms));
            let Some(left) = options
                .keep_trying
                .checked_sub(age)
                .filter(|d| !d.is_zero())
            else {
                expired.push(row.seq);
                continue;
            };
            if let Some(slot) = &slot {
                relay.busy.insert(slot.clone());
            }
            relay.in_flight.insert(row.seq, slot);
            let Some(delivery) = start(&node, row, left) else {
                return; // the node is gone
            };
            deliveries.push(delivery);
        }
        relay.after = first_held.map_or(last, |seq| seq - 1);
        if read {
            relay.held = first_held.is_some();
        }
        for seq in expired {
            let reason = format!(
                "not delivered within keep_trying ({:?}) of being enqueued",
                options.keep_trying
            );
            if let Err(e) = blocking(&store, move |s| s.dead(seq, &reason)).await {
                tracing::warn!(seq, "outbox relay cannot mark a row dead: {e}");
            }
        }
        tokio::select! {
            Some(first) = deliveries.next(), if !deliveries.is_empty() => {
                // Record every outcome that is ready in one store call.
                let mut outcomes = vec![first];
                while let Some(Some(more)) = deliveries.next().now_or_never() {
                    outcomes.push(more);
                }
                if !finish(&mut relay, outcomes) {
                    flush(&mut relay, &store).await;
                    return;
                }
                if relay.delivered.len() + relay.dead.len() >= WINDOW {
                    flush(&mut relay, &store).await;
                }
            }
            () = sleep_until_some(relay.record_at) => flush(&mut relay, &store).await,
            () = wake.notified() => relay.read = true,
            _ = tick.tick() => {
                relay.rescan();
                remember_groups(&node, &store, &options).await;
                match blocking(&store, |s| s.prune_dead()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "outbox: dead rows past retention removed"),
                    Err(e) => tracing::warn!("outbox relay cannot prune dead rows: {e}"),
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                relay.rescan();
            }
            () = stop.cancelled() => {
                flush(&mut relay, &store).await;
                return;
            }
        }
    }
}

/// Records the subscriber groups live now in the store, and keeps every group the store
/// remembers an audience of this node's events until the next poll (and a margin), so
/// events are held for a group that is away, even if this node restarted since it was seen.
async fn remember_groups(node: &WeakNode, store: &Arc<dyn OutboxStore>, options: &RelayOptions) {
    let Some(shared) = node.upgrade().map(|n| Arc::clone(n.shared())) else {
        return;
    };
    let mut live: Vec<(String, String)> = shared
        .registry
        .live_groups()
        .into_iter()
        .filter_map(|s| Some((s.pattern, s.group?)))
        .collect();
    live.extend(options.expected_groups.iter().cloned());
    let within = options.remember_groups_for;
    match blocking(store, move |s| {
        s.saw_groups(&live)?;
        s.groups(within)
    })
    .await
    {
        Ok(groups) => {
            let subs = groups
                .into_iter()
                .map(|(pattern, group)| Subscription {
                    pattern,
                    group: Some(group),
                })
                .collect();
            let until = std::time::Instant::now() + options.poll * 3;
            shared.registry.remember_groups(subs, until);
        }
        Err(e) => tracing::warn!("outbox relay cannot read or record subscriber groups: {e}"),
    }
}

/// Takes finished deliveries: acknowledged and dead-lettered rows wait to be recorded (see
/// [`flush`]), the rest stay for later. `false` once the node shuts down.
fn finish(relay: &mut Relay, outcomes: Vec<Outcome>) -> bool {
    for (seq, result) in outcomes {
        let slot = relay.finished(seq);
        match result {
            Ok(()) => relay.delivered.push(seq),
            Err(Error::DeadLettered(letter)) => relay.dead.push((seq, letter.last_failure)),
            Err(Error::ShuttingDown) => return false,
            // Anything else (no subscriber yet, a copy dropped because its audience left):
            // the row stays, and is read again at the next poll or change of peers; the later
            // rows of its key wait for it.
            Err(e) => {
                tracing::debug!(seq, "outbox row not delivered, kept: {e}");
                if let Some(slot) = slot {
                    relay.blocked.insert(slot);
                }
            }
        }
    }
    if relay.record_at.is_none() && !(relay.delivered.is_empty() && relay.dead.is_empty()) {
        relay.record_at = Some(tokio::time::Instant::now() + RECORD_DELAY);
    }
    true
}

/// Records the outcomes taken so far in one store call: acknowledged rows leave the outbox,
/// dead-lettered ones are marked dead. If that fails, the rows stay pending and go again
/// (receivers deduplicate by id).
async fn flush(relay: &mut Relay, store: &Arc<dyn OutboxStore>) {
    relay.record_at = None;
    let delivered = std::mem::take(&mut relay.delivered);
    let dead = std::mem::take(&mut relay.dead);
    if delivered.is_empty() && dead.is_empty() {
        return;
    }
    let lowest = delivered
        .iter()
        .chain(dead.iter().map(|(seq, _)| seq))
        .min()
        .copied();
    let recorded = blocking(store, move |s| {
        if !delivered.is_empty() {
            s.delivered(&delivered)?;
        }
        dead.iter()
            .try_for_each(|(seq, reason)| s.dead(*seq, reason))
    })
    .await;
    if let Err(e) = recorded {
        tracing::warn!("outbox relay cannot record outcomes, rows will be sent again: {e}");
        if let Some(seq) = lowest {
            relay.after = relay.after.min(seq - 1);
        }
        relay.read = true;
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type Outcome = (i64, Result<(), Error>);

/// Starts delivering one row, trying for at most `keep_trying`; `None` once the node is gone.
fn start(
    node: &WeakNode,
    row: OutboxRow,
    keep_trying: Duration,
) -> Option<Pin<Box<dyn Future<Output = Outcome> + Send>>> {
    let node = node.upgrade()?;
    let seq = row.seq;
    // Store and forward: the node's retry policy (ack timeout, backoff), but trying (and
    // waiting for a receiver) far longer than a live call.
    let policy = RetryPolicy {
        max_attempts: u32::MAX,
        deadline: keep_trying,
        ..node.shared().config.retry.clone()
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
