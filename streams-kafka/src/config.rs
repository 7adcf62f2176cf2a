use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

/// Connection and client settings shared by [`KafkaWriter`](crate::KafkaWriter),
/// [`KafkaReader`](crate::KafkaReader) and the topic helpers.
///
/// Settings are librdkafka's own keys, passed through unchanged; the driver only sets
/// defaults it needs (see [`KafkaWriter::new`](crate::KafkaWriter::new) and
/// [`KafkaReader`](crate::KafkaReader)), and yours win.
///
/// ```
/// use std::time::Duration;
/// use streams_kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("broker-1:9092,broker-2:9092")
///     .set("security.protocol", "SASL_SSL")
///     .set("sasl.mechanism", "PLAIN")
///     .with_max_in_flight_per_partition(64)
///     .with_retry_backoff(Duration::from_millis(50), Duration::from_secs(5));
/// assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
/// ```
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    settings: BTreeMap<String, String>,
    pub(crate) max_in_flight_per_partition: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) watermark_refresh: Duration,
    pub(crate) operation_timeout: Duration,
}

impl KafkaConfig {
    /// Settings for the given bootstrap servers (`host:port`, comma separated).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        let mut settings = BTreeMap::new();
        settings.insert("bootstrap.servers".to_owned(), bootstrap_servers.into());
        KafkaConfig {
            settings,
            max_in_flight_per_partition: 256,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            watermark_refresh: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
        }
    }

    /// Bootstrap servers from `STREAMS_KAFKA_BROKERS`, else `KAFKA_BROKERS`, else
    /// `localhost:9092`.
    pub fn from_env() -> Self {
        let brokers = std::env::var("STREAMS_KAFKA_BROKERS")
            .or_else(|_| std::env::var("KAFKA_BROKERS"))
            .unwrap_or_else(|_| "localhost:9092".to_owned());
        Self::new(brokers)
    }

    /// Sets a librdkafka property (`compression.type`, `linger.ms`, `sasl.username`, ...).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key.into(), value.into());
        self
    }

    /// A property set on this configuration.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// The bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or_default()
    }

    /// Messages a reader queues per partition for its handler. When a partition's queue
    /// is full (its handler is slow or retrying a failed message) the reader waits
    /// before taking more records, so memory stays bounded; other partitions' queued
    /// messages keep being handled meanwhile. Default 256.
    pub fn with_max_in_flight_per_partition(mut self, n: usize) -> Self {
        self.max_in_flight_per_partition = n.max(1);
        self
    }

    /// Backoff between handler attempts on a failed message: starts at `initial`,
    /// doubles up to `max`. Default 100 ms to 10 s.
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }

    /// How often a reader refreshes high watermarks for the `streams-kafka-hwm-offset`
    /// header. Default 5 s.
    pub fn with_watermark_refresh(mut self, every: Duration) -> Self {
        self.watermark_refresh = every;
        self
    }

    /// Time limit of admin and flush operations. Default 30 s.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The rdkafka configuration: `defaults` first, then every property set here.
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut cc = ClientConfig::new();
        for (k, v) in defaults {
            cc.set(*k, *v);
        }
        for (k, v) in &self.settings {
            cc.set(k, v);
        }
        cc
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::from_env()
    }
}
