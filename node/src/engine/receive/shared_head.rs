//! The head of each connection's last run, shared with the next run that has the same one.
//!
//! A sender that sends one message at a time sends a run of one per frame, each with the
//! same head. Each run's tasks share its head through an [`Arc`]; a new one per run was an
//! allocation, a copy and a free per message. A run whose head equals the last one of its
//! connection shares that one instead (comparing is a few dozen instructions).

use std::sync::Arc;

use shoal_proto::Head;
use slotmap::SecondaryMap;

use super::super::action::ConnId;

/// The last run's head of each connection.
#[derive(Debug, Default)]
pub(in crate::engine) struct SharedHeads {
    last: SecondaryMap<ConnId, Arc<Head>>,
}

impl SharedHeads {
    /// `head` as an [`Arc`]: the last one of `conn` if it is equal, a new one (kept as the
    /// last) otherwise.
    pub(in crate::engine) fn share(&mut self, conn: ConnId, head: Head) -> Arc<Head> {
        if let Some(last) = self.last.get(conn)
            && **last == head
        {
            return Arc::clone(last);
        }
        let head = Arc::new(head);
        self.last.insert(conn, Arc::clone(&head));
        head
    }

    /// `conn` is gone: its head goes too.
    pub(in crate::engine) fn forget(&mut self, conn: ConnId) {
        self.last.remove(conn);
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::{MessageKind, To};
    use slotmap::SlotMap;

    use super::*;

    fn head(name: &str) -> Head {
        Head {
            kind: MessageKind::Command,
            name: name.into(),
            version: 1,
            content_type: "".into(),
            partition_key: None,
            reply_to: None,
            to: To::Handler,
            reliable: true,
            ordered: false,
        }
    }

    #[test]
    fn an_equal_head_is_shared_and_another_replaces_it() {
        let mut conns: SlotMap<ConnId, ()> = SlotMap::with_key();
        let (a, b) = (conns.insert(()), conns.insert(()));
        let mut heads = SharedHeads::default();
        let first = heads.share(a, head("orders.place"));
        let again = heads.share(a, head("orders.place"));
        assert!(Arc::ptr_eq(&first, &again), "an equal head is shared");
        let other_conn = heads.share(b, head("orders.place"));
        assert!(!Arc::ptr_eq(&first, &other_conn), "per connection");
        let other = heads.share(a, head("orders.cancel"));
        assert_eq!(
            other.name, "orders.cancel",
            "a different head is never shared"
        );
        assert!(Arc::ptr_eq(&other, &heads.share(a, head("orders.cancel"))));
        heads.forget(a);
        assert!(!Arc::ptr_eq(&other, &heads.share(a, head("orders.cancel"))));
    }
}
