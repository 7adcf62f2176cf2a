use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

/// Connection and client settings shared by [`KafkaWriter`](crate::KafkaWriter),
/// [`KafkaReader`](crate::KafkaReader) and the topic helpers.
///
/// Settings are librdkafka's own keys, passed through unchanged; the driver only sets
/// defaults it needs (see [`KafkaWriter::new`](crate::KafkaWriter::new) and
/// [`KafkaReader`](crate::KafkaReader)), and yours win. Properties librdkafka
/// documents as consumer-only (`group.id`, `session.timeout.ms`, `fetch.*`, ...) are
/// not given to the producer, and producer-only ones (`linger.ms`, `acks`,
/// `queue.buffering.*`, ...) not to the consumer, so one config serves both without
/// configuration warnings.
///
/// # Time bounds
///
/// - [`with_connect_timeout`](Self::with_connect_timeout) (20 s): the first contact with
///   the cluster. A writer's first write to a topic, a reader's start and the topic
///   helpers fail with `kafka: connect failed: no broker answered at HOST:PORT within
///   30s (...)` when no broker answers in time. A broker that goes away later is
///   librdkafka's business: it reconnects, writes wait for it (up to librdkafka's
///   `message.timeout.ms`), readers keep polling.
/// - [`with_operation_timeout`](Self::with_operation_timeout) (30 s): how long a broker
///   may take for an admin operation, and how long closing a writer waits for queued
///   records.
///
/// # Reader bounds
///
/// A reader queues at most
/// [`with_queue_depth`](Self::with_queue_depth) records and
/// [`with_queue_bytes`](Self::with_queue_bytes) bytes
/// per partition for its handler; a partition whose queue stays full is paused and
/// resumed once its handler made room, while the consumer keeps polling. Set
/// `max.poll.interval.ms` and `session.timeout.ms` as usual: since the reader polls
/// throughout, a slow or retrying handler does not make the member leave its group.
///
/// ```
/// use std::time::Duration;
/// use streams_kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("broker-1:9092,broker-2:9092")
///     .with_property("security.protocol", "SASL_SSL")
///     .with_property("sasl.mechanism", "PLAIN")
///     .with_queue_depth(64)
///     .with_retry_backoff(Duration::from_millis(50), Duration::from_secs(5));
/// assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
/// ```
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    settings: BTreeMap<String, String>,
    pub(crate) queue_depth: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) watermark_refresh: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl KafkaConfig {
    /// Settings for the given bootstrap servers (`host:port`, comma separated).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        let mut settings = BTreeMap::new();
        settings.insert("bootstrap.servers".to_owned(), bootstrap_servers.into());
        KafkaConfig {
            settings,
            queue_depth: 2048,
            queue_bytes: 8 << 20,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            watermark_refresh: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(20),
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
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
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

    /// Records a reader queues per partition for its handler. When a partition's queue
    /// stays full for half a second (its handler is stuck or retrying a failed message)
    /// the reader pauses that partition, so memory stays bounded, and resumes it from
    /// the first record not yet queued once the handler has worked through half the
    /// queue. Other partitions,
    /// group membership and rebalances go on meanwhile. Default 2,048: deep enough that
    /// the polling thread and the handler rarely wait for each other (at 256 the reader
    /// spent most of its time handing over and ran at half its speed); large records are
    /// bounded by [`with_queue_bytes`](Self::with_queue_bytes) as well.
    pub fn with_queue_depth(mut self, n: usize) -> Self {
        self.queue_depth = n.max(1);
        self
    }

    /// Bytes (payload, key and headers) a reader queues per partition for its handler,
    /// whichever of this and [`with_queue_depth`](Self::with_queue_depth) is reached
    /// first; a single record larger than this is still handed over. The partition is
    /// resumed once half of it is free. Default 8 MiB.
    pub fn with_queue_bytes(mut self, n: usize) -> Self {
        self.queue_bytes = n.max(1);
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

    /// How long a broker may take for an admin operation (creating or deleting a
    /// topic), and how long [`close`](streams_core::Writer::close) waits for queued
    /// records to be delivered. Default 30 s.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// How long the first contact with the cluster may take: a metadata request at a
    /// writer's first write to each topic, at a reader's start, and before a topic
    /// helper's admin request. When no broker answers in time these fail with
    /// `kafka: connect failed: no broker answered at HOST:PORT within 20s (cause)`
    /// (retryable, unless librdkafka reported a misconfiguration such as failed
    /// authentication). Later writes and reads do not ask again, so the bound costs the
    /// happy path one round trip per writer and topic. Default 20 s, so that a wrong
    /// address is reported within 30 s whatever else the first call does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use streams_kafka::KafkaConfig;
    ///
    /// let config = KafkaConfig::new("broker:9092").with_connect_timeout(Duration::from_secs(5));
    /// assert_eq!(config.connect_timeout(), Duration::from_secs(5));
    /// ```
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The bound of the first contact with the cluster (see
    /// [`with_connect_timeout`](Self::with_connect_timeout)).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The rdkafka configuration of a client of `role`: `defaults` first, then every
    /// property set here except those librdkafka documents for the other kind of
    /// client (which it would only warn about), so one config serves both.
    pub(crate) fn client_config(&self, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut cc = ClientConfig::new();
        for (k, v) in defaults {
            cc.set(*k, *v);
        }
        for (k, v) in &self.settings {
            let skip = match role {
                Role::Producer => consumer_only(k),
                Role::Consumer => producer_only(k),
                Role::Admin => consumer_only(k) || producer_only(k),
            };
            if !skip {
                cc.set(k, v);
            }
        }
        cc
    }
}

/// The kind of librdkafka client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Producer,
    Consumer,
    /// The admin client, a producer handle that needs neither role's properties.
    Admin,
}

/// Properties librdkafka's CONFIGURATION.md marks as consumer-only (`C`).
fn consumer_only(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "coordinator.query.interval.ms",
        "max.poll.interval.ms",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "isolation.level",
        "enable.partition.eof",
        "check.crcs",
        "consume.callback.max.messages",
        "offset.store.method",
    ];
    KEYS.contains(&key)
        || key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("auto.commit.")
}

/// Properties librdkafka's CONFIGURATION.md marks as producer-only (`P`).
fn producer_only(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "transactional.id",
        "transaction.timeout.ms",
        "enable.idempotence",
        "enable.gapless.guarantee",
        "linger.ms",
        "message.send.max.retries",
        "retries",
        "batch.num.messages",
        "batch.size",
        "delivery.report.only.error",
        "sticky.partitioning.linger.ms",
        "compression.codec",
        "compression.type",
        "compression.level",
        "acks",
        "request.required.acks",
        "request.timeout.ms",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "partitioner",
        "queuing.strategy",
    ];
    KEYS.contains(&key) || key.starts_with("queue.buffering.")
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::from_env()
    }
}

#[cfg(test)]
mod role_tests {
    use super::*;

    #[test]
    fn each_client_gets_only_its_properties() {
        let config = KafkaConfig::new("b:9092")
            .with_property("session.timeout.ms", "6000")
            .with_property("fetch.min.bytes", "1")
            .with_property("linger.ms", "20")
            .with_property("queue.buffering.max.ms", "20")
            .with_property("security.protocol", "PLAINTEXT");
        let get = |role| {
            let cc = config.client_config(role, &[]);
            [
                "session.timeout.ms",
                "fetch.min.bytes",
                "linger.ms",
                "queue.buffering.max.ms",
                "security.protocol",
            ]
            .map(|k| cc.get(k).is_some())
        };
        assert_eq!(get(Role::Producer), [false, false, true, true, true]);
        assert_eq!(get(Role::Consumer), [true, true, false, false, true]);
        assert_eq!(get(Role::Admin), [false, false, false, false, true]);
    }
}
