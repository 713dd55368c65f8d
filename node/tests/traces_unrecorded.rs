//! Traces when nobody records Shoal's spans (no subscriber at all, as in most benchmarks): no
//! span ids are drawn, and the caller's `traceparent` passes through every service unchanged,
//! so the trace goes on. A test binary of its own: the other trace tests set subscribers, and
//! `tracing` caches which callsites any subscriber of the process is interested in.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shoal::{HandlerError, MeshCa, Message, Node, TraceContext};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn start(ca: &MeshCa, service: &str, peer: Option<&Node>) -> Node {
    Node::builder(service)
        .identity(ca.issue(service).unwrap())
        .trust(ca.clone())
        .peers(peer.map(Node::local_addr))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn without_a_subscriber_the_callers_context_passes_through() {
    let ca = MeshCa::generate("traces").unwrap();
    let c = start(&ca, "stock", None).await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    c.handle("reserve", move |msg: Message| {
        let seen = (
            msg.header("traceparent").map(str::to_owned),
            TraceContext::current(),
        );
        let _ = seen_tx.send(seen);
        async { Ok(()) }
    });
    let b = start(&ca, "pricing", Some(&c)).await;
    let to_c = b.clone();
    b.handle("quote", move |_: Message| {
        let to_c = to_c.clone();
        async move {
            to_c.send("stock", Message::command("reserve", "book"))
                .await
                .map_err(|e| HandlerError::retryable(e.to_string()))?;
            Ok("25")
        }
    });
    let a = start(&ca, "shop", Some(&b)).await;

    // Outside any trace, and nobody records spans: no header.
    tokio::time::timeout(
        WAIT,
        a.request("pricing", Message::command("quote", ""), WAIT),
    )
    .await
    .unwrap()
    .unwrap();
    let (header, current) = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((header, current), (None, None));

    // In a trace: every service passes it on unchanged.
    let ctx = TraceContext::parse(INCOMING, None).unwrap();
    let request = ctx.in_scope(|| a.request("pricing", Message::command("quote", ""), WAIT));
    tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    let (header, current) = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header.as_deref(), Some(INCOMING));
    assert_eq!(current.unwrap().traceparent(), INCOMING);
    for node in [a, b, c] {
        node.shutdown().await;
    }
}
