//! What every client of this crate shares: the rdkafka context (logs to `tracing`, the
//! last client error kept to explain a failed connect) and the bounded first contact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use streams_core::{Error, Result};

use crate::error::{code_error, driver_error, fault, one_line, Fault};
use crate::KafkaConfig;

/// The rdkafka client context of this crate's producers and admin clients.
///
/// librdkafka's log lines go to `tracing` (target `librdkafka`), and the last client
/// error (a refused connection, a failed authentication) is kept, so that a failed
/// connect can say why. Clones share that record.
#[derive(Debug, Default, Clone)]
pub struct KafkaContext {
    last_error: Arc<Mutex<Option<Cause>>>,
}

/// A client error as librdkafka reported it.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    code: Option<RDKafkaErrorCode>,
    text: String,
}

impl KafkaContext {
    /// Why connecting failed, as far as librdkafka told.
    pub(crate) fn cause(&self) -> Option<Cause> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Cause>> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a client error; a specific one is not replaced by "all brokers are down".
    pub(crate) fn record(&self, code: Option<RDKafkaErrorCode>, text: &str) {
        let mut last = self.lock();
        let generic =
            |c: &Option<RDKafkaErrorCode>| matches!(c, Some(RDKafkaErrorCode::AllBrokersDown));
        let keep = match (&*last, code) {
            (None, _) => false,
            // "1/1 brokers are down" says less than what was already seen.
            (Some(_), Some(RDKafkaErrorCode::AllBrokersDown)) => true,
            // A log line does not replace an error reported with its code.
            (Some(prev), None) => prev.code.is_some() && !generic(&prev.code),
            (Some(_), Some(_)) => false,
        };
        if keep {
            return;
        }
        // librdkafka's log lines start with the thread: `[thrd:HOST:PORT/bootstrap]: `.
        let text = match text
            .strip_prefix("[thrd:")
            .and_then(|t| t.split_once("]: "))
        {
            Some((_, rest)) => rest,
            None => text,
        };
        *last = Some(Cause {
            code,
            text: one_line(text),
        });
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        ) {
            // Connection failures are logged before (or instead of) an error event.
            self.record(None, log_message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Recorded for the error of the operation that fails; librdkafka repeats these
        // every reconnect attempt, too often for a warning.
        tracing::debug!(target: "librdkafka", %error, reason, "client error");
        let code = error.rdkafka_error_code();
        let text = match code {
            Some(code) => format!("{code}: {reason}"),
            None => format!("{error}: {reason}"),
        };
        self.record(code, &text);
    }
}

/// librdkafka's log line on `tracing`.
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
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

/// What the cluster said about a topic at the first contact.
#[derive(Debug)]
pub(crate) struct TopicInfo {
    /// The topic's partitions; empty while a broker creates it.
    pub(crate) partitions: Vec<i32>,
    /// The cluster's error for the topic, such as `UnknownTopicOrPartition`.
    pub(crate) error: Option<RDKafkaErrorCode>,
}

impl TopicInfo {
    /// The topic's error when it is a misconfiguration (missing, denied): not retryable.
    pub(crate) fn misconfigured(&self, operation: &'static str, topic: &str) -> Result<()> {
        match self.error {
            Some(code) if fault(code) == Fault::Config => Err(code_error(operation, topic, code)),
            // LeaderNotAvailable while a broker creates the topic, and other passing
            // trouble: the client waits for it itself.
            _ => Ok(()),
        }
    }
}

/// The first contact with the cluster: a metadata request for `topic`, bounded by
/// [`KafkaConfig::with_connect_timeout`]. Blocks; call it off the async runtime.
///
/// # Errors
///
/// `connect` when no broker answered in time (retryable unless librdkafka reported a
/// misconfiguration such as failed authentication).
///
/// `serve` runs before a failure is reported: a consumer serves its queued events there,
/// so that librdkafka's account of the failure reaches `context`.
pub(crate) fn first_contact<C: ClientContext>(
    client: &Client<C>,
    context: &KafkaContext,
    config: &KafkaConfig,
    topic: &str,
    serve: impl FnOnce(),
) -> Result<TopicInfo> {
    let timeout = config.connect_timeout;
    let metadata = match client.fetch_metadata(Some(topic), timeout) {
        Ok(m) => m,
        Err(e) => {
            serve();
            return Err(connect_failed(config, timeout, context.cause(), &e));
        }
    };
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(TopicInfo {
            partitions: vec![],
            error: Some(RDKafkaErrorCode::UnknownTopicOrPartition),
        });
    };
    Ok(TopicInfo {
        partitions: t.partitions().iter().map(|p| p.id()).collect(),
        error: t.error().map(RDKafkaErrorCode::from),
    })
}

/// `kafka: connect failed: no broker answered at HOST:PORT within 20s (...)`.
pub(crate) fn connect_failed(
    config: &KafkaConfig,
    timeout: Duration,
    cause: Option<Cause>,
    e: &KafkaError,
) -> Error {
    let retryable = cause
        .as_ref()
        .and_then(|c| c.code)
        .is_none_or(|code| fault(code) == Fault::Transient);
    let why = match cause {
        Some(c) => c.text,
        None => crate::error::describe(e),
    };
    driver_error(
        "connect",
        None,
        retryable,
        format!(
            "no broker answered at {} within {timeout:?} ({why})",
            config.bootstrap_servers()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_names_platform_address_bound_and_cause() {
        let config = KafkaConfig::new("127.0.0.1:1");
        let context = KafkaContext::default();
        context.record(
            None,
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        context.record(
            Some(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let e = connect_failed(
            &config,
            Duration::from_secs(30),
            context.cause(),
            &KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
        );
        assert!(e.is_retryable());
        assert_eq!(
            e.to_string(),
            "kafka: connect failed: no broker answered at 127.0.0.1:1 within 30s \
             (127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused)"
        );
        // A misconfiguration librdkafka reported is kept and is not retryable.
        let context = KafkaContext::default();
        context.record(
            Some(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        context.record(
            Some(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        context.record(None, "some log line");
        let e = connect_failed(
            &config,
            Duration::from_secs(5),
            context.cause(),
            &KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
        );
        assert!(!e.is_retryable());
        assert!(
            e.to_string()
                .contains("within 5s (SASL authentication error"),
            "{e}"
        );
    }
}
