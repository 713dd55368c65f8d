//! The `opentelemetry` feature: with a `tracing-opentelemetry` layer, Shoal's spans join the
//! service's OpenTelemetry trace, and one trace goes from an HTTP span in A through B to C,
//! exported as an OTLP exporter would see it (here: the SDK's in-memory exporter).
#![cfg(feature = "opentelemetry")]
#![allow(clippy::unwrap_used)]

#[path = "support/chain.rs"]
mod chain;

use chain::Chain;
use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use shoal::{MeshCa, Message};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

fn find<'a>(spans: &'a [SpanData], name: &str, nth: usize) -> &'a SpanData {
    spans
        .iter()
        .filter(|s| s.name == name)
        .nth(nth)
        .unwrap_or_else(|| panic!("no span {name} #{nth} in {spans:#?}"))
}

#[tokio::test]
async fn shoal_spans_join_the_opentelemetry_trace_across_services() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("traces-test"));
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));

    let ca = MeshCa::generate("traces").unwrap();
    let mut chain = Chain::start(&ca).await;
    // The service's own span, e.g. an HTTP request's.
    let http = tracing::info_span!("GET /quote");
    let request = http.in_scope(|| {
        chain
            .a
            .request("pricing", Message::command("quote", "book"), chain::WAIT)
    });
    let (header, _) = chain.finish(request.instrument(http.clone())).await;
    drop(http);
    chain.shutdown().await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let http = find(&spans, "GET /quote", 0);
    let request = find(&spans, "shoal.request", 0);
    let handled_b = find(&spans, "shoal.handle", 0);
    let send = find(&spans, "shoal.send", 0);
    let handled_c = find(&spans, "shoal.handle", 1);
    let (handled_b, handled_c) = if handled_b.parent_span_id == request.span_context.span_id() {
        (handled_b, handled_c)
    } else {
        (handled_c, handled_b)
    };
    let trace = http.span_context.trace_id();
    for span in [request, handled_b, send, handled_c] {
        assert_eq!(span.span_context.trace_id(), trace, "{span:#?}");
    }
    assert_eq!(http.parent_span_id, SpanId::INVALID);
    assert_eq!(request.parent_span_id, http.span_context.span_id());
    assert_eq!(handled_b.parent_span_id, request.span_context.span_id());
    assert!(handled_b.parent_span_is_remote);
    assert_eq!(send.parent_span_id, handled_b.span_context.span_id());
    assert_eq!(handled_c.parent_span_id, send.span_context.span_id());
    assert!(handled_c.parent_span_is_remote);
    assert_eq!(
        header,
        Some(format!("00-{}-{}-01", trace, send.span_context.span_id()))
    );
    assert_eq!(handled_c.span_kind, SpanKind::Consumer);
    assert_eq!(send.span_kind, SpanKind::Producer);
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(handled_c, "messaging.system").as_deref(),
        Some("shoal")
    );
    assert_eq!(
        attribute(handled_c, "messaging.destination.name").as_deref(),
        Some("reserve")
    );
    // The ids Shoal records are OpenTelemetry's.
    assert_eq!(
        attribute(handled_c, "shoal.span_id"),
        Some(handled_c.span_context.span_id().to_string())
    );
}
