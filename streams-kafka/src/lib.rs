//! Apache Kafka driver of `streams`, on [rdkafka](https://docs.rs/rdkafka).
//!
//! - [`KafkaWriter`] produces a batch and returns once the broker acknowledged every
//!   record, or says which messages failed. The idempotent producer is on by default.
//! - With `transactional.id` set, [`KafkaWriter`] writes each batch in one Kafka
//!   transaction, whole or not at all; [`KafkaPipeline`] is exactly-once
//!   consume-transform-produce: a transform's outputs and the consumed offsets are
//!   committed in one transaction, so a `read_committed` consumer of the outputs sees
//!   each input's outputs once, whatever crashes in between.
//! - [`KafkaReader`] reads with a consumer group (the task's `group`) or directly from
//!   one partition and offset. It is at least once: an offset is stored for commit only
//!   after its handler succeeded; a failed message is handed to the handler again, with
//!   backoff, while the partition's later messages wait behind it. Partitions are
//!   processed concurrently, each in order. A partition whose queue is full is paused
//!   and resumed when there is room; the consumer is polled throughout on a thread of
//!   its own, so a stuck handler never makes the member leave its group.
//! - The first contact with the cluster (a writer's first write to a topic, a reader's
//!   start, the topic helpers) is bounded by [`KafkaConfig::with_connect_timeout`]
//!   (20 s): a wrong address fails with `kafka: connect failed: no broker answered at
//!   HOST:PORT within 20s (...)`, a missing topic at once.
//! - Errors are one line naming the operation, the topic and librdkafka's code and
//!   message. A message refused for what it is (larger than `message.max.bytes`, an
//!   invalid record) is [`Error::Rejected`](streams_core::Error::Rejected); a fault of
//!   the destination (unreachable, missing topic, denied access) is a driver error,
//!   retryable only when it may pass.
//! - Records use the Go library's layout: key = stream key, value = payload, timestamp
//!   = message time, headers `message_id`, `content_type`, then the user headers.
//!   Handlers also see where the record was read in
//!   [`Message::metadata`](streams_core::Message::metadata) under the Go header names
//!   (`msg.header(HEADER_PARTITION_ID)`, ...), built without a string per message; a
//!   read message written again carries them as record headers.
//!
//! Every librdkafka setting passes through [`KafkaConfig::with_property`] (security protocol, SASL,
//! TLS with the `ssl` feature, compression, linger, ...).
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use std::sync::Arc;
//! use streams_core::{Message, ReadTask, Writer};
//! use streams_kafka::{create_topic, KafkaConfig, KafkaReader, KafkaWriter};
//!
//! let config = KafkaConfig::from_env().with_property("compression.type", "lz4");
//! create_topic(&config, "orders", 3, 1).await?;
//! let writer = KafkaWriter::new(&config)?;
//! writer.write(vec![Message::new("orders", "{}").with_key("customer-1")]).await?;
//! let reader = Arc::new(KafkaReader::new(config));
//! let task = ReadTask::new("orders").with_group("billing");
//! # let _ = (reader, task); Ok(()) }
//! ```

mod admin;
mod client;
mod config;
mod connect;
mod error;
mod pipeline;
mod reader;
mod record;
mod transaction;
mod writer;

pub use admin::{create_topic, delete_topic};
pub use client::KafkaContext;
pub use config::KafkaConfig;
pub use connect::{connect, DEFAULT_BROKERS};
pub use pipeline::KafkaPipeline;
pub use reader::KafkaReader;
pub use record::{
    HEADER_CLIENT_ID, HEADER_CONTENT_TYPE, HEADER_CURRENT_OFFSET, HEADER_GROUP_ID,
    HEADER_HWM_OFFSET, HEADER_INIT_OFFSET, HEADER_MESSAGE_ID, HEADER_PARTITION_ID,
};
pub use writer::KafkaWriter;

/// The driver name used in errors.
pub(crate) const DRIVER: &str = "kafka";
