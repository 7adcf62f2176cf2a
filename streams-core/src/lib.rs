//! The core of `streams`: one message model, one set of traits and one middleware
//! stack for moving messages over an in-process bus, Kafka, SQS/SNS or a SQL outbox.
//!
//! - [`Message`] is the unit of data; [`Writer`] writes batches of them ([`WriteWindow`]
//!   keeps several in flight) and [`Reader`]
//!   runs a [`ReadTask`], handing each message to a [`Handler`] (a `tower::Service`).
//! - [`Event`], [`EventRegistry`], [`Publisher`], [`Router`] and [`EventBus`] add typed
//!   events on top, encoded by a [`Codec`] (JSON or Protocol Buffers).
//! - [`middleware`] holds tower layers: retry, logging, deduplication, dead-letter,
//!   timeout. Tower's own layers compose with them.
//! - [`outbox`] relays batches stored in a transactional outbox to any writer.
//! - [`observe`] adds `tracing` spans and `metrics` counters and histograms to any writer
//!   ([`ObservedWriter`]) or reader ([`ObservedReader`]), and with the `opentelemetry`
//!   feature carries W3C trace context in message headers.
//!
//! - [`Connection`] is what a driver's `connect(url)` returns: writer, reader and
//!   [`StreamAdmin`]; [`UrlParams`] gives every driver's URL parser the same rules.
//!
//! Drivers live in their own crates (`streams-chanbuf`, `streams-kafka`, ...).

mod batch;
mod codec;
mod connection;
mod error;
mod event;
mod event_bus;
mod id;
mod message;
pub mod middleware;
pub mod observe;
pub mod outbox;
mod proto;
mod publisher;
mod router;
mod stream;
mod window;

pub use batch::{
    batch_handler, call_batch_handler, typed_batch, Batch, BatchHandler, BatchOutcome, BatchSize,
    BatchSubscription, TypedBatch, MAX_BATCH_MESSAGES, MAX_BATCH_WAIT,
};
pub use codec::{Codec, CodecRegistry, JsonCodec, ProtobufCodec};
pub use connection::{
    invalid_url, ConnectUrl, Connection, DefaultGroupReader, NoStreamAdmin, StreamAdmin, UrlParams,
    URL_ERROR_WHAT,
};
pub use error::{
    is_unrecoverable, retry_after, BoxError, Error, FailedMessage, Result, RetryAfter,
    Unrecoverable,
};
pub use event::{Event, EventContract, EventRegistry, RegisteredEvent};
pub use event_bus::EventBus;
pub use id::{IdFactory, KsuidFactory, UuidFactory};
pub use message::{
    Headers, Message, Metadata, CONTENT_TYPE_JSON, CONTENT_TYPE_OCTET_STREAM,
    CONTENT_TYPE_PROTOBUF, DELIVERY_ATTEMPT,
};
pub use observe::{Observe, ObserveFuture, ObserveLayer, ObservedReader, ObservedWriter};
pub use outbox::{decode_batch, encode_batch, OutboxStore, Relay, StoredBatch, WakeSource};
pub use publisher::Publisher;
pub use router::{typed, Router, Typed};
pub use stream::{call_handler, handler, Handler, ReadTask, Reader, Subscription, Writer};
pub use window::WriteWindow;

pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;
