//! The relay: delivers outbox rows through the node's normal delivery path and removes them
//! once acknowledged (the polling publisher, woken at once by commits made through Shoal).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;

use super::relay_options::RelayOptions;
use super::store::{Destination, OutboxError, OutboxRow, OutboxStore};
use super::waiting::{Absence, Receiver};
use crate::message::unix_ms;
use crate::{Error, PublishOptions, RetryPolicy, SendOptions, WeakNode};
use book::{InFlight, Relay, key_slot};
use shoal_proto::Subscription;

mod book;

/// Rows handed to the delivery path at once, not counting those waiting for a receiver that is
/// away ([`RelayOptions::max_waiting`]).
const WINDOW: usize = 256;

/// How long acknowledged rows wait before they are removed from the store, so one write
/// removes many, and the service's own transactions seldom wait for the relay's lock (with
/// SQLite, a writer that finds the lock taken sleeps at least a millisecond).
const RECORD_DELAY: Duration = Duration::from_millis(5);

/// The least time the groups the store remembers stay remembered by the node after a poll.
const REMEMBER_MARGIN: Duration = Duration::from_secs(10);

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
    let Some(mut changes) = node.upgrade().map(|n| n.peer_changes()) else {
        return;
    };
    // The store's own work (leases, locks, a log tail) runs while the relay does.
    let _background = store
        .background()
        .map(|work| AbortOnDrop(tokio::spawn(work)));
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
        // Rows in flight that may be another relay's now are let go before anything else.
        let claims_until = store.claims_until().map(tokio::time::Instant::from_std);
        if claims_until.is_some_and(|until| until <= tokio::time::Instant::now())
            && !relay.in_flight.is_empty()
        {
            relay.let_go(&mut deliveries);
        }
        let expired = if relay.should_read(WINDOW.saturating_sub(relay.active())) {
            relay.read = false;
            let Some(expired) = fill(&mut relay, &store, &node, &options, &mut deliveries).await
            else {
                return; // the node is gone
            };
            expired
        } else {
            Vec::new()
        };
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
                let generation = *changes.borrow();
                if !finish(&mut relay, outcomes, generation) {
                    flush(&mut relay, &store).await;
                    return;
                }
                if relay.delivered.len() + relay.dead.len() >= WINDOW {
                    flush(&mut relay, &store).await;
                }
            }
            () = sleep_until_some(relay.record_at) => flush(&mut relay, &store).await,
            // The claim on the rows in flight may have lapsed (looked at above).
            () = sleep_until_some(claims_until), if !relay.in_flight.is_empty() => {}
            () = wake.notified() => relay.read = true,
            // The read stopped at its budget: go on reading (the rows behind many held ones),
            // between deliveries' outcomes.
            // (Cleared here: with no room in the window the read waits for an outcome,
            // rather than this branch firing again at once, forever.)
            () = std::future::ready(()), if relay.unfinished => {
                relay.unfinished = false;
                relay.read = true;
            }
            _ = tick.tick() => {
                // Not in the middle of a long read, or it would start over and never end.
                if !relay.unfinished {
                    relay.rescan();
                }
                reclassify(&mut relay, &node);
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
                reclassify(&mut relay, &node);
            }
            () = stop.cancelled() => {
                flush(&mut relay, &store).await;
                if let Err(e) = blocking(&store, |s| s.relay_stopped()).await {
                    tracing::warn!("outbox relay cannot release its rows: {e}");
                }
                return;
            }
        }
        // Test kit: the outbox may have emptied; a test mesh waiting for idle looks again.
        #[cfg(feature = "testing")]
        crate::testing::relay_turned(&node);
    }
}

/// Reads pending rows from the cursor on and starts each that may go, page after page while
/// the window has room: rows already in flight (waiting for an absent receiver, which do not
/// take room) are skipped, so they never hide the rows behind them. Returns the rows past
/// `keep_trying`, to be marked dead; `None` once the node is gone.
async fn fill(
    relay: &mut Relay,
    store: &Arc<dyn OutboxStore>,
    node: &WeakNode,
    options: &RelayOptions,
    deliveries: &mut FuturesUnordered<Delivery>,
) -> Option<Vec<i64>> {
    let peers = node.upgrade()?;
    let mut absence = Absence::new(&peers);
    let generation = *peers.peer_changes().borrow();
    // Rows held back are read again from `held_from` when they may go; the cursor itself moves
    // on, so rows behind any number of held ones are still read.
    let mut cursor = relay.after;
    if std::mem::take(&mut relay.revisit)
        && let Some(from) = relay.held_from.take()
    {
        cursor = cursor.min(from - 1);
        relay.held_keys.clear();
    }
    let mut first_held: Option<i64> = None;
    let mut expired = Vec::new();
    // Rows skipped because they are in flight, plus a margin for rows held behind their key:
    // the scan is bounded even when most pending rows must wait.
    let mut budget = relay.in_flight.len() + 4 * WINDOW;
    relay.more = false;
    relay.unfinished = false;
    'pages: while budget > 0 {
        let (after, limit) = (cursor, WINDOW.saturating_sub(relay.active()));
        if limit == 0 {
            relay.more = true;
            break;
        }
        let rows = blocking(store, move |s| s.pending(after, limit))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("outbox relay cannot read pending rows: {e}");
                Vec::new()
            });
        let full = rows.len() == limit;
        budget = budget.saturating_sub(rows.len());
        for row in rows {
            if relay.active() >= WINDOW {
                relay.more = true;
                break 'pages;
            }
            cursor = cursor.max(row.seq);
            if relay.in_flight.contains_key(&row.seq) || relay.unrecorded(row.seq) {
                continue;
            }
            let slot = key_slot(&row);
            if let Some(slot) = &slot
                && (relay.busy.contains(slot)
                    || relay.blocked.contains(slot)
                    || relay.held_keys.contains(slot))
            {
                first_held.get_or_insert(row.seq);
                relay.held_keys.insert(slot.clone());
                continue;
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
            let receiver = Receiver::of(&row);
            let waiting = absence.away(&receiver);
            if waiting && relay.waiting >= options.max_waiting {
                // Stays in the store; read again when a waiting row goes. Its key's later
                // rows wait for it.
                first_held.get_or_insert(row.seq);
                if let Some(slot) = slot {
                    relay.held_keys.insert(slot);
                }
                continue;
            }
            if let Some(slot) = &slot {
                relay.busy.insert(slot.clone());
            }
            relay.waiting += usize::from(waiting);
            relay.in_flight.insert(
                row.seq,
                InFlight {
                    slot,
                    receiver,
                    waiting,
                    generation,
                },
            );
            deliveries.push(start(node, row, left)?);
        }
        if !full {
            break;
        }
        relay.more = budget == 0;
        relay.unfinished = budget == 0;
    }
    relay.after = cursor;
    relay.held_from = match (relay.held_from, first_held) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Some(expired)
}

/// Re-checks which rows in flight wait for an absent receiver (the peers changed).
fn reclassify(relay: &mut Relay, node: &WeakNode) {
    if let Some(node) = node.upgrade() {
        relay.reclassify(&mut Absence::new(&node));
    }
}

/// Records the subscriber groups live now in the store, and keeps every group the store
/// remembers an audience of this node's events until the next poll (and a margin), so
/// events are held for a group that is away, even if this node restarted since it was seen.
async fn remember_groups(node: &WeakNode, store: &Arc<dyn OutboxStore>, options: &RelayOptions) {
    let Some(peers) = node.upgrade() else {
        return;
    };
    let mut live: Vec<(String, String)> = peers
        .live_groups()
        .into_iter()
        .filter_map(|s| Some((s.pattern, s.group?.into())))
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
                    group: Some(group.into()),
                })
                .collect();
            // Until well after the next poll: a relay busy with many rows may poll late, and a
            // group forgotten meanwhile would miss the events published then.
            let margin = options.poll.saturating_mul(3).max(REMEMBER_MARGIN);
            let until = crate::runtime::Driver::deadline_in(margin).into_std();
            peers.remember_groups(subs, until);
        }
        Err(e) => tracing::warn!("outbox relay cannot read or record subscriber groups: {e}"),
    }
}

/// Takes finished deliveries: acknowledged and dead-lettered rows wait to be recorded (see
/// [`flush`]), the rest stay for later. `false` once the node shuts down.
fn finish(relay: &mut Relay, outcomes: Vec<Outcome>, generation: u64) -> bool {
    for (seq, result) in outcomes {
        let done = relay.finished(seq);
        match result {
            Ok(()) => relay.delivered.push(seq),
            Err(Error::DeadLettered(letter)) => relay.dead.push((seq, letter.last_failure)),
            // The policy forbids this node the topic: retrying cannot help.
            Err(Error::NotAuthorized(denial)) => relay.dead.push((seq, denial.to_string())),
            Err(Error::ShuttingDown) => return false,
            // Anything else (no subscriber yet, a copy dropped because its audience left):
            // the row stays, and is read again at the next poll or change of peers; the later
            // rows of its key wait for it. If the peers changed while it was on its way (the
            // subscriber it lacked may have come), that change has been handled already: read
            // everything again now rather than at the next poll.
            Err(e) => {
                tracing::debug!(seq, "outbox row not delivered, kept: {e}");
                let Some(done) = done else { continue };
                if done.generation != generation {
                    relay.rescan();
                } else if let Some(slot) = done.slot {
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

/// Aborts the task when dropped: the store's background work ends with the relay.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// One row's delivery, ending with its outcome.
type Delivery = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Starts delivering one row, trying for at most `keep_trying`; `None` once the node is gone.
/// The send runs in the trace of the enqueue (the row's headers hold it), so the relay's own
/// `shoal.send` span, when recorded, is in that trace too.
fn start(node: &WeakNode, row: OutboxRow, keep_trying: Duration) -> Option<Delivery> {
    match row.message.trace_context() {
        Some(ctx) => ctx.in_scope(|| start_now(node, row, keep_trying)),
        None => start_now(node, row, keep_trying),
    }
}

/// [`start`], in the current trace context.
fn start_now(node: &WeakNode, row: OutboxRow, keep_trying: Duration) -> Option<Delivery> {
    let node = node.upgrade()?;
    let seq = row.seq;
    // Store and forward: the node's retry policy (ack timeout, backoff), but trying (and
    // waiting for a receiver) far longer than a live call.
    let policy = RetryPolicy {
        max_attempts: u32::MAX,
        deadline: keep_trying,
        ..node.default_retry_policy()
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
                // A held copy's retry deadline counts from the end of its hold (README,
                // "Late joiners and departed groups"): keep_trying, counted from the row's
                // creation, still bounds it. Past it the publish is dropped (its retries stop)
                // and the row, kept, is marked dead at the next read.
                let Ok(published) = tokio::time::timeout(keep_trying, publish).await else {
                    return (seq, Err(Error::Timeout(keep_trying)));
                };
                // Store and forward: an event nobody subscribes to yet stays in the outbox.
                // A copy dropped because its audience is gone for good (unsubscribed, or
                // forgotten with `Node::forget_group`) is done with, even if it was the only one.
                let result = published.and_then(|receipt| {
                    if receipt.deliveries.is_empty() && receipt.dropped.is_empty() {
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
