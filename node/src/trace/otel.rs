//! The `opentelemetry` feature: Shoal's spans in the same OpenTelemetry traces as the rest of
//! a service, through `tracing-opentelemetry`.
//!
//! When the subscriber has a `tracing_opentelemetry` layer, a span's OpenTelemetry context is
//! the truth: a `shoal.handle` span's parent is set to the message's `traceparent` (a remote
//! parent), messages carry the OpenTelemetry context of the span they are sent from, and the
//! ids Shoal records on its spans are OpenTelemetry's. Without such a layer, everything falls
//! back to Shoal's own contexts (see the module above).

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;

/// The OpenTelemetry context of the current `tracing` span, when it has a valid one.
pub(super) fn current() -> Option<TraceContext> {
    let span = tracing::Span::current();
    if span.is_none() {
        return None;
    }
    from_otel(span.context().span().span_context())
}

/// Makes `remote` (a context from another service, or from [`TraceContext::scope`]) the
/// OpenTelemetry parent of `span`, and returns the span's own context; `None` when no
/// OpenTelemetry layer records the span.
pub(super) fn adopt(span: &tracing::Span, remote: Option<&TraceContext>) -> Option<TraceContext> {
    if let Some(remote) = remote {
        let state = remote
            .tracestate()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let parent = SpanContext::new(
            TraceId::from_bytes(remote.trace_id().to_be_bytes()),
            SpanId::from_bytes(remote.span_id().to_be_bytes()),
            if remote.is_sampled() {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            state,
        );
        // Fails only without a layer (then the context below is invalid too).
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    from_otel(span.context().span().span_context())
}

/// Shoal's form of a valid OpenTelemetry span context.
fn from_otel(sc: &SpanContext) -> Option<TraceContext> {
    if !sc.is_valid() {
        return None;
    }
    let ctx = TraceContext::from_parts(
        u128::from_be_bytes(sc.trace_id().to_bytes()),
        u64::from_be_bytes(sc.span_id().to_bytes()),
        sc.is_sampled(),
    )?;
    let state = sc.trace_state().header();
    Some(if state.is_empty() {
        ctx
    } else {
        ctx.with_tracestate(&state)
    })
}
