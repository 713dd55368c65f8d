//! Waking callers in slices, so that what the first ones send leaves before the rest run.
//!
//! One read can complete hundreds of calls at once: an `Ack` frame for a whole window of
//! messages answers every caller that waits for one of them. Woken together, their tasks all
//! run before anything else (on a `current_thread` runtime, and on a multi-thread runtime's
//! worker whose queue they fill): the connection's writer and quinn's
//! connection driver, woken by the first caller's next message, are queued behind every
//! other caller. So each caller's next message waits for the last caller to have made its
//! own, the peer gets them all in one wave and idles until then, and this node idles in
//! turn while the peer handles the wave (benches/README.md, "One publish per event: the two
//! threads take turns").
//!
//! [`Wakeups`] wakes one slice of them at once and hands the rest to a task of its own
//! ([`Wakeups::run`]), which wakes the next slice each time the runtime gets back to it: after
//! the tasks woken before it, the writer and the connection driver among them. The messages
//! of each slice leave while the next slice makes its own, and the peer starts on them
//! sooner. A slice is a quarter of the callers waiting for a call, and at least
//! [`MIN_SLICE`] ([`Wakeups::slice`]).
//!
//! On every runtime. On tokio's multi-thread runtime the callers woken together fill the
//! worker's queue just the same (the writer and the connection driver are tasks on the same
//! workers), and waking them all at once made the two nodes take turns with whole windows:
//! with one worker per node (`fixed-load publish 1000000 workers=1`) 256 messages to a write
//! and 0.72-0.73 M messages/s, against about 100 to a write and 1.18-1.20 M sliced
//! (benches/README.md, "Callers woken a slice at a time on every runtime").
//!
//! Callers are woken in the order they were completed: while some wait here, callers
//! completed later wait behind them. A call completing one caller at a time (a lone request,
//! messages at a steady rate) never waits here. When the node is killed, everything waiting
//! here is woken at once (the callers then see their calls end).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Waker;

use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sync::lock;

/// The smallest slice: callers woken at once however few wait.
///
/// Measured with `fixed-load publish 1500000 in-flight=N` on a 2-vCPU VM (benches/README.md,
/// "Callers woken a slice at a time"): slices of 16 and 32 made more, smaller writes, and
/// cost more per message than they saved; a slice of half the callers or more gained nothing
/// (the two halves settle back into one wave); a quarter, at least 64, gained at 192 to 1,024
/// calls in flight and changed nothing at 64 (at 128, two measurements disagree).
const MIN_SLICE: usize = 64;

/// Callers completed and not yet woken, and the task that wakes them.
#[derive(Default)]
pub(crate) struct Wakeups {
    /// Callers past the first slice, in the order they were completed.
    later: Mutex<VecDeque<Waker>>,
    /// Whether `later` may hold callers (so callers completed now queue behind them).
    waiting: AtomicBool,
    /// Tells [`Wakeups::run`] there is something in `later`.
    more: Notify,
    /// Callers waiting for a call ([`Wakeups::caller_waits`]).
    callers: AtomicUsize,
}

impl Wakeups {
    /// A caller started waiting for a call (an [`super::op::OpFuture`], or a gathered call's
    /// future, was made). How many wait decides whether a call is gathered (`gather.rs`) and
    /// how many callers a slice wakes.
    pub(crate) fn caller_waits(&self) {
        self.callers.fetch_add(1, Ordering::Relaxed);
    }

    /// A caller stopped waiting (its future was dropped, done or not).
    pub(crate) fn caller_done(&self) {
        self.callers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether some caller waits for a call.
    pub(crate) fn others_waiting(&self) -> bool {
        self.callers.load(Ordering::Relaxed) > 0
    }

    /// Callers woken at once: a quarter of those waiting for a call, at least [`MIN_SLICE`].
    fn slice(&self) -> usize {
        (self.callers.load(Ordering::Relaxed) / 4).max(MIN_SLICE)
    }

    /// Wakes the callers in `wakers` (emptied): the first [`Wakeups::slice`] now, unless
    /// callers completed earlier still wait; the rest by [`Wakeups::run`]. `killed`: the node
    /// stopped at once, and nothing is held back.
    pub(crate) fn wake(&self, wakers: &mut SmallVec<[Waker; 4]>, killed: &CancellationToken) {
        let slice = self.slice();
        if wakers.len() <= slice && !self.waiting.load(Ordering::Acquire) {
            wakers.drain(..).for_each(Waker::wake);
            return;
        }
        let mut later = lock(&self.later);
        let now = if later.is_empty() { slice } else { 0 };
        let now = wakers.len().min(now);
        later.extend(wakers.drain(now..));
        self.waiting.store(true, Ordering::Release);
        drop(later);
        wakers.drain(..).for_each(Waker::wake);
        self.more.notify_one();
        // Killed before what was just added got in: `run` has stopped, so wake it here.
        if killed.is_cancelled() {
            self.wake_all();
        }
    }

    /// Wakes the callers held back, a slice at a time, yielding to the runtime between
    /// slices; until the node is killed, when it wakes everything left and returns.
    pub(crate) async fn run(&self, killed: &CancellationToken) {
        loop {
            let slice: Vec<Waker> = {
                let mut later = lock(&self.later);
                let n = later.len().min(self.slice());
                let slice = later.drain(..n).collect();
                if later.is_empty() {
                    self.waiting.store(false, Ordering::Release);
                }
                slice
            };
            if slice.is_empty() {
                tokio::select! {
                    () = self.more.notified() => continue,
                    () = killed.cancelled() => return self.wake_all(),
                }
            }
            slice.into_iter().for_each(Waker::wake);
            tokio::task::yield_now().await;
        }
    }

    /// Wakes every caller held back.
    fn wake_all(&self) {
        let all = std::mem::take(&mut *lock(&self.later));
        self.waiting.store(false, Ordering::Release);
        all.into_iter().for_each(Waker::wake);
    }

    /// Callers held back now.
    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.later).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn callers(n: usize) -> (Vec<Arc<Counter>>, SmallVec<[Waker; 4]>) {
        let counters: Vec<_> = (0..n).map(|_| Arc::new(Counter::default())).collect();
        let wakers = counters
            .iter()
            .map(|c| Waker::from(Arc::clone(c)))
            .collect();
        (counters, wakers)
    }

    fn spawn_relay(
        wakeups: &Arc<Wakeups>,
        killed: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (wakeups, killed) = (Arc::clone(wakeups), killed.clone());
        tokio::spawn(async move { wakeups.run(&killed).await })
    }

    /// `n` callers completed together, handed to `wakeups`.
    fn complete(wakeups: &Wakeups, killed: &CancellationToken, n: usize) -> Vec<Arc<Counter>> {
        let (counters, mut wakers) = callers(n);
        wakeups.wake(&mut wakers, killed);
        assert!(wakers.is_empty());
        counters
    }

    /// Kills the node and waits for the relay to stop.
    async fn kill(relay: tokio::task::JoinHandle<()>, killed: &CancellationToken) {
        killed.cancel();
        relay.await.expect("the relay stops without panicking");
    }

    /// Yields to the runtime until `done`, for at most five seconds (then fails, saying
    /// `what` did not happen).
    async fn until(done: impl Fn() -> bool, what: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("not within 5 s: {what}"));
    }

    fn woken(counters: &[Arc<Counter>]) -> Vec<usize> {
        counters
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn a_slice_or_less_is_woken_at_once() {
        let wakeups = Wakeups::default();
        let counters = complete(&wakeups, &CancellationToken::new(), MIN_SLICE);
        assert_eq!(woken(&counters), vec![1; MIN_SLICE]);
        assert_eq!(wakeups.held(), 0);
    }

    /// Three slices' worth: the first now, the others one per turn of the runtime, in order;
    /// callers completed meanwhile queue behind them.
    #[tokio::test(flavor = "current_thread")]
    async fn more_than_a_slice_is_woken_a_slice_per_turn_in_order() {
        let wakeups = Arc::new(Wakeups::default());
        let killed = CancellationToken::new();
        let counters = complete(&wakeups, &killed, 3 * MIN_SLICE);
        assert_eq!(woken(&counters[..MIN_SLICE]), vec![1; MIN_SLICE]);
        assert_eq!(woken(&counters[MIN_SLICE..]), vec![0; 2 * MIN_SLICE]);
        // A caller completed now waits behind those held back.
        let late = complete(&wakeups, &killed, 1);
        assert_eq!(woken(&late), vec![0]);

        let relay = spawn_relay(&wakeups, &killed);
        // The relay's first turn wakes the second slice, and yields.
        tokio::task::yield_now().await;
        assert_eq!(
            woken(&counters[MIN_SLICE..2 * MIN_SLICE]),
            vec![1; MIN_SLICE]
        );
        assert_eq!(wakeups.held(), MIN_SLICE + 1);
        // Within a bounded wait, the rest, and the late caller behind them.
        until(|| wakeups.held() == 0, "every held caller is woken").await;
        assert_eq!(woken(&counters), vec![1; 3 * MIN_SLICE]);
        assert_eq!(woken(&late), vec![1]);
        kill(relay, &killed).await;
    }

    /// With 1,024 callers waiting, a slice is 256 of them.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slice_is_a_quarter_of_the_callers_waiting() {
        let wakeups = Arc::new(Wakeups::default());
        let killed = CancellationToken::new();
        (0..1024).for_each(|_| wakeups.caller_waits());
        let counters = complete(&wakeups, &killed, 1024);
        assert_eq!(woken(&counters[..256]), vec![1; 256]);
        assert_eq!(wakeups.held(), 768);
        // The woken callers are done; the relay's slice follows those still waiting.
        (0..256).for_each(|_| wakeups.caller_done());
        let relay = spawn_relay(&wakeups, &killed);
        tokio::task::yield_now().await;
        assert_eq!(woken(&counters[256..448]), vec![1; 192]);
        assert_eq!(wakeups.held(), 576);
        kill(relay, &killed).await;
    }

    /// A relay already waiting (nothing was held back) hears of callers held back later.
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_relay_is_told_of_callers_held_back() {
        let wakeups = Arc::new(Wakeups::default());
        let killed = CancellationToken::new();
        let relay = spawn_relay(&wakeups, &killed);
        // The relay's first turn: nothing held back, so it waits.
        tokio::task::yield_now().await;
        let counters = complete(&wakeups, &killed, 2 * MIN_SLICE);
        until(
            || wakeups.held() == 0,
            "the waiting relay wakes the callers held back",
        )
        .await;
        assert_eq!(woken(&counters), vec![1; 2 * MIN_SLICE]);
        kill(relay, &killed).await;
    }

    /// On tokio's multi-thread runtime (a node started under `#[tokio::main]`) too: of callers
    /// completed while the relay waits, the first slice is woken at once and the relay wakes
    /// the rest, the late ones included, within a bounded wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn on_a_multi_thread_runtime_the_relay_wakes_every_held_caller() {
        let wakeups = Arc::new(Wakeups::default());
        let killed = CancellationToken::new();
        let relay = spawn_relay(&wakeups, &killed);
        let counters = complete(&wakeups, &killed, 3 * MIN_SLICE);
        let late = complete(&wakeups, &killed, 1);
        assert_eq!(woken(&counters[..MIN_SLICE]), vec![1; MIN_SLICE]);
        until(
            || !woken(&counters).contains(&0) && !woken(&late).contains(&0),
            "the relay wakes every held caller",
        )
        .await;
        assert_eq!(wakeups.held(), 0);
        kill(relay, &killed).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_killed_node_wakes_everything_held_back() {
        let wakeups = Arc::new(Wakeups::default());
        let killed = CancellationToken::new();
        let counters = complete(&wakeups, &killed, 2 * MIN_SLICE);
        kill(spawn_relay(&wakeups, &killed), &killed).await;
        assert_eq!(woken(&counters), vec![1; 2 * MIN_SLICE]);
        // After the relay stopped, nothing is held back any more.
        let after = complete(&wakeups, &killed, 2 * MIN_SLICE);
        assert_eq!(woken(&after), vec![1; 2 * MIN_SLICE]);
        assert_eq!(wakeups.held(), 0);
    }
}
