use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use streams_core::{
    BatchHandler, BatchSize, BatchSubscription, CancellationToken, Error, Handler, ReadTask,
    Reader, Result, Subscription,
};
use tokio::sync::mpsc;

use crate::client::{first_contact, KafkaContext};
use crate::error::{code_error, fault, kafka_error, Fault};
use crate::record::{to_message, Origin, Record};
use crate::{KafkaConfig, DRIVER};

/// Reads Kafka topics; implements [`Reader`].
///
/// With a consumer group (`ReadTask::group`), the reader subscribes and shares the
/// topic's partitions with the group's other members. Defaults (overridable through
/// [`KafkaConfig::with_property`]): `auto.offset.reset=earliest`, `fetch.wait.max.ms=10`
/// (a broker that holds each fetch for the whole wait, as tansu does, would otherwise cap
/// throughput and add up to librdkafka's 500 ms of latency), `enable.auto.commit=true` with
/// `enable.auto.offset.store=false`: the reader stores an offset only once its
/// handler succeeded, and librdkafka commits stored offsets in the background.
/// Revoked partitions and shutdown commit what was stored, synchronously.
///
/// With `ReadTask::partition` (and optionally `start_offset`, from the beginning when
/// unset, or the argument `start=end`), the reader assigns that partition directly and
/// commits nothing.
///
/// # Start
///
/// [`subscribe`](Reader::subscribe) creates the consumer, asks the cluster for the
/// topic's metadata and joins the group (or assigns the partition), bounded by
/// [`KafkaConfig::with_connect_timeout`] (20 s): when no broker answers, it fails
/// with `kafka: connect failed: no broker answered at HOST:PORT within 20s (...)`; when
/// the topic (or the partition of a direct read) does not exist or may not be read, it
/// fails at once with a not retryable error naming the topic.
///
/// # Flow control
///
/// One thread polls the consumer all the time, off the async runtime, so the member
/// keeps its place in the group (`max.poll.interval.ms`) and rebalances are served
/// whatever the handlers do. Each partition has a worker task that hands its records to
/// the handler one at a time, in order; partitions are handled concurrently.
///
/// A failed handler call is retried for the same message, with backoff (see
/// [`KafkaConfig::with_retry_backoff`]); the partition's later records wait behind it.
/// A handler error that asks for a delay ([`RetryAfter`](streams_core::RetryAfter)) is
/// retried after that delay instead (zero: at once), holding no handler slot
/// meanwhile; the partition waits (so its order holds) and the others go on. Handlers
/// see the attempt as [`Message::delivery_attempt`](streams_core::Message::delivery_attempt)
/// (1 the first time; counted by this reader, so it starts again at 1 for a record
/// another member or a restarted reader takes over). On cancellation during a delay the
/// record is not committed, so the next reader gets it at once: a delay is not
/// honoured across a restart.
/// Each partition queues at most [`KafkaConfig::with_queue_depth`]
/// records and [`KafkaConfig::with_queue_bytes`] bytes for its worker. When a queue is full and its worker makes no room within
/// half a second (a handler stuck or retrying, not merely busy), the reader pauses that
/// partition (the other partitions go on), and once the worker has worked through half
/// the queue it seeks the partition back to the first record not queued and resumes it,
/// so nothing is skipped or handed twice and memory stays bounded. librdkafka drops what
/// it had prefetched for a paused partition and fetches it again after the resume (a
/// broker must be able to fetch from inside a record batch for that, as Apache Kafka
/// does; tansu cannot). Bound
/// retries with `RetryLayer` and a `DeadLetterLayer` in the handler to move poison
/// messages aside.
///
/// # Stop
///
/// On cancellation the reader takes no new records; handler calls in flight finish,
/// queued records stay for the next reader; then it commits what was stored, leaves the
/// group and drops the consumer on its polling thread (closing a consumer blocks).
#[derive(Debug, Clone)]
pub struct KafkaReader {
    config: KafkaConfig,
}

impl KafkaReader {
    /// A reader with these settings.
    pub fn new(config: KafkaConfig) -> Self {
        KafkaReader { config }
    }
}

/// Tracks which partitions this member owns; each assignment gets a new epoch so that
/// work queued for a revoked partition is dropped rather than handled and committed.
#[derive(Default)]
struct Ownership {
    epochs: Mutex<HashMap<i32, u64>>,
    /// Bumped after each change of `epochs`, so that a worker checks the map only when
    /// it changed rather than for every record.
    generation: AtomicU64,
    next: AtomicU64,
    /// Partitions the reader paused: librdkafka keeps a partition paused across a
    /// revocation and a new assignment, so a revoked one is resumed at once.
    paused: Mutex<HashSet<i32>>,
}

impl Ownership {
    fn owns(&self, partition: i32, epoch: u64) -> bool {
        self.lock().get(&partition) == Some(&epoch)
    }

    /// [`owns`](Ownership::owns), answered from `cache` (generation, answer) while the
    /// assignment did not change.
    fn owns_cached(&self, partition: i32, epoch: u64, cache: &mut Option<(u64, bool)>) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        match *cache {
            Some((g, owns)) if g == generation => owns,
            _ => {
                let owns = self.owns(partition, epoch);
                *cache = Some((generation, owns));
                owns
            }
        }
    }

    /// To call after changing `epochs`, with the lock still held.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn epoch(&self, partition: i32) -> Option<u64> {
        self.lock().get(&partition).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, u64>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn paused(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ReaderContext {
    client: KafkaContext,
    ownership: Arc<Ownership>,
    group: String,
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.client.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl ConsumerContext for ReaderContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut resume = TopicPartitionList::new();
                {
                    let mut owned = self.ownership.lock();
                    let mut paused = self.ownership.paused();
                    for e in tpl.elements() {
                        owned.remove(&e.partition());
                        if paused.remove(&e.partition()) {
                            resume.add_partition(e.topic(), e.partition());
                        }
                    }
                    self.ownership.changed();
                }
                if resume.count() > 0 {
                    if let Err(e) = consumer.resume(&resume) {
                        tracing::warn!(group = %self.group, error = %e, "resume of revoked partitions failed");
                    }
                }
                // Commit what handlers finished before the partitions go elsewhere.
                commit_stored(consumer, &self.group, "rebalance");
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                let mut owned = self.ownership.lock();
                for e in tpl.elements() {
                    let epoch = self.ownership.next.fetch_add(1, Ordering::Relaxed);
                    owned.insert(e.partition(), epoch);
                }
                self.ownership.changed();
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::error!(group = %self.group, error = %e, "rebalance failed")
            }
        }
    }
}

fn commit_stored<C: Consumer<ReaderContext>>(consumer: &C, group: &str, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!(group, why, "offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(group, why, error = %e, "offset commit failed"),
    }
}

/// A record on its way to a partition worker. The worker builds the `Message` from it
/// for each attempt, so nothing is copied up front for a redelivery that rarely comes.
struct Work {
    record: Record,
    hwm: i64,
    epoch: u64,
}

/// A partition worker to start, from the polling thread to the async side.
struct Worker {
    partition: i32,
    rx: mpsc::UnboundedReceiver<Vec<Work>>,
    /// A std channel: the polling thread waits on it with a time-out when a queue is full.
    done: std::sync::mpsc::Sender<Done>,
}

/// A worker is done with `count` records (handled, or dropped for a revoked partition);
/// sent per batch of work (and every [`STORE_EVERY`] records), not per record.
struct Done {
    partition: i32,
    epoch: u64,
    count: usize,
    /// The records' size ([`Record::size`]).
    bytes: usize,
}

/// What the polling thread knows of a partition of the current assignment.
struct PartitionState {
    epoch: u64,
    tx: mpsc::UnboundedSender<Vec<Work>>,
    /// Records handed to the worker that it is not done with, and their size.
    queued: usize,
    queued_bytes: usize,
    /// The first offset not handed to the worker; where a resume seeks to.
    next_offset: Option<i64>,
    paused: bool,
}

impl PartitionState {
    /// Whether the queue reached its bound, in records or in bytes.
    fn full(&self, limit: usize, byte_limit: usize) -> bool {
        self.queued >= limit || self.queued_bytes >= byte_limit
    }
}

/// The reader's default `fetch.wait.max.ms`.
pub(crate) const FETCH_WAIT_MAX_MS: &str = "10";

/// Records taken from the consumer at most per turn of the polling loop.
const DRAIN_MAX: usize = 512;
/// How long one poll waits for a record; also how soon a partition with room resumes
/// when nothing else arrives.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How long a full partition's worker may take to make room before the partition is
/// paused. A pause makes librdkafka drop what it prefetched and fetch it again, so a
/// handler that is merely busy is waited for (the consumer is not polled meanwhile,
/// which a group tolerates for far longer); one that is stuck or retrying is not.
const FULL_PATIENCE: Duration = Duration::from_millis(500);

type Consumer_ = BaseConsumer<ReaderContext>;

impl KafkaReader {
    /// Checks the task, creates the consumer, reaches the cluster and joins the topic:
    /// what `subscribe` and `subscribe_batch` share.
    async fn attach(&self, task: ReadTask) -> Result<(Attached, ReadTask)> {
        if task.stream.is_empty() {
            return Err(Error::invalid("read task", "stream (topic) is empty"));
        }
        task.refuse_args("Kafka", &["start"])?;
        if task.start_offset.is_some() && task.partition.is_none() {
            return Err(Error::invalid(
                "read task",
                "`start_offset` needs a `partition`: a consumer group starts where it committed",
            ));
        }
        let direct = task.partition.is_some();
        let group = match (&task.group, direct) {
            (Some(_), true) => {
                return Err(Error::invalid(
                    "read task",
                    "`group` with `partition`: a direct partition read joins no group and commits nothing",
                ))
            }
            (Some(g), _) if !g.is_empty() => g.clone(),
            (_, true) => String::new(),
            _ => {
                return Err(Error::invalid(
                    "read task",
                    "a Kafka read needs a consumer group or a partition",
                ))
            }
        };
        let ownership = Arc::new(Ownership::default());
        let context = ReaderContext {
            client: KafkaContext::default(),
            ownership: ownership.clone(),
            group: group.clone(),
        };
        let client_id = self
            .config
            .get("client.id")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("streams-{}", std::process::id()));
        let mut cc = self.config.client_config(
            crate::config::Role::Consumer,
            &[
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", if direct { "false" } else { "true" }),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "false"),
                // librdkafka's 500 ms default is how long a fetch may wait for data;
                // some brokers (tansu) hold every fetch that long, which caps a reader
                // at a few batches a second and adds half a second of latency.
                ("fetch.wait.max.ms", FETCH_WAIT_MAX_MS),
                ("client.id", &client_id),
            ],
        );
        // librdkafka wants a group id even for direct reads; nothing is committed there.
        let group_setting = if direct {
            format!("streams-direct-{client_id}")
        } else {
            group.clone()
        };
        cc.set("group.id", &group_setting);
        let init_offset = task.start_offset.map(|o| o.to_string()).unwrap_or_default();

        // Creating the consumer, the first contact and subscribing block: off the runtime.
        let config = self.config.clone();
        let t = task.clone();
        let consumer = tokio::task::spawn_blocking(move || -> Result<Consumer_> {
            let consumer: Consumer_ = cc
                .create_with_context(context)
                .map_err(|e| kafka_error("create consumer", None, e))?;
            let context = &consumer.context().client;
            let info = first_contact(consumer.client(), context, &config, &t.stream, || {
                // Errors and log lines reach a consumer's context when it is polled.
                for _ in 0..32 {
                    match consumer.poll(Duration::ZERO) {
                        Some(Err(e)) => context.record(e.rdkafka_error_code(), &e.to_string()),
                        Some(Ok(_)) => {}
                        None => break,
                    }
                }
            })?;
            match t.partition {
                Some(p) => {
                    info.misconfigured("assign", &t.stream)?;
                    if info.error.is_none() && !info.partitions.contains(&p) {
                        return Err(code_error(
                            "assign",
                            &t.stream,
                            RDKafkaErrorCode::UnknownPartition,
                        ));
                    }
                    let start = match (t.start_offset, t.args.get("start").map(String::as_str)) {
                        (Some(o), _) => Offset::Offset(o),
                        (None, Some("end")) => Offset::End,
                        _ => Offset::Beginning,
                    };
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&t.stream, p, start)
                        .map_err(|e| kafka_error("assign", Some(&t.stream), e))?;
                    consumer
                        .assign(&tpl)
                        .map_err(|e| kafka_error("assign", Some(&t.stream), e))?;
                    let ownership = &consumer.context().ownership;
                    ownership.lock().insert(p, 0);
                    ownership.changed();
                }
                None => {
                    info.misconfigured("subscribe", &t.stream)?;
                    consumer
                        .subscribe(&[&t.stream])
                        .map_err(|e| kafka_error("subscribe", Some(&t.stream), e))?;
                }
            }
            Ok(consumer)
        })
        .await
        .map_err(|e| Error::driver(DRIVER, "connect", true, e))??;
        tracing::info!(topic = %task.stream, group = %group, direct, "kafka reader attached");
        let attached = Attached {
            consumer: Some(consumer),
            ownership,
            group,
            client_id,
            init_offset: if direct { init_offset } else { String::new() },
            direct,
        };
        Ok((attached, task))
    }
}

#[async_trait]
impl Reader for KafkaReader {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        let (attached, task) = self.attach(task).await?;
        let reader = self.clone();
        Ok(Subscription::new(
            task.stream.clone(),
            move |handler, cancel| reader.run(attached, task, Consume::Message(handler), cancel),
        ))
    }

    /// Batches natively, per partition: each partition's worker takes up to
    /// `max_messages` of its queue (what is queued, then what arrives within
    /// `max_wait`) and hands them over as one batch, so order per key holds. The offset
    /// stored for the commit passes the batch's successes up to the first failed
    /// message and never that one: the failed message and those after it in the batch
    /// are handed over again, in order, after the reader's redelivery backoff (as a
    /// failed message of a per-message handler is). The task's `concurrency` bounds
    /// batches handled at once across partitions.
    async fn subscribe_batch(&self, task: ReadTask, size: BatchSize) -> Result<BatchSubscription> {
        size.check()?;
        let (attached, task) = self.attach(task).await?;
        let reader = self.clone();
        Ok(BatchSubscription::new(
            task.stream.clone(),
            move |handler, cancel| {
                reader.run(attached, task, Consume::Batch(handler, size), cancel)
            },
        ))
    }
}

/// What a run hands records to: a message handler or a batch handler.
#[derive(Clone)]
enum Consume {
    Message(Handler),
    Batch(BatchHandler, BatchSize),
}

/// What `subscribe` prepared for `run`: a consumer that reached the cluster and joined
/// the topic. Dropped unrun, it closes the consumer off the async runtime.
struct Attached {
    consumer: Option<Consumer_>,
    ownership: Arc<Ownership>,
    group: String,
    client_id: String,
    init_offset: String,
    direct: bool,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(consumer))),
                Err(_) => drop(consumer),
            }
        }
    }
}

impl KafkaReader {
    async fn run(
        self,
        mut attached: Attached,
        task: ReadTask,
        handler: Consume,
        cancel: CancellationToken,
    ) -> Result<()> {
        let consumer = attached.consumer.take().expect("consumer attached once");
        let (ownership, group, client_id, direct) = (
            attached.ownership.clone(),
            attached.group.clone(),
            attached.client_id.clone(),
            attached.direct,
        );
        let init_offset = std::mem::take(&mut attached.init_offset);
        drop(attached);
        tracing::info!(topic = %task.stream, group = %group, direct, "kafka reader started");

        let shared = Arc::new(Shared {
            ownership,
            topic: task.stream.clone(),
            group: group.clone(),
            origin: Origin {
                topic: task.stream.clone(),
                client_id: client_id.into(),
                group_id: group.as_str().into(),
                init_offset: init_offset.into(),
            },
            hwm: Mutex::new(HashMap::new()),
            retry_initial: self.config.retry_initial,
            retry_max: self.config.retry_max,
            commits: !direct,
            handlers: task
                .concurrency
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
        });
        let consumer = Arc::new(consumer);
        // `stop`: no new work, handler calls in flight finish. `closed`: the workers are
        // done; the polling thread commits and drops the consumer.
        let stop = CancellationToken::new();
        let closed = CancellationToken::new();
        let _stop_on_drop = StopOnDrop(stop.clone(), closed.clone());
        let (spawn_tx, mut spawn_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let limit = self.config.queue_depth;
        let poller = Poller {
            consumer: consumer.clone(),
            shared: shared.clone(),
            limit,
            resume_at: limit / 2,
            byte_limit: self.config.queue_bytes,
            partitions: PartitionMap::default(),
            epochs: (u64::MAX, PartitionMap::default()),
            done_rx,
            done_tx,
            spawn: spawn_tx,
            stop: stop.clone(),
            closed: closed.clone(),
            watermark_refresh: self.config.watermark_refresh,
            watermarks_running: Arc::new(AtomicBool::new(false)),
            runtime: tokio::runtime::Handle::current(),
        };
        let weak = Arc::downgrade(&consumer);
        drop(consumer);
        let mut poll = tokio::task::spawn_blocking(move || poller.run());

        let mut workers = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                // The polling thread stopped on a fatal error.
                _ = stop.cancelled() => break,
                Some(w) = spawn_rx.recv() => match &handler {
                    Consume::Message(handler) => {
                        workers.spawn(partition_worker(
                            shared.clone(),
                            weak.clone(),
                            w,
                            handler.clone(),
                            stop.clone(),
                        ));
                    }
                    Consume::Batch(handler, size) => {
                        workers.spawn(partition_batch_worker(
                            shared.clone(),
                            weak.clone(),
                            w,
                            handler.clone(),
                            *size,
                            stop.clone(),
                        ));
                    }
                },
                Some(joined) = workers.join_next(), if !workers.is_empty() => {
                    if let Err(e) = joined {
                        tracing::error!(topic = %task.stream, error = %e, "partition worker failed");
                    }
                }
            }
        }

        // Shutdown: no new work; in-flight handlers finish, queued ones stay for the
        // next reader; then the polling thread commits what finished and closes.
        stop.cancel();
        drop(spawn_rx);
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined {
                tracing::error!(topic = %task.stream, error = %e, "partition worker failed");
            }
        }
        closed.cancel();
        let result = (&mut poll)
            .await
            .map_err(|e| Error::driver(DRIVER, "consume", false, e))?;
        tracing::info!(topic = %task.stream, group = %group, "kafka reader stopped");
        result
    }
}

/// Stops the polling thread when `read` is dropped rather than cancelled.
struct StopOnDrop(CancellationToken, CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
        self.1.cancel();
    }
}

struct Shared {
    ownership: Arc<Ownership>,
    topic: String,
    group: String,
    /// What every message's metadata refers to.
    origin: Origin,
    hwm: Mutex<HashMap<i32, i64>>,
    retry_initial: Duration,
    retry_max: Duration,
    commits: bool,
    /// `ReadTask::concurrency`: handler calls at once across the partitions.
    handlers: Option<Arc<tokio::sync::Semaphore>>,
}

impl Shared {
    /// The partition's high watermark as last refreshed (0 before the first refresh).
    fn hwm(&self, partition: i32) -> i64 {
        self.hwm
            .lock()
            .map(|m| m.get(&partition).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Records of one partition taken in one turn of the polling loop, handed to its worker
/// together.
struct Ready {
    /// The partition's high watermark, looked up once per turn rather than per record.
    hwm: i64,
    works: Vec<Work>,
    /// The bytes of the records in `works` from `unattached` on: a few allocations per
    /// turn, made on the polling thread and freed on the worker's, instead of one per
    /// record (a free from another thread is what a general-purpose allocator does
    /// worst). A full arena is frozen and a new one begun rather than grown, so no
    /// record is copied twice.
    arena: Vec<u8>,
    unattached: usize,
}

impl Ready {
    /// Room of one arena; a record larger than this gets an arena of its size.
    const ARENA: usize = 64 * 1024;

    fn new(hwm: i64) -> Self {
        Ready {
            hwm,
            works: Vec::new(),
            arena: Vec::with_capacity(Self::ARENA),
            unattached: 0,
        }
    }

    /// Copies a record into the arena and queues it.
    fn push(&mut self, record: &BorrowedMessage<'_>, epoch: u64) {
        let need = rdkafka::Message::payload(record).map_or(0, <[u8]>::len)
            + rdkafka::Message::key(record).map_or(0, <[u8]>::len)
            + 256;
        if !self.arena.is_empty() && self.arena.len() + need > self.arena.capacity() {
            let full =
                std::mem::replace(&mut self.arena, Vec::with_capacity(Self::ARENA.max(need)));
            self.attach(full);
        }
        self.works.push(Work {
            record: Record::append(record, &mut self.arena),
            hwm: self.hwm,
            epoch,
        });
    }

    /// Points the records not attached yet at `arena`, frozen.
    fn attach(&mut self, arena: Vec<u8>) {
        let arena = Bytes::from(arena);
        for w in &mut self.works[self.unattached..] {
            w.record.attach(&arena);
        }
        self.unattached = self.works.len();
    }

    /// The records, pointing at their arenas, for the worker.
    fn into_works(mut self) -> Vec<Work> {
        let arena = std::mem::take(&mut self.arena);
        self.attach(arena);
        self.works
    }
}

/// A map by partition number, for the lookups the poller makes per record: partition
/// numbers are small and come from the broker, so the standard hasher's defence against
/// chosen keys buys nothing and cost more than the rest of routing a record.
type PartitionMap<V> = HashMap<i32, V, BuildHasherDefault<PartitionHasher>>;

/// Hashes a partition number with one multiplication (Fibonacci hashing).
#[derive(Default)]
struct PartitionHasher(u64);

impl Hasher for PartitionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_i32` is used; anything else still hashes every byte.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i32(&mut self, p: i32) {
        // `as` keeps the bits; the multiplication spreads them into the high bits the
        // table's control bytes use.
        self.0 = (u64::from(p as u32) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The polling thread: takes records from the consumer, hands them to partition
/// workers, pauses full partitions and resumes them, and owns the consumer, which it
/// drops when done.
struct Poller {
    consumer: Arc<Consumer_>,
    shared: Arc<Shared>,
    limit: usize,
    resume_at: usize,
    /// The bound of a partition's queue in bytes ([`KafkaConfig::with_queue_bytes`]).
    byte_limit: usize,
    partitions: PartitionMap<PartitionState>,
    /// Cache of [`Ownership`]: its generation and each partition's epoch.
    epochs: (u64, PartitionMap<Option<u64>>),
    done_rx: std::sync::mpsc::Receiver<Done>,
    done_tx: std::sync::mpsc::Sender<Done>,
    spawn: mpsc::UnboundedSender<Worker>,
    stop: CancellationToken,
    closed: CancellationToken,
    watermark_refresh: Duration,
    watermarks_running: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl Poller {
    fn run(mut self) -> Result<()> {
        let consumer = self.consumer.clone();
        let mut failure = None;
        let mut next_watermarks = Instant::now();
        while !self.stop.is_cancelled() {
            self.take_done();
            self.resume_with_room();
            if Instant::now() >= next_watermarks {
                self.refresh_watermarks();
                next_watermarks = Instant::now() + self.watermark_refresh;
            }
            // Take what else is already fetched, so each partition worker is woken once
            // per batch rather than once per record.
            let mut ready: PartitionMap<Ready> = PartitionMap::default();
            let mut wait = POLL_WAIT;
            for _ in 0..DRAIN_MAX {
                match consumer.poll(wait) {
                    None => break,
                    Some(Ok(record)) => self.route(&record, &mut ready),
                    Some(Err(e)) => {
                        if let Some(fatal) = self.consume_error(e) {
                            failure = Some(fatal);
                            break;
                        }
                    }
                }
                wait = Duration::ZERO;
            }
            for (p, r) in ready {
                if let Some(state) = self.partitions.get(&p) {
                    let _ = state.tx.send(r.into_works());
                }
            }
            if failure.is_some() {
                self.stop.cancel();
            }
        }
        // Stopping: keep polling until the workers are done, so that the member stays in
        // its group and rebalances are served; records taken now are not stored, so the
        // next reader gets them.
        while !self.closed.is_cancelled() {
            let _ = consumer.poll(POLL_WAIT);
        }
        if self.shared.commits {
            commit_stored(consumer.as_ref(), &self.shared.group, "shutdown");
            consumer.unsubscribe();
        }
        drop(consumer);
        // The watermark refresh may still hold the consumer for a moment: wait, so that
        // it is dropped (which closes it and can block) here rather than anywhere else.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.consumer) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(self.consumer);
        failure.map_or(Ok(()), Err)
    }

    /// The epoch of this member's assignment of partition `p`, `None` when it does not
    /// own `p`: from the poller's cache, which is refreshed when the assignment changed
    /// (rebalances run inside `poll`, on this thread, and bump the generation), so the
    /// ownership lock is not taken per record.
    fn epoch(&mut self, p: i32) -> Option<u64> {
        let ownership = &self.shared.ownership;
        let generation = ownership.generation.load(Ordering::Acquire);
        if generation != self.epochs.0 {
            self.epochs.0 = generation;
            self.epochs.1.clear();
        }
        *self.epochs.1.entry(p).or_insert_with(|| ownership.epoch(p))
    }

    /// Hands a record to its partition's worker, or drops it (revoked partition, or
    /// fetched before a pause took effect: a resume fetches it again).
    fn route(&mut self, record: &BorrowedMessage<'_>, ready: &mut PartitionMap<Ready>) {
        let p = rdkafka::Message::partition(record);
        let offset = rdkafka::Message::offset(record);
        let Some(epoch) = self.epoch(p) else {
            return;
        };
        let current = self
            .partitions
            .get(&p)
            .is_some_and(|s| s.epoch == epoch && !s.tx.is_closed());
        if !current {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = self.spawn.send(Worker {
                partition: p,
                rx,
                done: self.done_tx.clone(),
            });
            // A worker of this assignment that ended (its handler panicked) may leave the
            // partition paused: carry that over so it is resumed.
            let (next_offset, paused) = match self.partitions.remove(&p) {
                Some(old) if old.epoch == epoch => (old.next_offset, old.paused),
                _ => (None, false),
            };
            self.partitions.insert(
                p,
                PartitionState {
                    epoch,
                    tx,
                    queued: 0,
                    queued_bytes: 0,
                    next_offset,
                    paused,
                },
            );
        }
        let state = self.partitions.get_mut(&p).expect("just ensured");
        if state.paused {
            return;
        }
        if state.next_offset.is_some_and(|next| offset < next) {
            // Handed already (fetched again after a seek): never twice.
            return;
        }
        let shared = &self.shared;
        let r = ready.entry(p).or_insert_with(|| Ready::new(shared.hwm(p)));
        r.push(record, epoch);
        state.queued += 1;
        state.queued_bytes += r.works.last().map_or(0, |w| w.record.size());
        state.next_offset = Some(offset + 1);
        if state.full(self.limit, self.byte_limit) {
            self.make_room_or_pause(p, ready);
        }
    }

    /// Hands out what is ready and waits up to [`FULL_PATIENCE`] for partition `p`'s
    /// worker to make room; pauses `p` if it does not.
    fn make_room_or_pause(&mut self, p: i32, ready: &mut PartitionMap<Ready>) {
        for (q, r) in ready.drain() {
            if let Some(state) = self.partitions.get(&q) {
                let _ = state.tx.send(r.into_works());
            }
        }
        let deadline = Instant::now() + FULL_PATIENCE;
        loop {
            self.take_done();
            match self.partitions.get(&p) {
                Some(state) if state.full(self.limit, self.byte_limit) => {}
                // Room (or the partition was revoked meanwhile).
                _ => return,
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Woken by the worker's next record rather than by a clock tick, so a fast
            // worker does not leave the consumer idle.
            if let Ok(done) = self.done_rx.recv_timeout(deadline - now) {
                self.count_done(done);
            }
        }
        self.pause(p);
    }

    fn pause(&mut self, p: i32) {
        let Some(state) = self.partitions.get_mut(&p) else {
            return;
        };
        // Paused here whatever librdkafka says: records that still arrive are dropped and
        // fetched again after the resume, so the queue stays bounded either way.
        state.paused = true;
        self.shared.ownership.paused().insert(p);
        if let Err(e) = self.consumer.pause(&one(&self.shared.topic, p)) {
            tracing::warn!(topic = %self.shared.topic, partition = p, error = %e, "pause failed");
        }
        tracing::debug!(
            topic = %self.shared.topic, partition = p, queued = state.queued,
            "partition paused: its queue is full"
        );
    }

    fn count_done(&mut self, done: Done) {
        if let Some(state) = self.partitions.get_mut(&done.partition) {
            if state.epoch == done.epoch {
                state.queued = state.queued.saturating_sub(done.count);
                state.queued_bytes = state.queued_bytes.saturating_sub(done.bytes);
            }
        }
    }

    /// Counts records the workers are done with.
    fn take_done(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.count_done(done);
        }
        // Partitions revoked since: their workers drop what is queued and end.
        let ownership = &self.shared.ownership;
        self.partitions.retain(|p, s| ownership.owns(*p, s.epoch));
    }

    /// Resumes paused partitions whose workers made room, from the first record not
    /// handed to them.
    fn resume_with_room(&mut self) {
        let topic = &self.shared.topic;
        for (p, state) in &mut self.partitions {
            if !state.paused
                || state.queued > self.resume_at
                || state.queued_bytes > self.byte_limit / 2
            {
                continue;
            }
            if let Some(offset) = state.next_offset {
                // Asynchronous (no wait): librdkafka applies it before the resume.
                if let Err(e) =
                    self.consumer
                        .seek(topic, *p, Offset::Offset(offset), Duration::ZERO)
                {
                    tracing::warn!(topic = %topic, partition = p, offset, error = %e, "seek failed");
                }
            }
            if let Err(e) = self.consumer.resume(&one(topic, *p)) {
                tracing::warn!(topic = %topic, partition = p, error = %e, "resume failed");
            }
            state.paused = false;
            self.shared.ownership.paused().remove(p);
            tracing::debug!(
                topic = %topic, partition = p, offset = state.next_offset,
                "partition resumed"
            );
        }
    }

    /// Logs a consumer error; returns the error that ends the read when it is fatal
    /// or a misconfiguration (failed authentication, denied access).
    fn consume_error(&self, e: KafkaError) -> Option<Error> {
        let code = e.rdkafka_error_code();
        let ends = matches!(e, KafkaError::MessageConsumptionFatal(_))
            || code.is_some_and(|c| {
                fault(c) == Fault::Config
                    && !matches!(
                        c,
                        // The topic was there at the start: it may be re-created.
                        RDKafkaErrorCode::UnknownTopicOrPartition
                            | RDKafkaErrorCode::UnknownTopic
                            | RDKafkaErrorCode::UnknownPartition
                    )
            });
        tracing::warn!(topic = %self.shared.topic, error = %e, fatal = ends, "kafka consume error");
        ends.then(|| kafka_error("consume", Some(&self.shared.topic), e))
    }

    /// Refreshes high watermarks for the `streams-kafka-hwm-offset` header on a
    /// blocking thread, one refresh at a time.
    fn refresh_watermarks(&self) {
        let partitions: Vec<i32> = self.shared.ownership.lock().keys().copied().collect();
        if partitions.is_empty() || self.watermarks_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let consumer = Arc::downgrade(&self.consumer);
        let shared = self.shared.clone();
        let running = self.watermarks_running.clone();
        self.runtime.spawn_blocking(move || {
            for p in partitions {
                let Some(c) = consumer.upgrade() else { break };
                if let Ok((_, high)) = c.fetch_watermarks(&shared.topic, p, Duration::from_secs(2))
                {
                    if let Ok(mut m) = shared.hwm.lock() {
                        m.insert(p, high);
                    }
                }
            }
            running.store(false, Ordering::Release);
        });
    }
}

fn one(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

async fn partition_worker(
    shared: Arc<Shared>,
    consumer: Weak<Consumer_>,
    mut worker: Worker,
    mut handler: Handler,
    stop: CancellationToken,
) {
    let partition = worker.partition;
    let mut owns = None;
    // The last handled offset not stored yet: stored once per batch (or every
    // `STORE_EVERY` records) rather than per record, and before any return.
    let mut unstored = None;
    // Records done and not yet reported to the polling thread: reported per batch (or
    // every `STORE_EVERY` records), so the poller is not woken per record.
    let mut unreported = (0, 0);
    let report = |unreported: &mut (usize, usize), epoch: u64| {
        if unreported.0 > 0 {
            let (count, bytes) = std::mem::take(unreported);
            let _ = worker.done.send(Done {
                partition,
                epoch,
                count,
                bytes,
            });
        }
    };
    while let Some(batch) = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        w = worker.rx.recv() => w,
    } {
        let epoch = batch.first().map_or(0, |w| w.epoch);
        for (i, work) in batch.into_iter().enumerate() {
            if stop.is_cancelled() {
                store(&shared, &consumer, partition, unstored.take());
                report(&mut unreported, epoch);
                return;
            }
            let handled =
                handle_until_success(&shared, partition, &mut handler, &work, &stop, &mut owns)
                    .await;
            if handled && shared.commits {
                if shared
                    .ownership
                    .owns_cached(partition, work.epoch, &mut owns)
                {
                    unstored = Some(work.record.offset());
                } else {
                    // Revoked: what was handled before still counts.
                    store(&shared, &consumer, partition, unstored.take());
                }
            }
            unreported.0 += 1;
            unreported.1 += work.record.size();
            if !handled && stop.is_cancelled() {
                // Stopped before success: not stored, so delivered again.
                store(&shared, &consumer, partition, unstored.take());
                report(&mut unreported, epoch);
                return;
            }
            if (i + 1) % STORE_EVERY == 0 {
                store(&shared, &consumer, partition, unstored.take());
                report(&mut unreported, epoch);
            }
        }
        store(&shared, &consumer, partition, unstored.take());
        report(&mut unreported, epoch);
    }
}

/// The batch counterpart of [`partition_worker`]: collects up to `size` records of the
/// partition, hands them over as one batch, stores the offset of the successes before
/// the first failure, and hands the failed record and the ones after it over again
/// (with more, when more arrived) after a backoff.
async fn partition_batch_worker(
    shared: Arc<Shared>,
    consumer: Weak<Consumer_>,
    mut worker: Worker,
    mut handler: BatchHandler,
    size: BatchSize,
    stop: CancellationToken,
) {
    use std::collections::VecDeque;
    use tokio::sync::mpsc::error::TryRecvError;

    let partition = worker.partition;
    let mut owns = None;
    let mut pending: VecDeque<Work> = VecDeque::new();
    let mut closed = false;
    let mut backoff = shared.retry_initial;
    let mut attempt = 1u32;
    loop {
        if pending.is_empty() {
            if closed {
                return;
            }
            match tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                w = worker.rx.recv() => w,
            } {
                Some(works) => pending.extend(works),
                None => return,
            }
        }
        // Fill the batch: what is queued, then what arrives before the wait ends. A
        // stop ends the wait, not the batch: what was taken is handed over.
        let deadline = tokio::time::Instant::now() + size.max_wait();
        while pending.len() < size.max_messages() && !closed {
            match worker.rx.try_recv() {
                Ok(works) => {
                    pending.extend(works);
                    continue;
                }
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
                Err(TryRecvError::Empty) => {}
            }
            if stop.is_cancelled() {
                break;
            }
            tokio::select! {
                biased;
                w = worker.rx.recv() => match w {
                    Some(works) => pending.extend(works),
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.cancelled() => break,
            }
        }
        let epoch = pending.front().expect("not empty").epoch;
        if !shared.ownership.owns_cached(partition, epoch, &mut owns) {
            // Revoked: the new owner reads these from the committed offset.
            let _ = worker.done.send(Done {
                partition,
                epoch,
                count: pending.len(),
                bytes: pending.iter().map(|w| w.record.size()).sum(),
            });
            pending.clear();
            continue;
        }
        let n = pending.len().min(size.max_messages());
        let messages = pending
            .iter()
            .take(n)
            .map(|w| to_message(&w.record, w.hwm, &shared.origin))
            .collect();
        let batch =
            streams_core::Batch::new(shared.topic.clone(), messages).with_partition(partition);
        let permit = match &shared.handlers {
            None => None,
            Some(slots) => tokio::select! {
                p = slots.clone().acquire_owned() => p.ok(),
                // Stopped before the batch was handed over: nothing stored, so the
                // next reader gets it.
                _ = stop.cancelled() => return,
            },
        };
        let outcome = streams_core::call_batch_handler(&mut handler, batch).await;
        drop(permit);
        let handled = outcome.first_failed().unwrap_or(n);
        let last = handled
            .checked_sub(1)
            .and_then(|i| pending.get(i))
            .map(|w| w.record.offset());
        let bytes = pending.drain(..handled).map(|w| w.record.size()).sum();
        let _ = worker.done.send(Done {
            partition,
            epoch,
            count: handled,
            bytes,
        });
        if shared.commits && shared.ownership.owns_cached(partition, epoch, &mut owns) {
            store(&shared, &consumer, partition, last);
        }
        if handled == n {
            backoff = shared.retry_initial;
            attempt = 1;
            if stop.is_cancelled() {
                return;
            }
            continue;
        }
        let offset = pending.front().map(|w| w.record.offset());
        // `LoggingLayer` logs failures at the level the user chose.
        tracing::debug!(
            topic = %shared.topic, partition, offset, attempt, ?backoff,
            failed = outcome.failed_count(), error = %outcome.error(handled).expect("first failed"),
            "batch handler failed a message; delivering it and the ones after it again"
        );
        tokio::select! {
            // Stopped before success: not stored, so delivered again.
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        // Jitter keeps many failing partitions from retrying in lockstep.
        backoff = (backoff * 2)
            .min(shared.retry_max)
            .mul_f64(0.75 + fastrand::f64() * 0.25);
        attempt += 1;
    }
}

/// Records handled between two offset stores at most.
const STORE_EVERY: usize = 64;

/// Stores `offset` (the last handled record of `partition`) for the next commit.
fn store(shared: &Shared, consumer: &Weak<Consumer_>, partition: i32, offset: Option<i64>) {
    let Some(offset) = offset else { return };
    // The consumer outlives the workers; the strong reference lasts this call.
    if let Some(c) = consumer.upgrade() {
        if let Err(e) = c.store_offset(&shared.topic, partition, offset) {
            tracing::warn!(
                topic = %shared.topic, partition, offset, error = %e,
                "offset store failed"
            );
        }
    }
}

/// Calls the handler until it succeeds; false when stopped or the partition was
/// revoked first.
async fn handle_until_success(
    shared: &Shared,
    partition: i32,
    handler: &mut Handler,
    work: &Work,
    stop: &CancellationToken,
    owns: &mut Option<(u64, bool)>,
) -> bool {
    let mut backoff = shared.retry_initial;
    let mut attempt = 1u32;
    loop {
        if !shared.ownership.owns_cached(partition, work.epoch, owns) {
            return false;
        }
        let mut message = to_message(&work.record, work.hwm, &shared.origin);
        message
            .metadata
            .insert_i64(streams_core::DELIVERY_ATTEMPT, i64::from(attempt));
        // A handler slot, where the task bounds calls across partitions; not held
        // while backing off.
        let permit = match &shared.handlers {
            None => None,
            Some(slots) => tokio::select! {
                p = slots.clone().acquire_owned() => p.ok(),
                _ = stop.cancelled() => return false,
            },
        };
        let result = streams_core::call_handler(handler, message).await;
        drop(permit);
        let chosen = match result {
            Ok(()) => return true,
            Err(error) => {
                let chosen = streams_core::retry_after(error.as_ref());
                // `LoggingLayer` logs failures at the level the user chose.
                tracing::debug!(
                    topic = %shared.topic, partition, offset = work.record.offset(),
                    attempt, wait = ?chosen.unwrap_or(backoff), %error,
                    "handler failed; delivering the message again"
                );
                chosen
            }
        };
        // Only this partition waits; when its queue fills meanwhile, the poller pauses
        // it and seeks back once there is room again.
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(chosen.unwrap_or(backoff)) => {}
        }
        if chosen.is_none() {
            // Jitter keeps many failing partitions from retrying in lockstep.
            backoff = (backoff * 2)
                .min(shared.retry_max)
                .mul_f64(0.75 + fastrand::f64() * 0.25);
        }
        attempt = attempt.saturating_add(1);
    }
}

impl fmt::Debug for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.lock().iter()).finish()
    }
}

#[cfg(test)]
mod partition_map_tests {
    use super::PartitionMap;

    #[test]
    fn partition_numbers_keep_their_entries_and_spread() {
        let mut map = PartitionMap::default();
        for p in (-5..2_000).chain([i32::MIN, i32::MAX]) {
            map.insert(p, p);
        }
        assert_eq!(map.len(), 2_007);
        assert!(map.iter().all(|(k, v)| k == v));
        assert_eq!(map.remove(&i32::MIN), Some(i32::MIN));
        // Consecutive partitions land in distinct high bits (what the table reads).
        let hashes: std::collections::HashSet<u64> = (0..64)
            .map(|p| std::hash::BuildHasher::hash_one(map.hasher(), p) >> 57)
            .collect();
        assert!(hashes.len() > 32, "{} distinct tags of 64", hashes.len());
    }
}
