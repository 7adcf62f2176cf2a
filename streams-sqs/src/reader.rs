use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    Message as SqsMessage, MessageSystemAttributeName,
};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use streams_core::{
    BatchHandler, BatchSize, BatchSubscription, CancellationToken, Handler, Message, ReadTask,
    Reader, Result, Subscription, DELIVERY_ATTEMPT,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::client::{is_fifo, SqsClient};
use crate::wire::{decode, Delivery};

/// Reads an SQS queue with long polling and hands each message to a handler.
///
/// - `pollers` receive loops (default 1) ask for up to ten messages each, never more
///   than there is room for under the bound on concurrent handlers (the read task's
///   `concurrency`, else [`SqsReaderBuilder::with_concurrency`], default 10).
/// - A message whose handler succeeded is deleted, in batches. One whose handler failed
///   is made visible again after a backoff growing with its receive count (or, without
///   backoff, when its visibility timeout ends), so SQS redelivers it; a redrive policy
///   on the queue moves it to a dead-letter queue after enough receives.
/// - A handler error that asks for a delay ([`RetryAfter`](streams_core::RetryAfter))
///   sets the message's visibility timeout to that delay (rounded up to whole seconds),
///   so SQS redelivers it then and no handler slot waits meanwhile. SQS keeps a message
///   invisible for at most 12 hours from its receive: a longer delay is refused, logged
///   as an error naming the limit, and the message comes back as after any other
///   failure. A zero delay makes it visible at once.
/// - Handlers see the receive count (`ApproximateReceiveCount`) as
///   [`Message::delivery_attempt`](streams_core::Message::delivery_attempt).
/// - While a handler runs, a heartbeat extends the message's visibility timeout.
/// - FIFO queues (queue name ending in `.fifo`): messages of one group are handled one
///   at a time in order; when one fails, the group's later messages of the same receive
///   are released with it, so order holds on redelivery. Order across receives rests
///   on SQS not returning a group's messages while others of it are in flight; some
///   emulators (moto) do not enforce that across concurrent receives, so use one
///   poller for FIFO queues there.
/// - SNS notification envelopes (subscriptions without raw delivery) are unwrapped;
///   raw deliveries are read as they are.
/// - Until a first receive has succeeded, any failure ends the read with that error (the
///   SDK has retried it within the client's time limits): a missing queue, denied
///   access, or an endpoint where nothing listens shows at once, as one line naming the
///   queue or the endpoint, instead of a reader that loops. After that, retryable
///   failures (throttling, 5xx, time-outs, lost connections) are retried with a
///   backoff of up to 20 s and logged; a failure that is not retryable (the queue was
///   deleted, access was revoked) ends the read.
/// - A receive long-polls for [`SqsReaderBuilder::with_wait_time`] on top of the client's
///   operation timeout, so the time limit never cuts a healthy poll.
/// - On cancellation the reader stops receiving (an in-flight long poll is allowed to
///   end, and what it returned is released at once), lets running handlers finish,
///   deletes what succeeded, and returns.
///
/// The read task's `group` is not used: a queue has one set of consumers. For fan-out,
/// subscribe one queue per consuming service to an SNS topic (see `streams-sns`).
///
/// Handlers see the headers `sqs-message-id`, `sqs-message-receipt-handle`,
/// `sqs-message-body-md5` and `sqs-message-attributes-md5` besides the message's own.
#[derive(Debug, Clone)]
pub struct SqsReader {
    client: SqsClient,
    opts: Options,
}

#[derive(Debug, Clone)]
struct Options {
    pollers: usize,
    concurrency: usize,
    batch_size: usize,
    wait_time: Duration,
    visibility_timeout: Duration,
    backoff: Option<(Duration, Duration)>,
    heartbeat: bool,
}

/// Options of an [`SqsReader`].
#[derive(Debug, Clone)]
pub struct SqsReaderBuilder {
    client: SqsClient,
    opts: Options,
}

impl SqsReaderBuilder {
    /// Number of concurrent receive loops. Default 1.
    pub fn with_pollers(mut self, pollers: usize) -> Self {
        self.opts.pollers = pollers.max(1);
        self
    }

    /// Bound on handlers running at once when the read task sets none. Default 10.
    pub fn with_concurrency(mut self, handlers: usize) -> Self {
        self.opts.concurrency = handlers.max(1);
        self
    }

    /// Most messages asked for per receive, 1 to 10. Default 10.
    pub fn with_batch_size(mut self, messages: usize) -> Self {
        self.opts.batch_size = messages.clamp(1, 10);
        self
    }

    /// Long-poll wait per receive, up to 20 s. Default 20 s. Cancellation waits for a
    /// running poll to end, so this also bounds how long shutdown takes.
    pub fn with_wait_time(mut self, wait: Duration) -> Self {
        self.opts.wait_time = wait.min(Duration::from_secs(20));
        self
    }

    /// Visibility timeout asked for on receive; the heartbeat renews it while a handler
    /// runs. Default 30 s.
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.opts.visibility_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// After a handler failure, the message becomes visible again after
    /// `base * 2^(receives - 1)`, at most `max`. Default 1 s and 60 s.
    pub fn with_redelivery_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.opts.backoff = Some((base, max.max(base)));
        self
    }

    /// After a handler failure, leaves the message invisible until its visibility
    /// timeout ends.
    pub fn without_redelivery_backoff(mut self) -> Self {
        self.opts.backoff = None;
        self
    }

    /// Whether to extend the visibility timeout of messages whose handler is still
    /// running. Default on.
    pub fn with_heartbeat(mut self, on: bool) -> Self {
        self.opts.heartbeat = on;
        self
    }

    /// Builds the reader.
    pub fn build(self) -> SqsReader {
        SqsReader {
            client: self.client,
            opts: self.opts,
        }
    }
}

impl SqsReader {
    /// A reader with default options.
    pub fn new(client: SqsClient) -> SqsReader {
        Self::builder(client).build()
    }

    /// A builder.
    pub fn builder(client: SqsClient) -> SqsReaderBuilder {
        SqsReaderBuilder {
            client,
            opts: Options {
                pollers: 1,
                concurrency: 10,
                batch_size: 10,
                wait_time: Duration::from_secs(20),
                visibility_timeout: Duration::from_secs(30),
                backoff: Some((Duration::from_secs(1), Duration::from_secs(60))),
                heartbeat: true,
            },
        }
    }
}

/// What every receive loop and handler of one read task shares.
struct Ctx {
    client: SqsClient,
    url: String,
    stream: String,
    fifo: bool,
    opts: Options,
    deletes: mpsc::UnboundedSender<String>,
    /// Whether a receive has succeeded: until then, every failure ends the read.
    received: AtomicBool,
}

#[async_trait]
impl Reader for SqsReader {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        let url = self.attach(&task).await?;
        let reader = self.clone();
        Ok(Subscription::new(
            task.stream.clone(),
            move |handler, cancel| reader.run(task, url, handler, cancel),
        ))
    }

    /// Batches natively: a batch is what the receives of one poller return (up to ten
    /// messages a receive, more receives while the batch has room and `max_wait` has
    /// not passed). Its successful messages are deleted together (`DeleteMessageBatch`,
    /// ten per call); its failed ones are made visible again after the redelivery
    /// backoff, as for a per-message handler, so SQS redelivers exactly those. On a
    /// FIFO queue a failure also releases the messages of its group that came after it
    /// in the batch, so order per group holds. The heartbeat covers the whole batch while
    /// the handler runs. The task's `concurrency` bounds batches handled at once.
    async fn subscribe_batch(&self, task: ReadTask, size: BatchSize) -> Result<BatchSubscription> {
        size.check()?;
        let url = self.attach(&task).await?;
        let reader = self.clone();
        Ok(BatchSubscription::new(
            task.stream.clone(),
            move |handler, cancel| reader.run_batch(task, url, handler, size, cancel),
        ))
    }
}

impl SqsReader {
    /// Checks the task and finds the queue: what `subscribe` and `subscribe_batch`
    /// share.
    async fn attach(&self, task: &ReadTask) -> Result<String> {
        if task.group.is_some() {
            return Err(streams_core::Error::invalid(
                "read task",
                "`group`: an SQS queue has no consumer groups, every reader of it shares its \
                 messages; give each group a queue of its own (subscribed to an SNS topic)",
            ));
        }
        task.refuse_partitions("SQS")?;
        task.refuse_args("SQS", &[])?;
        // A missing queue or an unreachable endpoint fails here.
        self.client.queue_url(&task.stream).await
    }
}

impl SqsReader {
    async fn run(
        self,
        task: ReadTask,
        url: String,
        handler: Handler,
        cancel: CancellationToken,
    ) -> Result<()> {
        let limit = task.concurrency.unwrap_or(self.opts.concurrency).max(1);
        let permits = Arc::new(Semaphore::new(limit));
        let (tx, rx) = mpsc::unbounded_channel();
        let deleter = tokio::spawn(delete_loop(
            self.client.clone(),
            url.clone(),
            rx,
            self.opts.pollers.max(2),
        ));
        let ctx = Arc::new(Ctx {
            client: self.client.clone(),
            fifo: is_fifo(&url),
            url,
            stream: task.stream,
            opts: self.opts.clone(),
            deletes: tx,
            received: AtomicBool::new(false),
        });
        let stop = cancel.child_token();
        let loops = (0..self.opts.pollers)
            .map(|_| poll_loop(ctx.clone(), handler.clone(), permits.clone(), stop.clone()));
        let results = futures::future::join_all(loops).await;
        // The last sender goes with the context: the deleter drains and ends.
        drop(ctx);
        if let Err(e) = deleter.await {
            tracing::error!(error = %e, "sqs delete loop panicked");
        }
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }
}

async fn poll_loop(
    ctx: Arc<Ctx>,
    handler: Handler,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) -> Result<()> {
    let mut units = JoinSet::new();
    let mut pause = Duration::from_millis(100);
    let result = loop {
        while units.try_join_next().is_some() {}
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let mut held = vec![first];
        while held.len() < ctx.opts.batch_size {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let receive = receive(&ctx, held.len(), ctx.opts.wait_time);
        tokio::pin!(receive);
        let (out, stopping) = tokio::select! {
            biased;
            out = &mut receive => (out, false),
            // A dropped long poll would still take messages on the server side and
            // hide them for a whole visibility timeout: let it end, then release.
            _ = stop.cancelled() => (receive.await, true),
        };
        match out {
            Ok(messages) if stopping => {
                change_visibility(&ctx, messages.iter(), 0, "release on shutdown").await;
                break Ok(());
            }
            Ok(messages) => {
                ctx.received.store(true, Ordering::Relaxed);
                pause = Duration::from_millis(100);
                dispatch(&ctx, &handler, messages, held, &mut units);
            }
            Err(e) if e.is_retryable() && !stopping && ctx.received.load(Ordering::Relaxed) => {
                tracing::warn!(stream = %ctx.stream, error = %e, retry_in = ?pause, "sqs receive failed");
                tokio::select! {
                    _ = stop.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(20));
            }
            Err(_) if stopping => break Ok(()),
            Err(e) => {
                tracing::error!(stream = %ctx.stream, error = %e, "sqs receive failed for good");
                stop.cancel();
                break Err(e);
            }
        }
    };
    while units.join_next().await.is_some() {}
    result
}

async fn receive(ctx: &Ctx, max: usize, wait: Duration) -> Result<Vec<SqsMessage>> {
    let call = ctx
        .client
        .sdk()
        .receive_message()
        .queue_url(&ctx.url)
        .max_number_of_messages(max as i32)
        .wait_time_seconds(wait.as_secs() as i32)
        .visibility_timeout(secs(ctx.opts.visibility_timeout))
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All);
    // The server holds a long poll open for up to the wait time: allow for it on top of
    // the client's operation timeout.
    let result = match ctx.client.operation_timeout() {
        Some(limit) => {
            let timeouts = TimeoutConfig::builder()
                .operation_timeout(limit + wait)
                .build();
            call.customize()
                .config_override(aws_sdk_sqs::Config::builder().timeout_config(timeouts))
                .send()
                .await
        }
        None => call.send().await,
    };
    let out = result.map_err(|e| ctx.error("ReceiveMessage", e))?;
    Ok(out.messages.unwrap_or_default())
}

impl Ctx {
    /// Maps an SDK error of a call on this read task's queue.
    fn error<E>(
        &self,
        operation: &'static str,
        err: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    ) -> streams_core::Error
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.client
            .error(operation, &format!("queue {}", self.url), err)
    }
}

/// Groups a receive into units handled one message after another: one message each on
/// a standard queue, one group each on a FIFO queue. Each message holds one permit.
fn dispatch(
    ctx: &Arc<Ctx>,
    handler: &Handler,
    messages: Vec<SqsMessage>,
    mut held: Vec<OwnedSemaphorePermit>,
    units: &mut JoinSet<()>,
) {
    let mut groups: Vec<(Option<String>, Vec<SqsMessage>)> = Vec::new();
    for m in messages {
        let group = if ctx.fifo {
            system_attribute(&m, MessageSystemAttributeName::MessageGroupId)
        } else {
            None
        };
        match groups
            .iter_mut()
            .find(|(g, _)| group.is_some() && *g == group)
        {
            Some((_, list)) => list.push(m),
            None => groups.push((group, vec![m])),
        }
    }
    for (_, unit) in groups {
        let n = unit.len().min(held.len());
        let permits: Vec<_> = held.drain(..n).collect();
        let ctx = ctx.clone();
        let handler = handler.clone();
        units.spawn(async move {
            run_unit(&ctx, handler, unit).await;
            drop(permits);
        });
    }
}

async fn run_unit(ctx: &Ctx, handler: Handler, unit: Vec<SqsMessage>) {
    let received = tokio::time::Instant::now();
    let mut pending: VecDeque<SqsMessage> = unit.into();
    while let Some(m) = pending.pop_front() {
        let chosen = match handle(ctx, &handler, &m, &pending).await {
            Handled::Done => {
                if let Some(h) = m.receipt_handle {
                    let _ = ctx.deletes.send(h);
                }
                continue;
            }
            Handled::Failed(delay) => delay,
        };
        // The group's later messages were not handled: release them now. SQS keeps
        // them behind the failed one, which is still in flight.
        change_visibility(
            ctx,
            pending.iter(),
            0,
            "release after a failure in the group",
        )
        .await;
        if let Some(delay) = chosen {
            match visibility_for_delay(delay, received.elapsed()) {
                Ok(seconds) => {
                    change_visibility(
                        ctx,
                        std::iter::once(&m),
                        seconds,
                        "delay chosen by the handler",
                    )
                    .await;
                    return;
                }
                Err(reason) => {
                    tracing::error!(stream = %ctx.stream, sqs_message_id = ?m.message_id, %reason, "cannot delay the message as the handler asked; it comes back as after any failure");
                }
            }
        }
        if let Some(backoff) = ctx.opts.backoff {
            let receives =
                system_attribute(&m, MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|c| c.parse::<u32>().ok())
                    .unwrap_or(1);
            let delay = redelivery_delay(backoff, receives);
            change_visibility(ctx, std::iter::once(&m), secs(delay), "redelivery backoff").await;
        }
        return;
    }
}

impl SqsReader {
    async fn run_batch(
        self,
        task: ReadTask,
        url: String,
        handler: BatchHandler,
        size: BatchSize,
        cancel: CancellationToken,
    ) -> Result<()> {
        let limit = task.concurrency.unwrap_or(self.opts.concurrency).max(1);
        let permits = Arc::new(Semaphore::new(limit));
        let (tx, rx) = mpsc::unbounded_channel();
        let deleter = tokio::spawn(delete_loop(
            self.client.clone(),
            url.clone(),
            rx,
            self.opts.pollers.max(2),
        ));
        let ctx = Arc::new(Ctx {
            client: self.client.clone(),
            fifo: is_fifo(&url),
            url,
            stream: task.stream,
            opts: self.opts.clone(),
            deletes: tx,
            received: AtomicBool::new(false),
        });
        let stop = cancel.child_token();
        let loops = (0..self.opts.pollers).map(|_| {
            batch_poll_loop(
                ctx.clone(),
                handler.clone(),
                size,
                permits.clone(),
                stop.clone(),
            )
        });
        let results = futures::future::join_all(loops).await;
        drop(ctx);
        if let Err(e) = deleter.await {
            tracing::error!(error = %e, "sqs delete loop panicked");
        }
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }
}

/// The batch counterpart of [`poll_loop`]: one permit per batch; receives until the
/// batch is full or `max_wait` passed since its first message, then hands it over.
async fn batch_poll_loop(
    ctx: Arc<Ctx>,
    handler: BatchHandler,
    size: BatchSize,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) -> Result<()> {
    let mut units = JoinSet::new();
    let mut pause = Duration::from_millis(100);
    let result = 'run: loop {
        while units.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let mut messages: Vec<SqsMessage> = Vec::new();
        let mut deadline = None;
        loop {
            let room = size.max_messages() - messages.len();
            // Until the first message, a full long poll; then what is left of the wait.
            let wait = match deadline {
                None => ctx.opts.wait_time,
                Some(d) => {
                    let now = tokio::time::Instant::now();
                    if now >= d {
                        break;
                    }
                    (d - now).min(ctx.opts.wait_time)
                }
            };
            let receive = receive(&ctx, room.min(10), wait);
            tokio::pin!(receive);
            let (out, stopping) = tokio::select! {
                biased;
                out = &mut receive => (out, false),
                // Let a long poll end (a dropped one hides what it took), then hand
                // over what the batch holds.
                _ = stop.cancelled() => (receive.await, true),
            };
            match out {
                Ok(got) => {
                    ctx.received.store(true, Ordering::Relaxed);
                    pause = Duration::from_millis(100);
                    if !got.is_empty() && deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + size.max_wait());
                    }
                    messages.extend(got);
                }
                Err(e) if e.is_retryable() && ctx.received.load(Ordering::Relaxed) => {
                    tracing::warn!(stream = %ctx.stream, error = %e, retry_in = ?pause, "sqs receive failed");
                    if messages.is_empty() && !stopping {
                        tokio::select! {
                            _ = stop.cancelled() => break 'run Ok(()),
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(20));
                        continue;
                    }
                }
                Err(e) => {
                    tracing::error!(stream = %ctx.stream, error = %e, "sqs receive failed for good");
                    stop.cancel();
                    if !messages.is_empty() {
                        change_visibility(&ctx, messages.iter(), 0, "release on failure").await;
                    }
                    break 'run Err(e);
                }
            }
            if stopping || messages.len() >= size.max_messages() || stop.is_cancelled() {
                break;
            }
            if deadline.is_some() && size.max_wait().is_zero() {
                break;
            }
        }
        if messages.is_empty() {
            if stop.is_cancelled() {
                break Ok(());
            }
            continue;
        }
        let ctx = ctx.clone();
        let handler = handler.clone();
        units.spawn(async move {
            run_batch_unit(&ctx, handler, messages).await;
            drop(permit);
        });
    };
    while units.join_next().await.is_some() {}
    result
}

/// Hands one batch over and settles each message: deletes the successes, makes the
/// failures visible again after their backoff (and, on FIFO queues, the messages of a
/// failed group after the failure, at once).
async fn run_batch_unit(ctx: &Ctx, mut handler: BatchHandler, received: Vec<SqsMessage>) {
    let mut decoded = Vec::with_capacity(received.len());
    let mut handed = Vec::with_capacity(received.len());
    let mut failed: Vec<&SqsMessage> = Vec::new();
    for m in &received {
        match to_message(&ctx.stream, m) {
            Ok(msg) => {
                decoded.push(msg);
                handed.push(m);
            }
            Err(reason) => {
                tracing::error!(stream = %ctx.stream, sqs_message_id = ?m.message_id, %reason, "undecodable sqs message");
                failed.push(m);
            }
        }
    }
    let outcome = if decoded.is_empty() {
        streams_core::BatchOutcome::ok()
    } else {
        let batch = streams_core::Batch::new(ctx.stream.clone(), decoded);
        let call = streams_core::call_batch_handler(&mut handler, batch);
        tokio::pin!(call);
        let period = (ctx.opts.visibility_timeout / 2).max(Duration::from_secs(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                o = &mut call => break o,
                _ = tick.tick(), if ctx.opts.heartbeat => {
                    change_visibility(ctx, handed.iter().copied(), secs(ctx.opts.visibility_timeout), "heartbeat").await;
                }
            }
        }
    };
    let mut release = Vec::new();
    let mut failed_groups: Vec<String> = Vec::new();
    for (i, m) in handed.iter().enumerate() {
        let group = if ctx.fifo {
            system_attribute(m, MessageSystemAttributeName::MessageGroupId)
        } else {
            None
        };
        if let Some(error) = outcome.error(i) {
            tracing::debug!(stream = %ctx.stream, sqs_message_id = ?m.message_id, %error, "batch handler failed a message; it will be redelivered");
            if let Some(g) = group {
                if failed_groups.contains(&g) {
                    release.push(*m);
                    continue;
                }
                failed_groups.push(g);
            }
            failed.push(m);
        } else if group.is_some_and(|g| failed_groups.contains(&g)) {
            // After a failure of its group: delivered again behind it.
            release.push(*m);
        } else if let Some(h) = &m.receipt_handle {
            let _ = ctx.deletes.send(h.clone());
        }
    }
    if !release.is_empty() {
        change_visibility(
            ctx,
            release.into_iter(),
            0,
            "release after a failure in the group",
        )
        .await;
    }
    if let Some(backoff) = ctx.opts.backoff {
        // One request per delay: messages received as often share one.
        let mut by_delay: HashMap<i32, Vec<&SqsMessage>> = HashMap::new();
        for m in failed {
            let receives = system_attribute(m, MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|c| c.parse::<u32>().ok())
                .unwrap_or(1);
            by_delay
                .entry(secs(redelivery_delay(backoff, receives)))
                .or_default()
                .push(m);
        }
        for (delay, messages) in by_delay {
            change_visibility(ctx, messages.into_iter(), delay, "redelivery backoff").await;
        }
    }
}

/// Most SQS keeps a message invisible, counted from its receive.
const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// The visibility timeout that makes a message visible again after `delay`, `held` after
/// it was received: `delay` rounded up to whole seconds, so the message never comes back
/// early.
///
/// # Errors
///
/// When SQS's 12 hours from the receive would be exceeded, a sentence saying so.
fn visibility_for_delay(delay: Duration, held: Duration) -> std::result::Result<i32, String> {
    let whole = Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0));
    if held.saturating_add(whole) > MAX_VISIBILITY {
        return Err(format!(
            "the handler asked for a delay of {delay:?}, but SQS keeps a message invisible at most \
             12 hours from its receive ({:?} left)",
            MAX_VISIBILITY.saturating_sub(held)
        ));
    }
    Ok(secs(whole))
}

/// How a handler left a message.
enum Handled {
    /// Acknowledged: delete it.
    Done,
    /// Failed; with the delay the handler asked for, if any.
    Failed(Option<Duration>),
}

/// `base * 2^(receives - 1)`, at most `max` and at most the SQS limit of 12 hours.
fn redelivery_delay((base, max): (Duration, Duration), receives: u32) -> Duration {
    let factor = 2u32.saturating_pow(receives.saturating_sub(1).min(30));
    base.saturating_mul(factor)
        .min(max)
        .min(Duration::from_secs(43_200))
}

/// Runs the handler on one message, renewing visibility while it runs.
async fn handle(
    ctx: &Ctx,
    handler: &Handler,
    m: &SqsMessage,
    waiting: &VecDeque<SqsMessage>,
) -> Handled {
    let msg = match to_message(&ctx.stream, m) {
        Ok(msg) => msg,
        Err(reason) => {
            tracing::error!(stream = %ctx.stream, sqs_message_id = ?m.message_id, %reason, "undecodable sqs message");
            return Handled::Failed(None);
        }
    };
    let id = msg.id.clone();
    let mut svc = handler.clone();
    let run = async move { streams_core::call_handler(&mut svc, msg).await };
    tokio::pin!(run);
    let period = (ctx.opts.visibility_timeout / 2).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = tick.tick(), if ctx.opts.heartbeat => {
                let held = std::iter::once(m).chain(waiting.iter());
                change_visibility(ctx, held, secs(ctx.opts.visibility_timeout), "heartbeat").await;
            }
        }
    };
    match result {
        Ok(()) => Handled::Done,
        Err(error) => {
            // `LoggingLayer` logs failures at the level the user chose.
            tracing::debug!(stream = %ctx.stream, %id, %error, "handler failed; message will be redelivered");
            Handled::Failed(streams_core::retry_after(error.as_ref()))
        }
    }
}

fn to_message(stream: &str, m: &SqsMessage) -> std::result::Result<Message, String> {
    let attributes: HashMap<String, String> = m
        .message_attributes
        .iter()
        .flatten()
        .filter_map(|(name, v)| {
            let value = v
                .string_value
                .clone()
                .or_else(|| v.binary_value.as_ref().map(|b| BASE64.encode(b.as_ref())))?;
            Some((name.clone(), value))
        })
        .collect();
    let delivery = Delivery {
        sqs_message_id: m.message_id.clone(),
        receipt_handle: m.receipt_handle.clone(),
        body_md5: m.md5_of_body.clone(),
        attributes_md5: m.md5_of_message_attributes.clone(),
        sent_millis: system_attribute(m, MessageSystemAttributeName::SentTimestamp)
            .and_then(|t| t.parse().ok()),
    };
    let mut msg = decode(stream, m.body().unwrap_or_default(), attributes, delivery)?;
    if let Some(receives) = system_attribute(m, MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|c| c.parse::<i64>().ok())
    {
        msg.metadata.insert_i64(DELIVERY_ATTEMPT, receives);
    }
    Ok(msg)
}

fn system_attribute(m: &SqsMessage, name: MessageSystemAttributeName) -> Option<String> {
    m.attributes.as_ref().and_then(|a| a.get(&name)).cloned()
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Sets the visibility timeout of messages, ten per request; failures are logged (the
/// old timeout then applies).
async fn change_visibility<'a>(
    ctx: &Ctx,
    messages: impl Iterator<Item = &'a SqsMessage>,
    seconds: i32,
    why: &'static str,
) {
    let handles: Vec<&str> = messages.filter_map(|m| m.receipt_handle()).collect();
    for chunk in handles.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*h)
                    .visibility_timeout(seconds)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let result = ctx
            .client
            .sdk()
            .change_message_visibility_batch()
            .queue_url(&ctx.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) if out.failed.is_empty() => {}
            Ok(out) => {
                tracing::warn!(stream = %ctx.stream, why, failed = out.failed.len(), "visibility change partly failed")
            }
            Err(e) => {
                let error = ctx.error("ChangeMessageVisibilityBatch", e);
                tracing::warn!(stream = %ctx.stream, why, %error, "visibility change failed");
            }
        }
    }
}

/// Deletes acknowledged messages, up to ten per request, as they come, with up to
/// `in_flight` requests at once.
async fn delete_loop(
    client: SqsClient,
    url: String,
    rx: mpsc::UnboundedReceiver<String>,
    in_flight: usize,
) {
    use futures::StreamExt;
    let batches = futures::stream::unfold(rx, |mut rx| async move {
        let mut batch = Vec::with_capacity(10);
        (rx.recv_many(&mut batch, 10).await > 0).then_some((batch, rx))
    });
    batches
        .map(|batch| delete_batch(&client, &url, batch))
        .buffer_unordered(in_flight.max(1))
        .for_each(|()| std::future::ready(()))
        .await;
}

async fn delete_batch(client: &SqsClient, url: &str, batch: Vec<String>) {
    let entries = batch
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(h)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect();
    let result = client
        .sdk()
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await;
    match result {
        Ok(out) if out.failed.is_empty() => {}
        Ok(out) => {
            tracing::warn!(queue = %url, failed = out.failed.len(), "some acknowledged messages were not deleted and will be redelivered")
        }
        Err(e) => {
            let error = client.error("DeleteMessageBatch", &format!("queue {url}"), e);
            tracing::warn!(queue = %url, %error, "acknowledged messages were not deleted and will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_delay_rounds_up_and_stays_within_twelve_hours() {
        let zero = Duration::ZERO;
        assert_eq!(visibility_for_delay(zero, zero), Ok(0));
        assert_eq!(visibility_for_delay(Duration::from_millis(1), zero), Ok(1));
        assert_eq!(
            visibility_for_delay(Duration::from_millis(2500), zero),
            Ok(3)
        );
        assert_eq!(visibility_for_delay(MAX_VISIBILITY, zero), Ok(43_200));
        let err = visibility_for_delay(MAX_VISIBILITY + Duration::from_secs(1), zero).unwrap_err();
        assert!(err.contains("at most 12 hours"), "{err}");
        // Time already spent on the message counts against the limit.
        let held = Duration::from_secs(60);
        assert!(visibility_for_delay(MAX_VISIBILITY - Duration::from_secs(30), held).is_err());
        assert_eq!(
            visibility_for_delay(MAX_VISIBILITY - held, held),
            Ok(43_140)
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = (Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(redelivery_delay(b, 1), Duration::from_secs(1));
        assert_eq!(redelivery_delay(b, 3), Duration::from_secs(4));
        assert_eq!(redelivery_delay(b, 40), Duration::from_secs(10));
    }
}
