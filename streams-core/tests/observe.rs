//! `ObservedWriter` and `ObservedReader` around the in-process bus: the spans and metrics
//! any driver gets by being wrapped.
//!
//! One test in this binary: it installs a scoped `tracing` subscriber, and tracing caches
//! per call site whether any subscriber is interested, which tests running side by side
//! with and without a subscriber can get wrong.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use streams_chanbuf::MemoryBus;
use streams_core::observe::{
    ObservedReader, ObservedWriter, MESSAGES_FAILED, MESSAGES_HANDLED, MESSAGES_PUBLISHED,
};
use streams_core::{BoxError, Message, ReadTask, Router, Writer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The string fields of every `streams.handle` span, as they close.
#[derive(Clone, Default)]
struct HandleSpans(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct Strings(HashMap<String, String>);

impl Visit for Strings {
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for HandleSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Strings(HashMap::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Strings>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if span.name() == "streams.handle" {
                if let Some(fields) = span.extensions_mut().remove::<Strings>() {
                    self.0.lock().unwrap().push(fields.0);
                }
            }
        }
    }
}

#[tokio::test]
async fn observed_reader_and_writer_around_the_in_process_bus() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let spans = HandleSpans::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut subscriber = Router::new(
        Arc::new(ObservedReader::new(bus.clone()).with_system("in_process")),
        Default::default(),
    );
    subscriber.subscribe(
        ReadTask::new("orders").with_group("billing"),
        tower::service_fn(move |msg: Message| {
            let _ = tx.send(msg.id.clone());
            async move {
                if &msg.data[..] == b"bad" {
                    Err::<(), BoxError>("rejected".into())
                } else {
                    Ok(())
                }
            }
        }),
    );
    subscriber.start().await.unwrap();

    let writer = ObservedWriter::new(bus.clone());
    writer
        .write(vec![
            Message::new("orders", "ok").with_id("m-1"),
            Message::new("orders", "bad").with_id("m-2"),
        ])
        .await
        .unwrap();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    subscriber.shutdown(Duration::from_secs(5)).await.unwrap();

    let mut counters = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let stream = key
                .key()
                .labels()
                .find(|l| l.key() == "stream")
                .map(|l| l.value().to_owned());
            counters.insert((key.key().name().to_owned(), stream), n);
        }
    }
    let orders = Some("orders".to_owned());
    assert_eq!(
        counters.get(&(MESSAGES_PUBLISHED.to_owned(), orders.clone())),
        Some(&2)
    );
    assert_eq!(
        counters.get(&(MESSAGES_HANDLED.to_owned(), orders.clone())),
        Some(&1)
    );
    assert_eq!(
        counters.get(&(MESSAGES_FAILED.to_owned(), orders)),
        Some(&1)
    );

    let spans = spans.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "{spans:?}");
    for span in &spans {
        let field = |name: &str| span.get(name).map(String::as_str);
        assert_eq!(field("messaging.destination.name"), Some("orders"));
        assert_eq!(field("messaging.consumer.group.name"), Some("billing"));
        assert_eq!(field("messaging.system"), Some("in_process"));
    }
    let mut ids: Vec<_> = spans
        .iter()
        .map(|s| s["messaging.message.id"].clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["m-1", "m-2"]);
}
