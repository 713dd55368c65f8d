//! The callers of gathered messages: a slot each for its result and its waker
//! ([`Callers`]), the operations' results handed to them ([`Claim`]), and the future each
//! caller awaits ([`Gathered`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use smallvec::SmallVec;

use super::super::Driver;
use crate::engine::send::Events;
use crate::engine::{Done, OpId};
use crate::sync::lock;
use crate::{Error, Message};

/// The callers whose messages travel together: a slot each, in the order they called.
/// A slot is made when first used (its caller polls or gives up, or the messages are handed
/// over), not when the caller joins: that would take this lock once more per call.
pub(super) struct Callers {
    slots: Mutex<Slots>,
    /// Whether a caller gave up (dropped its future before its result): then the last
    /// caller to stop waiting cancels the operations, whose other messages (requests
    /// answered on their own) may be done while its message is still being retried.
    gave_up: AtomicBool,
}

struct Slots {
    slots: Vec<Slot>,
    /// How many callers stopped waiting (took their results, or gave up).
    stopped: usize,
    /// The operations their messages went in (one, or one each when they went alone).
    ops: SmallVec<[OpId; 1]>,
}

/// One caller's: its result once there, its waker, and whether it still waits.
struct Slot {
    result: Option<Result<Done, Error>>,
    waker: Option<Waker>,
    waiting: bool,
}

impl Slot {
    const WAITING: Self = Self {
        result: None,
        waker: None,
        waiting: true,
    };
}

impl Callers {
    /// Callers to come, with room for `room` of them.
    pub(super) fn with_room(room: usize) -> Arc<Self> {
        Self::of(Vec::with_capacity(room))
    }

    fn of(slots: Vec<Slot>) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(Slots {
                slots,
                stopped: 0,
                ops: SmallVec::new(),
            }),
            gave_up: AtomicBool::new(false),
        })
    }

    /// One caller, told `error` already.
    pub(super) fn refused(error: Error) -> Arc<Self> {
        Self::of(vec![Slot {
            result: Some(Err(error)),
            ..Slot::WAITING
        }])
    }

    /// The `messages` (one per caller, in their order) whose callers still wait, with their
    /// slots; every caller's slot is made from now on.
    pub(super) fn still_waiting(&self, messages: Vec<Message>) -> (Events, SmallVec<[usize; 8]>) {
        let count = messages.len();
        let (mut waiting, mut slots) =
            (Events::with_capacity(count), SmallVec::with_capacity(count));
        let mut callers = lock(&self.slots);
        if let Some(last) = count.checked_sub(1) {
            callers.slot(last);
        }
        for (slot, message) in messages.into_iter().enumerate() {
            if callers.slots[slot].waiting {
                waiting.push(message);
                slots.push(slot);
            }
        }
        (waiting, slots)
    }

    /// Their messages went in operation `op` (cancelled once every caller gave up).
    pub(super) fn went_in(&self, op: OpId) {
        lock(&self.slots).ops.push(op);
    }

    /// Gives slot `slot` its `result` ([`Slots::fill`]).
    pub(super) fn fill(
        &self,
        slot: usize,
        result: Result<Done, Error>,
        wake: &mut impl Extend<Waker>,
    ) {
        lock(&self.slots).fill(slot, result, wake);
    }
}

impl Slots {
    /// Slot `slot`, made (with those before it) if it was not yet.
    fn slot(&mut self, slot: usize) -> &mut Slot {
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || Slot::WAITING);
        }
        &mut self.slots[slot]
    }

    /// Gives slot `slot` its `result`, unless it has one (a request answered before its
    /// operation ended) or its caller stopped waiting; its waker goes in `wake`.
    fn fill(&mut self, slot: usize, result: Result<Done, Error>, wake: &mut impl Extend<Waker>) {
        let slot = self.slot(slot);
        if slot.result.is_some() || !slot.waiting {
            return;
        }
        slot.result = Some(result);
        wake.extend(slot.waker.take());
    }
}

/// Which callers an operation's results go to: its messages' slots, in the operation's order.
pub(in crate::runtime) struct Claim {
    callers: Arc<Callers>,
    slots: SmallVec<[usize; 8]>,
}

impl Claim {
    /// The results of an operation of the messages of `slots` go to `callers`.
    pub(super) fn new(callers: Arc<Callers>, slots: SmallVec<[usize; 8]>) -> Self {
        Self { callers, slots }
    }

    /// Hands the result of the operation's request `index` (`Action::Answered`) to its
    /// caller, whose waker goes in `wake`; the others wait on.
    pub(in crate::runtime) fn answer(
        &self,
        index: u32,
        result: Result<Message, Error>,
        wake: &mut impl Extend<Waker>,
    ) {
        if let Some(slot) = self.slots.get(index as usize) {
            lock(&self.callers.slots).fill(*slot, result.map(Done::Replied), wake);
        }
    }

    /// Hands the operation's `result` to its callers (but those told already), whose wakers
    /// go in `wake`.
    pub(in crate::runtime) fn settle(
        self,
        result: Option<Result<Done, Error>>,
        wake: &mut impl Extend<Waker>,
    ) {
        let mut callers = lock(&self.callers.slots);
        let mut fill = |slot: &usize, result| callers.fill(*slot, result, wake);
        match result {
            Some(Ok(Done::PublishedEach(each))) => {
                for (slot, result) in self.slots.iter().zip(each) {
                    fill(slot, result.map(Done::Published));
                }
            }
            Some(Ok(Done::SentEach(each))) => {
                for (slot, result) in self.slots.iter().zip(each) {
                    fill(slot, result.map(Done::Sent));
                }
            }
            // Separate calls' requests: each caller was told when its own was answered.
            Some(Ok(Done::RepliedEach)) => {}
            // One message's own operation (it went alone).
            Some(Ok(done)) => {
                if let Some(slot) = self.slots.first() {
                    fill(slot, Ok(done));
                }
            }
            Some(Err(e)) => self.slots.iter().for_each(|s| fill(s, Err(e.duplicate()))),
            None => self
                .slots
                .iter()
                .for_each(|s| fill(s, Err(Error::ShuttingDown))),
        }
    }
}

/// A gathered message's caller: resolves with the message's own result.
pub(crate) struct Gathered {
    driver: Arc<Driver>,
    callers: Arc<Callers>,
    slot: usize,
    done: bool,
}

impl Gathered {
    /// The caller of slot `slot` of `callers`, counted as waiting for a call.
    pub(super) fn new(driver: Arc<Driver>, callers: Arc<Callers>, slot: usize) -> Self {
        driver.wakeups.caller_waits();
        Self {
            driver,
            callers,
            slot,
            done: false,
        }
    }
}

impl Future for Gathered {
    type Output = Result<Done, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = self.slot;
        let mut slots = lock(&self.callers.slots);
        let slot = slots.slot(slot);
        if let Some(result) = slot.result.take() {
            slot.waiting = false;
            slots.stopped += 1;
            drop(slots);
            self.done = true;
            return Poll::Ready(result);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        self.driver.wakeups.caller_done();
        // Usually every caller takes its result, and nothing is left to cancel.
        if self.done && !self.callers.gave_up.load(Ordering::Acquire) {
            return;
        }
        // Gave up (or another did): a message not handed over yet is not sent; once no
        // caller of an operation waits, the operation is cancelled (it may be done already).
        let ops = {
            let mut slots = lock(&self.callers.slots);
            if !self.done {
                self.callers.gave_up.store(true, Ordering::Release);
                let slot = slots.slot(self.slot);
                slot.waker = None;
                if std::mem::replace(&mut slot.waiting, false) {
                    slots.stopped += 1;
                }
            }
            // Slots not made yet belong to callers that have not polled; that can only be
            // before the hand-over (which makes every slot), when there is no operation to
            // cancel.
            if slots.stopped < slots.slots.len() {
                return;
            }
            std::mem::take(&mut slots.ops)
        };
        for op in ops {
            self.driver.cancel_gathered(op);
        }
    }
}
