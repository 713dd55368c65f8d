//! [`Message`]: what users send and what handlers receive.

use std::cell::RefCell;

use bytes::Bytes;
use shoal_proto::{Envelope, MessageId, MessageKind, NodeId, ReturnAddress, SmolStr};

/// A message: a header (id, name, kind, metadata) and a body of bytes.
///
/// Build one with [`Message::command`], [`Message::event`] or [`Message::document`], then add
/// metadata with the `with_*` methods. The id is assigned at creation and stays the same across
/// retries, so receivers can drop duplicates; create a new `Message` for a new piece of work.
///
/// ```
/// let msg = shoal::Message::command("create-invoice", &b"{\"order\":42}"[..])
///     .with_content_type("application/json")
///     .with_header("tenant", "acme")
///     .with_key("customer-7");
/// assert_eq!(msg.name(), "create-invoice");
/// assert_eq!(msg.header("tenant"), Some("acme"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Boxed: a message is moved many times between the API, the engine and the handlers,
    /// and a pointer moves for less than the envelope's 272 bytes.
    pub(crate) env: Box<Envelope>,
}

impl Message {
    fn new(kind: MessageKind, name: impl Into<SmolStr>, payload: impl Into<Bytes>) -> Self {
        let now_ms = message_ms();
        let id = fresh_id(now_ms);
        let (name, payload) = (name.into(), payload.into());
        let env = match SPARE.try_with(|spare| spare.borrow_mut().pop()) {
            // A spare box holds an emptied envelope (`empty`): only the fields a new message
            // sets are written, rather than a whole envelope built, copied in and the empty
            // one dropped.
            Ok(Some(mut spare)) => {
                spare.id = id;
                spare.kind = kind;
                spare.name = name;
                spare.timestamp_ms = now_ms;
                spare.payload = payload;
                spare
            }
            _ => Box::new(Envelope::new(id, kind, name, now_ms, payload)),
        };
        Self { env }
    }

    /// A command ("do this"), handled by exactly one instance of the receiving service.
    pub fn command(name: impl Into<SmolStr>, payload: impl Into<Bytes>) -> Self {
        Self::new(MessageKind::Command, name, payload)
    }

    /// An event ("this happened").
    pub fn event(name: impl Into<SmolStr>, payload: impl Into<Bytes>) -> Self {
        Self::new(MessageKind::Event, name, payload)
    }

    /// A document ("here is data").
    pub fn document(name: impl Into<SmolStr>, payload: impl Into<Bytes>) -> Self {
        Self::new(MessageKind::Document, name, payload)
    }

    /// A reply to `request`, sent under `name` with the request's id as correlation id.
    pub(crate) fn reply_to_request(request: MessageId, name: String, payload: Bytes) -> Self {
        let mut reply = Self::new(MessageKind::Reply, name, payload);
        reply.env.correlation_id = Some(request);
        reply
    }

    /// Adds a header (string metadata such as a trace id). Headers keep their order.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.headers.push((key.into(), value.into()));
        self
    }

    /// Sets the payload's MIME type, e.g. `application/json`.
    pub fn with_content_type(mut self, content_type: impl Into<SmolStr>) -> Self {
        self.env.content_type = content_type.into();
        self
    }

    /// Sets the version of the message type's schema (default 1).
    pub fn with_version(mut self, version: u16) -> Self {
        self.env.version = version;
        self
    }

    /// Sets the partition key: messages with one key are meant to be handled in order.
    pub fn with_key(mut self, key: impl Into<SmolStr>) -> Self {
        self.env.partition_key = Some(key.into());
        self
    }

    /// Sets the correlation id, e.g. to tie a message to the request it follows up on.
    pub fn with_correlation_id(mut self, id: MessageId) -> Self {
        self.env.correlation_id = Some(id);
        self
    }

    /// Asks the receiver to reply asynchronously: its handler's reply is sent back to this
    /// service under the message name `channel`, where a handler registered with
    /// [`crate::Node::handle`] receives it (match it up with [`Message::correlation_id`]).
    /// The sending node fills in its own service and node id when the message is sent.
    pub fn with_reply_channel(mut self, channel: impl Into<SmolStr>) -> Self {
        self.env.reply_to = Some(ReturnAddress {
            service: SmolStr::default(),
            node: None,
            channel: channel.into(),
        });
        self
    }

    /// The unique id; the same on every redelivery.
    pub fn id(&self) -> MessageId {
        self.env.id
    }

    /// Command, event, document or reply.
    pub fn kind(&self) -> MessageKind {
        self.env.kind
    }

    /// The message type (for events, the topic).
    pub fn name(&self) -> &str {
        &self.env.name
    }

    /// The schema version of the message type.
    pub fn version(&self) -> u16 {
        self.env.version
    }

    /// The payload's MIME type; empty if none was set.
    pub fn content_type(&self) -> &str {
        &self.env.content_type
    }

    /// The body.
    pub fn payload(&self) -> &Bytes {
        &self.env.payload
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.env
            .headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All headers in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.env.headers
    }

    /// For replies: the id of the request answered.
    pub fn correlation_id(&self) -> Option<MessageId> {
        self.env.correlation_id
    }

    /// Where a reply to this message goes, if it asked for one.
    pub fn reply_to(&self) -> Option<&ReturnAddress> {
        self.env.reply_to.as_ref()
    }

    /// The partition key, if any.
    pub fn key(&self) -> Option<&str> {
        self.env.partition_key.as_deref()
    }

    /// Which delivery attempt this is: 1 the first time, more on redeliveries.
    pub fn attempt(&self) -> u32 {
        self.env.attempt
    }

    /// Whether this delivery is a retry (the receiver may have seen the message before, on
    /// this or another instance).
    pub fn is_redelivery(&self) -> bool {
        self.env.attempt > 1
    }

    /// Unix time in milliseconds when the message was created: read from the system clock
    /// then, or by the same thread at most some tens of microseconds before (longer only if
    /// the machine was paused in between, as a VM can be).
    pub fn timestamp_ms(&self) -> u64 {
        self.env.timestamp_ms
    }

    /// The wire envelope, for tools that need every field.
    pub fn envelope(&self) -> &Envelope {
        &self.env
    }

    /// Wraps an envelope received from the wire.
    pub(crate) fn from_envelope(env: Envelope) -> Self {
        Self { env: Box::new(env) }
    }

    /// Fills in the return address of a request from `service`/`node`.
    pub(crate) fn address_replies(&mut self, service: &str, node: NodeId) {
        if let Some(addr) = &mut self.env.reply_to {
            addr.service = SmolStr::new(service);
            addr.node = Some(node);
        }
    }
}

/// Envelope boxes kept for reuse on one thread: at most this many.
const SPARE_BOXES: usize = 512;

thread_local! {
    /// Boxes of envelopes whose operation ended, emptied, for the next messages made on this
    /// thread. A batch of events frees its boxes together, and the allocator's per-thread
    /// cache holds only a few of a size: the rest went through its slow paths, on freeing and
    /// again when the next batch was made (about a tenth of a publisher's instructions).
    #[allow(clippy::vec_box, reason = "the boxes are what is kept, for messages to reuse")]
    static SPARE: RefCell<Vec<Box<Envelope>>> = const { RefCell::new(Vec::new()) };
}

/// Keeps the boxes of `envelopes`, which are done with, for messages made later on this
/// thread (up to [`SPARE_BOXES`]; the others are freed). What they held is dropped now: a
/// spare box keeps no payload alive.
pub(crate) fn recycle(envelopes: impl Iterator<Item = Box<Envelope>>) {
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        for mut envelope in envelopes {
            if spare.len() >= SPARE_BOXES {
                break; // the rest are dropped as usual
            }
            empty(&mut envelope);
            spare.push(envelope);
        }
    });
}

/// Empties `envelope` for a spare box: nothing in it owns memory any more, and every field
/// a new message does not set ([`Message::new`]) has its default. Field by field, as only a
/// few usually hold anything: cheaper than building an empty envelope to copy over it.
fn empty(envelope: &mut Envelope) {
    envelope.name = SmolStr::default();
    envelope.version = 1;
    envelope.content_type = SmolStr::default();
    envelope.headers = Vec::new();
    envelope.correlation_id = None;
    envelope.reply_to = None;
    envelope.partition_key = None;
    envelope.attempt = 0;
    envelope.payload = Bytes::new();
}

/// A new time-ordered message id (for messages, and for batches of events).
pub(crate) fn fresh_id(now_ms: u64) -> MessageId {
    MessageId::from_parts(now_ms, rand::random())
}

/// The wall clock in Unix milliseconds for a new message's id and timestamp: [`unix_ms`],
/// or this thread's last reading of it while that is fresh.
///
/// Reading the clock for every message cost a loop making messages about 7 % of its time (in
/// a VM, `clock_gettime` fences the CPU's time-stamp counter, reads it and scales it). The
/// counter alone costs a few nanoseconds, so in a busy loop most messages take a reading up
/// to some tens of microseconds old: the clock is read again once the counter has advanced
/// [`FRESH_TICKS`] since the last reading. This holds only where the kernel keeps its own
/// clock with that counter (its clock source is `tsc`, checked once per process), which it
/// does only once it has found the counter steady and the same on every CPU; elsewhere every
/// message reads the clock. (RDTSCP, which also says which CPU the counter was read on, cost
/// as much as the clock on the VM it was measured on.)
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn message_ms() -> u64 {
    use std::cell::Cell;
    use std::sync::OnceLock;

    thread_local! {
        /// The counter when this thread last read the clock (0: never), and what it read.
        static READ: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    /// Whether the kernel's clock source is the time-stamp counter (read once).
    static COUNTER: OnceLock<bool> = OnceLock::new();
    let usable = *COUNTER.get_or_init(|| {
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .is_ok_and(|source| source.trim() == "tsc")
    });
    if !usable {
        return unix_ms();
    }
    // SAFETY: every x86_64 CPU has RDTSC; it reads a register and has no precondition.
    let ticks = unsafe { std::arch::x86_64::_rdtsc() };
    // A `Cell` of plain numbers has nothing to drop: `with` cannot find it gone.
    READ.with(|read| {
        let (at, ms) = read.get();
        if at != 0 && ticks.wrapping_sub(at) < FRESH_TICKS {
            return ms;
        }
        let ms = unix_ms();
        read.set((ticks, ms));
        ms
    })
}

/// How far the time-stamp counter may advance before [`message_ms`] reads the clock again:
/// 2^16 ticks, 16 µs at 4 GHz to 66 µs at 1 GHz.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const FRESH_TICKS: u64 = 1 << 16;

/// The wall clock in Unix milliseconds for a new message: read each time where [`message_ms`]
/// cannot tell whether the CPU's counter can be trusted.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn message_ms() -> u64 {
    unix_ms()
}

/// The wall clock in Unix milliseconds (0 before 1970).
///
/// New messages read it through [`message_ms`]. On Unix it is read with `clock_gettime`
/// directly: the same clock as `SystemTime::now`, without `duration_since`'s checked
/// arithmetic and the `u128` of `as_millis`, which cost three times the read itself (about 80
/// of a message's instructions).
#[cfg(unix)]
pub(crate) fn unix_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration; CLOCK_REALTIME
    // always exists, so the call cannot fail (on failure `now` stays at 0 anyway).
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut now) };
    match (u64::try_from(now.tv_sec), u64::try_from(now.tv_nsec)) {
        (Ok(secs), Ok(nanos)) => secs * 1000 + nanos / 1_000_000,
        _ => 0,
    }
}

/// The wall clock in Unix milliseconds (0 before 1970).
#[cfg(not(unix))]
pub(crate) fn unix_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_box_keeps_nothing_and_serves_the_next_message() {
        let payload = Bytes::from(vec![7u8; 4096]);
        let done = Message::event("order.created", payload.clone())
            .with_header("tenant", "acme")
            .with_key("customer-7");
        let address = std::ptr::from_ref::<Envelope>(&done.env) as usize;
        recycle(std::iter::once(done.env));
        assert!(payload.is_unique(), "a spare box keeps no payload alive");
        let next = Message::event("order.shipped", &b"1"[..]);
        let reused = std::ptr::from_ref::<Envelope>(&next.env) as usize;
        assert_eq!(reused, address, "the next message takes the spare box");
        assert_eq!(next.name(), "order.shipped");
        assert_eq!(next.payload().as_ref(), b"1");
        assert!(next.headers().is_empty());
        assert_eq!(next.key(), None);
        assert_eq!(next.kind(), MessageKind::Event);
        assert_ne!(next.id(), MessageId::from_u128(0));
    }

    /// A message made in a spare box is the one made in a new box, whatever the box held.
    #[test]
    fn a_message_in_a_spare_box_is_a_new_message() {
        let done = Message::command("order.created", &b"x"[..])
            .with_header("tenant", "acme")
            .with_key("customer-7")
            .with_content_type("application/json")
            .with_version(3);
        recycle(std::iter::once(done.env));
        let next = Message::event("order.shipped", &b"1"[..]);
        let fresh = Envelope::new(
            next.id(),
            MessageKind::Event,
            "order.shipped",
            next.env.timestamp_ms,
            Bytes::from_static(b"1"),
        );
        assert_eq!(*next.env, fresh);
    }

    /// The direct clock read is `SystemTime`'s clock.
    #[test]
    fn unix_ms_reads_the_system_clock() {
        use std::time::{SystemTime, UNIX_EPOCH};
        let since_1970 = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
        };
        let before = since_1970();
        let ms = unix_ms();
        let after = since_1970();
        assert!(
            before.as_millis() as u64 <= ms && ms <= after.as_millis() as u64,
            "{before:?} <= {ms} ms <= {after:?}"
        );
    }

    #[test]
    fn a_message_timestamp_follows_the_clock() {
        // Taken from an earlier reading only while that reading is fresh: once the clock has
        // moved on by two milliseconds, a new message says so. (That the earlier reading is
        // taken at all is not tested: it only makes messages cheaper.)
        let first = Message::event("t", Bytes::new()).timestamp_ms();
        let before = unix_ms();
        assert!(
            first <= before,
            "{first} ms is not ahead of the clock ({before} ms)"
        );
        let mut now = before;
        for _ in 0..10_000_000 {
            now = unix_ms();
            if now >= first + 2 {
                break;
            }
            std::hint::spin_loop();
        }
        assert!(
            now >= first + 2,
            "the clock did not move on in 10 million reads"
        );
        let next = Message::event("t", Bytes::new()).timestamp_ms();
        let after = unix_ms();
        assert!(
            first + 2 <= next && next <= after,
            "{first} + 2 ms <= {next} ms <= {after} ms"
        );
    }

    #[test]
    fn at_most_so_many_spare_boxes_are_kept() {
        let done: Vec<_> = (0..SPARE_BOXES + 10)
            .map(|_| Message::event("t", Bytes::new()).env)
            .collect();
        recycle(done.into_iter());
        assert_eq!(SPARE.with_borrow(Vec::len), SPARE_BOXES);
    }
}
