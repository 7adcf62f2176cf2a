//! Amazon SQS for `streams`: an [`SqsWriter`] and an [`SqsReader`] sharing one
//! [`SqsClient`].
//!
//! Messages keep the wire format of the Go library: the payload is the body and the
//! message's id, stream, key, content type and time travel as `streams-*` String
//! attributes, so services written with either library share queues. Payloads that are
//! not XML-safe UTF-8 (which SQS bodies must be) are sent base64-encoded with the
//! attribute `streams-body-encoding: base64`, so any bytes round-trip.
//!
//! On a bad day:
//!
//! - Messages up to 1 MiB in SQS form are sent (the SQS limit since 2025; lower it with
//!   [`SqsWriterBuilder::with_max_message_bytes`] for queues, emulators or regions that take
//!   less). A batch holding a larger one sends nothing and fails with
//!   [`Error::Rejected`](streams_core::Error::Rejected), naming the message, its exact
//!   size and the limit.
//! - Every call is bounded: a connection attempt by
//!   [`SqsClientBuilder::with_connect_timeout`] (default 5 s), a call with its retries by
//!   [`SqsClientBuilder::with_operation_timeout`] (default 20 s; a receive gets its long-poll
//!   wait on top). Against an endpoint where nothing listens, writes, reads and queue
//!   administration fail within seconds.
//! - Errors are one line naming the operation, the queue and AWS's error code and message
//!   (or the endpoint that could not be reached). A missing queue, denied access, invalid
//!   credentials or an invalid parameter is not retryable, and a reader returns it at
//!   once; throttling, 5xx answers, time-outs and lost connections are retryable.
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
//! use streams_sqs::{SqsClient, SqsReader, SqsWriter};
//!
//! let client = SqsClient::builder()
//!     .with_endpoint("http://127.0.0.1:4566")
//!     .with_region("us-east-1")
//!     .with_static_credentials("test", "test")
//!     .connect()
//!     .await;
//! client.create_queue("orders").await?;
//! SqsWriter::new(client.clone()).write(vec![Message::new("orders", "hello")]).await?;
//!
//! let cancel = CancellationToken::new();
//! let h = handler(tower::service_fn(|m: Message| async move {
//!     tracing::info!(id = %m.id, "got it");
//!     Ok::<_, BoxError>(())
//! }));
//! SqsReader::new(client).read(ReadTask::new("orders"), h, cancel).await?;
//! # Ok(()) }
//! ```

mod client;
mod connect;
mod reader;
mod wire;
mod writer;

pub use client::{queue_name, SqsClient, SqsClientBuilder, ENDPOINT_ENV};
pub use connect::connect;
pub use reader::{SqsReader, SqsReaderBuilder};
pub use wire::{
    ATTR_BODY_ENCODING, ATTR_CONTENT_TYPE, ATTR_HEADERS, ATTR_MESSAGE_ID, ATTR_MESSAGE_TIME,
    ATTR_STREAM_KEY, ATTR_STREAM_NAME, HEADER_SQS_ATTRIBUTES_MD5, HEADER_SQS_BODY_MD5,
    HEADER_SQS_MESSAGE_ID, HEADER_SQS_RECEIPT_HANDLE,
};
pub use writer::{SqsWriter, SqsWriterBuilder, MAX_BATCH_ENTRIES, MAX_REQUEST_BYTES};

/// The AWS SDK for SQS, for configuration and calls this crate does not wrap.
pub use aws_sdk_sqs;
