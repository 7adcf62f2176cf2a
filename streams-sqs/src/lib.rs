//! Amazon SQS for `streams`: an [`SqsWriter`] and an [`SqsReader`] sharing one
//! [`SqsClient`].
//!
//! Messages keep the wire format of the Go library: the payload is the body and the
//! message's id, stream, key, content type and time travel as `streams-*` String
//! attributes, so services written with either library share queues. Payloads that are
//! not XML-safe UTF-8 (which SQS bodies must be) are sent base64-encoded with the
//! attribute `streams-body-encoding: base64`, so any bytes round-trip.
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
//! use streams_sqs::{SqsClient, SqsReader, SqsWriter};
//!
//! let client = SqsClient::builder()
//!     .endpoint("http://127.0.0.1:4566")
//!     .region("us-east-1")
//!     .static_credentials("test", "test")
//!     .build()
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
