//! Asking again for the instances deliveries wait for: one timer per instance, not one per
//! delivery.
//!
//! A delivery that finds no live connection for its route asks for connections to the
//! announced instances that can take it ([`Engine::connect_for`]); the directory says when
//! each may be asked for again (1 s, doubling to 8 s while the asks bring no connection,
//! [`super::directory::ASK_AGAIN`]). The delivery then waits, up to its hold or deadline, as
//! one of each such instance's **waiters**, and the instance's timer asks again once for all
//! of them: ten thousand deliveries held for one unreachable instance cost one ask a wake,
//! not ten thousand.
//!
//! Waiters are checked when met, not when they move on: a delivery whose epoch changed since
//! it started waiting (it went, ended, or waits anew) is dropped from the front of the list
//! when the timer fires, and the whole list is swept once it has grown to twice what was
//! live at its last sweep, so the upkeep is O(1) per delivery that waits. An instance whose
//! waiters have all moved on, that connected or that is no longer announced is not asked for
//! again.
//!
//! Whatever changes the instances a route can use (one connects, goes, is announced, changes
//! its subscriptions) changes the peers, and every waiting delivery then looks again itself
//! ([`Engine::wake_waiting`]), asking for the instances its route has now.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use shoal_proto::NodeId;
use slotmap::SlotMap;

use super::delivery::{Delivery, State};
use super::send::DeliveryId;
use super::{Engine, Timer};

/// The instances a delivery asked for, each with when it may be asked for again
/// ([`Engine::connect_for`]).
pub(super) type Asked = smallvec::SmallVec<[(NodeId, Instant); 4]>;

/// Below this many waiters an instance's list is not swept: a sweep would save little.
const SWEEP_FROM: usize = 16;

/// The waiters of every instance asked for. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Reasks {
    by_node: HashMap<NodeId, Waiters>,
    /// Instances asked for by deliveries, one by one (what a wake costs; for the tests).
    #[cfg(test)]
    pub(super) asks: u64,
}

/// The deliveries waiting for one instance, and when its timer is set for.
#[derive(Debug)]
struct Waiters {
    /// The instant of the instance's timer ([`Timer::AskAgain`]); a timer set for another
    /// instant was replaced by an earlier one.
    armed: Instant,
    /// The deliveries, each with the epoch it started waiting in.
    deliveries: VecDeque<(DeliveryId, u32)>,
    /// How many were live at the last sweep.
    kept: usize,
}

impl<H: Clone> Engine<H> {
    /// Delivery `d`, waiting in `epoch`, waits for the instances it `asked` for: each is asked
    /// for again when the directory allows, while `d` (or another delivery) still waits.
    pub(super) fn wait_for_asks(&mut self, asked: &Asked, d: DeliveryId, epoch: u32) {
        for &(node, at) in asked {
            let deliveries = &self.out.deliveries;
            let waiters = self.reasks.by_node.entry(node).or_insert(Waiters {
                armed: at,
                deliveries: VecDeque::new(),
                kept: 0,
            });
            let arm = waiters.deliveries.is_empty() || at < waiters.armed;
            waiters.deliveries.push_back((d, epoch));
            if waiters.deliveries.len() >= 2 * waiters.kept.max(SWEEP_FROM) {
                waiters.deliveries.retain(|&(d, e)| waits(deliveries, d, e));
                waiters.kept = waiters.deliveries.len();
            }
            if arm {
                waiters.armed = at;
                self.set_timer(at, Timer::AskAgain(node, at));
            }
        }
    }

    /// The timer set at `at` for `node` fired: if a delivery still waits for it, asks for it
    /// again (unless it connected or is no longer announced), and sets the timer for the ask
    /// after.
    pub(super) fn ask_again_timer(&mut self, node: NodeId, at: Instant, now: Instant) {
        let deliveries = &self.out.deliveries;
        let Some(waiters) = self.reasks.by_node.get_mut(&node) else {
            return;
        };
        if waiters.armed != at {
            return;
        }
        while let Some(&(d, epoch)) = waiters.deliveries.front() {
            if waits(deliveries, d, epoch) {
                break;
            }
            waiters.deliveries.pop_front();
        }
        if waiters.deliveries.is_empty() {
            self.reasks.by_node.remove(&node);
            return;
        }
        match self.ask(node, now) {
            Some(next) => {
                if let Some(waiters) = self.reasks.by_node.get_mut(&node) {
                    waiters.armed = next;
                }
                self.set_timer(next, Timer::AskAgain(node, next));
            }
            // Connected (its waiters were woken by the peers' change), or no longer announced.
            None => {
                self.reasks.by_node.remove(&node);
            }
        }
    }
}

impl Reasks {
    /// How many entries `node`'s list of waiters holds, moved on or not (for the tests).
    #[cfg(test)]
    pub(super) fn listed(&self, node: NodeId) -> usize {
        self.by_node.get(&node).map_or(0, |w| w.deliveries.len())
    }
}

/// Whether delivery `d` still waits as it did in `epoch`.
fn waits(deliveries: &SlotMap<DeliveryId, Delivery>, d: DeliveryId, epoch: u32) -> bool {
    deliveries
        .get(d)
        .is_some_and(|del| del.epoch == epoch && del.state == State::Instance)
}
