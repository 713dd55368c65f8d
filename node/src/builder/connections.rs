//! The [`NodeBuilder`] settings for connections: liveness, limits on incoming connections and
//! handshakes, queued bytes, and when connections open and close.

use std::time::Duration;

use super::NodeBuilder;
#[cfg(doc)]
use crate::Error;

impl NodeBuilder {
    /// How a silent peer (a crashed process, a pulled cable) is detected: keep-alives every
    /// `keep_alive`, and a connection with no traffic for `idle_timeout` is closed and its
    /// messages retried elsewhere. Default 250 ms and 1.5 s.
    ///
    /// Detection takes up to `idle_timeout + keep_alive`: QUIC re-arms the idle timer on the
    /// first keep-alive sent after the last packet received. The defaults notice a kill -9
    /// within about 1.8 s; `liveness(200 ms, 800 ms)` within about 1 s, at the cost of more
    /// keep-alive packets and less tolerance for pauses. QUIC uses the smaller idle timeout of
    /// the two peers.
    ///
    /// Keep-alives run only on open connections, and a node opens connections only where it
    /// sends and closes them once idle ([`NodeBuilder::close_idle_after`]): an idle mesh holds
    /// no connection and sends no keep-alive.
    ///
    /// [`NodeBuilder::start`] refuses with [`Error::Config`] a zero `keep_alive` (it would
    /// send keep-alives without pause) or `idle_timeout` (a dead peer would never be noticed),
    /// a `keep_alive` not shorter than `idle_timeout` (a quiet, healthy connection would time
    /// out between two keep-alives), and an `idle_timeout` QUIC cannot carry (over 2^62 ms).
    pub fn liveness(mut self, keep_alive: Duration, idle_timeout: Duration) -> Self {
        self.config.keep_alive = keep_alive;
        self.config.idle_timeout = idle_timeout;
        self
    }

    /// Limits against floods of connections: at most `total` incoming connections at once
    /// (in their handshake or established), and at most `per_address` of them from one IP
    /// address. A connection over a limit is refused before its TLS handshake starts (QUIC's
    /// `CONNECTION_REFUSED`: an honest peer dials again after its backoff), counted in
    /// [`crate::NodeStats::connections_refused`] and told as a
    /// [`crate::NodeEvent::HandshakeFailed`]. Connections this node dials do not count.
    /// Default 4,096 and 256 (nodes of one host share an address); each at least 1.
    pub fn max_connections(mut self, total: usize, per_address: usize) -> Self {
        self.config.max_connections = total.max(1);
        self.config.max_connections_per_address = per_address.max(1);
        self
    }

    /// The handshake rate limit: at most `per_second` new incoming handshakes per second,
    /// after a burst of up to `burst` (a token bucket). Handshakes over it are refused before
    /// TLS starts, as with [`NodeBuilder::max_connections`], so a flood of handshakes (with
    /// a stolen address, a foreign certificate, garbage) costs this node little: no signature,
    /// no certificate check. Default 100 per second in bursts of 200, enough for 200 peers
    /// that dial a restarted node at once (more peers get in over the next seconds, as they
    /// dial again); each at least 1.
    pub fn handshake_rate(mut self, per_second: u32, burst: u32) -> Self {
        self.config.handshake_rate = per_second.max(1);
        self.config.handshake_burst = burst.max(1);
        self
    }

    /// The penalty box: once this node refused incoming TLS handshakes from one IP address at
    /// a flood's pace ([`NodeBuilder::handshake_penalty_after`] of them within a second: a
    /// certificate from a CA it does not trust, a revoked or expired one, none at all, broken
    /// TLS), every new connection from that address is refused before TLS for `penalty`,
    /// as with [`NodeBuilder::max_connections`], and counted in
    /// [`crate::NodeStats::addresses_penalised`]. A client that keeps dialling with a foreign
    /// certificate then costs this node one handshake per `penalty`, not one per token of
    /// [`NodeBuilder::handshake_rate`] (when the penalty ends, one handshake is let through and
    /// the penalty starts over until its outcome: a success takes the address out of the
    /// box), and takes none of those tokens from honest peers.
    /// The box holds at most `max_addresses` addresses (when full, the one closest to leaving
    /// makes room), so a flood from many addresses cannot grow it.
    ///
    /// Default 5 s and 4,096 addresses. The cost: peers behind the same address (one host, one
    /// NAT) share the penalty, so while a flood from their address is refused their *new*
    /// connections to this node are too (connections already open are untouched, and they
    /// retry after their backoff). A misconfigured service retrying with Shoal's backoff (100
    /// ms doubling) fails a few handshakes in its first second and fewer after, below the
    /// threshold: it keeps being told why, and its neighbours are not held off. A zero
    /// `penalty` or `max_addresses` turns the box off.
    pub fn handshake_penalty(mut self, penalty: Duration, max_addresses: usize) -> Self {
        self.config.handshake_penalty = penalty;
        self.config.handshake_penalty_capacity = max_addresses;
        self
    }

    /// How many refused TLS handshakes from one IP address within one second put it in the
    /// [penalty box](NodeBuilder::handshake_penalty). Default 10: a flood reaches it in its
    /// first milliseconds (costing this node that many handshakes), a client retrying with
    /// backoff never does. 1 penalises the first refusal.
    pub fn handshake_penalty_after(mut self, failures_per_second: u32) -> Self {
        self.config.handshake_penalty_after = failures_per_second.max(1);
        self
    }

    /// How long a connection has to become a peer: an incoming one must finish its TLS
    /// handshake **and** send its hello within this time of its first packet, or it is closed
    /// and counted as a handshake failure (a client that completes TLS and then stays silent
    /// holds its place for no longer); a dialled one must answer within it, then send its
    /// hello within it. Default 5 s; must be above zero ([`NodeBuilder::start`] refuses
    /// zero). `Duration::MAX` means no time limit (the QUIC idle timeout of
    /// [`NodeBuilder::liveness`] still closes a connection that goes silent).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Most bytes waiting to be written to one peer (QUIC flow control lets them go as fast
    /// as the peer reads). At the cap, reliable messages to that peer wait for the queue to
    /// drain, as they wait for room in the in-flight window, and best-effort copies are
    /// dropped; a slow reader only slows its senders. If nothing leaves a full queue for an
    /// ack timeout, the peer does not read: its connection is closed (close code 4, "not
    /// reading") and its unanswered messages go to other instances. This bounds what a
    /// stalled or hostile peer can make this node hold (one message may go over it).
    /// Default 64 MiB; at least 1 ([`NodeBuilder::start`] refuses 0: every reliable message
    /// would wait for room that never comes, and be dead-lettered).
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.config.max_queued_bytes = bytes;
        self
    }

    /// How long a connection this node dialled may stay unused before it is closed (with a
    /// goodbye, so nothing on its way is lost). `None` keeps every connection. Default 30 s.
    ///
    /// A node connects on first use: discovering an instance is not connecting to it, and a
    /// send, request or publish that needs an instance it is not connected to connects first
    /// (a few milliseconds on a LAN). Connections it dialled for such a use close once idle;
    /// connections to static peers ([`NodeBuilder::peer`]) are kept. A service that talks to
    /// `k` others holds about `k` connections, whatever the size of the mesh.
    ///
    /// `Some(Duration::ZERO)` is refused by [`NodeBuilder::start`] (it used to mean "never",
    /// which is what `None` says); `Some(Duration::MAX)` closes nothing either.
    pub fn close_idle_after(mut self, idle: Option<Duration>) -> Self {
        self.config.close_idle_after = idle;
        self
    }

    /// Dials every instance discovery announces as soon as it is announced, and keeps the
    /// connection, like a static peer: the full mesh, for small meshes that want their first
    /// message to find a connection ready. Default `false`: connect on first use (see
    /// [`NodeBuilder::close_idle_after`]).
    pub fn connect_on_discovery(mut self, eager: bool) -> Self {
        self.config.connect_on_discovery = eager;
        self
    }
}
