use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use streams_core::{Error, FailedMessage, Message, Result, Writer};

use crate::client::{first_contact, KafkaContext};
use crate::error::{code_of, describe, fault, kafka_error, Fault};
use crate::record::record_headers;
use crate::transaction::TxProducer;
use crate::{KafkaConfig, DRIVER};

/// Produces batches to Kafka; implements [`Writer`].
///
/// Defaults (each can be overridden through [`KafkaConfig::with_property`]):
/// `enable.idempotence=true` (so `acks=all` and no duplicates from producer retries),
/// `linger.ms=5`. The record key is the message key (none when empty), so the key
/// selects the partition; the record timestamp is the message time.
///
/// The first write to each topic asks the cluster for the topic's metadata, bounded by
/// [`KafkaConfig::with_connect_timeout`]: a wrong address fails within that bound, a
/// missing or forbidden topic at once. Later writes to the topic go straight to
/// librdkafka, which reconnects on its own when a broker goes away (a write then waits
/// up to librdkafka's `message.timeout.ms`).
///
/// # Transactions
///
/// With librdkafka's `transactional.id` in the config
/// (`KafkaConfig::with_property("transactional.id", "billing-0")`), each
/// [`write`](Writer::write) is one Kafka transaction: begin, produce every message, wait
/// for their delivery, commit. A batch is then written whole or not at all, as a
/// `read_committed` consumer (`isolation.level=read_committed`) sees it; any failure
/// aborts the transaction and the error says so (`transaction aborted, nothing of the
/// batch written`). Writes take turns (a producer has one open transaction at a time).
/// The first write registers the transactional id with the cluster (fencing an older
/// producer with the same id), bounded by [`KafkaConfig::with_connect_timeout`]. When
/// another producer with the same id takes over, this one is fenced: its writes fail
/// with a not retryable error naming the id, and a new writer must be created. To
/// commit consumed offsets in the same transaction (consume-transform-produce), use
/// [`KafkaPipeline`](crate::KafkaPipeline). A broker without transactions (tansu 0.6.0
/// has no EndTxn) makes the first write fail with a not retryable
/// `UnsupportedFeature (EndTxnRequest ...)` naming the transactional id, and every
/// later one at once.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// use streams_core::{Message, Writer};
/// use streams_kafka::{KafkaConfig, KafkaWriter};
///
/// let config = KafkaConfig::from_env().with_property("transactional.id", "orders-0");
/// let writer = KafkaWriter::new(&config)?;
/// // Both or neither.
/// writer
///     .write(vec![Message::new("orders", "placed"), Message::new("stock", "reserved")])
///     .await?;
/// # Ok(()) }
/// ```
pub struct KafkaWriter {
    /// Always `Some` until dropped: dropping a producer blocks (it flushes and joins its
    /// thread), so [`Drop`] moves it to a blocking thread.
    producer: Option<FutureProducer<KafkaContext>>,
    closed: AtomicBool,
    config: KafkaConfig,
    /// Topics a first write found.
    known: Mutex<HashSet<String>>,
    context: KafkaContext,
    /// Set when the config has a `transactional.id`: each write is one transaction.
    transactions: Option<Transactions>,
}

/// A transactional writer's producer and state. A producer has at most one open
/// transaction, so writes take turns.
struct Transactions {
    tx: TxProducer,
    state: tokio::sync::Mutex<TxState>,
}

enum TxState {
    /// `init_transactions` not done yet (it needs the cluster: at the first write).
    New,
    Ready,
    /// The producer is done for (fenced); every write fails with this error's text.
    Failed(String),
}

impl KafkaWriter {
    /// Creates a producer. It connects in the background; the first write waits for it.
    ///
    /// # Errors
    ///
    /// A configuration librdkafka rejects.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let context = KafkaContext::default();
        if config.get("transactional.id") == Some("") {
            return Err(Error::invalid("transactional.id", "is empty"));
        }
        let producer: FutureProducer<KafkaContext> = config
            .client_config(
                crate::config::Role::Producer,
                &[("enable.idempotence", "true"), ("linger.ms", "5")],
            )
            .create_with_context(context.clone())
            .map_err(|e| kafka_error("create producer", None, e))?;
        let transactions = config.get("transactional.id").map(|id| Transactions {
            tx: TxProducer {
                producer: producer.clone(),
                id: id.to_owned(),
                config: config.clone(),
            },
            state: tokio::sync::Mutex::new(TxState::New),
        });
        Ok(KafkaWriter {
            transactions,
            producer: Some(producer),
            closed: AtomicBool::new(false),
            config: config.clone(),
            known: Mutex::new(HashSet::new()),
            context,
        })
    }

    /// The underlying rdkafka producer, for what this type does not cover.
    pub fn producer(&self) -> &FutureProducer<KafkaContext> {
        self.producer.as_ref().expect("present until dropped")
    }

    /// The first contact for a topic not written to yet; blocking, so off the runtime.
    async fn check_topic(&self, topic: &str) -> Result<()> {
        let producer = self.producer().clone();
        let context = self.context.clone();
        let config = self.config.clone();
        let t = topic.to_owned();
        let info = tokio::task::spawn_blocking(move || {
            first_contact(producer.client(), &context, &config, &t, || {})
        })
        .await
        .map_err(|e| Error::driver(DRIVER, "connect", true, e))??;
        info.misconfigured("produce", topic)?;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    /// One transaction: begin, enqueue every record, wait for their delivery, commit;
    /// abort when anything fails, so that a batch is written whole or not at all.
    async fn write_transaction(&self, t: &Transactions, batch: &[Message]) -> Result<()> {
        let mut state = t.state.lock().await;
        match &*state {
            TxState::Failed(detail) => {
                return Err(crate::error::driver_error("write", None, false, detail))
            }
            TxState::New => {
                t.tx.init()
                    .await
                    .map_err(|e| Self::fail(&mut state, e, false))?;
                *state = TxState::Ready;
            }
            TxState::Ready => {}
        }
        t.tx.begin().map_err(|e| Self::fail(&mut state, e, false))?;
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut refused = None;
        for m in batch {
            match t.tx.enqueue(m).await {
                Ok(d) => deliveries.push((m.id.clone(), d)),
                Err(e) => {
                    refused = Some((m, e));
                    break;
                }
            }
        }
        let failure = match refused {
            Some((m, e)) => Some((m.id.clone(), e, 1)),
            None => crate::transaction::delivered(deliveries).await.err(),
        };
        if let Some((id, e, n)) = failure {
            let m = batch
                .iter()
                .find(|m| m.id == id)
                .expect("a message of the batch");
            let retryable = crate::error::retryable(&e);
            let abort = t.tx.abort().await;
            tracing::warn!(transactional_id = %t.tx.id, failed = n, of = batch.len(), "kafka transaction aborted");
            let error = crate::error::driver_error(
                "produce",
                None,
                retryable && abort.is_ok(),
                format!(
                    "transactional id `{}`: transaction aborted, nothing of the batch written \
                     ({n} of {} messages failed; message `{}`: {})",
                    t.tx.id,
                    batch.len(),
                    m.id,
                    self.reason(m, &e)
                ),
            );
            return Err(error);
        }
        match t.tx.commit().await {
            Ok(()) => Ok(()),
            Err((e, crate::transaction::After::Abort)) => {
                // A producer that can neither commit nor abort cannot go on.
                if t.tx.abort().await.is_err() || !e.is_retryable() {
                    return Err(Self::fail(&mut state, e, true));
                }
                Err(e)
            }
            Err((e, crate::transaction::After::Fatal)) => Err(Self::fail(&mut state, e, false)),
        }
    }

    /// Remembers a not retryable transaction error (any error when `always`): the
    /// producer is done for, and every later write fails with the same error.
    fn fail(state: &mut TxState, e: Error, always: bool) -> Error {
        if always || !e.is_retryable() {
            if let Error::Driver {
                operation, source, ..
            } = &e
            {
                *state = TxState::Failed(format!("{operation} failed earlier: {source}"));
            }
        }
        e
    }

    /// Why a message failed, for [`FailedMessage::reason`]; sizes for a message too large.
    fn reason(&self, m: &Message, e: &KafkaError) -> String {
        let mut reason = format!("topic `{}`: {}", m.stream, describe(e));
        if code_of(e) == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
            let headers: usize = record_headers(m)
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum();
            let key = m.key.as_deref().map_or(0, str::len);
            let limit = self.config.get("message.max.bytes").unwrap_or("1000000");
            reason.push_str(&format!(
                ": value {} bytes, key {key}, headers {headers}; the producer's \
                 message.max.bytes is {limit} (the topic's max.message.bytes may be lower)",
                m.data.len()
            ));
        }
        reason
    }
}

#[async_trait]
impl Writer for KafkaWriter {
    /// Enqueues every record, then waits for every delivery report.
    ///
    /// # Errors
    ///
    /// - [`Error::Closed`] after [`close`](Writer::close).
    /// - `kafka: connect failed: no broker answered at HOST:PORT within 20s (...)` when
    ///   the first write to a topic finds no broker; a not retryable
    ///   [`Error::Driver`] naming the topic when the cluster says it does not exist or
    ///   may not be written. Nothing was written.
    /// - [`Error::Rejected`] naming each message refused for what it is (larger than
    ///   `message.max.bytes`, an invalid record or timestamp), with its sizes; every
    ///   other message of the batch was written.
    /// - [`Error::Driver`] naming the topic and librdkafka's code when no message of the
    ///   batch was written for a reason of the destination (retryable when it may pass).
    /// - [`Error::PartialWrite`] naming each message not written (refused ones
    ///   included) when some were written and some failed for a reason other than
    ///   their own; `retryable` says whether those others may succeed when written
    ///   again.
    ///
    /// A transactional writer (see [Transactions](KafkaWriter#transactions)) writes
    /// nothing of a batch with a failure: a not retryable [`Error::Driver`] when the
    /// cluster refuses transactions or this producer was fenced, naming the
    /// transactional id; otherwise an [`Error::Driver`] saying the transaction was
    /// aborted, naming the first failed message, retryable when every failure may pass.
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("kafka writer"));
        }
        if batch.iter().any(|m| m.stream.is_empty()) {
            return Err(Error::invalid("message", "stream (topic) is empty"));
        }
        let new: BTreeSet<&str> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            batch
                .iter()
                .map(|m| m.stream.as_str())
                .filter(|t| !known.contains(*t))
                .collect()
        };
        for topic in new {
            self.check_topic(topic).await?;
        }
        if let Some(t) = &self.transactions {
            return self.write_transaction(t, &batch).await;
        }
        let deliveries = batch.iter().map(|m| {
            let mut record = FutureRecord::to(&m.stream)
                .payload(&m.data[..])
                .timestamp(m.time.timestamp_millis())
                .headers(record_headers(m));
            if let Some(key) = m.key.as_deref().filter(|k| !k.is_empty()) {
                record = record.key(key);
            }
            // A full local queue waits (backpressure) rather than failing.
            self.producer().send(record, Timeout::Never)
        });
        let results = join_all(deliveries).await;
        let mut rejected = Vec::new();
        let mut failed = Vec::new();
        let mut first_failure = None;
        let mut retryable = true;
        for (m, r) in batch.iter().zip(results) {
            let Err((e, _)) = r else { continue };
            let failure = FailedMessage {
                id: m.id.clone(),
                reason: self.reason(m, &e),
            };
            match code_of(&e).map(fault) {
                Some(Fault::Message) => rejected.push(failure),
                f => {
                    retryable &=
                        f.map_or_else(|| crate::error::retryable(&e), |f| f == Fault::Transient);
                    if first_failure.is_none() {
                        first_failure = Some((m.stream.clone(), e));
                    }
                    failed.push(failure);
                }
            }
        }
        let written = batch.len() - rejected.len() - failed.len();
        if !rejected.is_empty() || !failed.is_empty() {
            tracing::warn!(
                rejected = rejected.len(),
                failed = failed.len(),
                of = batch.len(),
                "kafka produce failed"
            );
        }
        match (rejected.is_empty(), failed.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => Err(Error::Rejected { failed: rejected }),
            (true, false) if written == 0 => {
                // The destination failed the whole batch: one line with the cause.
                let (topic, e) = first_failure.expect("a failure was recorded");
                let mut detail = describe(&e);
                if failed.len() > 1 {
                    detail.push_str(&format!(" ({} messages)", failed.len()));
                }
                Err(crate::error::driver_error(
                    "produce",
                    Some(&topic),
                    retryable,
                    detail,
                ))
            }
            _ => {
                failed.extend(rejected);
                Err(Error::PartialWrite { failed, retryable })
            }
        }
    }

    /// Refuses further writes and waits for queued records to be delivered.
    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let producer = self.producer().clone();
        let timeout = self.config.operation_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::driver(DRIVER, "flush", false, e))?
            .map_err(|e| kafka_error("flush", None, e))
    }
}

impl Drop for KafkaWriter {
    fn drop(&mut self) {
        let Some(producer) = self.producer.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop(producer));
        }
    }
}

impl fmt::Debug for KafkaWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaWriter")
            .field("bootstrap_servers", &self.config.bootstrap_servers())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
