use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    batch_handler, Batch, BatchHandler, BatchOutcome, BatchSize, BoxError, Error, Event,
    EventRegistry, Message, ReadTask, Reader, Result, Unrecoverable,
};

/// Runs a subscribed message handler on its subscription.
type Run = Box<
    dyn FnOnce(crate::Subscription, CancellationToken) -> BoxFuture<'static, Result<()>>
        + Send
        + Sync,
>;

/// A subscribed task's handler: one message or one batch at a time.
enum Consumer {
    /// The service stays unboxed until its subscription is known, so that an observing
    /// reader wraps it before it is boxed, once (see `Subscription`).
    Message(Run),
    Batch(BatchSize, BatchHandler),
}

/// The router: routes each stream of a [`Reader`] to its handler. Subscribe (a read
/// task and a handler), [`start`](Self::start), then [`shutdown`](Self::shutdown).
///
/// Reader failures are never dropped: [`wait`](Self::wait) returns the first one while
/// running, and [`shutdown`](Self::shutdown) returns all of them.
pub struct Router {
    reader: Arc<dyn Reader>,
    registry: Arc<EventRegistry>,
    pending: Vec<(ReadTask, Consumer)>,
    running: JoinSet<(String, Result<()>)>,
    cancel: CancellationToken,
    failed: Vec<(String, Error)>,
}

impl Router {
    /// A scheduler over `reader`, resolving event types through `registry`.
    pub fn new(reader: Arc<dyn Reader>, registry: Arc<EventRegistry>) -> Self {
        Router {
            reader,
            registry,
            pending: Vec::new(),
            running: JoinSet::new(),
            cancel: CancellationToken::new(),
            failed: Vec::new(),
        }
    }

    /// Adds a read task with its handler. Tasks added after [`start`](Self::start) begin
    /// at the next `start`.
    pub fn subscribe<S>(&mut self, task: ReadTask, service: S) -> &mut Self
    where
        S: tower::Service<Message, Response = ()> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let run: Run = Box::new(move |subscription, cancel| {
            Box::pin(subscription.run_service(service, cancel))
        });
        self.pending.push((task, Consumer::Message(run)));
        self
    }

    /// Adds a read task with a batch handler: batches of up to `size`, acknowledged per
    /// message (see [`Reader::subscribe_batch`]).
    pub fn subscribe_batch<S>(&mut self, task: ReadTask, size: BatchSize, service: S) -> &mut Self
    where
        S: tower::Service<Batch, Response = BatchOutcome> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.pending
            .push((task, Consumer::Batch(size, batch_handler(service))));
        self
    }

    /// Subscribes a function that receives batches of decoded events (with their
    /// messages) from the stream registered for `E`; see [`typed_batch`](crate::typed_batch).
    ///
    /// # Errors
    ///
    /// [`Error::EventNotRegistered`].
    pub fn subscribe_typed_batch<E, F, Fut>(&mut self, size: BatchSize, f: F) -> Result<&mut Self>
    where
        E: Event,
        F: Fn(Vec<(E, Message)>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<BatchOutcome, BoxError>> + Send + 'static,
    {
        let stream = self.registry.stream_of::<E>()?;
        Ok(self.subscribe_batch(ReadTask::new(stream), size, crate::typed_batch(f)))
    }

    /// Subscribes a handler to a stream with driver defaults.
    pub fn subscribe_stream<S>(&mut self, stream: impl Into<String>, service: S) -> &mut Self
    where
        S: tower::Service<Message, Response = ()> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.subscribe(ReadTask::new(stream), service)
    }

    /// Subscribes a message handler to the stream registered for `E`.
    ///
    /// # Errors
    ///
    /// [`Error::EventNotRegistered`].
    pub fn subscribe_event<E, S>(&mut self, service: S) -> Result<&mut Self>
    where
        E: Event,
        S: tower::Service<Message, Response = ()> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let stream = self.registry.stream_of::<E>()?;
        Ok(self.subscribe(ReadTask::new(stream), service))
    }

    /// Subscribes a function that receives the decoded event and its message.
    ///
    /// A payload that does not decode fails the handler with an [`Unrecoverable`]
    /// error, so retry middleware leaves it alone and dead-letter middleware captures
    /// it. To add middleware, wrap [`typed`] yourself and use
    /// [`subscribe_event`](Self::subscribe_event).
    ///
    /// # Errors
    ///
    /// [`Error::EventNotRegistered`].
    pub fn subscribe_typed<E, F, Fut>(&mut self, f: F) -> Result<&mut Self>
    where
        E: Event,
        F: Fn(E, Message) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.subscribe_event::<E, _>(typed(f))
    }

    /// Attaches every subscribed task that is not running yet, then runs them.
    ///
    /// Every task is attached first ([`Reader::subscribe`]): a bad task or a missing
    /// stream fails here, and then none of this call's tasks runs (those already
    /// attached leave their streams again); tasks started by earlier calls go on. Once
    /// `start` returns, a reader that receives only what is published after joining
    /// (the in-process bus) receives everything published from then on. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Readers`] naming the stream whose task could not be attached, with the
    /// reader's error.
    pub async fn start(&mut self) -> Result<()> {
        let mut attached = Vec::with_capacity(self.pending.len());
        for (task, consumer) in std::mem::take(&mut self.pending) {
            let stream = task.stream.clone();
            let subscribed = match consumer {
                Consumer::Message(run) => self
                    .reader
                    .subscribe(task)
                    .await
                    .map(|s| Attached::Message(s, run)),
                Consumer::Batch(size, handler) => self
                    .reader
                    .subscribe_batch(task, size)
                    .await
                    .map(|s| Attached::Batch(s, handler)),
            };
            match subscribed {
                Ok(attached_task) => attached.push(attached_task),
                Err(e) => {
                    tracing::error!(stream = %stream, error = %e, "cannot subscribe");
                    return Err(Error::Readers(vec![(stream, e)]));
                }
            }
        }
        for attached_task in attached {
            let cancel = self.cancel.child_token();
            let stream = attached_task.stream().to_owned();
            self.running.spawn(async move {
                tracing::debug!(stream = %stream, "reader started");
                let result = attached_task.run(cancel).await;
                if let Err(e) = &result {
                    tracing::error!(stream = %stream, error = %e, "reader failed");
                }
                (stream, result)
            });
        }
        Ok(())
    }

    /// Number of read tasks running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Waits until a running reader ends and returns how it ended: `Ok` when it ended
    /// normally, or the error it failed with. Returns `Ok` at once when none is running.
    ///
    /// # Errors
    ///
    /// The reader's error, tagged with its stream in [`Error::Readers`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a result not returned stays for the next call or for
    /// [`shutdown`](Self::shutdown).
    pub async fn wait(&mut self) -> Result<()> {
        match self.running.join_next().await {
            None => Ok(()),
            Some(joined) => match flatten(joined) {
                (_, Ok(())) => Ok(()),
                (stream, Err(e)) => Err(Error::Readers(vec![(stream, e)])),
            },
        }
    }

    /// Stops every reader and waits up to `deadline` for in-flight handlers to finish.
    ///
    /// # Errors
    ///
    /// [`Error::Readers`] with every reader failure seen since start, including a
    /// time-out for readers still running at the deadline (those are aborted).
    pub async fn shutdown(mut self, deadline: Duration) -> Result<()> {
        self.cancel.cancel();
        let running = &mut self.running;
        let failed = &mut self.failed;
        let drained = tokio::time::timeout(deadline, async {
            while let Some(joined) = running.join_next().await {
                if let (stream, Err(e)) = flatten(joined) {
                    failed.push((stream, e));
                }
            }
        })
        .await;
        if drained.is_err() {
            let left = self.running.len();
            self.running.abort_all();
            tracing::warn!(
                readers = left,
                ?deadline,
                "shutdown deadline passed, aborting readers"
            );
            self.failed.push((
                format!("{left} reader(s)"),
                Error::Timeout {
                    operation: "shutdown",
                    after: deadline,
                },
            ));
        }
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Readers(std::mem::take(&mut self.failed)))
        }
    }
}

/// A task attached to its stream, with its handler.
enum Attached {
    Message(crate::Subscription, Run),
    Batch(crate::BatchSubscription, BatchHandler),
}

impl Attached {
    fn stream(&self) -> &str {
        match self {
            Attached::Message(s, _) => s.stream(),
            Attached::Batch(s, _) => s.stream(),
        }
    }

    async fn run(self, cancel: CancellationToken) -> Result<()> {
        match self {
            Attached::Message(s, run) => run(s, cancel).await,
            Attached::Batch(s, h) => s.run(h, cancel).await,
        }
    }
}

fn flatten(
    joined: std::result::Result<(String, Result<()>), tokio::task::JoinError>,
) -> (String, Result<()>) {
    match joined {
        Ok(r) => r,
        Err(e) => (
            "<unknown>".to_owned(),
            Err(Error::driver("scheduler", "reader task", false, e)),
        ),
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("reader", &self.reader)
            .field("pending", &self.pending.len())
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

/// Turns a function of a decoded event into a message handler.
///
/// ```
/// use streams_core::{typed, BoxError, Event, Message};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Paid { invoice: String }
/// impl Event for Paid {}
///
/// let svc = typed(|paid: Paid, _msg: Message| async move {
///     tracing::info!(invoice = %paid.invoice, "paid");
///     Ok::<_, BoxError>(())
/// });
/// # let _ = streams_core::handler(svc);
/// ```
pub fn typed<E, F, Fut>(f: F) -> Typed<E, F>
where
    E: Event,
    F: Fn(E, Message) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Typed {
        f,
        codecs: Arc::new(E::codecs()),
        _event: PhantomData,
    }
}

/// A handler that decodes messages into `E` before calling a function; see [`typed`].
pub struct Typed<E: Event, F> {
    f: F,
    codecs: Arc<crate::CodecRegistry<E>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event, F: Clone> Clone for Typed<E, F> {
    fn clone(&self) -> Self {
        Typed {
            f: self.f.clone(),
            codecs: self.codecs.clone(),
            _event: PhantomData,
        }
    }
}

impl<E: Event, F> fmt::Debug for Typed<E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Typed")
            .field("event", &std::any::type_name::<E>())
            .field("codecs", &self.codecs)
            .finish()
    }
}

impl<E, F, Fut> tower::Service<Message> for Typed<E, F>
where
    E: Event,
    F: Fn(E, Message) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Message) -> Self::Future {
        match msg.decode_with(&self.codecs) {
            Ok(event) => Box::pin((self.f)(event, msg)),
            Err(e) => Box::pin(async move { Err(Unrecoverable::new(e).into()) }),
        }
    }
}
