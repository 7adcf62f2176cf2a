//! The typed bus, the scheduler and middleware, end to end on the in-process bus.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use streams_chanbuf::MemoryBus;
use streams_core::middleware::{
    DeadLetterLayer, LoggingLayer, RetryLayer, RetryPolicy, DLQ_REASON, DLQ_SOURCE_STREAM,
};
use streams_core::{
    handler, BoxError, CodecRegistry, Error, Event, EventBus, Handler, Message, ProtobufCodec,
    ReadTask, Reader, Result, Router, Subscription, Writer,
};
use tokio::sync::mpsc;

#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize, prost::Message)]
struct OrderPlaced {
    #[prost(string, tag = "1")]
    order_id: String,
    #[prost(uint64, tag = "2")]
    total_cents: u64,
}

impl Event for OrderPlaced {
    fn key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }

    fn headers(&self) -> streams_core::Headers {
        [("schema".to_owned(), "v1".to_owned())].into()
    }

    fn codecs() -> CodecRegistry<Self> {
        CodecRegistry::json().with_codec(ProtobufCodec)
    }
}

fn new_bus() -> (Arc<MemoryBus>, EventBus) {
    let chan = Arc::new(MemoryBus::new());
    (chan.clone(), EventBus::new(chan.clone(), chan))
}

/// `start` attaches every task before it returns: no waiting for readers to get going.
fn assert_subscribed(chan: &MemoryBus, stream: &str, groups: usize) {
    assert_eq!(
        chan.subscribers(stream),
        groups,
        "groups subscribed to {stream}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_publish_reaches_typed_and_raw_subscribers() {
    let (chan, mut bus) = new_bus();
    bus.register::<OrderPlaced>("orders.placed");
    let (typed_tx, mut typed_rx) = mpsc::unbounded_channel();
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    bus.router()
        .subscribe_typed(move |e: OrderPlaced, m: Message| {
            let tx = typed_tx.clone();
            async move { tx.send((e, m)).map_err(BoxError::from) }
        })
        .unwrap();
    bus.router().subscribe_stream(
        "orders.placed",
        tower::service_fn(move |m: Message| {
            let tx = raw_tx.clone();
            async move { tx.send(m).map_err(BoxError::from) }
        }),
    );
    bus.start().await.unwrap();
    assert_subscribed(&chan, "orders.placed", 2);
    let event = OrderPlaced {
        order_id: "o-1".into(),
        total_cents: 1250,
    };
    let id = bus.publish(&event).await.unwrap();
    let (got, msg) = typed_rx.recv().await.unwrap();
    assert_eq!(got, event);
    assert_eq!(msg.id, id);
    assert_eq!(msg.key.as_deref(), Some("o-1"));
    assert_eq!(msg.header("schema"), Some("v1"));
    assert_eq!(msg.content_type, "application/json");
    assert_eq!(raw_rx.recv().await.unwrap().id, id);
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_publisher_decodes_in_typed_subscriber() {
    let (chan, bus) = new_bus();
    let mut bus = bus.with_codec(ProtobufCodec);
    bus.register::<OrderPlaced>("orders.proto");
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.router()
        .subscribe_typed(move |e: OrderPlaced, m: Message| {
            let tx = tx.clone();
            async move { tx.send((e, m.content_type)).map_err(BoxError::from) }
        })
        .unwrap();
    bus.start().await.unwrap();
    assert_subscribed(&chan, "orders.proto", 1);
    let event = OrderPlaced {
        order_id: "o-2".into(),
        total_cents: 7,
    };
    bus.publish(&event).await.unwrap();
    let (got, ct) = rx.recv().await.unwrap();
    assert_eq!(got, event);
    assert_eq!(ct, "application/x-google-protobuf");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn unregistered_event_is_a_clear_error() {
    let (_chan, mut bus) = new_bus();
    let err = bus
        .publish(&OrderPlaced {
            order_id: "x".into(),
            total_cents: 0,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EventNotRegistered(name) if name.contains("OrderPlaced")));
    assert!(bus
        .router()
        .subscribe_typed(|_e: OrderPlaced, _m: Message| async { Ok::<_, BoxError>(()) })
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_payload_is_dead_lettered_without_retries() {
    let (chan, mut bus) = new_bus();
    bus.register::<OrderPlaced>("orders.bad");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (dlq_tx, mut dlq_rx) = mpsc::unbounded_channel();
    bus.router().subscribe_stream(
        "orders.bad.dlq",
        tower::service_fn(move |m: Message| {
            let tx = dlq_tx.clone();
            async move { tx.send(m).map_err(BoxError::from) }
        }),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(DeadLetterLayer::new(chan.clone()))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(1)),
        ))
        .service(streams_core::typed(move |_e: OrderPlaced, _m: Message| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        }));
    bus.router().subscribe_event::<OrderPlaced, _>(svc).unwrap();
    bus.start().await.unwrap();
    assert_subscribed(&chan, "orders.bad", 1);
    assert_subscribed(&chan, "orders.bad.dlq", 1);
    let bad = Message::new("orders.bad", "{not json")
        .with_content_type("application/json")
        .with_key("k");
    let unknown = Message::new("orders.bad", "a,b").with_content_type("text/csv");
    chan.write(vec![bad.clone(), unknown.clone()])
        .await
        .unwrap();
    let first = dlq_rx.recv().await.unwrap();
    let second = dlq_rx.recv().await.unwrap();
    assert_eq!(first.id, bad.id);
    assert_eq!(first.stream, "orders.bad.dlq");
    assert_eq!(first.header(DLQ_SOURCE_STREAM), Some("orders.bad"));
    assert!(
        first.header(DLQ_REASON).unwrap().contains("cannot decode"),
        "{first:?}"
    );
    assert_eq!(first.data, bad.data);
    assert_eq!(first.key, bad.key);
    assert!(second
        .header(DLQ_REASON)
        .unwrap()
        .contains("unknown content type"));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "handler never saw garbage");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[derive(Debug)]
struct BrokenWriter;

#[async_trait]
impl Writer for BrokenWriter {
    async fn write(&self, _batch: Vec<Message>) -> Result<()> {
        Err(Error::driver("test", "write", true, "destination down"))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn failed_dead_letter_write_keeps_the_message_unacknowledged() {
    use tower::ServiceExt;
    let svc = DeadLetterLayer::new(Arc::new(BrokenWriter)).layer_service(tower::service_fn(
        |_m: Message| async { Err::<(), BoxError>("handler failed".into()) },
    ));
    let err = svc.oneshot(Message::new("s", "x")).await.unwrap_err();
    assert_eq!(err.to_string(), "handler failed");
}

#[tokio::test]
async fn a_delayed_retry_is_not_dead_lettered() {
    use tower::ServiceExt;
    // The writer fails every write: had the layer tried to dead-letter, the handler's
    // error would come back unchanged too, so the count of writes tells.
    let writes = Arc::new(AtomicUsize::new(0));
    let svc = DeadLetterLayer::new(Arc::new(CountingWriter(writes.clone()))).layer_service(
        tower::service_fn(|_m: Message| async {
            Err::<(), BoxError>(
                streams_core::RetryAfter::new(Duration::from_secs(2), "rate limited").into(),
            )
        }),
    );
    let err = svc.oneshot(Message::new("s", "x")).await.unwrap_err();
    assert_eq!(
        streams_core::retry_after(err.as_ref()),
        Some(Duration::from_secs(2))
    );
    assert_eq!(writes.load(Ordering::SeqCst), 0, "nothing dead-lettered");
}

#[derive(Debug)]
struct CountingWriter(Arc<AtomicUsize>);

#[async_trait]
impl Writer for CountingWriter {
    async fn write(&self, _batch: Vec<Message>) -> Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

trait LayerExt<S> {
    type Out;
    fn layer_service(&self, s: S) -> Self::Out;
}

impl<S, L: tower::Layer<S>> LayerExt<S> for L {
    type Out = L::Service;
    fn layer_service(&self, s: S) -> L::Service {
        self.layer(s)
    }
}

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_layers_compose_with_ours() {
    let chan = Arc::new(MemoryBus::builder().with_concurrency(4).build());
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let (r, p, d, a) = (
        running.clone(),
        peak.clone(),
        done.clone(),
        attempts.clone(),
    );
    let inner = tower::service_fn(move |m: Message| {
        let (r, p, d, a) = (r.clone(), p.clone(), d.clone(), a.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            // Decrements even when tower's timeout drops this future.
            let _running = Running(r);
            // Every message fails its first attempt; retry makes it succeed.
            let first = a.lock().unwrap().insert(m.id.clone()) && m.data.as_ref() != b"slow";
            let slow = m.data.as_ref() == b"slow";
            tokio::time::sleep(Duration::from_millis(if slow { 500 } else { 2 })).await;
            if first {
                return Err::<(), BoxError>("transient".into());
            }
            d.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    // Ours outside, tower's inside: logging, dead-letter, retry, then tower's buffer
    // (so the rate limiter can be cloned), rate limit, concurrency limit and timeout.
    let svc = tower::ServiceBuilder::new()
        .layer(LoggingLayer::new())
        .layer(DeadLetterLayer::new(chan.clone()))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(1)),
        ))
        .layer(tower::buffer::BufferLayer::new(64))
        .layer(tower::limit::RateLimitLayer::new(
            1000,
            Duration::from_secs(1),
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(2))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            100,
        )))
        .service(inner);
    let h: Handler = handler(svc);
    let (dlq_tx, mut dlq_rx) = mpsc::unbounded_channel();
    let dlq: Handler = handler(tower::service_fn(move |m: Message| {
        let tx = dlq_tx.clone();
        async move { tx.send(m).map_err(BoxError::from) }
    }));
    let mut sub = Router::new(chan.clone(), Default::default());
    sub.subscribe(ReadTask::new("composed").with_concurrency(4), h);
    sub.subscribe(ReadTask::new("composed.dlq"), dlq);
    sub.start().await.unwrap();
    assert_subscribed(&chan, "composed", 1);
    assert_subscribed(&chan, "composed.dlq", 1);
    let mut batch: Vec<_> = (0..20)
        .map(|i| Message::new("composed", format!("{i}")))
        .collect();
    batch.push(Message::new("composed", "slow"));
    chan.write(batch).await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(10), dlq_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &dead.data[..],
        b"slow",
        "tower's timeout fails it, ours dead-letter it"
    );
    assert!(
        dead.header(DLQ_REASON).unwrap().contains("timed out"),
        "{dead:?}"
    );
    for _ in 0..500 {
        if done.load(Ordering::SeqCst) == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        done.load(Ordering::SeqCst),
        20,
        "retry recovered every transient failure"
    );
    assert!(peak.load(Ordering::SeqCst) <= 2, "concurrency limit held");
    sub.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A reader that attaches streams whose name starts with `ok` and then fails while
/// running, and refuses every other stream when attaching.
#[derive(Debug, Default)]
struct FailingReader {
    attached: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

/// Counts subscriptions dropped without running.
struct DropCounter(Arc<AtomicUsize>, bool);

impl DropCounter {
    fn ran(&mut self) {
        self.1 = true;
    }
}

impl Drop for DropCounter {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Reader for FailingReader {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        if !task.stream.starts_with("ok") {
            return Err(Error::driver(
                "test",
                "subscribe",
                false,
                format!("no such stream {}", task.stream),
            ));
        }
        self.attached.fetch_add(1, Ordering::SeqCst);
        let mut guard = DropCounter(self.dropped.clone(), false);
        Ok(Subscription::new(
            task.stream.clone(),
            move |_h, _c| async move {
                guard.ran();
                Err(Error::driver(
                    "test",
                    "fetch",
                    false,
                    format!("lost {}", task.stream),
                ))
            },
        ))
    }
}

#[tokio::test]
async fn a_task_that_cannot_attach_fails_start_and_runs_nothing() {
    let reader = Arc::new(FailingReader::default());
    let mut router = Router::new(reader.clone(), Default::default());
    let noop = tower::service_fn(|_m: Message| async { Ok::<_, BoxError>(()) });
    router
        .subscribe_stream("ok-1", noop)
        .subscribe_stream("missing", noop);
    let err = router.start().await.unwrap_err();
    assert!(
        matches!(&err, Error::Readers(e) if e.len() == 1 && e[0].0 == "missing"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no such stream missing"), "{err}");
    assert_eq!(router.running(), 0, "nothing runs after a failed start");
    assert_eq!(reader.attached.load(Ordering::SeqCst), 1);
    assert_eq!(
        reader.dropped.load(Ordering::SeqCst),
        1,
        "the attached one left again"
    );
    router.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn reader_errors_are_reported_not_dropped() {
    let mut sub = Router::new(Arc::new(FailingReader::default()), Default::default());
    let noop = tower::service_fn(|_m: Message| async { Ok::<_, BoxError>(()) });
    sub.subscribe_stream("ok-missing", noop);
    sub.start().await.unwrap();
    let err = sub.wait().await.unwrap_err();
    assert!(err.to_string().contains("lost ok-missing"), "{err}");

    let mut sub = Router::new(Arc::new(FailingReader::default()), Default::default());
    sub.subscribe_stream("ok-a", noop)
        .subscribe_stream("ok-b", noop);
    sub.start().await.unwrap();
    tokio::task::yield_now().await;
    match sub.shutdown(Duration::from_secs(1)).await {
        Err(Error::Readers(errors)) => {
            let mut streams: Vec<_> = errors.iter().map(|(s, _)| s.as_str()).collect();
            streams.sort();
            assert_eq!(streams, ["ok-a", "ok-b"]);
        }
        other => panic!("want both reader errors, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_in_flight_handlers_up_to_a_deadline() {
    let (chan, mut bus) = new_bus();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    bus.router().subscribe_stream(
        "slow",
        tower::service_fn(move |m: Message| {
            let f = f.clone();
            async move {
                let ms = if &m.data[..] == b"stuck" { 60_000 } else { 200 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        }),
    );
    bus.start().await.unwrap();
    assert_subscribed(&chan, "slow", 1);
    bus.publisher()
        .write(vec![Message::new("slow", "x")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let publisher = bus.publisher().clone();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "in-flight handler finished"
    );
    let err = publisher
        .write(vec![Message::new("slow", "late")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed(_)));

    let (chan, mut bus) = new_bus();
    bus.router().subscribe_stream(
        "stuck",
        tower::service_fn(|_m: Message| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(())
        }),
    );
    bus.start().await.unwrap();
    assert_subscribed(&chan, "stuck", 1);
    bus.publisher()
        .write(vec![Message::new("stuck", "stuck")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let err = bus.shutdown(Duration::from_millis(200)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_hands_its_backoff_to_the_in_process_bus() {
    use tower::Layer;
    let chan = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let policy = RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(200))
        .with_jitter(0.0)
        .with_platform_delay(true);
    let svc = RetryLayer::new(policy).layer(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((m.delivery_attempt(), tokio::time::Instant::now()));
            Err::<(), BoxError>("still down".into())
        }
    }));
    let cancel = streams_core::CancellationToken::new();
    let sub = chan.subscribe(ReadTask::new("s")).await.unwrap();
    let reader = tokio::spawn(sub.run(handler(svc), cancel.clone()));
    chan.write(vec![Message::new("s", "x")]).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
    // 200 ms, then 400 ms, each waited by the bus rather than by the handler.
    assert!(got[1].1 - got[0].1 >= Duration::from_millis(200));
    assert!(got[2].1 - got[1].1 >= Duration::from_millis(400));
    // The third attempt was the last: no fourth delivery.
    assert!(tokio::time::timeout(Duration::from_millis(800), rx.recv())
        .await
        .is_err());
    cancel.cancel();
    reader.await.unwrap().unwrap();
}
