//! RabbitMQ for `streams`, on `lapin` (AMQP 0-9-1): an [`AmqpWriter`] with publisher
//! confirms and mandatory publishing, and an [`AmqpReader`] with manual
//! acknowledgements, a prefetch bound and one durable queue per consumer group.
//!
//! - Streams: a durable fanout exchange named as the stream ([`create_stream`],
//!   `streams create`); each consumer group binds a queue of its own to it
//!   (`<stream>::<group>`, quorum by default), so every group receives every message
//!   and the members of a group share it.
//! - Messages: the payload as is (any bytes); id and content type as AMQP properties,
//!   persistent; key and time (with nanoseconds) as headers beside the message's own.
//! - Delivery: at least once; acknowledged after the handler, given back to the queue
//!   after a backoff when it failed; the quorum queue's delivery count as a header.
//! - Bad days: a message no queue would receive is an error, not a silent drop; the
//!   connection and channels are made again after a loss; broker calls are bounded.
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use streams_amqp::{create_stream, AmqpClient, AmqpConfig, AmqpReader, AmqpWriter};
//! use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
//!
//! let client = AmqpClient::connect(AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")).await?;
//! create_stream(&client, "orders").await?;
//! let h = handler(tower::service_fn(|m: Message| async move {
//!     tracing::info!(id = %m.id, "got it");
//!     Ok::<_, BoxError>(())
//! }));
//! let subscription = AmqpReader::new(client.clone())
//!     .subscribe(ReadTask::new("orders").with_group("billing"))
//!     .await?;
//! AmqpWriter::new(client).write(vec![Message::new("orders", "hello")]).await?;
//! subscription.run(h, CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod admin;
mod client;
mod connect;
mod reader;
mod wire;
mod writer;

pub use admin::{create_stream, delete_stream};
pub use client::{AmqpClient, AmqpConfig, QueueType, DEFAULT_URL};
pub use connect::connect;
pub use reader::{AmqpReader, MAX_DELAY};
pub use wire::{exchange_name, queue_name, HEADER_DELIVERED, HEADER_KEY, HEADER_TIME};
pub use writer::AmqpWriter;
