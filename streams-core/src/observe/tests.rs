//! Metrics through a thread-local debugging recorder and spans through a capturing
//! `tracing` layer. Tests run on tokio's current-thread runtime, so every task they spawn
//! sees the recorder and the subscriber they set.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use super::*;
use crate::middleware::{DeadLetterLayer, RetryLayer, RetryPolicy};
use crate::{call_handler, handler, BoxError, Error, FailedMessage, Message, Result, Writer};

// ---- metrics ------------------------------------------------------------------------

/// What a snapshot holds, by metric name and `stream` label.
#[derive(Debug, Default)]
struct Recorded {
    counters: HashMap<(String, String), u64>,
    histograms: HashMap<(String, String), Vec<f64>>,
    units: HashMap<String, Option<Unit>>,
}

impl Recorded {
    fn take(snapshotter: &Snapshotter) -> Self {
        let mut r = Recorded::default();
        for (key, unit, _help, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let stream = key
                .labels()
                .find(|l| l.key() == STREAM_LABEL)
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let id = (key.name().to_owned(), stream);
            r.units.insert(key.name().to_owned(), unit);
            match value {
                DebugValue::Counter(n) => {
                    *r.counters.entry(id).or_default() += n;
                }
                DebugValue::Histogram(v) => r
                    .histograms
                    .entry(id)
                    .or_default()
                    .extend(v.into_iter().map(|f| f.into_inner())),
                DebugValue::Gauge(_) => {}
            }
        }
        r
    }

    fn counter(&self, name: &str, stream: &str) -> u64 {
        self.counters
            .get(&(name.to_owned(), stream.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn samples(&self, name: &str, stream: &str) -> usize {
        self.histograms
            .get(&(name.to_owned(), stream.to_owned()))
            .map_or(0, Vec::len)
    }
}

fn recorder() -> (DebuggingRecorder, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    (recorder, snapshotter)
}

/// Fails messages whose payload is `bad`, and `flaky` ones on every other call.
fn picky() -> impl Service<
    Message,
    Response = (),
    Error = BoxError,
    Future = BoxFuture<'static, Result<(), BoxError>>,
> + Clone {
    let calls = Arc::new(Mutex::new(0u32));
    tower::service_fn(move |msg: Message| {
        let calls = calls.clone();
        Box::pin(async move {
            let n = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c
            };
            match &msg.data[..] {
                b"bad" => Err::<(), BoxError>("bad payload".into()),
                b"flaky" if n % 2 == 1 => Err("flaky dependency".into()),
                _ => Ok(()),
            }
        }) as BoxFuture<'static, _>
    })
}

async fn call<S>(svc: &mut S, msg: Message) -> Result<(), BoxError>
where
    S: Service<Message, Response = (), Error = BoxError>,
{
    svc.ready().await?.call(msg).await
}

#[tokio::test]
async fn handled_and_failed_are_counted_per_stream() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let mut svc = ObserveLayer::new().layer(picky());
    call(&mut svc, Message::new("orders", "ok")).await.unwrap();
    call(&mut svc, Message::new("orders", "ok")).await.unwrap();
    let err = call(&mut svc, Message::new("orders", "bad"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "bad payload", "the error passes through");
    call(&mut svc, Message::new("payments", "ok"))
        .await
        .unwrap();

    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_HANDLED, "orders"), 2);
    assert_eq!(r.counter(MESSAGES_FAILED, "orders"), 1);
    assert_eq!(r.counter(MESSAGES_HANDLED, "payments"), 1);
    assert_eq!(r.counter(MESSAGES_FAILED, "payments"), 0);
    assert_eq!(r.samples(HANDLER_DURATION, "orders"), 3);
    assert_eq!(r.samples(HANDLER_DURATION, "payments"), 1);
}

/// A recorder installed after the handler was built, or set for a while, gets every
/// message handled from then on, and nothing once it is gone: nothing about the
/// recorder is cached.
#[tokio::test]
async fn a_recorder_installed_later_gets_the_metrics() {
    let mut svc = ObserveLayer::new().layer(picky());
    call(&mut svc, Message::new("orders", "ok")).await.unwrap();

    let (recorder, snapshotter) = recorder();
    {
        let _local = metrics::set_default_local_recorder(&recorder);
        call(&mut svc, Message::new("orders", "ok")).await.unwrap();
        call(&mut svc, Message::new("orders", "bad"))
            .await
            .unwrap_err();
    }
    call(&mut svc, Message::new("orders", "ok")).await.unwrap();

    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_HANDLED, "orders"), 1);
    assert_eq!(r.counter(MESSAGES_FAILED, "orders"), 1);
    assert_eq!(r.samples(HANDLER_DURATION, "orders"), 2);
}

/// An `ObserveLayer` inside another (a handler given one, run by an `ObservedReader`)
/// passes messages through: each is counted once, whether the inner layer is called
/// at once or later by a retry.
#[tokio::test]
async fn nested_observation_counts_once() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let mut direct = ObserveLayer::new().layer(ObserveLayer::new().layer(picky()));
    call(&mut direct, Message::new("orders", "ok"))
        .await
        .unwrap();
    call(&mut direct, Message::new("orders", "bad"))
        .await
        .unwrap_err();
    let retry = crate::middleware::RetryPolicy::default()
        .with_max_attempts(2)
        .with_initial_backoff(Duration::from_millis(1));
    let mut later = ObserveLayer::new()
        .layer(crate::middleware::RetryLayer::new(retry).layer(ObserveLayer::new().layer(picky())));
    call(&mut later, Message::new("payments", "ok"))
        .await
        .unwrap();

    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_HANDLED, "orders"), 1);
    assert_eq!(r.counter(MESSAGES_FAILED, "orders"), 1);
    assert_eq!(r.samples(HANDLER_DURATION, "orders"), 2);
    assert_eq!(r.counter(MESSAGES_HANDLED, "payments"), 1);
    assert_eq!(r.samples(HANDLER_DURATION, "payments"), 1);
}

#[tokio::test]
async fn panicking_or_dropped_calls_count_as_failed() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let inner = tower::service_fn(|msg: Message| async move {
        if &msg.data[..] == b"panic" {
            panic!("handler bug");
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, BoxError>(())
    });
    let mut h = handler(ObserveLayer::new().layer(inner));
    let err = call_handler(&mut h, Message::new("orders", "panic"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("handler bug"), "{err}");

    // A time-out drops the call before it answers.
    let slow = call_handler(&mut h, Message::new("orders", "slow"));
    assert!(tokio::time::timeout(Duration::from_millis(10), slow)
        .await
        .is_err());

    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_FAILED, "orders"), 2);
    assert_eq!(r.counter(MESSAGES_HANDLED, "orders"), 0);
    assert_eq!(r.samples(HANDLER_DURATION, "orders"), 2);
}

#[tokio::test]
async fn retries_and_dead_letters_are_counted() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let dlq = Arc::new(MockWriter::default());
    let mut svc = ServiceBuilder::new()
        .layer(ObserveLayer::new())
        .layer(DeadLetterLayer::new(Arc::new(ObservedWriter::new(
            dlq.clone(),
        ))))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1))
                .with_max_backoff(Duration::from_millis(2)),
        ))
        .service(picky());

    // `flaky` fails once and succeeds on its retry; `bad` fails three times and is
    // dead-lettered; both are acknowledged.
    call(&mut svc, Message::new("orders", "flaky"))
        .await
        .unwrap();
    call(&mut svc, Message::new("orders", "bad")).await.unwrap();
    call(&mut svc, Message::new("orders", "fine"))
        .await
        .unwrap();

    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_RETRIED, "orders"), 1 + 2);
    assert_eq!(r.counter(MESSAGES_DEAD_LETTERED, "orders"), 1);
    assert_eq!(r.counter(MESSAGES_HANDLED, "orders"), 3);
    assert_eq!(r.counter(MESSAGES_FAILED, "orders"), 0);
    assert_eq!(r.counter(MESSAGES_PUBLISHED, "orders.dlq"), 1);
    assert_eq!(dlq.written.lock().unwrap().len(), 1);

    // A dead-letter write that fails leaves the message unacknowledged and uncounted.
    dlq.plan(Err(Error::Closed("writer")));
    call(&mut svc, Message::new("orders", "bad"))
        .await
        .unwrap_err();
    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_DEAD_LETTERED, "orders"), 0);
    assert_eq!(r.counter(MESSAGES_FAILED, "orders"), 1);
    assert_eq!(r.counter(PUBLISH_FAILED, "orders.dlq"), 1);
    assert_eq!(r.counter(MESSAGES_RETRIED, "orders"), 2);
}

/// Writes into memory; each write takes the next planned result (`Ok` when none).
#[derive(Debug, Default)]
struct MockWriter {
    planned: Mutex<VecDeque<Result<()>>>,
    written: Mutex<Vec<Message>>,
}

impl MockWriter {
    fn plan(&self, result: Result<()>) {
        self.planned.lock().unwrap().push_back(result);
    }
}

#[async_trait]
impl Writer for MockWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        let result = self.planned.lock().unwrap().pop_front().unwrap_or(Ok(()));
        self.written.lock().unwrap().extend(batch);
        result
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

fn partial(ids: &[&str]) -> Result<()> {
    Err(Error::PartialWrite {
        failed: ids
            .iter()
            .map(|id| FailedMessage {
                id: (*id).to_owned(),
                reason: "rejected".into(),
            })
            .collect(),
        retryable: true,
    })
}

#[tokio::test]
async fn published_and_failed_writes_are_counted() {
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);

    let mock = Arc::new(MockWriter::default());
    // Through `Arc<dyn Writer>`, as the facade holds writers.
    let dynamic: Arc<dyn Writer> = mock.clone();
    let writer = ObservedWriter::new(dynamic);
    let batch = |stream: &str, n: usize| -> Vec<Message> {
        (0..n)
            .map(|i| Message::new(stream, "x").with_id(format!("{stream}-{i}")))
            .collect()
    };

    writer.write(batch("orders", 3)).await.unwrap();
    mock.plan(partial(&["orders-1"]));
    writer.write(batch("orders", 3)).await.unwrap_err();
    mock.plan(Err(Error::Closed("writer")));
    writer.write(batch("orders", 2)).await.unwrap_err();
    writer.write(Vec::new()).await.unwrap();

    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_PUBLISHED, "orders"), 3 + 2);
    assert_eq!(r.counter(PUBLISH_FAILED, "orders"), 1 + 2);
    assert_eq!(
        r.samples(PUBLISH_DURATION, "orders"),
        3,
        "one per write call"
    );

    // A batch over two streams counts each on its own, partial failures included.
    let mut mixed = batch("a", 2);
    mixed.extend(batch("b", 2));
    mixed.push(Message::new("a", "x").with_id("a-2"));
    mock.plan(partial(&["b-0", "a-2", "not-in-batch"]));
    writer.write(mixed).await.unwrap_err();
    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_PUBLISHED, "a"), 2);
    assert_eq!(r.counter(PUBLISH_FAILED, "a"), 1);
    assert_eq!(r.counter(MESSAGES_PUBLISHED, "b"), 1);
    assert_eq!(r.counter(PUBLISH_FAILED, "b"), 1);
    assert_eq!(r.samples(PUBLISH_DURATION, "a"), 1);
    assert_eq!(r.samples(PUBLISH_DURATION, "b"), 1);
}

#[test]
fn metrics_are_described_with_units() {
    let (recorder, snapshotter) = recorder();
    metrics::with_local_recorder(&recorder, || {
        describe_metrics();
        for name in METRIC_NAMES {
            if name.ends_with("_seconds") {
                metrics::histogram!(name).record(1.0);
            } else {
                metrics::counter!(name).increment(1);
            }
        }
    });
    let r = Recorded::take(&snapshotter);
    for name in METRIC_NAMES {
        let unit = r.units.get(name).copied().flatten();
        let expected = if name.ends_with("_seconds") {
            Unit::Seconds
        } else {
            assert!(name.ends_with("_total"), "{name}");
            Unit::Count
        };
        assert_eq!(unit, Some(expected), "{name}");
    }
}

// ---- spans --------------------------------------------------------------------------

/// A closed span: its name and every field recorded on it, as text.
#[derive(Debug, Clone)]
struct SpanRecord {
    name: &'static str,
    fields: HashMap<String, String>,
}

impl SpanRecord {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Spans closed on this thread while a [`Captured`] is alive.
///
/// The subscriber is global and the captured spans thread-local: tracing caches per
/// call site whether any subscriber is interested, and a call site first reached by a
/// test without a subscriber while another test installs a scoped one can stay disabled.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<SpanRecord>>>);

impl Captured {
    fn spans(&self, name: &str) -> Vec<SpanRecord> {
        let spans = self.0.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        SINK.with(|sink| sink.borrow_mut().take());
    }
}

thread_local! {
    static SINK: std::cell::RefCell<Option<Arc<Mutex<Vec<SpanRecord>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Hands closed spans to the [`SINK`] of the thread they close on.
struct CaptureLayer;

struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = Fields(HashMap::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let Some(sink) = SINK.with(|sink| sink.borrow().clone()) else {
            return;
        };
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions_mut()
                .remove::<Fields>()
                .map(|f| f.0)
                .unwrap_or_default();
            sink.lock().unwrap().push(SpanRecord {
                name: span.name(),
                fields,
            });
        }
    }
}

fn capture() -> Captured {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CaptureLayer))
            .expect("no other global subscriber in this test binary");
    });
    // Call sites first reached before the subscriber existed may have cached that no one
    // is interested; every later one sees the global subscriber.
    tracing::callsite::rebuild_interest_cache();
    let captured = Captured::default();
    SINK.with(|sink| *sink.borrow_mut() = Some(captured.0.clone()));
    captured
}

#[tokio::test]
async fn handle_span_carries_stream_id_and_kafka_coordinates() {
    let capture = capture();

    let mut svc = ObserveLayer::new()
        .with_group("fallback-group")
        .with_system("kafka")
        .layer(picky());
    let kafka = Message::new("orders", "ok")
        .with_id("m-1")
        .with_key("customer-7")
        .with_header(KAFKA_PARTITION_HEADER, "3")
        .with_header(KAFKA_OFFSET_HEADER, "42")
        .with_header(KAFKA_GROUP_HEADER, "billing");
    call(&mut svc, kafka).await.unwrap();
    let sqs = Message::new("payments", "bad")
        .with_id("m-2")
        .with_header(SQS_MESSAGE_ID_HEADER, "sqs-9");
    call(&mut svc, sqs).await.unwrap_err();

    let spans = capture.spans("streams.handle");
    assert_eq!(spans.len(), 2, "{spans:?}");
    let ok = &spans[0];
    assert_eq!(ok.field("messaging.destination.name"), Some("orders"));
    assert_eq!(ok.field("messaging.message.id"), Some("m-1"));
    assert_eq!(ok.field("messaging.operation.type"), Some("process"));
    assert_eq!(ok.field("messaging.system"), Some("kafka"));
    assert_eq!(ok.field("otel.kind"), Some("consumer"));
    assert_eq!(ok.field("streams.key"), Some("customer-7"));
    assert_eq!(ok.field("messaging.destination.partition.id"), Some("3"));
    assert_eq!(ok.field("messaging.kafka.offset"), Some("42"));
    assert_eq!(ok.field("messaging.consumer.group.name"), Some("billing"));
    assert_eq!(ok.field("otel.status_code"), None);

    let failed = &spans[1];
    assert_eq!(failed.field("messaging.destination.name"), Some("payments"));
    assert_eq!(failed.field("streams.sqs.message_id"), Some("sqs-9"));
    assert_eq!(failed.field("streams.key"), None);
    assert_eq!(failed.field("messaging.kafka.offset"), None);
    assert_eq!(
        failed.field("messaging.consumer.group.name"),
        Some("fallback-group")
    );
    assert_eq!(failed.field("otel.status_code"), Some("ERROR"));
    assert_eq!(failed.field("error.type"), Some("handler"));
    assert_eq!(failed.field("error.message"), Some("bad payload"));
}

#[tokio::test]
async fn handler_runs_inside_the_handle_span() {
    let capture = capture();
    let mut svc = ObserveLayer::new().layer(tower::service_fn(|_m: Message| async {
        let inner = tracing::info_span!("inside");
        let current = tracing::Span::current();
        assert_eq!(
            current.metadata().map(|m| m.name()),
            Some("streams.handle"),
            "the handler future is instrumented"
        );
        drop(inner);
        Ok::<_, BoxError>(())
    }));
    call(&mut svc, Message::new("orders", "x")).await.unwrap();
    assert_eq!(capture.spans("inside").len(), 1);
}

#[tokio::test]
async fn publish_span_names_the_batch() {
    let capture = capture();
    let writer = ObservedWriter::new(MockWriter::default()).with_system("kafka");
    writer
        .write(vec![Message::new("orders", "x").with_id("m-1")])
        .await
        .unwrap();
    writer
        .write(vec![
            Message::new("orders", "x"),
            Message::new("audit", "y"),
            Message::new("orders", "z"),
        ])
        .await
        .unwrap();
    writer.get_ref().plan(Err(Error::Closed("writer")));
    writer
        .write(vec![
            Message::new("orders", "x"),
            Message::new("orders", "y"),
        ])
        .await
        .unwrap_err();

    let spans = capture.spans("streams.publish");
    assert_eq!(spans.len(), 3, "{spans:?}");
    assert_eq!(spans[0].field("messaging.destination.name"), Some("orders"));
    assert_eq!(spans[0].field("messaging.message.id"), Some("m-1"));
    assert_eq!(spans[0].field("messaging.batch.message_count"), None);
    assert_eq!(spans[0].field("messaging.operation.type"), Some("send"));
    assert_eq!(spans[0].field("otel.kind"), Some("producer"));
    assert_eq!(spans[1].field("messaging.destination.name"), None);
    assert_eq!(spans[1].field("streams.destinations"), Some("orders,audit"));
    assert_eq!(spans[1].field("messaging.batch.message_count"), Some("3"));
    assert_eq!(spans[1].field("messaging.message.id"), None);
    assert_eq!(spans[2].field("otel.status_code"), Some("ERROR"));
    assert_eq!(spans[2].field("error.type"), Some("closed"));
}

#[test]
fn error_types_are_low_cardinality_names() {
    let unrecoverable: BoxError = crate::Unrecoverable::new("x").into();
    assert_eq!(error_type(unrecoverable.as_ref()), "unrecoverable");
    let timeout = Error::Timeout {
        operation: "handler",
        after: Duration::from_secs(1),
    };
    assert_eq!(error_type(&timeout), "timeout");
    let plain: BoxError = "x".into();
    assert_eq!(error_type(plain.as_ref()), "handler");
}

#[test]
fn stream_label_is_shared_while_the_stream_stays() {
    let mut label = StreamLabel::default();
    let a = label.get("orders");
    let b = label.get("orders");
    assert!(Arc::ptr_eq(&a, &b));
    let c = label.get("payments");
    assert_eq!(&*c.stream, "payments");
    assert_eq!(
        c.handled.labels().next().map(|l| l.value()),
        Some("payments")
    );
    assert!(!Arc::ptr_eq(&a, &c));
}

#[tokio::test]
async fn batches_are_counted_per_message() {
    use crate::{batch_handler, call_batch_handler, Batch, BatchOutcome};
    let (recorder, snapshotter) = recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let inner = tower::service_fn(|b: Batch| async move {
        Ok::<_, BoxError>(BatchOutcome::from_results(b.messages().iter().map(|m| {
            if &m.data[..] == b"bad" {
                Err("bad payload")
            } else {
                Ok(())
            }
        })))
    });
    let mut h = batch_handler(ObserveLayer::new().layer(inner));
    let batch = Batch::new(
        "orders",
        ["ok", "bad", "ok", "ok"]
            .into_iter()
            .map(|d| Message::new("orders", d))
            .collect(),
    );
    let outcome = call_batch_handler(&mut h, batch).await;
    assert_eq!(outcome.failed_indices(), vec![1]);
    // A call that panics counts every message of its batch as failed.
    let mut boom = batch_handler(ObserveLayer::new().layer(tower::service_fn(
        |_b: Batch| async move {
            if true {
                panic!("boom");
            }
            Ok::<_, BoxError>(BatchOutcome::ok())
        },
    )));
    let two = Batch::new(
        "orders",
        vec![Message::new("orders", "a"), Message::new("orders", "b")],
    );
    assert_eq!(call_batch_handler(&mut boom, two).await.failed_count(), 2);
    let r = Recorded::take(&snapshotter);
    assert_eq!(r.counter(MESSAGES_HANDLED, "orders"), 3);
    assert_eq!(r.counter(MESSAGES_FAILED, "orders"), 3);
    assert_eq!(r.samples(HANDLER_DURATION, "orders"), 6);
}
