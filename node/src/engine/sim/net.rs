//! The links of the simulated network: each joins two engines' connections, carries decoded
//! frames with a delay, and applies its faults.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::RngExt;
use rand::rngs::SmallRng;
use shoal_proto::{Frame, Limits, codec};

use crate::engine::ConnId;

/// What a link does to the frames that carry messages and their answers (runs, acks, nacks,
/// replies). Other frames (hellos, subscriptions, pings, goodbyes) only take the latency.
#[derive(Clone, Debug)]
pub(in crate::engine) struct Faults {
    /// One-way delay of every frame.
    pub(in crate::engine) latency: Duration,
    /// Extra delay, drawn uniformly from zero to this.
    pub(in crate::engine) jitter: Duration,
    /// Chance that a frame is lost.
    pub(in crate::engine) loss: f64,
    /// Chance that a frame arrives twice.
    pub(in crate::engine) duplicate: f64,
    /// Whether frames may overtake each other (by their jitter); otherwise a link delivers in
    /// order, like a QUIC stream.
    pub(in crate::engine) reorder: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::from_micros(50),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: false,
        }
    }
}

/// A frame on its way.
#[derive(Debug)]
pub(in crate::engine) struct Packet {
    pub(super) to: usize,
    link: usize,
    frame: Frame,
}

#[derive(Debug)]
struct Link {
    /// Each side: its node and its connection id there.
    ends: [(usize, ConnId); 2],
    faults: Faults,
    up: bool,
    /// Taken down by a close: what was sent before it still arrives (QUIC delivers what is on
    /// the wire before the close), unlike a cut, which loses it.
    closing: bool,
    /// Whether each side finished its stream (after its goodbye): it writes nothing more.
    finished: [bool; 2],
    /// The last arrival scheduled towards each side (frames arrive in order unless reordered).
    last: [Instant; 2],
    /// Whether each side stopped reading, and the frames held meanwhile.
    paused: [bool; 2],
    held: [Vec<Packet>; 2],
}

/// Frames written, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(in crate::engine) struct FrameCounts {
    pub(in crate::engine) messages: u64,
    pub(in crate::engine) acks: u64,
    pub(in crate::engine) others: u64,
}

/// Every link of the network.
#[derive(Debug, Default)]
pub(in crate::engine) struct Net {
    links: Vec<Link>,
    by_conn: BTreeMap<(usize, ConnId), usize>,
    counts: FrameCounts,
}

impl Net {
    /// Joins `a`'s connection `ca` and `b`'s connection `cb`.
    pub(super) fn link(&mut self, a: usize, ca: ConnId, b: usize, cb: ConnId, faults: Faults) {
        let far_past = Instant::now() - Duration::from_secs(1);
        self.links.push(Link {
            ends: [(a, ca), (b, cb)],
            faults,
            up: true,
            closing: false,
            finished: [false; 2],
            last: [far_past; 2],
            paused: [false; 2],
            held: [Vec::new(), Vec::new()],
        });
        let i = self.links.len() - 1;
        self.by_conn.insert((a, ca), i);
        self.by_conn.insert((b, cb), i);
    }

    /// Sends what `from` wrote on `conn`: each frame, with its arrival time (none if the link
    /// is down or the frame was lost; two if it was duplicated).
    pub(super) fn send(
        &mut self,
        from: usize,
        conn: ConnId,
        mut buf: BytesMut,
        rng: &mut SmallRng,
        now: Instant,
    ) -> Vec<(Instant, Packet)> {
        let Some(&index) = self.by_conn.get(&(from, conn)) else {
            return Vec::new();
        };
        let link = &mut self.links[index];
        let side = usize::from(link.ends[0].0 == from);
        // `side` is the receiving end; the sender's is the other.
        if !link.up || link.finished[1 - side] {
            return Vec::new();
        }
        let to = link.ends[side].0;
        let mut out = Vec::new();
        loop {
            let frame = match codec::decode(&mut buf, &Limits::default()) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => panic!("an engine wrote a frame its peer cannot decode: {e}"),
            };
            match frame {
                Frame::Messages(_) => self.counts.messages += 1,
                Frame::Ack(_) => self.counts.acks += 1,
                _ => self.counts.others += 1,
            }
            let data = matches!(
                frame,
                Frame::Messages(_) | Frame::Ack(_) | Frame::Nack(_) | Frame::Reply(_)
            );
            let f = &link.faults;
            let copies = if !data {
                1
            } else if rng.random_bool(f.loss) {
                0
            } else if rng.random_bool(f.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let jitter = if f.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    f.jitter.mul_f64(rng.random())
                };
                let mut at = now + f.latency + jitter;
                if !(data && f.reorder) {
                    at = at.max(link.last[side]);
                    link.last[side] = at;
                }
                out.push((
                    at,
                    Packet {
                        to,
                        link: index,
                        frame: frame.clone(),
                    },
                ));
            }
        }
        out
    }

    /// Frames written so far.
    pub(super) fn frames(&self) -> FrameCounts {
        self.counts
    }

    /// A frame arrives: the receiving connection and the frame, unless the link went down or
    /// the receiver stopped reading (the frame is then held).
    pub(super) fn arrive(&mut self, packet: Packet) -> Option<(ConnId, Frame)> {
        let link = &mut self.links[packet.link];
        if !link.up && !link.closing {
            return None;
        }
        let side = usize::from(link.ends[1].0 == packet.to);
        if link.paused[side] {
            link.held[side].push(packet);
            return None;
        }
        Some((link.ends[side].1, packet.frame))
    }

    /// `node` stops (or resumes) reading `conn`; resuming gives back the frames held.
    pub(super) fn pause(&mut self, node: usize, conn: ConnId, paused: bool) -> Vec<Packet> {
        let Some(&index) = self.by_conn.get(&(node, conn)) else {
            return Vec::new();
        };
        let link = &mut self.links[index];
        let side = usize::from(link.ends[1].0 == node && link.ends[1].1 == conn);
        link.paused[side] = paused;
        if paused {
            Vec::new()
        } else {
            std::mem::take(&mut link.held[side])
        }
    }

    /// `node` finished its stream on `conn` (it wrote its goodbye): what it writes after that
    /// is not sent, as a finished QUIC stream takes nothing more.
    pub(super) fn finish(&mut self, node: usize, conn: ConnId) {
        if let Some(&index) = self.by_conn.get(&(node, conn)) {
            let link = &mut self.links[index];
            let side = usize::from(link.ends[1] == (node, conn));
            link.finished[side] = true;
        }
    }

    /// Closes the link of `node`'s `conn`: nothing more is sent on it, and what is on the way
    /// still arrives. Returns both ends.
    pub(super) fn close(&mut self, node: usize, conn: ConnId) -> Option<[(usize, ConnId); 2]> {
        let index = *self.by_conn.get(&(node, conn))?;
        let link = &mut self.links[index];
        if !link.up {
            return None;
        }
        link.up = false;
        link.closing = true;
        Some(link.ends)
    }

    /// When everything sent on a link before it was cut has arrived.
    pub(super) fn drained_at(&self, ends: &[(usize, ConnId); 2], now: Instant) -> Instant {
        let index = self.by_conn.get(&ends[0]).copied();
        index.map_or(now, |i| {
            let last = self.links[i].last.iter().max().copied().unwrap_or(now);
            last.max(now) + Duration::from_micros(1)
        })
    }

    /// Takes every link of `node` down; returns their ends.
    pub(super) fn cut_all(&mut self, node: usize) -> Vec<(usize, ConnId)> {
        let mut out = Vec::new();
        for link in self.links.iter_mut().filter(|l| l.up) {
            if link.ends.iter().any(|(n, _)| *n == node) {
                link.up = false;
                out.extend(link.ends);
            }
        }
        out
    }

    /// Takes the links between `a` and `b` down; returns their ends.
    pub(super) fn cut_between(&mut self, a: usize, b: usize) -> Vec<(usize, ConnId)> {
        let mut out = Vec::new();
        for link in self.links.iter_mut().filter(|l| l.up) {
            let nodes = [link.ends[0].0, link.ends[1].0];
            if nodes == [a, b] || nodes == [b, a] {
                link.up = false;
                out.extend(link.ends);
            }
        }
        out
    }
}
