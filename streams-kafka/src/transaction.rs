//! What the transactional writer and the exactly-once pipeline share: the calls of
//! librdkafka's transaction API (blocking, so off the runtime) and their errors.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use streams_core::{Error, Message, Result};

use crate::client::KafkaContext;
use crate::error::{describe, driver_error, one_line};
use crate::record::record_headers;
use crate::KafkaConfig;

/// A transactional producer: the rdkafka producer and its `transactional.id`.
#[derive(Clone)]
pub(crate) struct TxProducer {
    pub(crate) producer: FutureProducer<KafkaContext>,
    pub(crate) id: String,
    pub(crate) config: KafkaConfig,
}

/// How a failed transaction call leaves the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// The transaction is still open and must be aborted; a new one may then begin.
    Abort,
    /// The producer can no longer be used (fenced by a newer producer with the same
    /// transactional id, or another fatal error); a new one must be created.
    Fatal,
}

/// Codes that mean another producer with the same transactional id took over.
pub(crate) fn fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionCoordinatorFenced
    )
}

/// What a failed transaction call leaves behind.
pub(crate) fn after(e: &KafkaError) -> After {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() || fenced(t.code()) => After::Fatal,
        KafkaError::Transaction(_) => After::Abort,
        e if e.rdkafka_error_code().is_some_and(fenced) => After::Fatal,
        _ => After::Abort,
    }
}

impl TxProducer {
    /// A one-line error of transaction step `operation`: names the transactional id
    /// and librdkafka's code; not retryable when the producer is done for.
    pub(crate) fn error(&self, operation: &'static str, e: &KafkaError) -> Error {
        let (code, text) = match e {
            KafkaError::Transaction(t) => {
                (Some(t.code()), format!("{:?} ({})", t.code(), t.string()))
            }
            e => (e.rdkafka_error_code(), describe(e)),
        };
        let mut detail = format!("transactional id `{}`: {text}", one_line(&self.id));
        if code.is_some_and(fenced) {
            detail.push_str(
                "; another producer with the same transactional id took over (fenced): \
                 this one can no longer write",
            );
        }
        // A refusal of the setup (unsupported by the broker, denied) does not pass.
        let retryable = after(e) != After::Fatal
            && code.is_none_or(|c| crate::error::fault(c) == crate::error::Fault::Transient);
        driver_error(operation, None, retryable, detail)
    }

    /// Registers the transactional id with the cluster (fencing an older producer with
    /// the same id and aborting its open transaction), within the connect bound.
    pub(crate) async fn init(&self) -> Result<()> {
        let timeout = self.config.connect_timeout();
        let r = self.blocking(move |p| p.init_transactions(timeout)).await?;
        r.map_err(|e| {
            let code = match &e {
                KafkaError::Transaction(t) => Some(t.code()),
                e => e.rdkafka_error_code(),
            };
            if code == Some(RDKafkaErrorCode::OperationTimedOut) {
                driver_error(
                    "init transactions",
                    None,
                    true,
                    format!(
                        "transactional id `{}`: no transaction coordinator answered at {} \
                         within {timeout:?} ({})",
                        one_line(&self.id),
                        self.config.bootstrap_servers(),
                        describe(&e)
                    ),
                )
            } else {
                self.error("init transactions", &e)
            }
        })
    }

    pub(crate) fn begin(&self) -> Result<()> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.error("begin transaction", &e))
    }

    /// Commits the open transaction, within the operation bound.
    pub(crate) async fn commit(&self) -> std::result::Result<(), (Error, After)> {
        let timeout = self.config.operation_timeout;
        match self.blocking(move |p| p.commit_transaction(timeout)).await {
            Err(e) => Err((e, After::Fatal)),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((self.error("commit transaction", &e), after(&e))),
        }
    }

    /// Aborts the open transaction: the cluster discards what it produced and the
    /// offsets it carried. A failure is logged and returned.
    pub(crate) async fn abort(&self) -> Result<()> {
        let timeout = self.config.operation_timeout;
        let r = self.blocking(move |p| p.abort_transaction(timeout)).await?;
        r.map_err(|e| {
            let error = self.error("abort transaction", &e);
            tracing::warn!(transactional_id = %self.id, %error, "abort failed");
            error
        })
    }

    /// Runs a blocking call of the producer on a blocking thread.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FutureProducer<KafkaContext>) -> T + Send + 'static,
    ) -> Result<T> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || f(&producer))
            .await
            .map_err(|e| Error::driver(crate::DRIVER, "transaction", false, e))
    }

    /// Enqueues one record of `m` in the open transaction; waits while librdkafka's
    /// local queue is full.
    pub(crate) async fn enqueue(
        &self,
        m: &Message,
    ) -> std::result::Result<DeliveryFuture, KafkaError> {
        loop {
            let mut record = FutureRecord::to(&m.stream)
                .payload(&m.data[..])
                .timestamp(m.time.timestamp_millis())
                .headers(record_headers(m));
            if let Some(key) = m.key.as_deref().filter(|k| !k.is_empty()) {
                record = record.key(key);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

/// Waits for the delivery reports of a transaction's records: the first failure, with
/// the topic of its message and how many failed.
pub(crate) async fn delivered(
    deliveries: Vec<(String, DeliveryFuture)>,
) -> std::result::Result<(), (String, KafkaError, usize)> {
    let mut first = None;
    let mut failed = 0;
    for (topic, d) in deliveries {
        let e = match d.await {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => e,
            Err(_) => KafkaError::Canceled,
        };
        failed += 1;
        if first.is_none() {
            first = Some((topic, e));
        }
    }
    match first {
        None => Ok(()),
        Some((topic, e)) => Err((topic, e, failed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_codes_end_the_producer() {
        for code in [
            RDKafkaErrorCode::Fenced,
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
        ] {
            assert_eq!(after(&KafkaError::MessageProduction(code)), After::Fatal);
        }
        assert_eq!(
            after(&KafkaError::MessageProduction(
                RDKafkaErrorCode::RequestTimedOut
            )),
            After::Abort
        );
    }

    #[test]
    fn errors_name_the_transactional_id_and_say_fenced() {
        let config = KafkaConfig::new("127.0.0.1:1");
        let producer: FutureProducer<KafkaContext> = config
            .client_config(crate::config::Role::Producer, &[])
            .create_with_context(KafkaContext::default())
            .unwrap();
        let tx = TxProducer {
            producer,
            id: "billing-1".into(),
            config,
        };
        let e = tx.error(
            "commit transaction",
            &KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced),
        );
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(
            text.starts_with("kafka: commit transaction failed: transactional id `billing-1`: "),
            "{text}"
        );
        assert!(text.contains("fenced"), "{text}");
        assert!(!text.contains('\n'));
        let e = tx.error(
            "commit transaction",
            &KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut),
        );
        assert!(e.is_retryable(), "{e}");
    }
}
