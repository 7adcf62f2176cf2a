//! Apache Kafka driver of `streams`, on [rdkafka](https://docs.rs/rdkafka).
//!
//! - [`KafkaWriter`] produces a batch and returns once the broker acknowledged every
//!   record, or says which messages failed. The idempotent producer is on by default.
//! - [`KafkaReader`] reads with a consumer group (the task's `group`) or directly from
//!   one partition and offset. It is at least once: an offset is stored for commit only
//!   after its handler succeeded; a failed message is handed to the handler again, with
//!   backoff, while the partition's later messages wait behind it. Partitions are
//!   processed concurrently, each in order.
//! - Records use the Go library's layout: key = stream key, value = payload, timestamp
//!   = message time, headers `message_id`, `content_type`, then the user headers.
//!   Handlers also see the reader headers (`streams-kafka-partition-id`, ...).
//!
//! Every librdkafka setting passes through [`KafkaConfig::set`] (security protocol, SASL,
//! TLS with the `ssl` feature, compression, linger, ...).
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use std::sync::Arc;
//! use streams_core::{Message, ReadTask, Writer};
//! use streams_kafka::{create_topic, KafkaConfig, KafkaReader, KafkaWriter};
//!
//! let config = KafkaConfig::from_env().set("compression.type", "lz4");
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
mod error;
mod reader;
mod record;
mod writer;

pub use admin::{create_topic, delete_topic};
pub use client::KafkaContext;
pub use config::KafkaConfig;
pub use reader::KafkaReader;
pub use record::{
    HEADER_CLIENT_ID, HEADER_CONTENT_TYPE, HEADER_CURRENT_OFFSET, HEADER_GROUP_ID,
    HEADER_HWM_OFFSET, HEADER_INIT_OFFSET, HEADER_MESSAGE_ID, HEADER_PARTITION_ID,
};
pub use writer::KafkaWriter;

/// The driver name used in errors.
pub(crate) const DRIVER: &str = "kafka";
