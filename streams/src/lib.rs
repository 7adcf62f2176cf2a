//! `streams`: one dependency for the whole toolkit.
//!
//! This crate re-exports [`streams_core`] flat (messages, the [`Writer`] and [`Reader`]
//! traits, typed events, [`middleware`], the outbox relay in [`outbox`]) and each driver
//! crate as a module behind a cargo feature:
//!
//! | feature | module | driver crate | on by default |
//! |---|---|---|---|
//! | `chanbuf` | `streams::chanbuf` | `streams-chanbuf`, the in-process bus | yes |
//! | `amqp` | `streams::amqp` | `streams-amqp` (RabbitMQ) | no |
//! | `kafka` | `streams::kafka` | `streams-kafka` | no |
//! | `nats` | `streams::nats` | `streams-nats` (JetStream) | no |
//! | `redis` | `streams::redis` | `streams-redis` (Redis Streams) | no |
//! | `sqs` | `streams::sqs` | `streams-sqs` | no |
//! | `sns` | `streams::sns` | `streams-sns` | no |
//! | `sql` | `streams::sql` | `streams-sql` (PostgreSQL and MySQL/MariaDB outbox) | no |
//!
//! [`connect`] builds a writer and a reader from a URL, so an application moves from the
//! in-process bus to Kafka or SQS by changing one environment variable
//! ([`connect_from_env`] reads `STREAMS_URL`):
//!
//! ```
//! # #[cfg(not(feature = "chanbuf"))] fn main() {}
//! # #[cfg(feature = "chanbuf")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> streams::Result<()> {
//! use streams::{Message, ReadTask};
//!
//! // STREAMS_URL=kafka://broker:9092?group=billing in production, unset in tests.
//! let conn = streams::connect_from_env().await?;
//! let writer = conn.writer();
//! writer.write(vec![Message::new("orders", "hello")]).await?;
//! let reader = conn.reader()?; // an error on write-only platforms (sns, SQL outboxes)
//! # let _ = (reader, ReadTask::new("orders"));
//! # Ok(()) }
//! ```
//!
//! # Connection URLs
//!
//! | URL | writer | reader | feature |
//! |---|---|---|---|
//! | `memory://[?queue_depth=N&concurrency=N]` | one `MemoryBus`, shared | the same bus | `chanbuf` |
//! | `kafka://[host:port[,host:port...]][?group=G&<librdkafka key>=<value>...]` | `KafkaWriter` | `KafkaReader`; tasks without a group get `G` ([`DefaultGroupReader`]) | `kafka` |
//! | `amqp://user:pass@host:port/vhost[?group=G&connect_timeout=D&operation_timeout=D&queue_type=quorum\|classic&prefetch=N&concurrency=N]` | `AmqpWriter` | `AmqpReader`; tasks without a group get `G` | `amqp` |
//! | `nats://[user:pass@][host:port[,host:port...]][?group=G&connect_timeout=D&request_timeout=D&ack_wait=D&concurrency=N&token=T]` | `NatsWriter` | `NatsReader`; tasks without a group get `G` | `nats` |
//! | `redis://[user:pass@][host:port][/db][?group=G&connect_timeout=D&block=D&batch=N&claim_idle=D&concurrency=N&max_len=N]` | `RedisWriter` | `RedisReader`; tasks without a group get `G` | `redis` |
//! | `sqs://[key:secret@][host:port][?region=R&tls=true&wait_time_seconds=S]` | `SqsWriter` | `SqsReader` | `sqs` |
//! | `sns://[key:secret@][host:port][?region=R&account_id=A&tls=true]` | `SnsWriter` | none | `sns` |
//! | `postgres://...[?table=T&create_table=true&<sqlx parameters>]` (or `postgresql://`) | `PgOutboxWriter` owning a pool | none | `sql` |
//! | `mysql://...[?table=T&create_table=true&<sqlx parameters>]` | `MySqlOutboxWriter` owning a pool | none | `sql` |
//!
//! - `memory://`: each [`connect`] call makes a bus of its own; `queue_depth` is the
//!   buffer per subscriber (default 1024), `concurrency` the handlers per subscriber
//!   when the read task sets none (default 1).
//! - `kafka://`: brokers default to `localhost:9092`. `group` is the consumer group of
//!   read tasks that name none; every other parameter is a librdkafka property passed
//!   to `KafkaConfig::with_property` unchanged (`session.timeout.ms=6000`,
//!   `security.protocol=SASL_SSL`, `sasl.username=...`), percent-decoded.
//! - `amqp://`: the path is the virtual host (`%2f` for `/`). Streams are durable
//!   fanout exchanges; `group` is the durable queue (`<stream>::<group>`) of read tasks
//!   that name none.
//! - `nats://`: servers default to `127.0.0.1:4222` (port 4222 when none is given).
//!   Streams are JetStream streams named by `streams_nats::nats_name` (`streams
//!   create` makes them); `group` is the durable consumer of read tasks that name none.
//! - `redis://`: the server defaults to `127.0.0.1:6379`; the path is the database
//!   number. Streams are Redis keys named as the stream; `group` is the consumer group
//!   of read tasks that name none (created at the start of the stream).
//! - `sqs://` and `sns://`: without a host the AWS SDK resolves the endpoint; with one,
//!   requests go to `http://host:port` (`https` with `tls=true`), as for an emulator.
//!   Region and credentials come from the usual AWS environment unless the URL gives
//!   them (`region=`, `key:secret@`, percent-encoded; meant for emulators, keep real
//!   secrets in the environment). For SQS, `wait_time_seconds` (0 to 20, default 20)
//!   is the long-poll time of receives, which is also how long a reader may take to
//!   stop. For SNS, `account_id` (else `AWS_ACCOUNT_ID`) and the
//!   region build the topic ARNs.
//! - `postgres://` and `mysql://`: the URL without `table` (default `streams_egress`)
//!   and `create_table` (default false) is handed to sqlx; [`connect`] opens the pool,
//!   so an unreachable database fails there. Each write is a transaction of its own;
//!   to write in your own transaction use `PgOutbox`/`MySqlOutbox` from `streams::sql`
//!   directly. A relay moves the rows to the real platform.
//!
//! Parameters are form-decoded, as the `url` crate reads queries: write a `+` in a value
//! (a password, say) as `%2B`, since `+` stands for a space.
//!
//! Unknown schemes, schemes whose feature is off, malformed URLs and unknown parameters
//! (except on `kafka://`, where they are librdkafka's) are [`Error::Invalid`]; the
//! message lists the supported schemes and those enabled in this build, and never
//! repeats the URL, which may carry a password.
//!
//! # Observability
//!
//! Connections from [`connect`] are observed: the writer is an [`ObservedWriter`] and
//! the reader an [`ObservedReader`], so each write has a `streams.publish` span and
//! each handled message a `streams.handle` span (stream, message id, key and, on
//! Kafka, partition, offset and group), and the [`metrics`](https://docs.rs/metrics)
//! counters and histograms of [`observe`] are recorded (published, publish failures,
//! handled, failed, retried, dead-lettered, publish and handler durations). With no
//! `tracing` subscriber and no metrics recorder installed this costs a few atomic
//! loads per message. An [`ObserveLayer`] in a handler of such a connection passes
//! messages through, so nothing is counted twice. The `opentelemetry` feature propagates the W3C
//! trace context through message headers (see [`observe`]).

pub use streams_core::*;

#[cfg(feature = "amqp")]
pub use streams_amqp as amqp;
#[cfg(feature = "chanbuf")]
pub use streams_chanbuf as chanbuf;
#[cfg(feature = "kafka")]
pub use streams_kafka as kafka;
#[cfg(feature = "nats")]
pub use streams_nats as nats;
#[cfg(feature = "redis")]
pub use streams_redis as redis;
#[cfg(feature = "sns")]
pub use streams_sns as sns;
#[cfg(feature = "sql")]
pub use streams_sql as sql;
#[cfg(feature = "sqs")]
pub use streams_sqs as sqs;

mod connect;

pub use connect::{connect, connect_from_env, DEFAULT_URL, URL_ENV};
