//! Per event of a pass: how many subscribers ran it and the latest one's latency, from the
//! send stamp the payload carries (all nodes run in one process, so one clock).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// Per event sequence number: how many subscribers ran it and the latest one's latency.
pub(super) struct Slots {
    epoch: Instant,
    count: Vec<AtomicU32>,
    last_ns: Vec<AtomicU64>,
}

impl Slots {
    pub(super) fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            epoch: Instant::now(),
            count: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            last_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many events it has room for.
    pub(super) fn capacity(&self) -> usize {
        self.count.len()
    }

    /// How many subscribers ran event `i` so far.
    pub(super) fn runs(&self, i: usize) -> u32 {
        self.count[i].load(Ordering::Acquire)
    }

    /// The latest subscriber's latency for event `i`, in nanoseconds.
    pub(super) fn latency_ns(&self, i: usize) -> u64 {
        self.last_ns[i].load(Ordering::Relaxed)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A subscriber's handler: records the event's latency.
    pub(super) fn record(&self, payload: &[u8]) {
        let now = self.now_ns();
        let (Some(seq), Some(sent)) = (read_u64(payload, 0), read_u64(payload, 8)) else {
            return;
        };
        let Ok(i) = usize::try_from(seq) else { return };
        if let (Some(count), Some(last)) = (self.count.get(i), self.last_ns.get(i)) {
            last.fetch_max(now.saturating_sub(sent), Ordering::Relaxed);
            count.fetch_add(1, Ordering::Release);
        }
    }

    pub(super) fn payload(&self, seq: u64, size: usize) -> Bytes {
        let mut buf = BytesMut::with_capacity(size);
        buf.put_u64(seq);
        buf.put_u64(self.now_ns());
        buf.resize(size, 0xab);
        buf.freeze()
    }
}

fn read_u64(payload: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_sequence_and_stamp() {
        let slots = Slots::new(4);
        let payload = slots.payload(3, 64);
        assert_eq!(payload.len(), 64);
        assert_eq!(read_u64(&payload, 0), Some(3));
        slots.record(&payload);
        slots.record(&payload);
        assert_eq!(slots.runs(3), 2);
        // Out of range or truncated payloads are ignored, not a panic.
        slots.record(&slots.payload(9, 64));
        slots.record(&payload[..10]);
    }
}
