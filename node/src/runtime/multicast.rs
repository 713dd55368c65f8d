//! Multicast fan-out's glue (issue 14): the group socket's task on one side, the engine's
//! channel on the other.
//!
//! - At start ([`Driver::start_multicast`]) the node hands its open [`GroupSocket`] to a
//!   [`GroupLink`] task and opens its channel in the engine, with a random channel id and
//!   secrets from the operating system's CSPRNG (`ring::rand::SystemRandom`).
//! - The engine's `Action::Multicast(bytes)` are collected under the engine lock and handed to
//!   the link after it ([`Driver::send_multicast`]) with `try_send`: the driver never waits for
//!   the socket. A full queue drops the datagram and counts it, as a congested LAN would; the
//!   channel's NAKs and repairs recover it.
//! - A task reads the link's datagrams into `Engine::on_multicast_datagram`, several per lock
//!   when they queue up, and tells the engine when the link has sent everything
//!   (`Engine::multicast_link_idle`): the channel is paced, so the events published while the
//!   link was sending go out together, several to a datagram.
//! - Shutdown: the reader stops with the node's tasks (`killed`), then the link sends what it
//!   still holds and closes the socket ([`Driver::stop_multicast`]); a kill drops it at once.
//!
//! - Every [`RTT_SAMPLE`] a task reads each connection's measured QUIC round trip and hands
//!   them to the engine (`Engine::channel_rtts`): the channel's repair timers follow the LAN
//!   (500 µs until the first sample).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::Driver;
use crate::NodeStats;
use crate::engine::SecretSource;
use crate::sync::lock;
use crate::transport::multicast::GroupSocket;
use crate::transport::multicast::link::{GroupLink, Inbound, LinkStats};

/// Datagrams waiting between the socket and the engine, and between the engine and the socket:
/// a window's worth (`ChannelConfig::window` = 256) several times over.
const QUEUE: usize = 1024;
/// Received datagrams handed to the engine under one lock at most.
const BATCH: usize = 64;
/// How often the connections' round trips are read for the channels.
const RTT_SAMPLE: Duration = Duration::from_millis(250);

/// The node's group link and what it counted (`Driver::multicast`).
#[derive(Debug, Default)]
pub(crate) struct MulticastIo {
    /// The running link; `None` once stopped.
    link: std::sync::Mutex<Option<GroupLink>>,
    /// The link's counts when it stopped.
    stopped: std::sync::Mutex<LinkStats>,
    /// Datagrams of the engine the link's queue had no room for (or that came after it
    /// stopped).
    queue_full: AtomicU64,
}

impl MulticastIo {
    fn link_stats(&self) -> LinkStats {
        match lock(&self.link).as_ref() {
            Some(link) => link.stats(),
            None => *lock(&self.stopped),
        }
    }
}

/// Fresh 32-byte channel secrets from the operating system's CSPRNG.
fn system_secrets() -> SecretSource {
    let rng = ring::rand::SystemRandom::new();
    Box::new(move || {
        // getrandom fails only on a system without a usable random source, where no key
        // could be made safely anyway.
        ring::rand::generate::<[u8; 32]>(&rng)
            .expect("the operating system's random source failed")
            .expose()
    })
}

impl Driver {
    /// Starts the group link on `socket`, the task feeding its datagrams to the engine, and
    /// the node's channel. Called once, from `NodeBuilder::start`, before any connection.
    pub(crate) fn start_multicast(self: &Arc<Self>, socket: GroupSocket) {
        let interface = socket.interface();
        tracing::info!(
            interface = %interface.name,
            addr = %interface.addr,
            group = %socket.group(),
            "multicast fan-out on"
        );
        let (inbound, rx) = mpsc::channel(QUEUE);
        let idle = Arc::new(Notify::new());
        let link = GroupLink::spawn(socket, inbound, QUEUE, Arc::clone(&idle));
        let io = MulticastIo {
            link: std::sync::Mutex::new(Some(link)),
            ..MulticastIo::default()
        };
        if self.multicast.set(io).is_err() {
            return; // started already
        }
        let driver = Arc::clone(self);
        self.tasks
            .spawn(async move { driver.read_group(rx, idle).await });
        let driver = Arc::clone(self);
        self.tasks.spawn(async move { driver.sample_rtts().await });
        let channel: u64 = rand::random();
        self.call(|engine, now| engine.open_channel(channel, system_secrets(), now));
    }

    /// Hands the engine's datagrams to the link without waiting (see the module docs).
    pub(super) fn send_multicast(&self, datagrams: impl Iterator<Item = Bytes>) {
        let Some(io) = self.multicast.get() else {
            return;
        };
        let link = lock(&io.link);
        for datagram in datagrams {
            let sent = link.as_ref().map(|l| l.try_send(datagram));
            if !matches!(sent, Some(Ok(()))) {
                io.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Feeds the group's datagrams to the engine, and the link's idle moments, until the node
    /// stops.
    async fn read_group(self: Arc<Self>, mut rx: mpsc::Receiver<Inbound>, idle: Arc<Notify>) {
        loop {
            let first = tokio::select! {
                () = self.killed.cancelled() => return,
                () = idle.notified() => {
                    self.call(|engine, now| engine.multicast_link_idle(now));
                    continue;
                }
                next = rx.recv() => match next {
                    Some(inbound) => inbound,
                    None => return, // the link ended
                },
            };
            self.call(|engine, now| {
                engine.on_multicast_datagram(&first.datagram, now);
                for _ in 1..BATCH {
                    let Ok(more) = rx.try_recv() else { break };
                    engine.on_multicast_datagram(&more.datagram, now);
                }
            });
        }
    }

    /// Hands the connections' measured round trips to the engine every [`RTT_SAMPLE`], until
    /// the node stops.
    async fn sample_rtts(self: Arc<Self>) {
        let mut every = tokio::time::interval(RTT_SAMPLE);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.killed.cancelled() => return,
                _ = every.tick() => {}
            }
            let samples: Vec<_> = lock(&self.state)
                .conns
                .iter()
                .map(|(conn, io)| (conn, io.conn.rtt()))
                .collect();
            self.call(|engine, _| engine.channel_rtts(&samples));
        }
    }

    /// Stops the link gracefully: what it holds is sent, then the socket closes.
    pub(super) async fn stop_multicast(&self) {
        let Some(io) = self.multicast.get() else {
            return;
        };
        let link = lock(&io.link).take();
        if let Some(link) = link {
            *lock(&io.stopped) = link.shutdown().await;
        }
    }

    /// Stops the link at once (a kill): nothing more is sent.
    pub(super) fn kill_multicast(&self) {
        if let Some(io) = self.multicast.get()
            && let Some(link) = lock(&io.link).take()
        {
            *lock(&io.stopped) = link.stats();
        }
    }

    /// Adds the multicast counters (the engine's channels and the link) to `stats`.
    pub(crate) fn multicast_stats(&self, stats: &mut NodeStats) {
        let Some(io) = self.multicast.get() else {
            return;
        };
        let link = io.link_stats();
        let channels = self.read(|engine| engine.channel_stats());
        stats.multicast_sent = link.sent;
        stats.multicast_events = channels.events;
        stats.multicast_received = link.received;
        stats.multicast_dropped = channels.dropped
            + link.dropped_full
            + link.receive_errors
            + link.send_errors
            + io.queue_full.load(Ordering::Relaxed);
        stats.multicast_forged = channels.forged;
        stats.multicast_repairs = channels.repairs;
        stats.multicast_demotions = channels.demotions;
        stats.multicast_rekeys = channels.rekeys;
    }
}
