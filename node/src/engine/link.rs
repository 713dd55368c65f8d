//! Connections as the engine sees them: coming up (and which of two duplicates survives),
//! going down, what each frame kind gets, what is written, and what was malformed.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use shoal_proto::{DecodeError, Frame, NackCode, NodeId};

use super::action::{Action, CloseReason, ConnId};
use super::conn::{Conn, Transmit};
use super::delivery::Answer;
use super::peers::Admission;
use super::{Engine, topic};
use crate::NodeEvent;

/// Most subscriptions one peer may announce.
pub(crate) const MAX_PEER_SUBSCRIPTIONS: usize = 10_000;

/// A peer that completed the TLS and Shoal handshakes.
#[derive(Clone, Debug)]
pub(crate) struct PeerHello {
    pub(crate) node: NodeId,
    /// The service its certificate names (and its hello claimed).
    pub(crate) service: String,
    /// Its address as seen from here.
    pub(crate) addr: SocketAddr,
    /// The addresses it says it accepts connections on.
    pub(crate) listen_addrs: Vec<SocketAddr>,
    /// Whether this node dialled the connection.
    pub(crate) dialed: bool,
    /// Whether this node keeps the connection however idle (it dialled a static peer, or an
    /// instance whose subscriptions it can only learn over a connection).
    pub(crate) pinned: bool,
}

/// A live peer, as [`Engine::peers`] lists it.
#[derive(Clone, Debug)]
pub(crate) struct PeerSummary {
    pub(crate) conn: ConnId,
    pub(crate) node: NodeId,
    pub(crate) service: String,
    pub(crate) addr: SocketAddr,
    pub(crate) listen_addrs: Vec<SocketAddr>,
    /// Messages sent to it and not yet answered.
    pub(crate) in_flight: usize,
}

impl<H: Clone> Engine<H> {
    /// A connection completed its handshakes. Decides whether it stands for its node (see
    /// [`super::peers`]'s duplicate rule); the transport closes it when refused. An admitted
    /// connection is told this node's subscriptions.
    pub(crate) fn connection_up(&mut self, hello: PeerHello, now: Instant) -> (ConnId, Admission) {
        let dialer = if hello.dialed { self.id } else { hello.node };
        let usage = super::usage::Usage::new(hello.pinned, now);
        let sender = self.inbound.senders.of(&hello.service);
        let conn = self.conns.insert(Conn::new(
            hello.node,
            hello.service.clone(),
            sender,
            hello.addr,
            hello.listen_addrs,
            dialer,
            usage,
        ));
        let admission = self.peers.admit(&mut self.conns, conn);
        match &admission {
            Admission::Refused => {
                self.conns.remove(conn);
            }
            Admission::Admitted { displaced } => {
                if let Some(old) = *displaced {
                    self.actions.push_back(Action::Close {
                        conn: old,
                        reason: CloseReason::Duplicate,
                        flush: false,
                    });
                    self.fail_conn(old, "duplicate connection", true, now);
                }
                self.stats.connections += 1;
                self.peers.directory.connected(hello.node, &hello.service);
                if hello.dialed && !hello.pinned {
                    self.arm_idle_sweep(now);
                }
                self.emit(NodeEvent::PeerUp {
                    node: hello.node,
                    service: hello.service,
                    addr: hello.addr,
                });
                for sub in self.inbound.local.distinct_subscriptions() {
                    self.queue_control(conn, &Frame::Subscribe(sub));
                }
                // Multicast (multicast_link.rs): say this node's group, if it has one.
                self.channel_hello(conn);
                self.peers_changed(now);
            }
        }
        (conn, admission)
    }

    /// `conn`'s connection ended (`reason` says why): its unanswered messages are retried,
    /// and a peer whose last connection it was is down. `duplicate`: the peer closed it
    /// because another connection between the two nodes won, so the peer is not down (it is
    /// up, or about to be, on the other one).
    pub(crate) fn connection_lost(
        &mut self,
        conn: ConnId,
        reason: &str,
        duplicate: bool,
        now: Instant,
    ) {
        let was_current = self.peers.remove(&self.conns, conn, now);
        self.fail_conn(conn, reason, duplicate, now);
        self.drop_backlog(conn);
        let Some(c) = self.conns.remove(conn) else {
            return;
        };
        if was_current {
            if !duplicate {
                // Multicast (multicast_link.rs): a lost member leaves the channel (rekey), and
                // its copies go by unicast; a lost publisher's channel is dropped. A node
                // whose connection lost to a duplicate is not leaving: it stays a member (its
                // key is handed again on the other connection, and its reports come there),
                // and leaves only if it falls silent with no connection (`drain_sender`).
                self.channel_peer_lost(c.node, now);
                let reason = match c.goodbye {
                    _ if c.usage.closed_idle => "closed after being idle".to_owned(),
                    Some(goodbye) => format!("peer said goodbye: {goodbye}"),
                    None => reason.to_owned(),
                };
                self.emit(NodeEvent::PeerDown {
                    node: c.node,
                    service: c.service,
                    reason,
                });
            }
            self.peers_changed(now);
        }
    }

    /// A frame arrived on `conn`.
    pub(crate) fn handle_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        // Messages and replies say the connection is used (see `lazy`).
        if matches!(frame, Frame::Messages(_) | Frame::Reply(_)) {
            c.usage.received += 1;
        }
        match frame {
            Frame::Messages(run) => self.on_messages(conn, *run, now),
            Frame::Ack(ack) => self.on_ack(conn, ack.ranges, now),
            Frame::Nack(nack) => {
                let answer = Answer::Nack {
                    retryable: nack.retryable,
                    code: nack.code,
                    reason: nack.reason,
                };
                self.on_answer(conn, nack.seq, answer, now);
            }
            Frame::Reply(reply) => self.on_reply(reply, now),
            Frame::Ping(nonce) => self.queue_control(conn, &Frame::Pong(nonce)),
            Frame::Pong(nonce) => self.on_pong(nonce, now),
            Frame::Goodbye(goodbye) => {
                tracing::debug!(reason = %goodbye.reason, "peer said goodbye");
                // Everything it was going to answer came before the goodbye: what is still
                // unanswered goes elsewhere now. Acks owed to it are written, then the
                // connection is closed.
                if let Some(c) = self.conns.get_mut(conn) {
                    c.leaving = true;
                    c.goodbye = Some(goodbye.reason.clone());
                }
                self.remember_leaving_groups(conn, now);
                self.peers.bump();
                self.fail_conn(
                    conn,
                    &format!("peer said goodbye: {}", goodbye.reason),
                    false,
                    now,
                );
                self.actions.push_back(Action::Close {
                    conn,
                    reason: CloseReason::Shutdown,
                    flush: true,
                });
                self.peers_changed(now);
            }
            Frame::Hello(_) => self.protocol_error(conn, "a second hello".into(), true),
            Frame::Subscribe(sub) => {
                let refused = match topic::check_pattern(&sub.pattern) {
                    Err(reason) => Some(reason),
                    Ok(()) => self.conns.get(conn).and_then(|c| {
                        (c.subscriptions.len() >= MAX_PEER_SUBSCRIPTIONS
                            && !c.subscriptions.contains(&sub))
                        .then(|| {
                            format!(
                                "more than {MAX_PEER_SUBSCRIPTIONS} subscriptions from one peer"
                            )
                        })
                    }),
                };
                if let Some(reason) = refused {
                    // Said in an event and counted; the connection stays up.
                    return self.protocol_error(
                        conn,
                        format!("subscription refused: {reason}"),
                        false,
                    );
                }
                // The policy (authz.rs): a refused subscription never joins the audiences.
                if self.refuses_peer_subscription(conn, &sub.pattern) {
                    // Multicast (multicast_link.rs): a refused peer leaves the channel (rekey).
                    return self.channel_refused(conn, now);
                }
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                if c.subscriptions.contains(&sub) {
                    return;
                }
                c.subscriptions.push(sub.clone());
                let node = c.node;
                self.peers.subscribed(&sub);
                self.emit(NodeEvent::Subscribed {
                    node,
                    pattern: sub.pattern,
                    group: sub.group.map(String::from),
                });
                self.peers_changed(now);
            }
            Frame::Unsubscribe(sub) => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                let before = c.subscriptions.len();
                c.subscriptions.retain(|s| *s != sub);
                if c.subscriptions.len() == before {
                    return;
                }
                let node = c.node;
                self.peers.bump();
                self.emit(NodeEvent::Unsubscribed {
                    node,
                    pattern: sub.pattern,
                    group: sub.group.map(String::from),
                });
                self.peers_changed(now);
            }
            // Multicast channels' control frames (multicast_link.rs).
            frame @ (Frame::ChannelHello(_)
            | Frame::ChannelKey(_)
            | Frame::ChannelStatus(_)
            | Frame::ChannelNak(_)
            | Frame::ChannelRepair(_)
            | Frame::ChannelDemote(_)) => self.on_channel_frame(conn, frame, now),
            // Newer frame kinds: not spoken by this version, ignored.
            _ => {}
        }
    }

    /// A frame from `conn` could not be decoded. A well-formed run of messages that breaks a
    /// limit is refused message by message, for good (the stream is still in sync); anything
    /// else closes the connection. Counted and told either way.
    pub(crate) fn malformed(&mut self, conn: ConnId, error: &DecodeError) {
        match error {
            DecodeError::LimitExceeded {
                seqs: Some(seqs), ..
            } => {
                self.protocol_error(conn, error.to_string(), false);
                for seq in seqs.iter() {
                    self.nack(conn, seq, false, NackCode::LimitExceeded, error.to_string());
                }
            }
            _ => self.protocol_error(conn, error.to_string(), true),
        }
    }

    /// The peer of `conn` said goodbye: the groups it was the last live (or announced)
    /// instance of are remembered from now on, as they are once its connection is gone
    /// ([`super::peers::Peers::remove`]). Between the goodbye and the close the connection no
    /// longer counts as live: without this, an event published then would find the group
    /// neither live nor remembered, and go nowhere instead of being held for it.
    fn remember_leaving_groups(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if self.peers.current(c.node) == Some(conn) {
            self.peers
                .remember_departed(&self.conns, &c.subscriptions, now);
        }
    }

    fn protocol_error(&mut self, conn: ConnId, reason: String, close: bool) {
        self.stats.malformed_frames += 1;
        if let Some(c) = self.conns.get(conn) {
            let addr = c.addr;
            self.emit(NodeEvent::ProtocolError {
                addr,
                reason: reason.clone(),
            });
        }
        if close {
            self.actions.push_back(Action::Close {
                conn,
                reason: CloseReason::Protocol(reason),
                flush: false,
            });
        }
    }

    /// Appends to `buf` what `conn` should write now (about `max_bytes` at most).
    pub(crate) fn poll_transmit(
        &mut self,
        conn: ConnId,
        buf: &mut BytesMut,
        max_bytes: usize,
        now: Instant,
    ) -> Transmit {
        let Some(c) = self.conns.get_mut(conn) else {
            return Transmit::default();
        };
        if self.lifecycle == super::Lifecycle::Killed {
            c.clear_queue();
            return Transmit::default();
        }
        let deliveries = &self.out.deliveries;
        let (before, items) = (buf.len(), c.queued_items());
        let written = c.transmit(buf, max_bytes, &self.config.limits, |owner| {
            deliveries
                .get(owner.delivery)
                .is_some_and(|d| d.epoch == owner.epoch)
        });
        if buf.len() > before {
            c.last_write = Some(now);
            self.stats.writes += 1;
            // Items taken (a stale one among them is rare): two or more are a batch.
            self.batched |= items.saturating_sub(c.queued_items()) > 1;
        }
        if c.full_at().is_some() {
            self.queue_drained(conn, now); // backpressure.rs
        }
        written
    }

    /// The live peers.
    pub(crate) fn peers(&self) -> Vec<PeerSummary> {
        self.peers
            .all()
            .filter_map(|conn| {
                let c = self.conns.get(conn)?;
                Some(PeerSummary {
                    conn,
                    node: c.node,
                    service: c.service.clone(),
                    addr: c.addr,
                    listen_addrs: c.listen_addrs.clone(),
                    in_flight: c.window.pending(),
                })
            })
            .collect()
    }
}
