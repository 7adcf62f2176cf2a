//! NATS JetStream for `streams`, on `async-nats`: a [`NatsWriter`] that returns once
//! JetStream acknowledged every message, and a [`NatsReader`] on durable pull
//! consumers, one per consumer group.
//!
//! - Streams: each `streams` stream is a JetStream stream capturing one subject, both
//!   named by [`nats_name`] (`orders.placed` is `orders~2Eplaced`; [`stream_of`]
//!   reverses it). [`create_stream`] (and `streams create`) creates it with limits
//!   retention: every consumer group reads every message.
//! - Messages: the payload as is (any bytes); the id as `Nats-Msg-Id`, so JetStream's
//!   duplicate window drops a retried publish; key, content type and time as headers
//!   (see [`HEADER_KEY`] and the others), the message's own headers beside them.
//! - Delivery: at least once. Acknowledged after the handler succeeded, negatively
//!   acknowledged with a growing delay when it failed, in progress while it runs long,
//!   delivered again after the ack wait when a member dies.
//! - Bad days: the first contact is bounded ([`NatsConfig::with_connect_timeout`],
//!   10 s); a lost connection is reconnected in the background; oversized messages are
//!   [`Error::Rejected`](streams_core::Error::Rejected) before sending; a missing stream
//!   is a not retryable error naming it.
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
//! use streams_nats::{create_stream, NatsClient, NatsConfig, NatsReader, NatsWriter};
//!
//! let client = NatsClient::connect(NatsConfig::new("127.0.0.1:4222")).await?;
//! create_stream(&client, "orders").await?;
//! NatsWriter::new(client.clone())
//!     .write(vec![Message::new("orders", "hello").with_key("acct-1")])
//!     .await?;
//!
//! let h = handler(tower::service_fn(|m: Message| async move {
//!     tracing::info!(id = %m.id, "got it");
//!     Ok::<_, BoxError>(())
//! }));
//! let task = ReadTask::new("orders").with_group("billing");
//! NatsReader::new(client).read(task, h, CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod admin;
mod client;
mod connect;
mod error;
mod names;
mod reader;
mod wire;
mod writer;

pub use admin::{create_stream, delete_stream};
pub use client::{NatsClient, NatsConfig, DEFAULT_SERVER};
pub use connect::connect;
pub use names::{nats_name, stream_of, MAX_NAME_LEN};
pub use reader::NatsReader;
pub use wire::{HEADER_CONTENT_TYPE, HEADER_DELIVERED, HEADER_KEY, HEADER_SEQUENCE, HEADER_TIME};
pub use writer::NatsWriter;
