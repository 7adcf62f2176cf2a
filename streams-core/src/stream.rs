use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;

use crate::{BatchHandler, BatchSize, BatchSubscription, BoxError, Message, Result};

/// A message handler: a tower service that acknowledges a message by returning `Ok`.
///
/// An `Err` is a negative acknowledgement: the reader logs it and, on platforms that
/// redeliver, makes the message available again. It never stops the reader.
pub type Handler = BoxCloneSyncService<Message, (), BoxError>;

/// Boxes any cloneable tower service into a [`Handler`].
///
/// ```
/// use streams_core::{handler, BoxError, Message};
///
/// let h = handler(tower::service_fn(|msg: Message| async move {
///     tracing::info!(id = %msg.id, "got it");
///     Ok::<_, BoxError>(())
/// }));
/// # drop(h);
/// ```
pub fn handler<S>(service: S) -> Handler
where
    S: tower::Service<Message, Response = ()> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    use tower::ServiceExt;
    BoxCloneSyncService::new(service.map_err(Into::into))
}

/// Calls a handler for one message the way readers do: waits until it is ready, and
/// turns a panic into an error, so a buggy handler is a negative acknowledgement and
/// never takes a reader down.
///
/// # Errors
///
/// The handler's error, or `handler panicked: ...`.
pub async fn call_handler(handler: &mut Handler, msg: Message) -> Result<(), BoxError> {
    use futures::FutureExt;
    use tower::{Service, ServiceExt};
    let svc = handler.ready().await?;
    // `call` runs the handler's synchronous part (all of a `service_fn` returning a
    // ready future): a panic there is caught too.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.call(msg))) {
        Ok(call) => std::panic::AssertUnwindSafe(call)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panicked(&*panic))),
        Err(panic) => Err(panicked(&*panic)),
    }
}

/// The error of a handler that panicked.
fn panicked(panic: &(dyn std::any::Any + Send)) -> BoxError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    format!("handler panicked: {what}").into()
}

/// Writes batches of messages to a platform.
///
/// Object safe: `Arc<dyn Writer>` is how publishers, middleware and the outbox relay
/// hold a writer.
#[async_trait]
pub trait Writer: Send + Sync + fmt::Debug {
    /// Writes a batch. It returns once the platform accepted every message (as far as
    /// the platform can tell), or with an error saying which messages were not written.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed) after shutdown, a driver error, or
    /// [`Error::PartialWrite`](crate::Error::PartialWrite) naming the failed messages.
    async fn write(&self, batch: Vec<Message>) -> Result<()>;

    /// Flushes what is pending and refuses further writes: a write after `close`
    /// returns [`Error::Closed`](crate::Error::Closed), never panics.
    ///
    /// # Errors
    ///
    /// A flush that failed.
    async fn close(&self) -> Result<()>;
}

/// Reads one stream and hands each message to a handler.
///
/// Reading has two steps. [`subscribe`](Self::subscribe) attaches a [`ReadTask`]: the
/// reader checks the task, reaches the platform and joins the stream, and fails there,
/// early, on a bad task or a missing stream. [`Subscription::run`] then hands the
/// messages to a handler until it is cancelled. [`read`](Self::read) does both.
#[async_trait]
pub trait Reader: Send + Sync + fmt::Debug {
    /// Attaches a read task: checks it, joins the stream (a consumer group, a queue, a
    /// subscriber list) and returns the subscription, ready to run.
    ///
    /// A reader that receives only what is published after it joined (the in-process
    /// bus) receives everything published after `subscribe` returns. Dropping the
    /// subscription without running it leaves the stream again.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](crate::Error::Invalid) for a task field the reader cannot
    /// honour, naming it; a platform error when the stream is missing or the platform
    /// cannot be reached within the reader's time limits.
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription>;

    /// Attaches `task` and runs it until `cancel` fires or the platform ends the stream.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe) and [`Subscription::run`].
    async fn read(
        &self,
        task: ReadTask,
        handler: Handler,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.subscribe(task).await?.run(handler, cancel).await
    }

    /// Attaches `task` for a [`BatchHandler`]: batches of up to `size` messages of one
    /// stream (one partition on Kafka), acknowledged per message.
    ///
    /// The default batches what the per-message path hands over
    /// ([`BatchSubscription::collect`]), raising the task's `concurrency` to
    /// `size.max_messages()` so that a batch can fill; drivers that batch natively
    /// override it. Readers that wrap another forward it.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](crate::Error::Invalid) naming the field of a size no reader
    /// honours ([`BatchSize::check`]); as [`subscribe`](Self::subscribe).
    async fn subscribe_batch(&self, task: ReadTask, size: BatchSize) -> Result<BatchSubscription> {
        size.check()?;
        let concurrency = task.concurrency.unwrap_or(0).max(size.max_messages());
        let subscription = self.subscribe(task.with_concurrency(concurrency)).await?;
        Ok(BatchSubscription::collect(subscription, size))
    }

    /// Attaches `task` for batches and runs it until `cancel` fires or the platform
    /// ends the stream.
    ///
    /// # Errors
    ///
    /// As [`subscribe_batch`](Self::subscribe_batch) and [`BatchSubscription::run`].
    async fn read_batch(
        &self,
        task: ReadTask,
        size: BatchSize,
        handler: BatchHandler,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.subscribe_batch(task, size)
            .await?
            .run(handler, cancel)
            .await
    }
}

type RunFn = Box<
    dyn FnOnce(Handler, CancellationToken) -> futures::future::BoxFuture<'static, Result<()>>
        + Send,
>;

/// A read task attached to its stream by [`Reader::subscribe`], waiting to be run.
pub struct Subscription {
    stream: String,
    run: RunFn,
    /// Set by [`ObservedReader`](crate::observe::ObservedReader): applied to the handler
    /// before anything else, and by the router to the service before it is boxed, so an
    /// observed handler is boxed once rather than twice.
    observe: Option<crate::observe::ObserveLayer>,
}

impl Subscription {
    /// A subscription to `stream` that runs `run` with the handler and the cancellation
    /// token. Drivers build one at the end of [`Reader::subscribe`]; whatever `run`
    /// owns is released when the subscription is dropped unrun.
    pub fn new<F, Fut>(stream: impl Into<String>, run: F) -> Self
    where
        F: FnOnce(Handler, CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        Subscription {
            stream: stream.into(),
            run: Box::new(move |handler, cancel| Box::pin(run(handler, cancel))),
            observe: None,
        }
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Wraps the handler this subscription will run with, as decorators of a reader do
    /// (observation, default settings).
    pub fn map_handler(self, wrap: impl FnOnce(Handler) -> Handler + Send + 'static) -> Self {
        let Subscription {
            stream,
            run,
            observe,
        } = self;
        Subscription {
            stream,
            run: Box::new(move |handler, cancel| run(wrap(handler), cancel)),
            observe,
        }
    }

    /// Wraps the handler in `layer` before anything else wraps it; a second layer (an
    /// observed reader inside another) goes through [`map_handler`](Self::map_handler).
    pub(crate) fn observed(mut self, layer: crate::observe::ObserveLayer) -> Self {
        if self.observe.is_some() {
            use tower::Layer;
            return self.map_handler(move |h| handler(layer.layer(h)));
        }
        self.observe = Some(layer);
        self
    }

    /// [`run`](Self::run) with a service not boxed yet: an observing layer wraps it
    /// before it is boxed, so each message's call allocates one future, not two.
    pub(crate) async fn run_service<S>(self, service: S, cancel: CancellationToken) -> Result<()>
    where
        S: tower::Service<Message, Response = ()> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        use tower::Layer;
        let handler = match &self.observe {
            Some(layer) => handler(layer.layer(service)),
            None => handler(service),
        };
        (self.run)(handler, cancel).await
    }

    /// Hands messages to `handler` until `cancel` fires or the platform ends the
    /// stream.
    ///
    /// Handler failures are negative acknowledgements and never end the run. On
    /// cancellation a reader stops fetching, lets in-flight handlers finish and
    /// acknowledges what succeeded before returning.
    ///
    /// # Errors
    ///
    /// A failure of the reader itself (connection lost for good, stream deleted).
    pub async fn run(self, handler: Handler, cancel: CancellationToken) -> Result<()> {
        use tower::Layer;
        let handler = match &self.observe {
            Some(layer) => self::handler(layer.layer(handler)),
            None => handler,
        };
        (self.run)(handler, cancel).await
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<W: Writer + ?Sized> Writer for Arc<W> {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        (**self).write(batch).await
    }

    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

#[async_trait]
impl<R: Reader + ?Sized> Reader for Arc<R> {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        (**self).subscribe(task).await
    }

    async fn subscribe_batch(&self, task: ReadTask, size: BatchSize) -> Result<BatchSubscription> {
        (**self).subscribe_batch(task, size).await
    }
}

/// What a reader should read: a stream plus the platform arguments that apply.
///
/// ```
/// use streams_core::ReadTask;
///
/// let task = ReadTask::new("orders").with_group("billing").with_concurrency(4);
/// assert_eq!(task.group.as_deref(), Some("billing"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadTask {
    /// The stream to read.
    pub stream: String,
    /// Consumer group: readers in one group share the stream's messages, every group
    /// receives all of them.
    pub group: Option<String>,
    /// A single partition to read directly, where the platform has partitions.
    pub partition: Option<i32>,
    /// Where to start in a partition, where the platform has offsets.
    pub start_offset: Option<i64>,
    /// Upper bound on handlers running at once for this task; the driver default when
    /// unset.
    pub concurrency: Option<usize>,
    /// Further driver-specific arguments.
    pub args: BTreeMap<String, String>,
}

impl ReadTask {
    /// A task reading `stream` with driver defaults.
    pub fn new(stream: impl Into<String>) -> Self {
        ReadTask {
            stream: stream.into(),
            ..Default::default()
        }
    }

    /// Sets the consumer group.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Reads one partition directly.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the start offset.
    pub fn with_start_offset(mut self, offset: i64) -> Self {
        self.start_offset = Some(offset);
        self
    }

    /// Bounds concurrent handlers.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Sets a driver-specific argument.
    pub fn with_arg(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.args.insert(name.into(), value.into());
        self
    }

    /// For drivers of platforms without partitions: refuses `partition` and
    /// `start_offset` rather than ignoring them.
    ///
    /// ```
    /// use streams_core::ReadTask;
    ///
    /// let err = ReadTask::new("orders").with_partition(0).refuse_partitions("sqs").unwrap_err();
    /// assert!(err.to_string().contains("`partition`"), "{err}");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](crate::Error::Invalid) naming the field.
    pub fn refuse_partitions(&self, platform: &str) -> Result<()> {
        let field = match (self.partition, self.start_offset) {
            (Some(_), _) => "partition",
            (None, Some(_)) => "start_offset",
            (None, None) => return Ok(()),
        };
        Err(crate::Error::invalid(
            "read task",
            format!("`{field}`: {platform} streams have no partitions or offsets"),
        ))
    }

    /// Refuses driver arguments other than `known` rather than ignoring them.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](crate::Error::Invalid) naming the first unknown argument.
    pub fn refuse_args(&self, platform: &str, known: &[&str]) -> Result<()> {
        match self.args.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(arg) => Err(crate::Error::invalid(
                "read task",
                format!(
                    "argument `{arg}` means nothing to {platform}; known: {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[tokio::test]
    async fn a_panicking_handler_is_an_error() {
        let mut h = handler(tower::service_fn(|m: Message| async move {
            if &m.data[..] == b"boom" {
                panic!("bad handler");
            }
            Ok::<_, BoxError>(())
        }));
        call_handler(&mut h, Message::new("s", "ok")).await.unwrap();
        let err = call_handler(&mut h, Message::new("s", "boom"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "handler panicked: bad handler");
    }

    /// A handler whose work is done in `call` (a `service_fn` returning a ready future)
    /// panics before there is a future to poll: caught all the same.
    #[tokio::test]
    async fn a_handler_panicking_in_call_is_an_error() {
        let mut h = handler(tower::service_fn(|m: Message| {
            assert!(&m.data[..] != b"boom", "bad at once");
            std::future::ready(Ok::<_, BoxError>(()))
        }));
        call_handler(&mut h, Message::new("s", "ok")).await.unwrap();
        let err = call_handler(&mut h, Message::new("s", "boom"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "handler panicked: bad at once");
        call_handler(&mut h, Message::new("s", "ok")).await.unwrap();
    }

    #[test]
    fn traits_are_object_safe_and_send_sync() {
        assert_send_sync::<Arc<dyn Writer>>();
        assert_send_sync::<Arc<dyn Reader>>();
        assert_send_sync::<Handler>();
        assert_send_sync::<ReadTask>();
        assert_send_sync::<Message>();
        assert_send_sync::<crate::Error>();
    }
}
