use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::Span;

use super::{
    record_error, StreamKeys, StreamLabel, KAFKA_GROUP_HEADER, KAFKA_OFFSET_HEADER,
    KAFKA_PARTITION_HEADER, SQS_MESSAGE_ID_HEADER,
};
use crate::{Batch, BatchOutcome, BoxError, Message, ReadTask, Reader, Result, Subscription};

/// Layer of [`Observe`].
///
/// ```
/// use streams_core::observe::ObserveLayer;
/// use streams_core::{BoxError, Message};
///
/// let handler = tower::ServiceBuilder::new()
///     .layer(ObserveLayer::new().with_group("billing"))
///     .service_fn(|_msg: Message| async { Ok::<_, BoxError>(()) });
/// # let _ = streams_core::handler(handler);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer {
    group: Option<Arc<str>>,
    system: Option<&'static str>,
}

impl ObserveLayer {
    /// A layer recording what the message itself says.
    pub fn new() -> Self {
        Self::default()
    }

    /// The consumer group to record on `streams.handle` spans when the driver does not
    /// put one in the message's headers.
    pub fn with_group(mut self, group: impl Into<Arc<str>>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The `messaging.system` to record, such as `kafka` or `aws_sqs`.
    pub fn with_system(mut self, system: &'static str) -> Self {
        self.system = Some(system);
        self
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            group: self.group.clone(),
            system: self.system,
            label: StreamLabel::default(),
        }
    }
}

/// Runs each message's handler call inside a `streams.handle` span and records
/// [`MESSAGES_HANDLED`](super::MESSAGES_HANDLED), [`MESSAGES_FAILED`](super::MESSAGES_FAILED) and
/// [`HANDLER_DURATION`](super::HANDLER_DURATION); the result passes
/// through unchanged.
///
/// A call that never answers (it panicked, or a time-out or shutdown dropped it) counts
/// as failed. See the [module documentation](super) for the span's fields and, with the
/// `opentelemetry` feature, how the span joins the producer's trace.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    group: Option<Arc<str>>,
    system: Option<&'static str>,
    label: StreamLabel,
}

impl<S> Observe<S> {
    /// Wraps a handler.
    ///
    /// ```
    /// use streams_core::{handler, BoxError, Message, Observe};
    ///
    /// let observed = Observe::new(tower::service_fn(|_msg: Message| async {
    ///     Ok::<_, BoxError>(())
    /// }));
    /// let _handler = handler(observed);
    /// ```
    pub fn new(inner: S) -> Self {
        ObserveLayer::new().layer(inner)
    }

    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Message> for Observe<S>
where
    S: Service<Message, Response = ()>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, msg: Message) -> Self::Future {
        // Inside another `Observe` (an `ObservedReader`'s, say) the message is counted
        // and spanned already: pass it through, so nothing is counted twice.
        if observing() {
            return ObserveFuture {
                state: State::PassThrough {
                    inner: self.inner.call(msg),
                },
            };
        }
        let keys = self.label.get(&msg.stream);
        // Without a subscriber interested in `INFO` spans, no span: the check is one
        // load of the global maximum level.
        let span = if tracing::level_enabled!(tracing::Level::INFO) {
            handle_span(&msg, self.group.as_deref(), self.system)
        } else {
            Span::none()
        };
        let started = Instant::now();
        let fut = {
            let _entered = span.enter();
            let _observing = Observing::enter();
            self.inner.call(msg)
        };
        ObserveFuture {
            state: State::Observed {
                inner: fut,
                outcome: Outcome {
                    keys,
                    started,
                    span,
                    ok: None,
                },
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`Observe`]d handler call: the inner call inside the
    /// `streams.handle` span, counted and timed when it answers or is dropped.
    #[must_use = "futures do nothing unless polled"]
    pub struct ObserveFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F> std::fmt::Debug for ObserveFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveFuture").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        PassThrough { #[pin] inner: F },
        Observed {
            #[pin]
            inner: F,
            outcome: Outcome,
        },
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::PassThrough { inner } => inner.poll(cx).map_err(Into::into),
            StateProj::Observed { inner, outcome } => {
                // Each poll runs inside the span, and marked as observed so that an
                // `Observe` called from the handler (now or after an await) passes
                // the message through.
                let polled = {
                    let _entered = outcome.span.enter();
                    let _observing = Observing::enter();
                    inner.poll(cx)
                };
                let result = std::task::ready!(polled).map_err(Into::into);
                if let Err(err) = &result {
                    record_error(&outcome.span, err.as_ref());
                }
                outcome.ok = Some(result.is_ok());
                Poll::Ready(result)
            }
        }
    }
}

fn handle_span(msg: &Message, group: Option<&str>, system: Option<&'static str>) -> Span {
    let span = tracing::info_span!(
        "streams.handle",
        "otel.kind" = "consumer",
        "messaging.system" = system,
        "messaging.operation.type" = "process",
        "messaging.destination.name" = msg.stream.as_str(),
        "messaging.message.id" = msg.id.as_str(),
        "streams.key" = msg.key.as_deref(),
        "messaging.destination.partition.id" = Empty,
        "messaging.kafka.offset" = Empty,
        "messaging.consumer.group.name" = Empty,
        "streams.sqs.message_id" = Empty,
        "otel.status_code" = Empty,
        "error.type" = Empty,
        "error.message" = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(partition) = msg.header(KAFKA_PARTITION_HEADER) {
        span.record("messaging.destination.partition.id", partition);
    }
    if let Some(offset) = msg.header(KAFKA_OFFSET_HEADER) {
        // An integer when it parses, as the convention types it; the text otherwise.
        match offset.parse::<i64>() {
            Ok(offset) => span.record("messaging.kafka.offset", offset),
            Err(_) => span.record("messaging.kafka.offset", offset),
        };
    }
    if let Some(group) = msg.header(KAFKA_GROUP_HEADER).or(group) {
        span.record("messaging.consumer.group.name", group);
    }
    if let Some(id) = msg.header(SQS_MESSAGE_ID_HEADER) {
        span.record("streams.sqs.message_id", id);
    }
    #[cfg(feature = "opentelemetry")]
    super::otel::set_parent_from_headers(&span, &msg.headers);
    span
}

/// Records the metrics of one handler call when dropped: with the answer when there was
/// one, as a failure when the call was dropped unanswered.
/// What the `metrics` macros would pass for the handling metrics.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

struct Outcome {
    keys: Arc<StreamKeys>,
    started: Instant,
    span: Span,
    ok: Option<bool>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let ok = self.ok.unwrap_or_else(|| {
            if !self.span.is_disabled() {
                self.span.record("otel.status_code", "ERROR");
                self.span.record("error.type", "cancelled");
                self.span.record(
                    "error.message",
                    "handler call dropped before it answered (panic, time-out or shutdown)",
                );
            }
            false
        });
        let keys = &self.keys;
        let counted = if ok { &keys.handled } else { &keys.failed };
        let elapsed = self.started.elapsed().as_secs_f64();
        metrics::with_recorder(|recorder| {
            recorder.register_counter(counted, &METADATA).increment(1);
            recorder
                .register_histogram(&keys.duration, &METADATA)
                .record(elapsed);
        });
    }
}

/// A [`Reader`] that wraps every handler it is given in [`Observe`], so any driver reports
/// `streams.handle` spans and handler metrics.
///
/// The consumer group of each read task is recorded on its spans unless the driver puts
/// one in the headers.
///
/// ```
/// use std::sync::Arc;
/// use streams_core::observe::ObservedReader;
/// use streams_core::Reader;
///
/// # fn demo(reader: Arc<dyn Reader>) {
/// let reader: Arc<dyn Reader> = Arc::new(ObservedReader::new(reader).with_system("kafka"));
/// # let _ = reader;
/// # }
/// ```
#[derive(Debug)]
pub struct ObservedReader<R> {
    inner: R,
    system: Option<&'static str>,
}

impl<R> ObservedReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        ObservedReader {
            inner,
            system: None,
        }
    }

    /// The `messaging.system` to record, such as `kafka` or `aws_sqs`.
    pub fn with_system(mut self, system: &'static str) -> Self {
        self.system = Some(system);
        self
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[async_trait]
impl<R: Reader> Reader for ObservedReader<R> {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        let mut layer = ObserveLayer::new();
        if let Some(group) = &task.group {
            layer = layer.with_group(group.as_str());
        }
        if let Some(system) = self.system {
            layer = layer.with_system(system);
        }
        let subscription = self.inner.subscribe(task).await?;
        Ok(subscription.observed(layer))
    }

    async fn subscribe_batch(
        &self,
        task: ReadTask,
        size: crate::BatchSize,
    ) -> Result<crate::BatchSubscription> {
        let mut layer = ObserveLayer::new();
        if let Some(group) = &task.group {
            layer = layer.with_group(group.as_str());
        }
        if let Some(system) = self.system {
            layer = layer.with_system(system);
        }
        let subscription = self.inner.subscribe_batch(task, size).await?;
        Ok(subscription.map_handler(move |handler| crate::batch_handler(layer.layer(handler))))
    }
}

/// For batch handlers: one `streams.handle` span per batch (with
/// `messaging.batch.message_count`), and the metrics per message: each acknowledged
/// message counts in [`MESSAGES_HANDLED`](super::MESSAGES_HANDLED), each failed one in
/// [`MESSAGES_FAILED`](super::MESSAGES_FAILED), and
/// [`HANDLER_DURATION`](super::HANDLER_DURATION) records the batch's time once per message. A call that never
/// answers counts every message as failed.
impl<S> Service<Batch> for Observe<S>
where
    S: Service<Batch, Response = BatchOutcome>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = BatchOutcome;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<BatchOutcome, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, batch: Batch) -> Self::Future {
        if observing() {
            let fut = self.inner.call(batch);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        let span = tracing::info_span!(
            "streams.handle",
            "otel.kind" = "consumer",
            "messaging.system" = self.system,
            "messaging.operation.type" = "process",
            "messaging.destination.name" = batch.stream(),
            "messaging.batch.message_count" = batch.len(),
            "messaging.destination.partition.id" = batch.partition(),
            "messaging.consumer.group.name" = self.group.as_deref(),
            "streams.failed_count" = Empty,
            "otel.status_code" = Empty,
            "error.type" = Empty,
            "error.message" = Empty,
        );
        let metrics = BatchMetrics {
            keys: self.label.get(batch.stream()),
            started: Instant::now(),
            len: batch.len(),
            failed: None,
        };
        let fut = {
            let _entered = span.enter();
            let _observing = Observing::enter();
            self.inner.call(batch)
        };
        let record = span.clone();
        Box::pin(async move {
            let mut metrics = metrics;
            let result = InSpan {
                span: record.clone(),
                inner: fut,
            }
            .await
            .map_err(Into::into);
            match &result {
                Err(err) => record_error(&record, err.as_ref()),
                Ok(o) => {
                    let failed = o.failed_count().min(metrics.len);
                    record.record("streams.failed_count", failed);
                    metrics.set_failed(failed);
                }
            }
            result
        })
    }
}

pin_project_lite::pin_project! {
    /// Polls a future inside a span, marked as observed, as [`ObserveFuture`] does.
    struct InSpan<F> {
        span: Span,
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let _observing = Observing::enter();
        this.inner.poll(cx)
    }
}

/// Records the metrics of one batch handler call when dropped.
struct BatchMetrics {
    keys: Arc<StreamKeys>,
    started: Instant,
    len: usize,
    /// Failed messages, once the call answered `Ok`.
    failed: Option<usize>,
}

impl BatchMetrics {
    fn set_failed(&mut self, failed: usize) {
        self.failed = Some(failed);
    }
}

impl Drop for BatchMetrics {
    fn drop(&mut self) {
        let failed = self.failed.unwrap_or(self.len);
        let handled = self.len - failed;
        let seconds = self.started.elapsed().as_secs_f64();
        metrics::with_recorder(|recorder| {
            if handled > 0 {
                recorder
                    .register_counter(&self.keys.handled, &METADATA)
                    .increment(handled as u64);
            }
            if failed > 0 {
                recorder
                    .register_counter(&self.keys.failed, &METADATA)
                    .increment(failed as u64);
            }
            let histogram = recorder.register_histogram(&self.keys.duration, &METADATA);
            for _ in 0..self.len {
                histogram.record(seconds);
            }
        });
    }
}

thread_local! {
    /// Set while an `Observe` calls or polls its inner service.
    static OBSERVING_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether an `Observe` further out is handling the current message.
fn observing() -> bool {
    OBSERVING_CALL.with(std::cell::Cell::get)
}

/// Marks the synchronous part of an inner `call` as observed.
struct Observing(bool);

impl Observing {
    fn enter() -> Self {
        Observing(OBSERVING_CALL.with(|c| c.replace(true)))
    }
}

impl Drop for Observing {
    fn drop(&mut self) {
        let before = self.0;
        OBSERVING_CALL.with(|c| c.set(before));
    }
}
