use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use streams_core::{Error, FailedMessage, Message, Result, Writer};

use crate::record::{kafka_error, record_headers, retryable_code};
use crate::{KafkaConfig, DRIVER};

/// Produces batches to Kafka; implements [`Writer`].
///
/// Defaults (each can be overridden through [`KafkaConfig::set`]):
/// `enable.idempotence=true` (so `acks=all` and no duplicates from producer retries),
/// `linger.ms=5`. The record key is the message key (none when empty), so the key
/// selects the partition; the record timestamp is the message time.
pub struct KafkaWriter {
    producer: FutureProducer,
    closed: AtomicBool,
    config: KafkaConfig,
}

impl KafkaWriter {
    /// Creates a producer.
    ///
    /// # Errors
    ///
    /// A configuration librdkafka rejects.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = config
            .client_config(
                crate::config::Role::Producer,
                &[("enable.idempotence", "true"), ("linger.ms", "5")],
            )
            .create()
            .map_err(|e| kafka_error("create producer", e))?;
        Ok(KafkaWriter {
            producer,
            closed: AtomicBool::new(false),
            config: config.clone(),
        })
    }

    /// The underlying rdkafka producer, for what this type does not cover.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}

#[async_trait]
impl Writer for KafkaWriter {
    /// Enqueues every record, then waits for every delivery report.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Writer::close); [`Error::PartialWrite`] naming
    /// each message the broker did not acknowledge (the others were written).
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("kafka writer"));
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
            self.producer.send(record, Timeout::Never)
        });
        let results = join_all(deliveries).await;
        let mut failed = Vec::new();
        let mut retryable = true;
        for (m, r) in batch.iter().zip(results) {
            if let Err((e, _)) = r {
                if let Some(code) = e.rdkafka_error_code() {
                    retryable &= retryable_code(code);
                }
                failed.push(FailedMessage {
                    id: m.id.clone(),
                    reason: e.to_string(),
                });
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            tracing::warn!(
                failed = failed.len(),
                of = batch.len(),
                "kafka produce failed"
            );
            Err(Error::PartialWrite { failed, retryable })
        }
    }

    /// Refuses further writes and waits for queued records to be delivered.
    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let producer = self.producer.clone();
        let timeout = self.config.operation_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::driver(DRIVER, "flush", false, e))?
            .map_err(|e| kafka_error("flush", e))
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
