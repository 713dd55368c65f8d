//! Busy polling: the node's runtime thread keeps looking for network input for a while after
//! each message instead of going to sleep ([`crate::NodeBuilder::busy_poll`], and by default
//! while the node is under load: [`crate::NodeBuilder::busy_poll_under_load`]).
//!
//! A thread that waits for a packet sleeps in `epoll_wait`; the packet's arrival wakes it. On
//! a machine with idle cores, and on virtual machines above all, that wake-up is most of a
//! round trip: the idle core has to be woken (an interrupt between processors, on a VM an exit
//! to the hypervisor) before the thread can read anything. A node that polls instead finds
//! the packet as soon as it is there, at the price of a core kept busy while it polls.
//!
//! How: a task ([`BusyPoll::run`]) waits until the node does something (every call into the
//! engine counts: a message read, written, sent, a handler finished), then yields to the
//! runtime over and over. Tokio runs a yielded task again only after it has polled its IO
//! driver without blocking, so each turn is one non-blocking look at the sockets, after which
//! the tasks that input woke run (quinn's, then the connection's reader). Each new activity
//! extends the polling to one window after it; a window without any ends it, and the task
//! waits again, so an idle node costs nothing.
//!
//! **Under load only** ([`BusyPolling::UnderLoad`], the default): polling starts only after
//! an activity that moved messages in batches (a frame read here held two or more, or a write
//! took two or more, which happens when calls wait for each other:
//! [`crate::engine::Engine::take_batched`]); once started, any activity extends it as above.
//! A node sending or receiving one message at a time does not poll; a loaded one polls
//! through the short gaps between its batches, where sleeping made its virtual CPU halt: on
//! a VM whose host is busy, a halted CPU is given to another guest and comes back late (the
//! "steal" the benchmarks print), and every batch after such a gap waited for it. Multicast
//! datagrams do not count as batches (the engine's channel code does not set the flag).
//!
//! The window is measured with the real clock, not the node's ([`super::Driver::now`]): it
//! bounds real CPU time, and a test that pauses tokio's clock must still see the poller stop
//! (a runtime that is never idle would never advance a paused clock).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// When a node busy polls, and for how long after each activity (a zero window: never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BusyPolling {
    /// After activity that moved messages in batches, for the window after each activity.
    UnderLoad(Duration),
    /// After every activity, for the window after it.
    Always(Duration),
}

impl BusyPolling {
    /// The default: under load, for [`UNDER_LOAD_WINDOW`].
    pub(crate) const DEFAULT: Self = Self::UnderLoad(UNDER_LOAD_WINDOW);

    /// The poller this asks for, if any (a zero window is none).
    pub(crate) fn poller(self) -> Option<BusyPoll> {
        match self {
            Self::UnderLoad(window) | Self::Always(window) if window.is_zero() => None,
            Self::UnderLoad(window) => Some(BusyPoll::new(window, true)),
            Self::Always(window) => Some(BusyPoll::new(window, false)),
        }
    }
}

/// How long a node under load polls after each activity by default: enough to bridge the
/// gaps between a loaded connection's batches here (20 µs did as well as 50 µs and 1 ms in
/// `fixed-load send`), short enough that a node whose load stops wastes little.
pub(crate) const UNDER_LOAD_WINDOW: Duration = Duration::from_micros(20);

/// The busy poller's shared state: what the node's calls touch, and what the poller reads.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    /// How long polling goes on after the last activity.
    window: Duration,
    /// Whether only batched activity starts polling ([`BusyPolling::UnderLoad`]).
    under_load: bool,
    /// Bumped by every call into the engine that cannot start polling (unbatched ones, under
    /// load): it only extends polling that goes on ([`BusyPoll::touch`]).
    activity: AtomicU64,
    /// Bumped by every call into the engine that may start polling: batched ones under load,
    /// all otherwise. The poller waits for it to move; polling goes on while either moves.
    starts: AtomicU64,
    /// Set while the poller waits for activity: the next touch wakes it.
    parked: AtomicBool,
    wake: Notify,
    /// Time spent polling so far, in nanoseconds ([`crate::NodeStats::busy_poll_time`]).
    spent_ns: AtomicU64,
}

impl BusyPoll {
    /// A poller that polls for `window` after each activity, starting only after batched
    /// activity when `under_load`.
    fn new(window: Duration, under_load: bool) -> Self {
        Self {
            window,
            under_load,
            activity: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            wake: Notify::new(),
            spent_ns: AtomicU64::new(0),
        }
    }

    /// Notes activity (`batched`: it moved messages in batches): polling goes on for a window
    /// from now, or starts again if this activity may start it.
    pub(crate) fn touch(&self, batched: bool) {
        if self.under_load && !batched {
            // A poller that is polling sees this and polls on; one that waits does not wake.
            self.activity.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Sequentially consistent with the poller's `parked` store and `starts` load: one of
        // the two sees the other's write, so a start is never missed by both (on x86 the
        // increment is a locked instruction and the load a plain one either way).
        self.starts.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::AcqRel) {
            // Stores a permit if the poller is not waiting yet: it does not miss this.
            self.wake.notify_one();
        }
    }

    /// Both counters of activity (see [`BusyPoll::touch`]): polling goes on while they move.
    fn seen(&self) -> (u64, u64) {
        (
            self.activity.load(Ordering::Relaxed),
            self.starts.load(Ordering::Relaxed),
        )
    }

    /// Time spent polling so far.
    pub(crate) fn spent(&self) -> Duration {
        Duration::from_nanos(self.spent_ns.load(Ordering::Relaxed))
    }

    /// Polls after each activity, as the module docs say, until `stop` is cancelled.
    pub(crate) async fn run(&self, stop: &CancellationToken) {
        let mut started_by = self.starts.load(Ordering::Relaxed);
        loop {
            self.parked.store(true, Ordering::SeqCst);
            // A start between the end of the last polling and `parked` found no one to wake:
            // it is seen here instead.
            if self.starts.load(Ordering::SeqCst) == started_by {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => return,
                }
            } else {
                self.parked.store(false, Ordering::Release);
            }
            // What started this polling is seen; so is what comes while it goes on.
            let mut seen = self.seen();
            started_by = seen.1;
            let started = Instant::now();
            let mut until = deadline(started, self.window);
            loop {
                // Back after the runtime has looked at its sockets without blocking.
                tokio::task::yield_now().await;
                if stop.is_cancelled() {
                    break;
                }
                let now = Instant::now();
                let activity = self.seen();
                if activity != seen {
                    seen = activity;
                    started_by = seen.1;
                    until = deadline(now, self.window);
                } else if until.is_some_and(|until| now >= until) {
                    break;
                }
            }
            let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.spent_ns.fetch_add(spent, Ordering::Relaxed);
            if stop.is_cancelled() {
                return;
            }
        }
    }
}

/// When polling started at `from` ends: `None` (never) when the window does not fit.
fn deadline(from: Instant, window: Duration) -> Option<Instant> {
    from.checked_add(window)
}
