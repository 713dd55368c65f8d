//! The node's timer, and how it stops: gracefully, or at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Driver;
use crate::sync::lock;
use crate::transport::connection::CloseCode;

impl Driver {
    /// Starts the task that calls the engine's timeout at its deadlines, the one that wakes
    /// callers held back (`wakeups.rs`) and the one that hands gathered calls to the engine
    /// (`gather.rs`); they stop when the node is killed, at the end of a shutdown too.
    pub(crate) fn start_timer(self: &Arc<Self>) {
        let driver = Arc::clone(self);
        self.tasks.spawn(async move { driver.timer_loop().await });
        let driver = Arc::clone(self);
        self.tasks
            .spawn(async move { driver.wakeups.run(&driver.killed).await });
        let driver = Arc::clone(self);
        self.tasks
            .spawn(async move { driver.run_gather(&driver.killed).await });
    }

    /// Starts the busy poller, when the node has one; it stops when the node is killed, at
    /// the end of a shutdown too.
    pub(crate) fn start_busy_poll(self: &Arc<Self>) {
        if self.busy_poll.is_some() {
            let driver = Arc::clone(self);
            self.tasks.spawn(async move {
                if let Some(poller) = &driver.busy_poll {
                    poller.run(&driver.killed).await;
                }
            });
        }
    }

    /// Time the busy poller has spent polling (zero without one).
    pub(crate) fn busy_poll_time(&self) -> std::time::Duration {
        self.busy_poll
            .as_ref()
            .map_or(std::time::Duration::ZERO, |poller| poller.spent())
    }

    async fn timer_loop(self: Arc<Self>) {
        // The last deadline handled without sleeping (see below).
        let mut handled_due: Option<Instant> = None;
        loop {
            // A deadline moved earlier after this read leaves a permit on `timer`.
            let next = self.call(|engine, _| engine.poll_timeout());
            // Due already (the engine asks for "at once", say a multicast status): handled
            // now, as tokio's timer would round it up to its next millisecond. Only while the
            // deadlines move on, so a deadline the engine keeps due cannot spin here.
            if let Some(at) = next
                && at <= Self::now()
                && handled_due.is_none_or(|h| at > h)
            {
                handled_due = Some(at);
                self.call(|engine, now| engine.handle_timeout(now));
                // The other tasks of a current-thread runtime get their turn all the same.
                tokio::task::yield_now().await;
                continue;
            }
            handled_due = None;
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => self.call(|engine, now| engine.handle_timeout(now)),
                () = self.timer.notified() => {}
                () = self.killed.cancelled() => return,
            }
        }
    }

    /// Stops gracefully: no new work; running handlers and background deliveries finish
    /// (within the grace period); every peer gets a goodbye after the acks it is owed; the
    /// connections close.
    pub(crate) async fn shutdown(self: &Arc<Self>) {
        if self.stopping.is_cancelled() {
            return;
        }
        self.stopping.cancel();
        self.call(|engine, now| engine.begin_shutdown(now));
        // Goodbyes on discovery first, so peers stop dialling, concurrently with the rest.
        let discovery = tokio::spawn({
            let driver = Arc::clone(self);
            async move { driver.stop_discovery().await }
        });
        let grace = self.config.shutdown_grace;
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.read(|engine| engine.is_idle()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, idle).await.is_err() {
            tracing::warn!("handlers still running after {grace:?}; dropping them");
            self.mark_killed();
        }
        self.call(|engine, now| engine.say_goodbye(now));
        // Each peer closes the connection once it has read the goodbye, and so every ack
        // before it. Closing first could discard acks it has received but not yet read.
        let closed = futures_util::future::join_all(
            self.connections()
                .into_iter()
                .map(|(_, io)| async move { io.closed().await }),
        );
        let _ = tokio::time::timeout(grace, closed).await;
        self.endpoint.close(CloseCode::Shutdown.into(), b"shutdown");
        self.mark_killed();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        self.stop_multicast().await; // the group link, after the reader stopped with the tasks
        let _ = discovery.await;
        self.finished.store(true, Ordering::Release);
    }

    /// The node stops at once: running handlers are dropped, and none starts any more.
    fn mark_killed(&self) {
        self.is_killed.store(true, Ordering::Release);
        self.killed.cancel();
    }

    /// Whether the node was killed (or finished shutting down): no handler starts.
    pub(crate) fn is_killed(&self) -> bool {
        self.is_killed.load(Ordering::Acquire)
    }

    /// Stops at once, like a crash: no goodbyes, running handlers dropped, nothing flushed.
    pub(crate) fn kill(self: &Arc<Self>) {
        self.stopping.cancel();
        self.call(|engine, now| {
            engine.kill(now);
            // Under the engine's lock: a trip that reports to the engine after the kill (and
            // is handed new handler runs, the rest of a run) sees it, and starts none.
            self.is_killed.store(true, Ordering::Release);
        });
        self.mark_killed();
        self.kill_multicast();
        self.endpoint
            .close(CloseCode::Killed.into(), b"node stopped abruptly");
        let mut sources = std::mem::take(&mut *lock(&self.discovery));
        // Stopping a source may block (mDNS goodbyes); this may run outside any runtime.
        let _ = std::thread::Builder::new()
            .name("shoal-discovery-stop".into())
            .spawn(move || sources.iter_mut().for_each(|s| s.stop()));
    }

    /// Stops the discovery sources on a blocking thread and puts them back (their reports stay
    /// readable after shutdown).
    async fn stop_discovery(self: &Arc<Self>) {
        let mut sources = std::mem::take(&mut *lock(&self.discovery));
        let stopped = tokio::task::spawn_blocking(move || {
            sources.iter_mut().for_each(|s| s.stop());
            sources
        });
        if let Ok(sources) = stopped.await {
            *lock(&self.discovery) = sources;
        }
    }
}
