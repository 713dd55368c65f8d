//! What a message that arrives is bound to its sender by: the service its peer's certificate
//! proves (a [`Conn`]'s `service`, checked by the transport's handshake) and the peer's node.
//!
//! - **Its return address.** A reply goes where the message's `reply_to` says, and reaches
//!   that service authenticated as the replier. Honest nodes write their own service and node
//!   there (`Message::address_replies`, `Node::request`; the outbox relay sends through
//!   `Node::send`, so a row enqueued by another instance is addressed to the relaying one). A
//!   run whose return address names another service, or another node than the connection's,
//!   is refused whole with a permanent [`NackCode::Invalid`](shoal_proto::NackCode::Invalid)
//!   nack before the dedup window or any handler sees it, counted in
//!   `NodeStats::forged_return_addresses` and logged: the sender dead-letters it with the
//!   reason, and the forger is visible (rewriting the address instead would have hidden it).
//!   So is an event asking for a synchronous reply (one written on the connection): it would
//!   never be acknowledged. An event with a reply channel of its publisher's service still
//!   gets one reply from each group (`Message::with_reply_channel`).
//! - **Its dedup key**: the id, mixed with the copy's group ([`shoal_proto::GroupKey`]) and
//!   with a key of the sender's service ([`SenderKey`]), so a peer that reuses another
//!   service's message id gets a key of its own and cannot have the genuine message dropped
//!   as a duplicate, nor be handed the reply kept for it. Retries and failovers come from the
//!   same service, so real duplicates are still caught whichever instance sends them. The
//!   service's key is worked out once per connection, the run's key once per run.
//!
//! [`Conn`]: super::conn::Conn

use ring::hmac;
use shoal_proto::{GroupKey, Head, MessageId, ReturnAddress, To};

use super::Engine;
use super::action::ConnId;
use super::answer::is_synchronous;

/// The bits of a message id a key mixes (the low 80): the top 48, its creation time, stay, so
/// the dedup window ages keys as it ages ids.
const MIXED_BITS: u128 = (1 << 80) - 1;

/// Works out senders' [`SenderKey`]s: a keyed hash (HMAC-SHA256) of the service, under a
/// secret random per node. Secret, because the key is mixed into ids by XOR: with a public
/// hash (as groups have), a peer could choose the id whose key equals another sender's.
#[derive(Debug)]
pub(super) struct SenderKeys(hmac::Key);

impl SenderKeys {
    /// Keys under `secret` (random per node).
    pub(super) fn new(secret: [u64; 2]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&secret[0].to_le_bytes());
        bytes[8..].copy_from_slice(&secret[1].to_le_bytes());
        Self(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }

    /// The key of messages from `service` (once per connection).
    pub(super) fn of(&self, service: &str) -> SenderKey {
        let tag = hmac::sign(&self.0, service.as_bytes());
        let mut word = [0u8; 16];
        word.copy_from_slice(&tag.as_ref()[..16]);
        SenderKey(u128::from_le_bytes(word) & MIXED_BITS)
    }
}

/// A sender's part of the dedup keys of its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SenderKey(u128);

/// The part of the dedup keys of one run that is not the ids: its sender's and its group's,
/// worked out once for the run's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RunKey(u128);

impl RunKey {
    /// The run's part for messages from `sender` to `group`.
    pub(super) fn new(sender: SenderKey, group: GroupKey) -> Self {
        Self(sender.0 ^ group.key(MessageId::from_u128(0)).as_u128())
    }

    /// The key the message `id` of this run is deduplicated (and its reply kept) under.
    pub(super) const fn key(self, id: MessageId) -> MessageId {
        MessageId::from_u128(id.as_u128() ^ self.0)
    }
}

/// Why a message to `to` with return address `addr` from `service`'s node `node` is refused,
/// or `None` when the address is the sender's own.
pub(super) fn forged_return_address(
    addr: &ReturnAddress,
    to: &To,
    service: &str,
    node: shoal_proto::NodeId,
) -> Option<String> {
    if addr.service.as_str() != service {
        return Some(format!(
            "invalid return address: `{service}` asked for replies to service `{}`; a \
             return address must name its sender's own service",
            addr.service
        ));
    }
    if addr.node.is_some_and(|n| n != node) {
        return Some("invalid return address: it names another node than its sender's".to_owned());
    }
    if is_synchronous(addr) && !matches!(to, To::Handler) {
        return Some(
            "invalid return address: an event cannot ask for a synchronous reply".to_owned(),
        );
    }
    None
}

impl<H: Clone> Engine<H> {
    /// The run of `count` messages under `head` that arrived on `conn` asks for replies
    /// elsewhere than to its sender: counted and logged, and the reason returned, for the
    /// caller to nack every message with. `None` for a run without a return address.
    pub(super) fn refuse_forged_return(
        &mut self,
        conn: ConnId,
        head: &Head,
        count: usize,
    ) -> Option<String> {
        let addr = head.reply_to.as_ref()?;
        let c = self.conns.get(conn)?;
        let reason = forged_return_address(addr, &head.to, &c.service, c.node)?;
        self.stats.forged_return_addresses += count as u64;
        tracing::warn!(peer = %c.node, service = %c.service, "{reason}");
        Some(reason)
    }

    /// The dedup keys' part of messages of `conn`'s sender.
    pub(super) fn sender_key(&self, conn: ConnId) -> SenderKey {
        self.conns.get(conn).map(|c| c.sender).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_service_and_by_node_secret_and_keep_the_time() {
        let (a, b) = (SenderKeys::new([1, 2]), SenderKeys::new([3, 4]));
        assert_eq!(a.of("orders"), a.of("orders"));
        assert_ne!(a.of("orders"), a.of("spy"));
        assert_ne!(a.of("orders"), b.of("orders"), "secret per node");
        let id = MessageId::from_parts(1_700_000_000_000, 42);
        let run = RunKey::new(a.of("orders"), GroupKey::of(Some("billing")));
        assert_eq!(run.key(id).unix_ms(), id.unix_ms());
        let group_only = RunKey::new(SenderKey::default(), GroupKey::of(Some("billing")));
        assert_eq!(group_only.key(id), id.delivery_key(Some("billing")));
    }
}
