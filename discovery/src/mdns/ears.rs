//! The listener's group sockets over the node's life.
//!
//! At start the listener opens a socket per selected interface and address family
//! ([`super::listen`]). Interfaces change while a node runs: a DHCP lease arrives after the
//! service started, a VPN or a bridge is made anew (with a new index), a selector such as
//! `AllMulticast` matches an interface plugged in later. At every interface check
//! (`MdnsConfig::interface_check`, the interval mdns-sd looks at its interfaces too) the
//! [`InterfaceWatch`] compares what is selected now with the sockets open: it opens the
//! missing ones and closes those of interfaces no longer selected. A link heard anew over IPv4
//! gets a start-up query of its own, so the instances already on it are learnt at once, not at
//! their next announcement; mdns-sd announces this node there after its own check.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::InterfaceSelector;
use super::listen::{Ear, Listener, OpenEar, Table, open_ears, selected_ears};
use super::oneshot::StartupQuery;
use super::state::{State, lock};
use crate::event::EventSender;

/// The listener's open group sockets.
pub(super) struct Ears {
    listener: Arc<Listener>,
    table: Arc<Mutex<Table>>,
    open: Vec<OpenEar>,
}

impl Ears {
    /// Starts a thread of `listener` for each of `ears` (the sockets opened at start).
    pub(super) fn start(listener: Listener, table: Arc<Mutex<Table>>, ears: Vec<Ear>) -> Self {
        let mut started = Self {
            listener: Arc::new(listener),
            table,
            open: Vec::new(),
        };
        started.spawn(ears);
        started
    }

    /// Whether no socket is read (then mdns-sd's browse keeps the table).
    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn state(&self) -> &Mutex<State> {
        &self.listener.state
    }

    /// Starts a thread per ear; a thread that cannot start is a note. Returns the interfaces
    /// of the IPv4 ones started.
    fn spawn(&mut self, ears: Vec<Ear>) -> Vec<String> {
        let mut v4 = Vec::new();
        for ear in ears {
            let key = ear.key();
            match self.listener.spawn(ear, &self.table) {
                Ok(open) => {
                    if !key.v6 {
                        v4.push(key.interface);
                    }
                    self.open.push(open);
                }
                Err(e) => lock(self.state()).note(format!("listener on {}: {e}", key.interface)),
            }
        }
        v4
    }

    /// Opens a socket for each interface and family `selected` selects now and none is open
    /// for, and closes those no longer selected. Returns the interfaces heard anew over IPv4.
    fn refresh(&mut self, selected: &[InterfaceSelector]) -> Vec<String> {
        let Some(wanted) = selected_ears(selected, self.state()) else {
            return Vec::new();
        };
        let (kept, gone): (Vec<OpenEar>, Vec<OpenEar>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|open| wanted.iter().any(|wanted| wanted.key == open.key));
        self.open = kept;
        // An interface's addresses change without a new index: what its socket checks the
        // announced addresses against follows them.
        for open in &self.open {
            if let Some(wanted) = wanted.iter().find(|wanted| wanted.key == open.key) {
                let mut link = lock(&open.link);
                if **link != wanted.link {
                    *link = Arc::new(wanted.link.clone());
                }
            }
        }
        for ear in gone {
            lock(self.state()).note(format!(
                "listener: {} is no longer selected; its group socket is closed",
                ear.key.interface
            ));
            ear.close();
        }
        let new: Vec<_> = wanted
            .into_iter()
            .filter(|wanted| !self.open.iter().any(|open| open.key == wanted.key))
            .collect();
        if new.is_empty() {
            return Vec::new();
        }
        let ears = open_ears(new, self.state());
        for ear in &ears {
            lock(self.state()).note(format!("listener: now also hears {}", ear.key().interface));
        }
        self.spawn(ears)
    }

    /// Ends every thread's read, so each sees the stop flag at once, and hands the threads
    /// over to be joined.
    pub(super) fn stop(&mut self) -> Vec<JoinHandle<()>> {
        let open = std::mem::take(&mut self.open);
        for ear in &open {
            ear.wake();
        }
        open.into_iter().map(|ear| ear.thread).collect()
    }
}

/// Looks at the selected interfaces every interface check, on the event thread.
pub(super) struct InterfaceWatch {
    pub(super) ears: Arc<Mutex<Ears>>,
    pub(super) selected: Vec<InterfaceSelector>,
    pub(super) every: Duration,
    pub(super) next: Instant,
    /// What a start-up query on a link heard anew reports to, and stops with.
    pub(super) events: EventSender,
    pub(super) stop: Arc<AtomicBool>,
}

impl InterfaceWatch {
    /// Refreshes the listener's sockets when the check is due, and queries the links heard
    /// anew.
    pub(super) fn tick(&mut self, now: Instant) {
        if now < self.next {
            return;
        }
        self.next = now + self.every;
        let (fresh, state, table) = {
            let mut ears = lock(&self.ears);
            let fresh = ears.refresh(&self.selected);
            (
                fresh,
                Arc::clone(&ears.listener.state),
                Arc::clone(&ears.table),
            )
        };
        if fresh.is_empty() {
            return;
        }
        // Without an introduction: the one made at start may list subscriptions the node
        // has changed since, and mdns-sd announces the current records on the new link.
        let query = StartupQuery {
            selected: fresh.into_iter().map(InterfaceSelector::Name).collect(),
            events: self.events.clone(),
            state: Arc::clone(&state),
            stop: Arc::clone(&self.stop),
            introduction: None,
            table: Some(table),
        };
        let askers = query.askers();
        if askers.is_empty() {
            return;
        }
        // Not joined: it ends by itself within the query's few seconds, or at the stop flag.
        if let Err(e) = query.spawn(askers) {
            lock(&state).note(format!(
                "start-up query on a new interface not started: {e}"
            ));
        }
    }
}
