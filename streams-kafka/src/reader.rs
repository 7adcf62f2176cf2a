use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use streams_core::{CancellationToken, Error, Handler, ReadTask, Reader, Result};
use tokio::sync::{mpsc, Semaphore};

use crate::record::{kafka_error, to_message, Origin};
use crate::KafkaConfig;

/// Reads Kafka topics; implements [`Reader`].
///
/// With a consumer group (`ReadTask::group`), the reader subscribes and shares the
/// topic's partitions with the group's other members. Defaults (overridable through
/// [`KafkaConfig::set`]): `auto.offset.reset=earliest`, `enable.auto.commit=true` with
/// `enable.auto.offset.store=false`: the reader stores an offset only once its
/// handler succeeded, and librdkafka commits stored offsets in the background.
/// Revoked partitions and shutdown commit what was stored, synchronously.
///
/// With `ReadTask::partition` (and optionally `start_offset`, from the beginning when
/// unset, or the argument `start=end`), the reader assigns that partition directly and
/// commits nothing.
///
/// A failed handler call is retried for the same message, with backoff (see
/// [`KafkaConfig::with_retry_backoff`]); the partition's later messages wait, other
/// partitions go on. Each partition queues at most
/// [`KafkaConfig::with_max_in_flight_per_partition`] messages; when one is full the
/// reader waits before fetching more, so a message failing for long holds up the
/// others once its partition's queue fills. Bound retries with `RetryLayer` and a
/// `DeadLetterLayer` in the handler to move poison messages aside.
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
    next: AtomicU64,
}

impl Ownership {
    fn owns(&self, partition: i32, epoch: u64) -> bool {
        self.lock().get(&partition) == Some(&epoch)
    }

    fn epoch(&self, partition: i32) -> Option<u64> {
        self.lock().get(&partition).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, u64>> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ReaderContext {
    ownership: Arc<Ownership>,
    group: String,
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason, "client error");
    }
}

impl ConsumerContext for ReaderContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                {
                    let mut owned = self.ownership.lock();
                    for e in tpl.elements() {
                        owned.remove(&e.partition());
                    }
                }
                // Commit what handlers finished before the partitions go elsewhere.
                commit_stored(consumer, &self.group, "rebalance");
            }
            Rebalance::Assign(tpl) => {
                let mut owned = self.ownership.lock();
                for e in tpl.elements() {
                    let epoch = self.ownership.next.fetch_add(1, Ordering::Relaxed);
                    owned.insert(e.partition(), epoch);
                }
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

/// A message on its way to a partition worker.
/// A record on its way to a partition worker. The worker builds the `Message` from it
/// for each attempt, so nothing is copied up front for a redelivery that rarely comes.
struct Work {
    record: OwnedMessage,
    hwm: i64,
    partition: i32,
    offset: i64,
    epoch: u64,
}

struct Partition {
    tx: mpsc::UnboundedSender<Vec<Work>>,
    room: Arc<Semaphore>,
    epoch: u64,
}

/// Records taken from the consumer at most per turn of the read loop.
const DRAIN_MAX: usize = 512;

type Consumer_ = StreamConsumer<ReaderContext>;

#[async_trait]
impl Reader for KafkaReader {
    async fn read(
        &self,
        task: ReadTask,
        handler: Handler,
        cancel: CancellationToken,
    ) -> Result<()> {
        if task.stream.is_empty() {
            return Err(Error::invalid("read task", "stream (topic) is empty"));
        }
        let direct = task.partition.is_some();
        let group = match (&task.group, direct) {
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
        let consumer: Arc<Consumer_> = Arc::new(
            cc.create_with_context(context)
                .map_err(|e| kafka_error("create consumer", e))?,
        );
        let init_offset = if let Some(p) = task.partition {
            let start = match (
                task.start_offset,
                task.args.get("start").map(String::as_str),
            ) {
                (Some(o), _) => Offset::Offset(o),
                (None, Some("end")) => Offset::End,
                _ => Offset::Beginning,
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&task.stream, p, start)
                .map_err(|e| kafka_error("assign", e))?;
            consumer
                .assign(&tpl)
                .map_err(|e| kafka_error("assign", e))?;
            ownership.lock().insert(p, 0);
            task.start_offset.map(|o| o.to_string()).unwrap_or_default()
        } else {
            consumer
                .subscribe(&[&task.stream])
                .map_err(|e| kafka_error("subscribe", e))?;
            String::new()
        };
        tracing::info!(topic = %task.stream, group = %group, direct, "kafka reader started");

        let shared = Arc::new(Shared {
            consumer: consumer.clone(),
            ownership,
            topic: task.stream.clone(),
            group: group.clone(),
            client_id,
            init_offset,
            hwm: Mutex::new(HashMap::new()),
            retry_initial: self.config.retry_initial,
            retry_max: self.config.retry_max,
            commits: !direct,
        });
        let stop = CancellationToken::new();
        let mut workers = tokio::task::JoinSet::new();
        let mut partitions: HashMap<i32, Partition> = HashMap::new();
        let limit = self.config.max_in_flight_per_partition;
        let mut watermarks = tokio::time::interval(self.config.watermark_refresh);
        let mut failure = None;
        let mut ready: HashMap<i32, Vec<Work>> = HashMap::new();
        'read: loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                r = consumer.recv() => r,
                _ = watermarks.tick() => {
                    refresh_watermarks(&shared, &partitions).await;
                    continue;
                }
            };
            // Take what else is already fetched, so each partition worker is woken once
            // per batch rather than once per record.
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(record) = next.take() {
                match record {
                    Ok(record) => {
                        if let Some(work) = shared.work(&record) {
                            ready.entry(work.partition).or_default().push(work);
                        }
                    }
                    Err(e) => {
                        let fatal = matches!(
                            e.rdkafka_error_code(),
                            Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::Authentication)
                        );
                        tracing::warn!(topic = %task.stream, error = %e, fatal, "kafka consume error");
                        if fatal {
                            failure = Some(kafka_error("consume", e));
                            break 'read;
                        }
                    }
                }
                taken += 1;
                if taken < DRAIN_MAX {
                    next = consumer.recv().now_or_never();
                }
            }
            for (p, mut works) in ready.drain() {
                let epoch = works[0].epoch;
                let part = match partitions.get_mut(&p) {
                    Some(part) if part.epoch == epoch && !part.tx.is_closed() => part,
                    _ => {
                        partitions.retain(|_, part| !part.tx.is_closed());
                        let (tx, rx) = mpsc::unbounded_channel();
                        let room = Arc::new(Semaphore::new(limit));
                        workers.spawn(partition_worker(
                            shared.clone(),
                            p,
                            rx,
                            handler.clone(),
                            room.clone(),
                            stop.clone(),
                        ));
                        partitions.insert(p, Partition { tx, room, epoch });
                        partitions.get_mut(&p).expect("just inserted")
                    }
                };
                // When a partition's queue is full the reader waits: memory stays
                // bounded and nothing is fetched twice. (Pausing the partition instead
                // would make librdkafka drop and refetch what it prefetched.)
                while !works.is_empty() {
                    let rest = works.split_off(works.len().min(limit));
                    let permits = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break 'read,
                        p = part.room.clone().acquire_many_owned(works.len() as u32) => p,
                    };
                    // The worker gives one permit back per message it is done with.
                    if let Ok(p) = permits {
                        p.forget();
                    }
                    let _ = part.tx.send(works);
                    works = rest;
                }
            }
        }

        // Shutdown: no new work; in-flight handlers finish, queued ones stay for the
        // next reader; then commit what finished.
        stop.cancel();
        drop(partitions);
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined {
                tracing::error!(topic = %task.stream, error = %e, "partition worker failed");
            }
        }
        if shared.commits {
            let consumer = consumer.clone();
            let group = group.clone();
            let _ = tokio::task::spawn_blocking(move || {
                commit_stored(consumer.as_ref(), &group, "shutdown");
                consumer.unsubscribe();
            })
            .await;
        }
        tracing::info!(topic = %task.stream, group = %group, "kafka reader stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

struct Shared {
    consumer: Arc<Consumer_>,
    ownership: Arc<Ownership>,
    topic: String,
    group: String,
    client_id: String,
    init_offset: String,
    hwm: Mutex<HashMap<i32, i64>>,
    retry_initial: Duration,
    retry_max: Duration,
    commits: bool,
}

impl Shared {
    /// The work for a record of a partition this member owns; `None` for a record of a
    /// partition revoked since it was fetched (its new owner gets it).
    fn work(&self, record: &BorrowedMessage<'_>) -> Option<Work> {
        let partition = rdkafka::Message::partition(record);
        let offset = rdkafka::Message::offset(record);
        let epoch = self.ownership.epoch(partition)?;
        let hwm = self
            .hwm
            .lock()
            .map(|m| m.get(&partition).copied().unwrap_or(0))
            .unwrap_or(0);
        Some(Work {
            record: record.detach(),
            hwm,
            partition,
            offset,
            epoch,
        })
    }
}

async fn refresh_watermarks(shared: &Arc<Shared>, partitions: &HashMap<i32, Partition>) {
    let ps: Vec<i32> = partitions.keys().copied().collect();
    if ps.is_empty() {
        return;
    }
    let s = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for p in ps {
            if let Ok((_, high)) = s
                .consumer
                .fetch_watermarks(&s.topic, p, Duration::from_secs(2))
            {
                if let Ok(mut m) = s.hwm.lock() {
                    m.insert(p, high);
                }
            }
        }
    })
    .await;
}

async fn partition_worker(
    shared: Arc<Shared>,
    partition: i32,
    mut rx: mpsc::UnboundedReceiver<Vec<Work>>,
    mut handler: Handler,
    room: Arc<Semaphore>,
    stop: CancellationToken,
) {
    while let Some(batch) = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        w = rx.recv() => w,
    } {
        for work in batch {
            if stop.is_cancelled() {
                return;
            }
            let done = handle_until_success(&shared, partition, &mut handler, &work, &stop).await;
            room.add_permits(1);
            if !done {
                // Stopped or revoked before success: not stored, so delivered again.
                if stop.is_cancelled() {
                    return;
                }
                continue;
            }
            if shared.commits && shared.ownership.owns(partition, work.epoch) {
                if let Err(e) = shared
                    .consumer
                    .store_offset(&shared.topic, partition, work.offset)
                {
                    tracing::warn!(
                        topic = %shared.topic, partition, offset = work.offset, error = %e,
                        "offset store failed"
                    );
                }
            }
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
) -> bool {
    let mut backoff = shared.retry_initial;
    let mut attempt = 1u32;
    loop {
        if !shared.ownership.owns(partition, work.epoch) {
            return false;
        }
        let message = to_message(
            &work.record,
            &Origin {
                hwm: work.hwm,
                client_id: &shared.client_id,
                group_id: &shared.group,
                init_offset: &shared.init_offset,
            },
        );
        match streams_core::call_handler(handler, message).await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(
                    topic = %shared.topic, partition, offset = work.offset,
                    attempt, ?backoff, %error, "handler failed; delivering the message again"
                );
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        // Jitter keeps many failing partitions from retrying in lockstep.
        backoff = (backoff * 2)
            .min(shared.retry_max)
            .mul_f64(0.75 + fastrand::f64() * 0.25);
        attempt += 1;
    }
}

impl fmt::Debug for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.lock().iter()).finish()
    }
}
