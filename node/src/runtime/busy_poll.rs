//! Busy polling: the node's runtime thread keeps looking for network input for a while after
//! each message instead of going to sleep ([`crate::NodeBuilder::busy_poll`]).
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
//! The window is measured with the real clock, not the node's ([`super::Driver::now`]): it
//! bounds real CPU time, and a test that pauses tokio's clock must still see the poller stop
//! (a runtime that is never idle would never advance a paused clock).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The busy poller's shared state: what the node's calls touch, and what the poller reads.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    /// How long polling goes on after the last activity.
    window: Duration,
    /// Bumped by every call into the engine ([`BusyPoll::touch`]).
    activity: AtomicU64,
    /// Set while the poller waits for activity: the next touch wakes it.
    parked: AtomicBool,
    wake: Notify,
    /// Time spent polling so far, in nanoseconds ([`crate::NodeStats::busy_poll_time`]).
    spent_ns: AtomicU64,
}

impl BusyPoll {
    /// A poller that polls for `window` after each activity.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            activity: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            wake: Notify::new(),
            spent_ns: AtomicU64::new(0),
        }
    }

    /// Notes activity: polling goes on (or starts again) for a window from now.
    pub(crate) fn touch(&self) {
        // Sequentially consistent with the poller's `parked` store and `activity` load: one
        // of the two sees the other's write, so activity is never missed by both (on x86 the
        // increment is a locked instruction and the load a plain one either way).
        self.activity.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::AcqRel) {
            // Stores a permit if the poller is not waiting yet: it does not miss this.
            self.wake.notify_one();
        }
    }

    /// Time spent polling so far.
    pub(crate) fn spent(&self) -> Duration {
        Duration::from_nanos(self.spent_ns.load(Ordering::Relaxed))
    }

    /// Polls after each activity, as the module docs say, until `stop` is cancelled.
    pub(crate) async fn run(&self, stop: &CancellationToken) {
        let mut seen = self.activity.load(Ordering::Relaxed);
        loop {
            self.parked.store(true, Ordering::SeqCst);
            // Activity between the end of the last polling and `parked` found no one to wake:
            // it is seen here instead.
            if self.activity.load(Ordering::SeqCst) == seen {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => return,
                }
            } else {
                self.parked.store(false, Ordering::Release);
            }
            let started = Instant::now();
            let mut until = deadline(started, self.window);
            loop {
                // Back after the runtime has looked at its sockets without blocking.
                tokio::task::yield_now().await;
                if stop.is_cancelled() {
                    break;
                }
                let now = Instant::now();
                let activity = self.activity.load(Ordering::Relaxed);
                if activity != seen {
                    seen = activity;
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
