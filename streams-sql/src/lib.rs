//! Transactional outbox for `streams` on `sqlx`: PostgreSQL and MySQL/MariaDB.
//!
//! A service writes its events into an outbox table in the same transaction as its
//! business changes ([`PgOutbox::write`], [`MySqlOutbox::write`]), so both happen or
//! neither does. The outbox [`Relay`](streams_core::Relay) then moves the stored
//! batches to the real broker through any [`Writer`](streams_core::Writer), at least
//! once and in insert order, deleting each batch after the destination accepted it and
//! quarantining batches that cannot be decoded.
//!
//! - Rows are byte-compatible with the Go library (`streams_egress` table, Protocol
//!   Buffers `TransportMessageBatch`, KSUID batch ids): both can share an outbox.
//! - [`PgOutboxStore`] and [`MySqlOutboxStore`] claim batches with a lease, so
//!   several relays can run side by side and a crashed relay's batches are relayed
//!   again, never lost.
//! - Wake-ups: PostgreSQL `LISTEN/NOTIFY` ([`PgNotifications`]), an in-process notifier
//!   (the agentless mode, relay and service in one process), and polling as a fallback.
//! - One implementation over both databases: [`Outbox`], [`OutboxWriter`] and
//!   [`SqlOutboxStore`] are generic over the sealed [`Dialect`] ([`sqlx::Postgres`],
//!   [`sqlx::MySql`]); `PgOutbox`, `MySqlOutbox` and the others are their names per
//!   database.
//! - A table the Go library created works as it is: the writer writes only its columns,
//!   and a relay adds its own columns on first use (under a lock, safe while a Go relay
//!   runs).
//! - Table names are validated [`TableName`]s; no SQL is built from unchecked text.
//! - Errors are one line naming the operation, the table and the database's code and
//!   message; [`open_pool`] fails within a bound ([`DEFAULT_CONNECT_TIMEOUT`]) naming the
//!   database and its address.
//! - The relay program is `streams relay` in the `streams` tool; [`RelayBuilder`] builds
//!   a relay from a database URL.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use streams_core::{CancellationToken, Message, Relay};
//! use streams_sql::{PgNotifications, PgOutbox, PgOutboxStore};
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! let outbox = PgOutbox::new("streams_egress")?;
//! outbox.migrate(&pool).await?;
//!
//! // The relay, here in the same process, publishing to the in-process bus.
//! let bus = Arc::new(streams_chanbuf::MemoryBus::new());
//! let storage = PgOutboxStore::new(pool.clone(), "streams_egress")?;
//! let relay = Relay::new(Arc::new(storage), bus)
//!     .with_wake_source(PgNotifications::new(pool.clone(), "streams_egress")?);
//! let cancel = CancellationToken::new();
//! let running = relay.spawn(cancel.clone());
//!
//! // The service: business change and event, one transaction.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO payments (id, cents) VALUES ($1, $2)")
//!     .bind("p-1").bind(1999)
//!     .execute(&mut *tx).await?;
//! outbox.write(&mut tx, &[Message::new("payments.created", r#"{"id":"p-1"}"#)]).await?;
//! outbox.commit(tx).await?;
//!
//! cancel.cancel();
//! running.await??;
//! # Ok(()) }
//! ```

mod common;
mod connect;
mod dialect;
mod ident;
mod mysql;
mod notify;
mod outbox;
mod pg;
mod pool;
mod relay_builder;
mod schema;
mod storage;

pub use connect::connect;
pub use dialect::Dialect;
pub use ident::{TableName, MAX_TABLE_NAME_LEN};
pub use notify::PgNotifications;
pub use outbox::{MySqlOutbox, MySqlOutboxWriter, Outbox, OutboxWriter, PgOutbox, PgOutboxWriter};
pub use pool::{open_pool, DEFAULT_CONNECT_TIMEOUT};
pub use relay_builder::RelayBuilder;
pub use storage::{MySqlOutboxStore, PgOutboxStore, SqlOutboxStore};

/// The `sqlx` this crate is built on, so callers use the same transaction types.
pub use sqlx;

/// The Go library's outbox table name.
pub const DEFAULT_TABLE: &str = "streams_egress";
