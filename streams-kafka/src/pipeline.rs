use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use streams_core::{BoxError, CancellationToken, Error, Message, Result};

use crate::client::{first_contact, KafkaContext};
use crate::error::{driver_error, kafka_error};
use crate::record::{to_message, Origin, Record};
use crate::transaction::{delivered, After, TxProducer};
use crate::{KafkaConfig, DRIVER};

/// Exactly-once consume-transform-produce: reads a topic with a consumer group, hands
/// each record to a transform, and writes what the transform returns and the consumed
/// offsets in one Kafka transaction, so that a `read_committed` consumer of the output
/// sees the outputs of each input exactly once, whatever crashes in between.
///
/// The transform is a tower service from the input [`Message`] to the messages to
/// write (`Vec<Message>`, possibly empty, each naming its own topic), so tower's
/// layers (timeout, rate limit, ...) compose with it.
///
/// The transactional id comes from the config's librdkafka key `transactional.id`, as
/// for the transactional [`KafkaWriter`](crate::KafkaWriter); give each instance of a
/// pipeline its own, stable across restarts (for example the service name and the
/// instance's ordinal): a restarted instance then aborts what its predecessor left
/// open, and two live instances with the same id fence each other.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// use streams_core::{BoxError, CancellationToken, Message};
/// use streams_kafka::{KafkaConfig, KafkaPipeline};
///
/// let config = KafkaConfig::from_env().with_property("transactional.id", "enricher-0");
/// let pipeline = KafkaPipeline::new(config, "orders", "enricher");
/// let transform = tower::service_fn(|order: Message| async move {
///     let enriched = Message::new("orders.enriched", order.data.clone()).with_key(order.key.unwrap_or_default());
///     Ok::<_, BoxError>(vec![enriched])
/// });
/// pipeline.run(transform, CancellationToken::new()).await
/// # }
/// ```
///
/// # Transactions
///
/// The pipeline takes up to [`with_max_batch`](Self::with_max_batch) records (100)
/// that the consumer has ready, then, in one transaction: calls the transform for each
/// in order, enqueues its outputs, waits for their delivery, adds the offsets after
/// the batch's last record of each partition (`send_offsets_to_transaction` with the
/// group's metadata) and commits. Nothing is committed outside transactions
/// (`enable.auto.commit=false`), and the input is read with
/// `isolation.level=read_committed` so that a chain of pipelines stays exactly-once.
///
/// # Failures
///
/// - A transform error (or panic), a failed delivery or an abortable transaction error
///   aborts the transaction, so its outputs are discarded and its offsets not
///   committed, and the same records are transformed again in a new transaction after
///   a backoff ([`KafkaConfig::with_retry_backoff`]); later records wait. Bound the
///   attempts in the transform (for example answer a poison record with a message to a
///   dead-letter topic, which commits it).
/// - A process killed in the middle leaves an open transaction; the next instance with
///   the same transactional id aborts it when it starts (or the broker does after
///   `transaction.timeout.ms`), and resumes from the last committed offsets.
/// - Fencing (another live producer with the same transactional id) and other fatal
///   errors end [`run`](Self::run) with a not retryable error naming the transactional
///   id; nothing of the open transaction is committed.
/// - A rebalance while records are being taken drops them; the partitions kept are
///   sought back to the first dropped record, the ones lost go to their new owner from
///   the committed offsets.
///
/// The consumer is not polled while a batch is transformed and retried, so a transform
/// must succeed (or give up) within `max.poll.interval.ms` (5 minutes by default).
///
/// # Brokers
///
/// Needs a broker with Kafka transactions (Apache Kafka 0.11 and later). On one without
/// (tansu 0.6.0 has no EndTxn), `run` ends at the first commit with a not retryable
/// `kafka: commit transaction failed: transactional id `ID`: UnsupportedFeature
/// (EndTxnRequest (KIP-98) not supported by broker, ...)`, and nothing of the
/// transaction is visible to `read_committed` consumers.
#[derive(Clone)]
pub struct KafkaPipeline {
    config: KafkaConfig,
    topic: String,
    group: String,
    max_batch: usize,
}

/// The pipeline's default for [`KafkaPipeline::with_max_batch`].
const MAX_BATCH: usize = 100;
/// How long the pipeline waits for more records once it has one.
const GATHER_WAIT: Duration = Duration::from_millis(20);

impl KafkaPipeline {
    /// A pipeline reading `topic` as member of consumer group `group`. No I/O: [`run`](Self::run)
    /// reaches the cluster.
    pub fn new(config: KafkaConfig, topic: impl Into<String>, group: impl Into<String>) -> Self {
        KafkaPipeline {
            config,
            topic: topic.into(),
            group: group.into(),
            max_batch: MAX_BATCH,
        }
    }

    /// Records per transaction at most. Larger batches cost fewer transactions (each
    /// costs a few round trips to the transaction coordinator); smaller ones redo less
    /// after a failure. Default 100.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Runs until `stop` is cancelled; an open transaction is then aborted, so its
    /// records are transformed again by the next run.
    ///
    /// # Errors
    ///
    /// - [`Error::Invalid`] when the topic, the group or `transactional.id` is missing.
    /// - `kafka: connect failed: ...` when no broker answers within
    ///   [`KafkaConfig::with_connect_timeout`]; `kafka: init transactions failed:
    ///   transactional id `ID`: ...` when the cluster refuses transactions or no
    ///   coordinator answers in time; a not retryable error naming the topic when it
    ///   does not exist.
    /// - A not retryable error naming the transactional id when the producer was fenced
    ///   by another with the same id, or failed fatally.
    pub async fn run<S>(&self, mut transform: S, stop: CancellationToken) -> Result<()>
    where
        S: tower::Service<Message, Response = Vec<Message>> + Send,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        let running = self.start().await?;
        let result = running.run(&mut transform, &stop).await;
        running.close().await;
        result
    }

    /// Creates the clients, reaches the cluster, joins the group and registers the
    /// transactional id.
    async fn start(&self) -> Result<Running> {
        if self.topic.is_empty() {
            return Err(Error::invalid("pipeline", "input topic is empty"));
        }
        if self.group.is_empty() {
            return Err(Error::invalid("pipeline", "consumer group is empty"));
        }
        let id = match self.config.get("transactional.id") {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                return Err(Error::invalid(
                    "transactional.id",
                    "an exactly-once pipeline needs one: KafkaConfig::with_property(\"transactional.id\", ...)",
                ))
            }
        };
        let client_id = self
            .config
            .get("client.id")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("streams-{}", std::process::id()));
        let producer: FutureProducer<KafkaContext> = self
            .config
            .client_config(crate::config::Role::Producer, &[("linger.ms", "5")])
            .create_with_context(KafkaContext::default())
            .map_err(|e| kafka_error("create producer", None, e))?;
        let tx = TxProducer {
            producer,
            id,
            config: self.config.clone(),
        };
        let mut cc = self.config.client_config(
            crate::config::Role::Consumer,
            &[
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
                ("enable.partition.eof", "false"),
                ("fetch.wait.max.ms", crate::reader::FETCH_WAIT_MAX_MS),
                ("client.id", &client_id),
            ],
        );
        // Offsets are committed in transactions only.
        cc.set("enable.auto.commit", "false");
        cc.set("enable.auto.offset.store", "false");
        cc.set("group.id", &self.group);
        let context = PipelineContext {
            client: KafkaContext::default(),
            rebalances: AtomicU64::new(0),
            assigned: Mutex::new(HashSet::new()),
        };
        let config = self.config.clone();
        let topic = self.topic.clone();
        let consumer = tokio::task::spawn_blocking(move || -> Result<PipelineConsumer> {
            let consumer: PipelineConsumer = cc
                .create_with_context(context)
                .map_err(|e| kafka_error("create consumer", None, e))?;
            let info = first_contact(
                consumer.client(),
                &consumer.context().client,
                &config,
                &topic,
                || {},
            )?;
            info.misconfigured("subscribe", &topic)?;
            consumer
                .subscribe(&[&topic])
                .map_err(|e| kafka_error("subscribe", Some(&topic), e))?;
            Ok(consumer)
        })
        .await
        .map_err(|e| Error::driver(DRIVER, "connect", true, e))??;
        let running = Running {
            consumer: Arc::new(consumer),
            tx,
            origin: Origin {
                topic: self.topic.clone(),
                client_id: client_id.into(),
                group_id: self.group.as_str().into(),
                init_offset: "".into(),
            },
            max_batch: self.max_batch,
            retry_initial: self.config.retry_initial,
            retry_max: self.config.retry_max,
        };
        if let Err(e) = running.tx.init().await {
            running.close().await;
            return Err(e);
        }
        tracing::info!(
            topic = %self.topic, group = %self.group, transactional_id = %running.tx.id,
            "kafka exactly-once pipeline attached"
        );
        Ok(running)
    }
}

impl fmt::Debug for KafkaPipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPipeline")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("transactional_id", &self.config.get("transactional.id"))
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

type PipelineConsumer = StreamConsumer<PipelineContext>;

/// Counts rebalances and keeps the assignment, so that records taken across a
/// rebalance are dropped rather than committed by a member that no longer owns them.
struct PipelineContext {
    client: KafkaContext,
    rebalances: AtomicU64,
    assigned: Mutex<HashSet<i32>>,
}

impl PipelineContext {
    fn assigned(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.assigned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for PipelineContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.client.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut assigned = self.assigned();
                for e in tpl.elements() {
                    assigned.remove(&e.partition());
                }
            }
            Rebalance::Assign(tpl) => {
                let mut assigned = self.assigned();
                for e in tpl.elements() {
                    assigned.insert(e.partition());
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
    }
}

/// A started pipeline.
struct Running {
    consumer: Arc<PipelineConsumer>,
    tx: TxProducer,
    origin: Origin,
    max_batch: usize,
    retry_initial: Duration,
    retry_max: Duration,
}

/// How one attempt at a batch ended.
enum Attempt {
    Committed,
    /// Aborted; try the same records again after a backoff.
    Again,
    Stopped,
}

impl Running {
    async fn run<S>(&self, transform: &mut S, stop: &CancellationToken) -> Result<()>
    where
        S: tower::Service<Message, Response = Vec<Message>> + Send,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        while !stop.is_cancelled() {
            let Some(batch) = self.take(stop).await? else {
                continue;
            };
            let mut backoff = self.retry_initial;
            loop {
                match self.attempt(&batch, transform, stop).await? {
                    Attempt::Committed => break,
                    Attempt::Stopped => return Ok(()),
                    Attempt::Again => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                // Jitter keeps pipelines that fail together from retrying in lockstep.
                backoff = (backoff * 2)
                    .min(self.retry_max)
                    .mul_f64(0.75 + fastrand::f64() * 0.25);
            }
        }
        Ok(())
    }

    /// Takes up to `max_batch` records: waits for the first, then takes what else
    /// arrives within [`GATHER_WAIT`]. `None` when stopped, or when a rebalance came
    /// in between (the records taken are then dropped, see [`KafkaPipeline`]).
    async fn take(&self, stop: &CancellationToken) -> Result<Option<Vec<Record>>> {
        let rebalances = self.consumer.context().rebalances.load(Ordering::Acquire);
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            let wait = async {
                if batch.is_empty() {
                    Ok(self.consumer.recv().await)
                } else {
                    tokio::time::timeout(GATHER_WAIT, self.consumer.recv()).await
                }
            };
            let received = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                r = wait => r,
            };
            match received {
                Err(_) => break,
                Ok(Ok(record)) => batch.push(Record::new(&record)),
                Ok(Err(e)) => self.consume_error(e)?,
            }
        }
        if self.consumer.context().rebalances.load(Ordering::Acquire) != rebalances {
            self.rewind(&batch);
            return Ok(None);
        }
        Ok(Some(batch))
    }

    /// Seeks the partitions still assigned back to the first of `dropped`'s records.
    fn rewind(&self, dropped: &[Record]) {
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        for r in dropped {
            first.entry(r.partition()).or_insert(r.offset());
        }
        let assigned = self.consumer.context().assigned().clone();
        for (p, offset) in first {
            if !assigned.contains(&p) {
                continue;
            }
            if let Err(e) = self.consumer.seek(
                &self.origin.topic,
                p,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(topic = %self.origin.topic, partition = p, offset, error = %e, "seek after rebalance failed");
            }
        }
        tracing::info!(topic = %self.origin.topic, dropped = dropped.len(), "records taken across a rebalance dropped");
    }

    /// Logs a consumer error; returns it when it ends the pipeline.
    fn consume_error(&self, e: KafkaError) -> Result<()> {
        let fatal = matches!(e, KafkaError::MessageConsumptionFatal(_))
            || e.rdkafka_error_code().is_some_and(|c| {
                crate::error::fault(c) == crate::error::Fault::Config
                    && !matches!(
                        c,
                        rdkafka::error::RDKafkaErrorCode::UnknownTopicOrPartition
                            | rdkafka::error::RDKafkaErrorCode::UnknownPartition
                    )
            });
        tracing::warn!(topic = %self.origin.topic, error = %e, fatal, "kafka consume error");
        if fatal {
            return Err(kafka_error("consume", Some(&self.origin.topic), e));
        }
        Ok(())
    }

    /// One transaction over `batch`.
    async fn attempt<S>(
        &self,
        batch: &[Record],
        transform: &mut S,
        stop: &CancellationToken,
    ) -> Result<Attempt>
    where
        S: tower::Service<Message, Response = Vec<Message>> + Send,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        self.tx.begin()?;
        let mut deliveries = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for record in batch {
            if stop.is_cancelled() {
                self.abort().await?;
                return Ok(Attempt::Stopped);
            }
            let message = to_message(record, record.offset() + 1, &self.origin);
            let outputs = match call(transform, message).await {
                Ok(outputs) => outputs,
                Err(error) => {
                    tracing::debug!(
                        topic = %self.origin.topic, partition = record.partition(),
                        offset = record.offset(), %error,
                        "transform failed; aborting the transaction and transforming again"
                    );
                    self.abort().await?;
                    return Ok(Attempt::Again);
                }
            };
            for m in outputs {
                if m.stream.is_empty() {
                    tracing::warn!(id = %m.id, "transform returned a message without a topic");
                    self.abort().await?;
                    return Ok(Attempt::Again);
                }
                match self.tx.enqueue(&m).await {
                    Ok(d) => deliveries.push((m.stream.clone(), d)),
                    Err(e) => {
                        tracing::warn!(topic = %m.stream, error = %e, "produce in transaction failed");
                        self.abort().await?;
                        return Ok(Attempt::Again);
                    }
                }
            }
            next.insert(record.partition(), record.offset() + 1);
        }
        if let Err((topic, e, n)) = delivered(deliveries).await {
            tracing::warn!(%topic, error = %e, failed = n, "delivery in transaction failed");
            self.abort().await?;
            return Ok(Attempt::Again);
        }
        let mut offsets = TopicPartitionList::new();
        for (p, offset) in &next {
            offsets
                .add_partition_offset(&self.origin.topic, *p, Offset::Offset(*offset))
                .map_err(|e| kafka_error("send offsets", Some(&self.origin.topic), e))?;
        }
        let metadata = self.consumer.group_metadata().ok_or_else(|| {
            driver_error("send offsets", None, true, "no consumer group metadata")
        })?;
        let timeout = self.tx.config.operation_timeout;
        let sent = self
            .tx
            .blocking(move |p| p.send_offsets_to_transaction(&offsets, &metadata, timeout))
            .await?;
        if let Err(e) = sent {
            let error = self.tx.error("send offsets to transaction", &e);
            if crate::transaction::after(&e) == After::Fatal {
                return Err(error);
            }
            tracing::warn!(%error, "aborting the transaction");
            if !error.is_retryable() {
                let _ = self.abort().await;
                return Err(error);
            }
            self.abort().await?;
            return Ok(Attempt::Again);
        }
        match self.tx.commit().await {
            Ok(()) => {
                tracing::debug!(topic = %self.origin.topic, records = batch.len(), ?next, "transaction committed");
                Ok(Attempt::Committed)
            }
            Err((e, After::Fatal)) => Err(e),
            Err((error, After::Abort)) => {
                tracing::warn!(%error, "aborting the transaction");
                if !error.is_retryable() {
                    // Refused for good (the broker lacks EndTxn, access denied): say so.
                    let _ = self.abort().await;
                    return Err(error);
                }
                self.abort().await?;
                Ok(Attempt::Again)
            }
        }
    }

    /// Aborts the open transaction; a producer that cannot abort cannot go on.
    async fn abort(&self) -> Result<()> {
        self.tx.abort().await
    }

    /// Leaves the group and closes both clients off the runtime.
    async fn close(&self) {
        let consumer = self.consumer.clone();
        let producer = self.tx.producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
            let _ = producer.flush(Duration::from_secs(5));
            drop(producer);
        })
        .await;
    }
}

/// Calls the transform the way readers call handlers: waits until it is ready and
/// turns a panic into an error.
async fn call<S>(transform: &mut S, message: Message) -> std::result::Result<Vec<Message>, BoxError>
where
    S: tower::Service<Message, Response = Vec<Message>> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    use futures::FutureExt;
    use tower::ServiceExt;
    let svc = transform.ready().await.map_err(Into::into)?;
    std::panic::AssertUnwindSafe(svc.call(message))
        .catch_unwind()
        .await
        .map(|r| r.map_err(Into::into))
        .unwrap_or_else(|_| Err("transform panicked".into()))
}
