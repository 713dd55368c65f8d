//! Traces across services, on loopback: the `shoal.handle` and `shoal.send` spans, their
//! fields, and the W3C `traceparent` header carrying one trace from service to service.
//!
//! Spans are recorded by a `tracing` layer set as the test thread's default subscriber; the
//! tests run on a current-thread runtime, so every node's tasks run on that thread and report
//! to it.
#![allow(clippy::unwrap_used)]

#[path = "support/chain.rs"]
mod chain;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chain::{Chain, WAIT, start};
use shoal::{HandlerError, MeshCa, Message, RetryPolicy, SendOptions, TraceContext};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The trace the first service works in, as an HTTP request would have brought it.
const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// One span as recorded: its name and fields (values as `Display`/`Debug` wrote them).
#[derive(Clone, Debug)]
struct Recorded {
    id: Id,
    name: &'static str,
    fields: HashMap<String, String>,
}

impl Recorded {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

/// A layer that keeps every span with its fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Recorded>>>);

impl Spans {
    fn named(&self, name: &str) -> Vec<Recorded> {
        let spans = self.0.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Recorded {
            id: id.clone(),
            name: attrs.metadata().name(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        // Span ids are reused once a span closes: the latest span with the id is this one.
        let mut spans = self.0.lock().unwrap();
        if let Some(span) = spans.iter_mut().rev().find(|s| &s.id == id) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

/// Records spans on this thread until the guard drops.
fn record_spans() -> (Spans, tracing::subscriber::DefaultGuard) {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    (spans, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn one_trace_follows_a_request_through_three_services() {
    let (spans, _guard) = record_spans();
    let ca = MeshCa::generate("traces").unwrap();
    let mut services = Chain::start(&ca).await;
    let incoming = TraceContext::parse(INCOMING, Some("vendor=opaque")).unwrap();
    let request = incoming.in_scope(|| {
        services
            .a
            .request("pricing", Message::command("quote", "book"), WAIT)
    });
    let (header, current) = services.finish(request).await;

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let request = &spans.named("shoal.request")[0];
    let handled_b = spans
        .named("shoal.handle")
        .into_iter()
        .find(|s| s.get("messaging.destination.name") == Some("quote"))
        .unwrap();
    let send = &spans.named("shoal.send")[0];
    let handled_c = spans
        .named("shoal.handle")
        .into_iter()
        .find(|s| s.get("messaging.destination.name") == Some("reserve"))
        .unwrap();
    // Every span is in the caller's trace, and each is the child of the one before.
    let chain = [request, &handled_b, send, &handled_c];
    for span in chain {
        assert_eq!(span.get("shoal.trace_id"), Some(trace), "{span:?}");
    }
    assert_eq!(
        request.get("shoal.parent_span_id"),
        Some("b7ad6b7169203331")
    );
    for pair in chain.windows(2) {
        assert_eq!(
            pair[1].get("shoal.parent_span_id"),
            pair[0].get("shoal.span_id"),
            "{} should hang from {}",
            pair[1].name,
            pair[0].name
        );
    }
    // C's handler saw the header naming B's send span, and runs in its own span's context.
    let send_span = send.get("shoal.span_id").unwrap();
    assert_eq!(header, Some(format!("00-{trace}-{send_span}-01")));
    let current = current.unwrap();
    assert_eq!(format!("{:032x}", current.trace_id()), trace);
    assert_eq!(
        Some(format!("{:016x}", current.span_id()).as_str()),
        handled_c.get("shoal.span_id")
    );
    // tracestate travels with the trace.
    assert_eq!(current.tracestate(), Some("vendor=opaque"));
    // OpenTelemetry's messaging conventions.
    assert_eq!(handled_c.get("messaging.system"), Some("shoal"));
    assert_eq!(handled_c.get("messaging.operation.type"), Some("process"));
    assert_eq!(handled_c.get("otel.kind"), Some("consumer"));
    assert_eq!(send.get("otel.kind"), Some("producer"));
    assert_eq!(send.get("shoal.service"), Some("stock"));
    services.shutdown().await;
}

#[tokio::test]
async fn hostile_traceparents_are_ignored_and_the_message_still_handled() {
    let (spans, _guard) = record_spans();
    let ca = MeshCa::generate("traces").unwrap();
    let c = start(&ca, "stock", None).await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    c.handle("reserve", move |msg: Message| {
        let _ = seen_tx.send((msg.id(), TraceContext::current()));
        async { Ok(()) }
    });
    let a = start(&ca, "shop", Some(&c)).await;
    let zeros = "00-00000000000000000000000000000000-b7ad6b7169203331-01";
    // Within the codec's limit on a header value (4 KiB), far over W3C's 512 bytes.
    let huge_state = "k=".to_owned() + &"v".repeat(4_000);
    let hostile: Vec<Vec<(&str, &str)>> = vec![
        vec![(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",
        )],
        vec![(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333z-01",
        )],
        vec![("traceparent", zeros)],
        vec![(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        )],
        vec![(
            "traceparent",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        vec![("traceparent", "\u{1F980}")],
        vec![("traceparent", INCOMING), ("traceparent", INCOMING)],
    ];
    for headers in hostile {
        let mut msg = Message::command("reserve", "x");
        for (k, v) in &headers {
            msg = msg.with_header(*k, *v);
        }
        let id = msg.id();
        tokio::time::timeout(WAIT, a.send("stock", msg))
            .await
            .unwrap()
            .unwrap();
        let (seen, current) = tokio::time::timeout(WAIT, seen_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, id);
        // A new trace, of the span's own: no parent from the header.
        let current = current.unwrap();
        assert_ne!(
            format!("{:032x}", current.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let handled = spans
            .named("shoal.handle")
            .into_iter()
            .find(|s| s.get("messaging.message.id") == Some(&id.to_string()))
            .unwrap();
        assert_eq!(handled.get("shoal.parent_span_id"), None, "{headers:?}");
    }
    // A huge tracestate is dropped; the valid traceparent beside it still counts.
    let msg = Message::command("reserve", "x")
        .with_header("traceparent", INCOMING)
        .with_header("tracestate", huge_state);
    tokio::time::timeout(WAIT, a.send("stock", msg))
        .await
        .unwrap()
        .unwrap();
    let (_, current) = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let current = current.unwrap();
    assert_eq!(
        current.trace_id(),
        0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c
    );
    assert_eq!(current.tracestate(), None);
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn spans_carry_the_message_id_correlation_id_and_attempt() {
    let (spans, _guard) = record_spans();
    let ca = MeshCa::generate("traces").unwrap();
    let c = start(&ca, "stock", None).await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    c.handle("reserve", move |msg: Message| {
        let _ = seen_tx.send(msg.attempt());
        // The first delivery fails: the sender redelivers it.
        let first = msg.attempt() == 1;
        async move {
            if first {
                Err(HandlerError::retryable("not yet"))
            } else {
                Ok(())
            }
        }
    });
    let a = start(&ca, "shop", Some(&c)).await;
    let correlation = Message::command("order", "").id();
    let msg = Message::command("reserve", "x").with_correlation_id(correlation);
    let id = msg.id();
    let retry = RetryPolicy {
        initial_backoff: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    let receipt = tokio::time::timeout(
        WAIT,
        a.send_with("stock", msg, SendOptions::with_retry(retry)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(receipt.attempts, 2);
    for attempt in [1, 2] {
        assert_eq!(
            tokio::time::timeout(WAIT, seen_rx.recv()).await.unwrap(),
            Some(attempt)
        );
    }
    let handled = spans.named("shoal.handle");
    assert_eq!(handled.len(), 2, "{handled:?}");
    let send = &spans.named("shoal.send")[0];
    for (span, attempt) in handled.iter().zip(["1", "2"]) {
        assert_eq!(span.get("shoal.attempt"), Some(attempt));
        assert_eq!(
            span.get("messaging.message.id"),
            Some(id.to_string().as_str())
        );
        assert_eq!(
            span.get("messaging.message.conversation_id"),
            Some(correlation.to_string().as_str())
        );
        assert_eq!(span.get("shoal.kind"), Some("Command"));
        // Both attempts hang from the one send.
        assert_eq!(span.get("shoal.parent_span_id"), send.get("shoal.span_id"));
        assert_eq!(span.get("shoal.trace_id"), send.get("shoal.trace_id"));
    }
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn replies_continue_the_trace_of_the_handler_that_made_them() {
    let (spans, _guard) = record_spans();
    let ca = MeshCa::generate("traces").unwrap();
    let b = start(&ca, "pricing", None).await;
    b.handle("quote", |_msg: Message| async { Ok("25") });
    let a = start(&ca, "shop", Some(&b)).await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    a.handle("quote-replies", move |reply: Message| {
        let _ = seen_tx.send((
            reply.header("traceparent").map(str::to_owned),
            TraceContext::current(),
        ));
        async { Ok(()) }
    });
    let incoming = TraceContext::parse(INCOMING, None).unwrap();
    let send = incoming.clone().in_scope(|| {
        a.send(
            "pricing",
            Message::command("quote", "book").with_reply_channel("quote-replies"),
        )
    });
    tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
    let (header, current) = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    // The asynchronous reply names B's `shoal.handle` span, and A's reply handler runs in
    // the same trace.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let handled_b = spans
        .named("shoal.handle")
        .into_iter()
        .find(|s| s.get("messaging.destination.name") == Some("quote"))
        .unwrap();
    let b_span = handled_b.get("shoal.span_id").unwrap();
    assert_eq!(header, Some(format!("00-{trace}-{b_span}-01")));
    assert_eq!(format!("{:032x}", current.unwrap().trace_id()), trace);
    let handled_reply = spans
        .named("shoal.handle")
        .into_iter()
        .find(|s| s.get("messaging.destination.name") == Some("quote-replies"))
        .unwrap();
    assert_eq!(handled_reply.get("shoal.parent_span_id"), Some(b_span));

    // A synchronous request's reply carries the trace too.
    let request =
        incoming.in_scope(|| a.request("pricing", Message::command("quote", "pen"), WAIT));
    let reply = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    let ctx = reply.trace_context().unwrap();
    assert_eq!(format!("{:032x}", ctx.trace_id()), trace);
    a.shutdown().await;
    b.shutdown().await;
}
