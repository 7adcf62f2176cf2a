//! With the `opentelemetry` feature: a trace follows a message from the publishing span,
//! through its headers, to the span that handles it.
//!
//! `cargo test -p streams-core --features opentelemetry --test otel`

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use streams_chanbuf::MemoryBus;
use streams_core::observe::{ObservedReader, ObservedWriter};
use streams_core::{BoxError, Headers, Message, Router, Writer};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

fn find<'a>(spans: &'a [SpanData], name: &str, pred: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name && pred(s)).collect();
    assert_eq!(found.len(), 1, "one `{name}` span expected: {spans:#?}");
    found[0]
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lowercase.
fn parse_traceparent(value: &str) -> (TraceId, SpanId) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    assert_eq!(parts[1].len(), 32, "{value}");
    assert_eq!(parts[2].len(), 16, "{value}");
    assert_eq!(parts[3].len(), 2, "{value}");
    assert!(
        value
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{value}"
    );
    (
        TraceId::from_hex(parts[1]).unwrap(),
        SpanId::from_hex(parts[2]).unwrap(),
    )
}

#[tokio::test]
async fn trace_context_travels_in_headers_from_publish_to_handle() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("streams-test"));
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(otel));

    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Headers)>();
    let mut subscriber = Router::new(
        Arc::new(ObservedReader::new(bus.clone())),
        Default::default(),
    );
    subscriber.subscribe_stream(
        "orders",
        tower::service_fn(move |msg: Message| {
            let _ = tx.send((msg.id.clone(), msg.headers.clone()));
            std::future::ready(Ok::<_, BoxError>(()))
        }),
    );
    subscriber.start().await.unwrap();
    let writer = ObservedWriter::new(bus.clone());

    // A message published inside a request's span.
    writer
        .write(vec![Message::new("orders", "x").with_id("fresh")])
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();
    // A message that already carries the context it was created in (relayed from an
    // outbox, say) keeps it.
    let origin = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    writer
        .write(vec![Message::new("orders", "y")
            .with_id("relayed")
            .with_header("traceparent", origin)])
        .instrument(tracing::info_span!("relay"))
        .await
        .unwrap();

    let mut received = std::collections::HashMap::new();
    for _ in 0..2 {
        let (id, headers) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        received.insert(id, headers);
    }
    subscriber.shutdown(Duration::from_secs(5)).await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // The fresh message: checkout -> streams.publish -> (headers) -> streams.handle.
    let checkout = find(&spans, "checkout", |_| true);
    let publish = find(&spans, "streams.publish", |s| {
        attribute(s, "messaging.message.id").as_deref() == Some("fresh")
    });
    let handle = find(&spans, "streams.handle", |s| {
        attribute(s, "messaging.message.id").as_deref() == Some("fresh")
    });
    let trace_id = checkout.span_context.trace_id();
    assert_eq!(publish.span_context.trace_id(), trace_id);
    assert_eq!(publish.parent_span_id, checkout.span_context.span_id());
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(handle.span_context.trace_id(), trace_id);
    assert_eq!(handle.parent_span_id, publish.span_context.span_id());
    assert!(handle.parent_span_is_remote, "the parent came from headers");
    assert_eq!(handle.span_kind, SpanKind::Consumer);
    assert_eq!(
        attribute(handle, "messaging.destination.name").as_deref(),
        Some("orders")
    );

    let headers = &received["fresh"];
    assert_eq!(
        parse_traceparent(&headers["traceparent"]),
        (trace_id, publish.span_context.span_id())
    );
    assert!(
        !headers.contains_key("tracestate"),
        "an empty tracestate is not written: {headers:?}"
    );

    // The relayed message kept its own context, and its handle span continues it.
    assert_eq!(received["relayed"]["traceparent"], origin);
    let (origin_trace, origin_span) = parse_traceparent(origin);
    let handle = find(&spans, "streams.handle", |s| {
        attribute(s, "messaging.message.id").as_deref() == Some("relayed")
    });
    assert_eq!(handle.span_context.trace_id(), origin_trace);
    assert_eq!(handle.parent_span_id, origin_span);
}
