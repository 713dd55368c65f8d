//! Traces across services: a `tracing` span per message handled and sent, and the W3C
//! `traceparent` header that ties them into one trace from service to service.
//!
//! - Handling: every handler call runs in a `shoal.handle` span (INFO), whose fields follow
//!   OpenTelemetry's messaging conventions. Its trace context is the one the message carried
//!   (a child of the sender's span), or a new trace when the message carried none and the
//!   span is recorded. The context is the handler's [`TraceContext::current`] (a tokio
//!   task-local, set around every poll of the handler's future).
//! - Sending: `send`, `request` and `publish` put the current context in the message's
//!   `traceparent` (and `tracestate`) header, unless the message has one already. With the
//!   `shoal.send` / `shoal.request` / `shoal.publish` span (DEBUG) recorded, the header names
//!   that span, and a send outside any trace starts one.
//!
//! Cost: with no subscriber interested in these spans, a handled message costs a look at
//! the subscribers' level and a scan of its headers for `traceparent`; a send outside a
//! handler one task-local lookup. The spans are not built at all then, even where
//! `tracing`'s `log` feature would hand a disabled span's fields to the `log` crate (see
//! `may_record`). No id is drawn, nothing formatted or allocated, unless a span is recorded
//! or a message carries a trace.
//!
//! With the `opentelemetry` feature, the spans' OpenTelemetry contexts (from
//! `tracing-opentelemetry`) are used instead, when a layer gives them one: see `otel.rs`.

mod context;
#[cfg(feature = "opentelemetry")]
mod otel;

use std::future::Future;

use tracing::Instrument;
use tracing::field::Empty;

pub use context::TraceContext;
use context::{TRACEPARENT, TRACESTATE};

use crate::Message;
use crate::handler::{BoxedHandler, HandlerFuture};

tokio::task_local! {
    /// The trace context of the handler (or [`TraceContext::scope`]) running on this task.
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// The trace context messages sent from here carry: inside a handler, that of its
    /// `shoal.handle` span; inside [`TraceContext::scope`] or [`TraceContext::in_scope`], the
    /// one given. `None` elsewhere (and in tasks a handler spawned: pass the context on with
    /// `scope`). With the `opentelemetry` feature, the current `tracing` span's OpenTelemetry
    /// context comes first, when it has a valid one.
    pub fn current() -> Option<Self> {
        current().map(|(ctx, _)| ctx)
    }

    /// Runs `future` in this trace context: messages it sends carry it (for example, a
    /// context parsed from an incoming HTTP request's `traceparent`).
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` in this trace context. `send`, `request` and `publish` read the context when
    /// called, so `ctx.in_scope(|| node.send(..))` is enough for one message.
    pub fn in_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}

impl Message {
    /// Sets the message's trace context: its `traceparent` header (and `tracestate`, when the
    /// context has one), replacing any it had. Messages sent from a handler, or inside
    /// [`TraceContext::scope`], get the current context without this.
    pub fn with_trace_context(mut self, ctx: &TraceContext) -> Self {
        self.env
            .headers
            .retain(|(k, _)| !is(k, TRACEPARENT) && !is(k, TRACESTATE));
        set_context(&mut self, ctx);
        self
    }

    /// The trace context the message carries: its `traceparent` header, read strictly (see
    /// [`TraceContext::parse`]), with its `tracestate`. `None` without a valid header, or
    /// with more than one `traceparent` (W3C: then none is valid).
    pub fn trace_context(&self) -> Option<TraceContext> {
        let mut parents = self.headers().iter().filter(|(k, _)| is(k, TRACEPARENT));
        let (_, parent) = parents.next()?;
        if parents.next().is_some() {
            tracing::debug!(id = %self.id(), "several traceparent headers; ignored");
            return None;
        }
        let state = self.headers().iter().find(|(k, _)| is(k, TRACESTATE));
        let parsed = TraceContext::parse(parent, state.map(|(_, v)| v.as_str()));
        if parsed.is_none() {
            let reason = context::parse_traceparent(parent)
                .err()
                .unwrap_or("invalid");
            tracing::debug!(id = %self.id(), "malformed traceparent header ignored: {reason}");
        }
        parsed
    }

    /// Whether a `traceparent` header is present (valid or not).
    fn has_traceparent(&self) -> bool {
        self.headers().iter().any(|(k, _)| is(k, TRACEPARENT))
    }
}

/// The current context, and whether it is the current span's own (OpenTelemetry's): then a
/// span opened here is its child already, and needs no remote parent.
fn current() -> Option<(TraceContext, bool)> {
    #[cfg(feature = "opentelemetry")]
    if let Some(ctx) = otel::current() {
        return Some((ctx, true));
    }
    CURRENT.try_with(|ctx| (ctx.clone(), false)).ok()
}

/// Header names compare as in HTTP: without regard to ASCII case.
fn is(key: &str, name: &str) -> bool {
    key.eq_ignore_ascii_case(name)
}

/// Appends the context's headers.
fn set_context(msg: &mut Message, ctx: &TraceContext) {
    msg.env
        .headers
        .push((TRACEPARENT.to_owned(), ctx.traceparent()));
    if let Some(state) = ctx.tracestate() {
        msg.env
            .headers
            .push((TRACESTATE.to_owned(), state.to_owned()));
    }
}

/// `message` with the current trace context in its headers, as `send` would put it, unless
/// it has a `traceparent` already or there is no current context: what an outbox stores, so
/// the relay's later send continues the trace of the enqueue.
#[cfg(feature = "outbox")]
pub(crate) fn with_current_context(message: &Message) -> std::borrow::Cow<'_, Message> {
    use std::borrow::Cow;
    if message.has_traceparent() {
        return Cow::Borrowed(message);
    }
    match current() {
        Some((ctx, _)) => {
            let mut traced = message.clone();
            set_context(&mut traced, &ctx);
            Cow::Owned(traced)
        }
        None => Cow::Borrowed(message),
    }
}

/// Calls `handler` on `message` inside a `shoal.handle` span and the message's trace context.
/// Without a subscriber for the span and without a trace on the message, the handler is
/// called as it is, with nothing around it.
///
/// Returns the handler's future and its trace context (the one its replies carry: see
/// [`with_handler_context`]); `None` when the call is in no trace.
pub(crate) fn call_handler(
    handler: &BoxedHandler,
    message: Message,
) -> (HandlerFuture, Option<TraceContext>) {
    let record = may_record(tracing::Level::INFO);
    // The usual case, no trace and no subscriber: nothing to parse, no span to build or drop.
    if !record && !message.has_traceparent() {
        return (handler(message), None);
    }
    // Parse only when there is something to parse.
    let incoming = if message.has_traceparent() {
        message.trace_context()
    } else {
        None
    };
    let span = if record {
        handle_span(&message)
    } else {
        tracing::Span::none()
    };
    let ctx = if span.is_disabled() {
        // Nobody records this span: pass the sender's context through unchanged, so the
        // trace goes on in the next service, whose span then hangs from the sender's.
        incoming
    } else {
        if let Some(id) = message.correlation_id() {
            span.record(
                "messaging.message.conversation_id",
                tracing::field::display(id),
            );
        }
        Some(enter_span(&span, incoming.as_ref(), true))
    };
    let Some(ctx) = ctx else {
        return (handler(message), None);
    };
    let future = span.in_scope(|| CURRENT.sync_scope(ctx.clone(), || handler(message)));
    (
        Box::pin(CURRENT.scope(ctx.clone(), future).instrument(span)),
        Some(ctx),
    )
}

/// A reply the handler that ran in `ctx` made (Shoal builds it from the handler's return
/// value): it continues the handler's trace like any message the handler sends, so an
/// asynchronous reply's handler, and a requester reading [`Message::trace_context`], are in
/// the same trace. No header without a trace.
pub(crate) fn with_handler_context(mut reply: Message, ctx: Option<&TraceContext>) -> Message {
    if let Some(ctx) = ctx {
        set_context(&mut reply, ctx);
    }
    reply
}

/// The `shoal.handle` span of one handler call, its fields after OpenTelemetry's messaging
/// conventions.
fn handle_span(message: &Message) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "shoal.handle",
        otel.kind = "consumer",
        messaging.system = "shoal",
        messaging.operation.type = "process",
        messaging.destination.name = %message.name(),
        messaging.message.id = %message.id(),
        messaging.message.conversation_id = Empty,
        shoal.kind = ?message.kind(),
        shoal.attempt = message.attempt(),
        shoal.keyed = message.key().is_some(),
        shoal.trace_id = Empty,
        shoal.span_id = Empty,
        shoal.parent_span_id = Empty,
    )
}

/// Whether a subscriber may record a span at `level`: no span is built when none can.
///
/// `tracing` checks this itself, but with its `log` feature on (quinn's default features
/// turn it on) and no subscriber set, a disabled span still collects its fields for the
/// `log` crate, again when dropped: about 500 instructions a message, 2 % of a `send`.
/// Shoal's spans are for `tracing` subscribers, so they are skipped whole.
fn may_record(level: tracing::Level) -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    level <= STATIC_MAX_LEVEL && level <= LevelFilter::current()
}

/// The context of a recorded span: a child of `parent` (a new trace without one), its ids
/// recorded on the span. With the `opentelemetry` feature and a layer, the span's
/// OpenTelemetry context decides; `remote` says `parent` is not the span's parent in
/// `tracing` already (it came in a message, or from [`TraceContext::scope`]), so it is set
/// as its OpenTelemetry parent.
fn enter_span(span: &tracing::Span, parent: Option<&TraceContext>, remote: bool) -> TraceContext {
    #[cfg(feature = "opentelemetry")]
    if let Some(ctx) = otel::adopt(span, parent.filter(|_| remote)) {
        record(span, &ctx, parent);
        return ctx;
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = remote;
    let ctx = parent.map_or_else(TraceContext::new_root, TraceContext::child);
    record(span, &ctx, parent);
    ctx
}

/// Records a span's trace ids (the same hex as `traceparent` and OpenTelemetry exporters).
fn record(span: &tracing::Span, ctx: &TraceContext, parent: Option<&TraceContext>) {
    span.record(
        "shoal.trace_id",
        tracing::field::display(ctx.trace_id_hex()),
    );
    span.record("shoal.span_id", tracing::field::display(ctx.span_id_hex()));
    if let Some(parent) = parent {
        span.record(
            "shoal.parent_span_id",
            tracing::field::display(parent.span_id_hex()),
        );
    }
}

/// What sends with [`traced_send`] are: the span name and OpenTelemetry's operation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sending {
    /// [`crate::Node::send`].
    Send,
    /// [`crate::Node::request`].
    Request,
    /// [`crate::Node::publish`] and the batches.
    Publish,
}

/// The span of one outgoing operation; a macro because `tracing` needs the span name at
/// compile time.
macro_rules! send_span {
    ($name:literal, $operation:literal, $service:expr, $msg:expr) => {
        tracing::debug_span!(
            $name,
            otel.kind = "producer",
            messaging.system = "shoal",
            messaging.operation.type = $operation,
            messaging.destination.name = %$msg.name(),
            messaging.message.id = %$msg.id(),
            shoal.kind = ?$msg.kind(),
            shoal.service = $service,
            shoal.trace_id = Empty,
            shoal.span_id = Empty,
            shoal.parent_span_id = Empty,
        )
    };
}

/// Runs `f` inside `span`, or plainly when nobody records it: entering and leaving even a
/// disabled span costs instructions on every send, request and publish.
pub(crate) fn within<R>(span: &tracing::Span, f: impl FnOnce() -> R) -> R {
    if span.is_disabled() {
        f()
    } else {
        span.in_scope(f)
    }
}

/// `future` instrumented with `span`, or bare when nobody records the span (an instrumented
/// future enters and leaves its span at every poll).
pub(crate) fn instrumented<F: Future>(
    future: F,
    span: tracing::Span,
) -> futures_util::future::Either<F, tracing::instrument::Instrumented<F>> {
    if span.is_disabled() {
        futures_util::future::Either::Left(future)
    } else {
        futures_util::future::Either::Right(future.instrument(span))
    }
}

/// Prepares the messages of one send, request or publish for tracing: opens its span
/// (`shoal.send`, `shoal.request` or `shoal.publish`, DEBUG) and puts the trace context in
/// every message without a `traceparent`. `service` is the receiving service (none for a
/// publish). Returns the span, for the caller's future; a
/// disabled span when nobody records it.
pub(crate) fn traced_send(
    kind: Sending,
    service: Option<&str>,
    messages: &mut [Message],
) -> tracing::Span {
    let Some(first) = messages.first() else {
        return tracing::Span::none();
    };
    let span = if may_record(tracing::Level::DEBUG) {
        match kind {
            Sending::Send => send_span!("shoal.send", "send", service, first),
            Sending::Request => send_span!("shoal.request", "send", service, first),
            Sending::Publish => send_span!("shoal.publish", "publish", service, first),
        }
    } else {
        tracing::Span::none()
    };
    let current = current();
    let ctx = if span.is_disabled() {
        current.map(|(ctx, _)| ctx)
    } else {
        let remote = current.as_ref().is_some_and(|(_, own)| !own);
        Some(enter_span(
            &span,
            current.as_ref().map(|(ctx, _)| ctx),
            remote,
        ))
    };
    if let Some(ctx) = ctx {
        for msg in messages.iter_mut().filter(|m| !m.has_traceparent()) {
            set_context(msg, &ctx);
        }
    }
    span
}
