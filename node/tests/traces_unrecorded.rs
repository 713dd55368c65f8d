//! Traces when nobody records Shoal's spans (no subscriber at all, as in most benchmarks): no
//! span ids are drawn, and the caller's `traceparent` passes through every service unchanged,
//! so the trace goes on. A test binary of its own: the other trace tests set subscribers, and
//! `tracing` caches which callsites any subscriber of the process is interested in.
#![allow(clippy::unwrap_used)]

#[path = "support/chain.rs"]
mod chain;

use chain::Chain;
use shoal::{MeshCa, TraceContext};

const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn without_a_subscriber_the_callers_context_passes_through() {
    let ca = MeshCa::generate("traces").unwrap();
    let mut chain = Chain::start(&ca).await;

    // Outside any trace, and nobody records spans: no header.
    assert_eq!(chain.request().await, (None, None));

    // In a trace: every service passes it on unchanged.
    let ctx = TraceContext::parse(INCOMING, None).unwrap();
    let request = ctx.in_scope(|| {
        chain
            .a
            .request("pricing", shoal::Message::command("quote", ""), chain::WAIT)
    });
    let (header, current) = chain.finish(request).await;
    assert_eq!(header.as_deref(), Some(INCOMING));
    assert_eq!(current.unwrap().traceparent(), INCOMING);
    chain.shutdown().await;
}
