//! Batch handlers: a handler that takes up to N messages of one stream (one partition
//! on Kafka) at once and answers per message.
//!
//! A [`BatchHandler`] is a tower service from [`Batch`] to [`BatchOutcome`]. Readers
//! acknowledge per message: the messages the outcome names as failed are negative
//! acknowledgements, the others are acknowledged; an `Err` (or a panic) fails every
//! message of the batch. What a failure means on each platform is the same as for a
//! per-message handler (redelivered where the platform redelivers), with one addition
//! for ordered platforms: a failed message is redelivered together with the messages
//! of its ordering lane (partition, key lane, FIFO group) that came after it in the
//! batch, so order per key holds.
//!
//! Batches are asked for with [`Reader::subscribe_batch`](crate::Reader::subscribe_batch)
//! and a [`BatchSize`]. Drivers that batch natively override it (the in-process bus,
//! Kafka, SQS); every other reader gets the generic collector of this module, which
//! batches what the reader's per-message path hands over.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;

use crate::{BoxError, Error, Message, Result, Subscription};

/// Most messages a batch may hold.
pub const MAX_BATCH_MESSAGES: usize = 10_000;
/// Longest a reader may wait to fill a batch.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(300);

/// How large a batch may grow and how long a reader waits to fill it: a batch is handed
/// over once it holds `max_messages` or `max_wait` after its first message arrived,
/// whichever comes first. A `max_wait` of zero hands over what is already there.
///
/// ```
/// use std::time::Duration;
/// use streams_core::BatchSize;
///
/// let size = BatchSize::new(100, Duration::from_millis(50));
/// size.check().unwrap();
/// let err = BatchSize::new(0, Duration::from_millis(50)).check().unwrap_err();
/// assert!(err.to_string().contains("`max_messages`"), "{err}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize {
    max_messages: usize,
    max_wait: Duration,
}

impl BatchSize {
    /// Up to `max_messages` messages, or what arrived within `max_wait`.
    pub fn new(max_messages: usize, max_wait: Duration) -> Self {
        BatchSize {
            max_messages,
            max_wait,
        }
    }

    /// Most messages per batch.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// Longest wait for a batch to fill.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Refuses a size no reader honours: no messages, more than
    /// [`MAX_BATCH_MESSAGES`], or a wait longer than [`MAX_BATCH_WAIT`].
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the field.
    pub fn check(&self) -> Result<()> {
        if self.max_messages == 0 || self.max_messages > MAX_BATCH_MESSAGES {
            return Err(Error::invalid(
                "batch size",
                format!(
                    "`max_messages` must be 1 to {MAX_BATCH_MESSAGES}, found {}",
                    self.max_messages
                ),
            ));
        }
        if self.max_wait > MAX_BATCH_WAIT {
            return Err(Error::invalid(
                "batch size",
                format!(
                    "`max_wait` must be at most {MAX_BATCH_WAIT:?}, found {:?}",
                    self.max_wait
                ),
            ));
        }
        Ok(())
    }
}

/// Messages of one stream handed to a [`BatchHandler`] together, in the order the
/// reader received them; on Kafka all of one partition.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    stream: String,
    partition: Option<i32>,
    messages: Vec<Message>,
}

impl Batch {
    /// A batch of `messages` read from `stream`.
    pub fn new(stream: impl Into<String>, messages: Vec<Message>) -> Self {
        Batch {
            stream: stream.into(),
            partition: None,
            messages,
        }
    }

    /// Says which partition the messages came from.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The partition, where the reader reads one per batch.
    pub fn partition(&self) -> Option<i32> {
        self.partition
    }

    /// The messages, in the order received.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Takes the messages out.
    pub fn into_messages(self) -> Vec<Message> {
        self.messages
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// A batch of the same stream and partition holding the messages at `indices`
    /// (middleware that calls the handler again for some messages uses it).
    pub fn select(&self, indices: &[usize]) -> Batch {
        Batch {
            stream: self.stream.clone(),
            partition: self.partition,
            messages: indices
                .iter()
                .filter_map(|&i| self.messages.get(i).cloned())
                .collect(),
        }
    }
}

/// Which messages of a [`Batch`] failed, by their index in the batch, and why; every
/// other message succeeded.
///
/// ```
/// use streams_core::BatchOutcome;
///
/// let outcome = BatchOutcome::from_results(vec![Ok(()), Err("no stock"), Ok(())]);
/// assert_eq!(outcome.first_failed(), Some(1));
/// assert!(outcome.is_failed(1) && !outcome.is_failed(0));
/// ```
#[derive(Debug, Default)]
pub struct BatchOutcome {
    failed: BTreeMap<usize, BoxError>,
}

impl BatchOutcome {
    /// Every message succeeded.
    pub fn ok() -> Self {
        Self::default()
    }

    /// The outcome of each message, in batch order.
    pub fn from_results<E: Into<BoxError>>(
        results: impl IntoIterator<Item = std::result::Result<(), E>>,
    ) -> Self {
        let failed = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.err().map(|e| (i, e.into())))
            .collect();
        BatchOutcome { failed }
    }

    /// Every one of `len` messages failed with `error` (shared, so retry and
    /// dead-letter middleware still see what it is).
    pub fn all_failed(len: usize, error: impl Into<BoxError>) -> Self {
        let shared = SharedError(Arc::new(error.into()));
        BatchOutcome {
            failed: (0..len)
                .map(|i| (i, Box::new(shared.clone()) as BoxError))
                .collect(),
        }
    }

    /// Marks message `index` as failed (replacing an earlier error of it).
    pub fn fail(&mut self, index: usize, error: impl Into<BoxError>) {
        self.failed.insert(index, error.into());
    }

    /// [`fail`](Self::fail), by value.
    pub fn with_failed(mut self, index: usize, error: impl Into<BoxError>) -> Self {
        self.fail(index, error);
        self
    }

    /// Marks message `index` as succeeded; returns its error if it had failed.
    pub fn succeed(&mut self, index: usize) -> Option<BoxError> {
        self.failed.remove(&index)
    }

    /// Whether no message failed.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Whether message `index` failed.
    pub fn is_failed(&self, index: usize) -> bool {
        self.failed.contains_key(&index)
    }

    /// The error of message `index`, if it failed.
    pub fn error(&self, index: usize) -> Option<&BoxError> {
        self.failed.get(&index)
    }

    /// The index of the first failed message.
    pub fn first_failed(&self) -> Option<usize> {
        self.failed.keys().next().copied()
    }

    /// Number of failed messages.
    pub fn failed_count(&self) -> usize {
        self.failed.len()
    }

    /// The failed messages' indices, ascending.
    pub fn failed_indices(&self) -> Vec<usize> {
        self.failed.keys().copied().collect()
    }

    /// The failed messages with their errors, ascending by index.
    pub fn into_failed(self) -> Vec<(usize, BoxError)> {
        self.failed.into_iter().collect()
    }

    /// Drops failures naming an index at or past `len` (a handler's mistake): there is
    /// no such message to fail.
    pub fn truncate(&mut self, len: usize) {
        let _ = self.failed.split_off(&len);
    }
}

/// One error shared by several messages: displays as it, and is its only source, so
/// [`is_unrecoverable`](crate::is_unrecoverable) finds what it wraps.
#[derive(Clone)]
struct SharedError(Arc<BoxError>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

/// A batch handler: a tower service that answers a [`Batch`] with a [`BatchOutcome`].
/// An `Err` fails every message of the batch.
pub type BatchHandler = BoxCloneSyncService<Batch, BatchOutcome, BoxError>;

/// Boxes any cloneable tower service into a [`BatchHandler`].
///
/// ```
/// use streams_core::{batch_handler, Batch, BatchOutcome, BoxError};
///
/// let h = batch_handler(tower::service_fn(|batch: Batch| async move {
///     tracing::info!(messages = batch.len(), "got a batch");
///     Ok::<_, BoxError>(BatchOutcome::ok())
/// }));
/// # drop(h);
/// ```
pub fn batch_handler<S>(service: S) -> BatchHandler
where
    S: tower::Service<Batch, Response = BatchOutcome> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    use tower::ServiceExt;
    BoxCloneSyncService::new(service.map_err(Into::into))
}

/// Calls a batch handler the way readers do: waits until it is ready, turns an `Err`
/// or a panic into a failure of every message, and ignores failures naming no message
/// of the batch. A buggy handler never takes a reader down.
pub async fn call_batch_handler(handler: &mut BatchHandler, batch: Batch) -> BatchOutcome {
    use futures::FutureExt;
    use tower::{Service, ServiceExt};
    let len = batch.len();
    let result = match handler.ready().await {
        Err(e) => Err(e),
        Ok(svc) => std::panic::AssertUnwindSafe(svc.call(batch))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                Err(format!("batch handler panicked: {what}").into())
            }),
    };
    match result {
        Ok(mut outcome) => {
            outcome.truncate(len);
            outcome
        }
        Err(e) => BatchOutcome::all_failed(len, e),
    }
}

type BatchRunFn =
    Box<dyn FnOnce(BatchHandler, CancellationToken) -> BoxFuture<'static, Result<()>> + Send>;

/// A read task attached to its stream by
/// [`Reader::subscribe_batch`](crate::Reader::subscribe_batch), waiting to be run with a
/// [`BatchHandler`].
pub struct BatchSubscription {
    stream: String,
    run: BatchRunFn,
}

impl BatchSubscription {
    /// A subscription to `stream` that runs `run` with the batch handler and the
    /// cancellation token; drivers that batch natively build one.
    pub fn new<F, Fut>(stream: impl Into<String>, run: F) -> Self
    where
        F: FnOnce(BatchHandler, CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        BatchSubscription {
            stream: stream.into(),
            run: Box::new(move |handler, cancel| Box::pin(run(handler, cancel))),
        }
    }

    /// Batches what a per-message subscription hands over, `size` at most: the generic
    /// path for readers that do not batch natively.
    ///
    /// The per-message path acknowledges each message once its batch has answered, so
    /// the reader's own rules hold: what it redelivers, how it keeps order per key. A
    /// reader hands over at most as many messages at once as its concurrency allows
    /// and one message per key lane at a time, so a batch holds at most that many (the
    /// default [`subscribe_batch`](crate::Reader::subscribe_batch) raises the task's
    /// concurrency to `max_messages`); a stream with a single key gets batches of one,
    /// each after `max_wait`.
    pub fn collect(subscription: Subscription, size: BatchSize) -> Self {
        let stream = subscription.stream().to_owned();
        BatchSubscription::new(stream.clone(), move |batch_handler, cancel| async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let forward = crate::handler(Forward { tx });
            let finished = CancellationToken::new();
            let collector = collect_loop(
                stream,
                rx,
                batch_handler,
                size,
                cancel.clone(),
                finished.clone(),
            );
            let run = async {
                let result = subscription.run(forward, cancel).await;
                finished.cancel();
                result
            };
            let (result, ()) = futures::join!(run, collector);
            result
        })
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Wraps the batch handler this subscription will run with, as decorators of a
    /// reader do (observation).
    pub fn map_handler(
        self,
        wrap: impl FnOnce(BatchHandler) -> BatchHandler + Send + 'static,
    ) -> Self {
        let BatchSubscription { stream, run } = self;
        BatchSubscription {
            stream,
            run: Box::new(move |handler, cancel| run(wrap(handler), cancel)),
        }
    }

    /// Hands batches to `handler` until `cancel` fires or the platform ends the stream.
    ///
    /// Handler failures are negative acknowledgements of the messages they name and
    /// never end the run. On cancellation a reader stops fetching, hands over the batch
    /// it was collecting at once, lets in-flight handlers finish and acknowledges what
    /// succeeded before returning.
    ///
    /// # Errors
    ///
    /// A failure of the reader itself (connection lost for good, stream deleted).
    pub async fn run(self, handler: BatchHandler, cancel: CancellationToken) -> Result<()> {
        (self.run)(handler, cancel).await
    }
}

impl fmt::Debug for BatchSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSubscription")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

type Pending = (Message, oneshot::Sender<std::result::Result<(), BoxError>>);

/// The per-message handler of the generic path: hands the message to the collector
/// and answers with the message's outcome in its batch.
#[derive(Clone)]
struct Forward {
    tx: mpsc::UnboundedSender<Pending>,
}

impl tower::Service<Message> for Forward {
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, std::result::Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Message) -> Self::Future {
        let (done, answer) = oneshot::channel();
        let sent = self.tx.send((msg, done));
        Box::pin(async move {
            if sent.is_err() {
                return Err("batch collector stopped; message not handled".into());
            }
            answer
                .await
                .unwrap_or_else(|_| Err("batch collector stopped; message not handled".into()))
        })
    }
}

async fn collect_loop(
    stream: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    handler: BatchHandler,
    size: BatchSize,
    cancel: CancellationToken,
    finished: CancellationToken,
) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            // The reader is done: what it still handed over is answered below.
            _ = finished.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        let mut pending = vec![first];
        fill(&mut rx, &mut pending, size, &cancel, &finished).await;
        let mut h = handler.clone();
        let stream = stream.clone();
        running.spawn(async move {
            let (messages, answers): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
            let outcome = call_batch_handler(&mut h, Batch::new(stream, messages)).await;
            let mut failed = outcome.into_failed().into_iter().peekable();
            for (i, answer) in answers.into_iter().enumerate() {
                let result = match failed.peek() {
                    Some((f, _)) if *f == i => Err(failed.next().expect("peeked").1),
                    _ => Ok(()),
                };
                let _ = answer.send(result);
            }
        });
    }
    while running.join_next().await.is_some() {}
}

/// Adds to `pending` what arrives until the batch is full or `max_wait` passed; once
/// cancelled or finished, only what is already there.
async fn fill<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    pending: &mut Vec<T>,
    size: BatchSize,
    cancel: &CancellationToken,
    finished: &CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + size.max_wait;
    while pending.len() < size.max_messages {
        if cancel.is_cancelled() || finished.is_cancelled() {
            match rx.try_recv() {
                Ok(m) => pending.push(m),
                Err(_) => return,
            }
            continue;
        }
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => pending.push(m),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = cancel.cancelled() => {}
            _ = finished.cancelled() => {}
        }
    }
}

/// Turns a function of decoded events into a batch handler.
///
/// Each message is decoded with `E`'s codecs; the function receives the events that
/// decoded, with their messages, in batch order, and answers with an outcome indexed
/// into that list. A message that does not decode is a failed message of the batch
/// (an [`Unrecoverable`](crate::Unrecoverable) error, so retry middleware leaves it and
/// dead-letter middleware captures it), never a failed batch; a batch where nothing
/// decodes does not call the function.
///
/// ```
/// use streams_core::{typed_batch, BatchOutcome, BoxError, Event, Message};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Paid { invoice: String }
/// impl Event for Paid {}
///
/// let svc = typed_batch(|paid: Vec<(Paid, Message)>| async move {
///     tracing::info!(count = paid.len(), "paid");
///     Ok::<_, BoxError>(BatchOutcome::ok())
/// });
/// # let _ = streams_core::batch_handler(svc);
/// ```
pub fn typed_batch<E, F, Fut>(f: F) -> TypedBatch<E, F>
where
    E: crate::Event,
    F: Fn(Vec<(E, Message)>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<BatchOutcome, BoxError>> + Send + 'static,
{
    TypedBatch {
        f,
        codecs: Arc::new(E::codecs()),
        _event: std::marker::PhantomData,
    }
}

/// A batch handler that decodes each message into `E`; see [`typed_batch`].
pub struct TypedBatch<E: crate::Event, F> {
    f: F,
    codecs: Arc<crate::CodecRegistry<E>>,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: crate::Event, F: Clone> Clone for TypedBatch<E, F> {
    fn clone(&self) -> Self {
        TypedBatch {
            f: self.f.clone(),
            codecs: self.codecs.clone(),
            _event: std::marker::PhantomData,
        }
    }
}

impl<E: crate::Event, F> fmt::Debug for TypedBatch<E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedBatch")
            .field("event", &std::any::type_name::<E>())
            .field("codecs", &self.codecs)
            .finish()
    }
}

impl<E, F, Fut> tower::Service<Batch> for TypedBatch<E, F>
where
    E: crate::Event,
    F: Fn(Vec<(E, Message)>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<BatchOutcome, BoxError>> + Send + 'static,
{
    type Response = BatchOutcome;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<BatchOutcome, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Batch) -> Self::Future {
        let mut outcome = BatchOutcome::ok();
        let mut events = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        for (i, msg) in batch.into_messages().into_iter().enumerate() {
            match msg.decode_with(&self.codecs) {
                Ok(event) => {
                    events.push((event, msg));
                    positions.push(i);
                }
                Err(e) => outcome.fail(i, crate::Unrecoverable::new(e)),
            }
        }
        if events.is_empty() {
            return Box::pin(async move { Ok(outcome) });
        }
        let call = (self.f)(events);
        Box::pin(async move {
            let n = positions.len();
            match call.await {
                Ok(inner) => {
                    for (j, e) in inner.into_failed() {
                        if let Some(&i) = positions.get(j) {
                            outcome.fail(i, e);
                        }
                    }
                }
                Err(e) => {
                    for (j, e) in BatchOutcome::all_failed(n, e).into_failed() {
                        outcome.fail(positions[j], e);
                    }
                }
            }
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests;
