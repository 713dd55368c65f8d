//! Where Zenoh's calls run: plain OS threads beside the harness's runtimes (see the
//! parent module's *Threads and runtimes*), the server side's life cycle on them, and the
//! one-time start of Zenoh's own runtime pool from an unpinned thread.

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use ::zenoh::{Session, Wait};
use tokio::sync::oneshot;

use super::{Link, RETRY_PERIOD, Role, SETUP_TIMEOUT, TCP, Tls, free_ports, open, zenoh_err};
use crate::error::{BenchError, BenchResult};
use crate::runtime::{Announce, Shutdown};

/// Starts Zenoh's process-wide runtime threads from the calling thread, once per process.
///
/// Zenoh creates its runtimes lazily, on the thread that first needs each one, and threads
/// inherit that thread's CPU affinity: left alone, all of Zenoh's threads would end up pinned
/// to whichever side touched them first. Scenario entry points call this from the harness
/// thread (not pinned) before the sides start, so Zenoh's threads may run on every CPU. It
/// opens two TCP sessions on 127.0.0.1, passes one message (which starts the `app`, `acc`,
/// `net`, `tx` and `rx` runtimes) and closes them.
pub(crate) fn start_zenoh_runtime() -> BenchResult<()> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| warm_up_runtime().map_err(|e| e.message().to_owned()))
        .clone()
        .map_err(|e| BenchError::msg(format!("starting zenoh's runtime: {e}")))
}

fn warm_up_runtime() -> BenchResult<()> {
    let tls = Tls::generate()?;
    let port = free_ports(Link::Tcp, 1)?[0];
    let listener = open(TCP.config(Role::Listen(port), &tls)?)?;
    let echo = listener
        .declare_subscriber(WARM_UP_KEY)
        .wait()
        .map_err(zenoh_err("zenoh warm-up subscriber"))?;
    let connector = open(TCP.config(Role::Connect(&[port]), &tls)?)?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut got = false;
    while !got && Instant::now() < deadline {
        connector
            .put(WARM_UP_KEY, vec![0u8; 8])
            .wait()
            .map_err(zenoh_err("zenoh warm-up put"))?;
        got = echo
            .recv_timeout(RETRY_PERIOD)
            .map_err(zenoh_err("zenoh warm-up receive"))?
            .is_some();
    }
    drop(echo);
    connector.close().wait().map_err(zenoh_err("zenoh close"))?;
    listener.close().wait().map_err(zenoh_err("zenoh close"))?;
    if got {
        Ok(())
    } else {
        Err(BenchError::msg(
            "no message passed between two local sessions",
        ))
    }
}

/// Key of the warm-up message.
const WARM_UP_KEY: &str = "shoal-bench/zenoh/warm-up";
/// Runs `work` on a new plain OS thread named `name` (outside any tokio runtime, so Zenoh's
/// blocking calls are allowed; it inherits the calling thread's CPU pinning) and returns a
/// future of its result, to await on the harness's runtime.
pub(crate) fn on_plain_thread<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> BenchResult<T> + Send + 'static,
) -> BenchResult<impl Future<Output = BenchResult<T>>> {
    let (tx, rx) = oneshot::channel();
    let label = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        // The receiver may be gone (the run hit its time limit): nothing left to tell.
        let _ = tx.send(work());
    })?;
    Ok(async move {
        rx.await
            .map_err(|_| BenchError::msg(format!("{label} thread panicked")))?
    })
}

/// Drives a future that never waits (every `.await` in it is ready at once, as with the
/// harness's [`crate::measure::measure`] and the pub/sub probe when their callbacks make
/// only synchronous Zenoh calls) to completion on the calling thread, without a runtime.
/// A future that does wait is an error, not a hang.
pub(crate) fn run_ready<F: Future>(future: F) -> BenchResult<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(BenchError::msg(
            "a synchronous measuring loop tried to wait on an async event",
        )),
    }
}

/// The server side of a Zenoh scenario, inside [`crate::runtime::run_pair`]: `start` runs on
/// a plain thread ([`on_plain_thread`]) and returns what to announce and the sessions to keep
/// open; they are closed on that thread when the client side is done (or the run's time
/// limit passes).
pub(crate) async fn serve<I: Send + 'static>(
    announce: Announce<I>,
    shutdown: Shutdown,
    name: String,
    start: impl FnOnce() -> BenchResult<(I, Vec<Session>)> + Send + 'static,
) -> BenchResult<()> {
    let deadline = shutdown.deadline().into_std();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let server = on_plain_thread(name, move || {
        let (info, sessions) = start()?;
        if ready_tx.send(info).is_ok() {
            // Returns when told to stop, when the sender is dropped, or at the deadline.
            let _ = stop_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        close_all(sessions)
    })?;
    let Ok(info) = ready_rx.await else {
        server.await?;
        return Err(BenchError::msg("zenoh server ended before it was ready"));
    };
    let announced = announce.send(info);
    if announced.is_ok() {
        shutdown.wait().await;
    }
    drop(stop_tx);
    server.await?;
    announced
}

/// Closes every session, reporting the first error.
pub(crate) fn close_all(sessions: Vec<Session>) -> BenchResult<()> {
    let mut result = Ok(());
    for session in sessions {
        let closed = session.close().wait().map_err(zenoh_err("zenoh close"));
        result = result.and(closed);
    }
    result
}
