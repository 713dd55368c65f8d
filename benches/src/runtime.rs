//! How runtimes and threads are set up for every scenario.
//!
//! # The setting
//!
//! Each scenario has a **server side** and a **client side**. Each side runs on **its own OS
//! thread**, inside **its own tokio `current_thread` runtime** (`enable_all`, every other
//! knob at tokio's default). The two sides share nothing but the loopback interface and two
//! one-shot channels used before and after the measurement (the server announcing its
//! address, the harness telling the server to stop), so they behave like two processes.
//!
//! Why `current_thread`: on this machine class (2 vCPUs) a `current_thread` runtime gave
//! about 40 % lower round-trip times than `multi_thread` — a ping-pong is a chain of
//! wake-ups, and the multi-threaded scheduler adds cross-thread hand-offs (I/O driver on one
//! worker, task on another) and idle-worker parking/unparking to every hop. Why one thread
//! per side: with both sides on one runtime, a reply could be handled without a thread
//! wake-up at all, which no real deployment gets.
//!
//! **Shoal's own scenarios must use the same setting** (build each node inside
//! [`run_pair`]'s closures) so that the ratios against the raw floors compare like with
//! like.
//!
//! `--runtime multi-thread` ([`Flavor::MultiThread`]) gives every side tokio's multi-thread
//! runtime instead, with one worker thread pinned with the side: the scheduler a service
//! started with `#[tokio::main]` runs (spawned tasks on a worker, the task woken last run
//! first), one CPU per side as before. Rivals that bring their own threads (Zenoh, ZeroMQ)
//! are unaffected.

use std::future::Future;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::BenchConfig;
use crate::affinity;
use crate::error::{BenchError, BenchResult};

/// The kind of tokio runtime every side runs on (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Flavor {
    /// tokio's `current_thread` runtime: the side's thread runs every task.
    #[default]
    CurrentThread,
    /// tokio's `multi_thread` runtime with one worker thread (pinned with the side): the
    /// side's future runs on its thread, spawned tasks on the worker.
    MultiThread,
}

impl Flavor {
    /// Name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::CurrentThread => "current-thread",
            Self::MultiThread => "multi-thread",
        }
    }
}

/// The flavor chosen for this process ([`set_flavor`]).
static FLAVOR: OnceLock<Flavor> = OnceLock::new();

/// Chooses the runtime of every side for the rest of the process; only the first call
/// counts (the command line's `--runtime`, before any scenario runs).
pub fn set_flavor(flavor: Flavor) {
    let _ = FLAVOR.set(flavor);
}

/// The runtime every side runs on: `current_thread` unless [`set_flavor`] chose otherwise.
pub fn flavor() -> Flavor {
    FLAVOR.get().copied().unwrap_or_default()
}

/// One-line description of the runtime setting, copied into the JSON and Markdown output.
pub fn description() -> &'static str {
    match flavor() {
        Flavor::CurrentThread => {
            "server and client each on its own OS thread, \
             each with its own tokio current_thread runtime (enable_all, defaults otherwise)"
        }
        Flavor::MultiThread => {
            "server and client each on its own OS thread, each with its own tokio \
             multi_thread runtime of one worker thread pinned with it (enable_all, defaults \
             otherwise)"
        }
    }
}

/// Builds the runtime every side of every scenario runs on ([`flavor`]): tokio
/// `current_thread`, or `multi_thread` with one worker, with the I/O and time drivers
/// enabled and all other settings at their defaults. Built on the side's thread, after it
/// is pinned, so the worker inherits its CPU.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    match flavor() {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build(),
    }
}

/// Starts an OS thread named `name`, pinned to `cpu` if given, that builds a
/// runtime ([`build`]) and runs the future made by `make` to completion on it.
///
/// `make` is called on the new thread, so the future itself need not be `Send` (Shoal
/// nodes, quinn endpoints and sockets are created inside it, bound to that runtime).
pub fn spawn_runtime_thread<F, Fut, T>(
    name: String,
    cpu: Option<usize>,
    make: F,
) -> BenchResult<JoinHandle<BenchResult<T>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = BenchResult<T>> + 'static,
    T: Send + 'static,
{
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        if let Some(cpu) = cpu {
            affinity::pin_current_thread(cpu)?;
        }
        let runtime = build()?;
        runtime.block_on(make())
    })?;
    Ok(handle)
}

/// Given to the server side: hands the client side what it needs to connect (an address,
/// or for Shoal scenarios whatever identifies the node), once the server is ready.
#[derive(Debug)]
pub struct Announce<I> {
    tx: oneshot::Sender<I>,
}

impl<I> Announce<I> {
    /// Tells the client side the server is ready. The client starts only after this.
    pub fn send(self, info: I) -> BenchResult<()> {
        self.tx
            .send(info)
            .map_err(|_| BenchError::msg("client side is gone; cannot announce the server"))
    }
}

/// Given to the server side: resolves when the client side has finished (or failed), or
/// when the run's time limit has passed.
#[derive(Debug)]
pub struct Shutdown {
    rx: oneshot::Receiver<()>,
    deadline: Instant,
}

impl Shutdown {
    /// When the run's time limit expires.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Waits until told to stop (or the time limit passes). For servers that do their work
    /// in spawned tasks, e.g. a Shoal node that only has to stay alive.
    pub async fn wait(self) {
        tokio::select! {
            _ = self.rx => {}
            () = tokio::time::sleep_until(self.deadline) => {}
        }
    }

    /// Runs `work` (the server loop) until it ends, the client side is done, or the time
    /// limit passes. Stopping because the client is done is a success; hitting the time
    /// limit is an error.
    pub async fn run_until(self, work: impl Future<Output = BenchResult<()>>) -> BenchResult<()> {
        tokio::select! {
            result = work => result,
            _ = self.rx => Ok(()),
            () = tokio::time::sleep_until(self.deadline) => {
                Err(BenchError::msg("server side hit the run's time limit"))
            }
        }
    }
}

/// Runs one scenario run as two sides, each on its own OS thread with its own
/// runtime ([`build`]), and returns what the client side returns.
///
/// 1. `server(announce, shutdown)` starts on thread `"{label}-server"`: it sets up, calls
///    [`Announce::send`] with the connection info `I`, then serves (typically through
///    [`Shutdown::run_until`]).
/// 2. `client(info)` starts on thread `"{label}-client"` once the info arrives, measures,
///    and returns `T` (typically a [`crate::report::LatencyReport`]).
/// 3. When the client side returns, the server side is told to stop and both threads are
///    joined. The whole run is bounded by `config.run_timeout` on both sides.
///
/// The threads are pinned as `config.placement` says (see [`affinity::Placement`]).
/// A client error wins over a server error in the returned error.
pub fn run_pair<I, T, S, SFut, C, CFut>(
    label: &str,
    config: &BenchConfig,
    server: S,
    client: C,
) -> BenchResult<T>
where
    I: Send + 'static,
    T: Send + 'static,
    S: FnOnce(Announce<I>, Shutdown) -> SFut + Send + 'static,
    SFut: Future<Output = BenchResult<()>> + 'static,
    C: FnOnce(I) -> CFut + Send + 'static,
    CFut: Future<Output = BenchResult<T>> + 'static,
{
    let (server_cpu, client_cpu) = config.placement.cpus()?;
    let deadline = std::time::Instant::now() + config.run_timeout;
    let (info_tx, info_rx) = oneshot::channel::<I>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();

    let server_thread = spawn_runtime_thread(format!("{label}-server"), server_cpu, move || {
        let shutdown = Shutdown {
            rx: stop_rx,
            deadline: Instant::from_std(deadline),
        };
        server(Announce { tx: info_tx }, shutdown)
    })?;

    let client_thread =
        spawn_runtime_thread(format!("{label}-client"), client_cpu, move || async move {
            let deadline = Instant::from_std(deadline);
            let info = tokio::time::timeout_at(deadline, info_rx)
                .await
                .map_err(|_| BenchError::msg("server side did not announce itself in time"))?
                .map_err(|_| BenchError::msg("server side ended before announcing itself"))?;
            tokio::time::timeout_at(deadline, client(info))
                .await
                .map_err(|_| BenchError::msg("client side hit the run's time limit"))?
        });

    let client_result = match client_thread {
        Ok(handle) => join(handle).map_err(|e| e.context(format!("{label} client"))),
        Err(e) => Err(e.context(format!("{label} client thread"))),
    };
    // Whatever happened to the client, the server must stop now. An error here only means
    // the server side has already ended.
    let _ = stop_tx.send(());
    let server_result = join(server_thread).map_err(|e| e.context(format!("{label} server")));

    let value = client_result?;
    server_result?;
    Ok(value)
}

fn join<T>(handle: JoinHandle<BenchResult<T>>) -> BenchResult<T> {
    handle
        .join()
        .map_err(|_| BenchError::msg("thread panicked"))?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::affinity::Placement;

    fn limit(run_timeout: Duration) -> BenchConfig {
        BenchConfig {
            run_timeout,
            placement: Placement::Any,
            ..BenchConfig::default()
        }
    }

    #[test]
    fn pair_passes_info_and_stops_server() {
        let got = run_pair(
            "test",
            &limit(Duration::from_secs(10)),
            |announce: Announce<u32>, shutdown| async move {
                announce.send(41)?;
                shutdown.wait().await;
                Ok(())
            },
            |info| async move { Ok(info + 1) },
        )
        .expect("pair runs");
        assert_eq!(got, 42);
    }

    #[test]
    fn server_failure_before_announce_is_reported() {
        let err = run_pair(
            "test",
            &limit(Duration::from_secs(10)),
            |_announce: Announce<u32>, _shutdown| async move { Err(BenchError::msg("no socket")) },
            |info| async move { Ok(info) },
        )
        .expect_err("must fail");
        assert!(err.message().contains("before announcing"), "{err}");
    }

    #[test]
    fn time_limit_bounds_a_stuck_client() {
        let err = run_pair(
            "test",
            &limit(Duration::from_millis(200)),
            |announce: Announce<()>, shutdown| async move {
                announce.send(())?;
                shutdown.wait().await;
                Ok(())
            },
            |()| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            },
        )
        .expect_err("must time out");
        assert!(err.message().contains("time limit"), "{err}");
    }
}
