//! Redis Streams for `streams`, on the `redis` crate: a [`RedisWriter`] appending with
//! `XADD` (one pipeline per write) and a [`RedisReader`] on consumer groups
//! (`XREADGROUP`, `XACK` after the handler, `XAUTOCLAIM` for what a failed handler or a
//! dead member left pending).
//!
//! - Streams: the Redis key of the stream name, as it is. A stream appears with its
//!   first entry (or a reader's group); deleting one removes its entries and groups.
//! - Entries: the payload (any bytes) in the field `data`; id, key, content type and
//!   time in fields of their own, each header in a field `h:<name>` (see
//!   [`FIELD_DATA`] and the others).
//! - Delivery: at least once within a group; every group receives every entry, from the
//!   start of the stream. Without a group a reader reads from `$`, `0` or an entry id.
//! - Trimming: only when asked ([`RedisConfig::with_max_len`], `MAXLEN ~`).
//! - Bad days: the first contact is bounded (5 s); lost connections are made again in
//!   the background; entries read but not acknowledged are claimed after
//!   [`RedisConfig::with_claim_idle`].
//!
//! The `redis` crate is the maintained client of the Redis project's Rust organisation
//! (redis-rs); its `ConnectionManager` reconnects by itself and pipelines commands of
//! many tasks on one connection.
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
//! use streams_redis::{RedisClient, RedisConfig, RedisReader, RedisWriter};
//!
//! let client = RedisClient::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
//! RedisWriter::new(client.clone())
//!     .write(vec![Message::new("orders", "hello").with_key("acct-1")])
//!     .await?;
//! let h = handler(tower::service_fn(|m: Message| async move {
//!     tracing::info!(id = %m.id, "got it");
//!     Ok::<_, BoxError>(())
//! }));
//! let task = ReadTask::new("orders").with_group("billing");
//! RedisReader::new(client).read(task, h, CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod admin;
mod client;
mod connect;
mod error;
mod reader;
mod reply;
mod wire;
mod writer;

pub use client::{RedisClient, RedisConfig, DEFAULT_URL};
pub use connect::connect;
pub use reader::RedisReader;
pub use wire::{
    FIELD_CONTENT_TYPE, FIELD_DATA, FIELD_HEADER_PREFIX, FIELD_ID, FIELD_KEY, FIELD_TIME,
    HEADER_DELIVERED, HEADER_ENTRY_ID,
};
pub use writer::RedisWriter;
