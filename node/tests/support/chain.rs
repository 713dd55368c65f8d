//! What the trace tests share: three services on loopback, `shop` (A) -> `pricing` (B) ->
//! `stock` (C). B's `quote` handler sends `reserve` to C and answers "25"; C's handler reports
//! the `traceparent` header it received and its `TraceContext::current()`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use shoal::{HandlerError, MeshCa, Message, Node, TraceContext};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(10);

/// What C's handler saw: the `traceparent` header, and the handler's current context.
pub type Seen = (Option<String>, Option<TraceContext>);

pub struct Chain {
    pub a: Node,
    pub b: Node,
    pub c: Node,
    seen: mpsc::UnboundedReceiver<Seen>,
}

/// A node of `service` with a certificate from `ca`, with `peer` as its static peer.
pub async fn start(ca: &MeshCa, service: &str, peer: Option<&Node>) -> Node {
    Node::builder(service)
        .identity(ca.issue(service).unwrap())
        .trust(ca.clone())
        .peers(peer.map(Node::local_addr))
        .start()
        .await
        .unwrap()
}

impl Chain {
    pub async fn start(ca: &MeshCa) -> Self {
        let c = start(ca, "stock", None).await;
        let (seen_tx, seen) = mpsc::unbounded_channel();
        c.handle("reserve", move |msg: Message| {
            let _ = seen_tx.send((
                msg.header("traceparent").map(str::to_owned),
                TraceContext::current(),
            ));
            async { Ok(()) }
        });
        let b = start(ca, "pricing", Some(&c)).await;
        let to_c = b.clone();
        b.handle("quote", move |msg: Message| {
            let to_c = to_c.clone();
            async move {
                to_c.send("stock", Message::command("reserve", msg.payload().clone()))
                    .await
                    .map_err(|e| HandlerError::retryable(e.to_string()))?;
                Ok("25")
            }
        });
        let a = start(ca, "shop", Some(&b)).await;
        Self { a, b, c, seen }
    }

    /// A's request to B; returns what C's handler saw.
    pub async fn request(&mut self) -> Seen {
        self.finish(
            self.a
                .request("pricing", Message::command("quote", "book"), WAIT),
        )
        .await
    }

    /// Awaits a request started by the caller (in a context of its own); returns what C's
    /// handler saw.
    pub async fn finish(
        &mut self,
        request: impl Future<Output = Result<Message, shoal::Error>>,
    ) -> Seen {
        let reply = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
        assert_eq!(reply.payload(), "25");
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn shutdown(self) {
        for node in [self.a, self.b, self.c] {
            node.shutdown().await;
        }
    }
}
