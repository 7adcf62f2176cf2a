//! Amazon SNS for `streams`: an [`SnsWriter`] publishing to one topic per stream.
//!
//! Read what a topic delivers with `streams-sqs` from a queue subscribed to it, raw or
//! enveloped. The attributes follow the Go library, so services written with either
//! library share topics.
//!
//! Messages up to 256 KiB in SNS form are published, what a topic takes unless its
//! `MaximumMessageSize` attribute is raised (up to 1 MiB; then raise
//! [`SnsWriterBuilder::with_max_message_bytes`] to match). A batch holding a larger message
//! publishes nothing and fails with [`Error::Rejected`](streams_core::Error::Rejected).
//! Calls are bounded by [`SnsWriterBuilder::with_connect_timeout`] (default 5 s) and
//! [`SnsWriterBuilder::with_operation_timeout`] (default 20 s), and errors are one line naming
//! the operation, the topic and AWS's error code and message, or the endpoint; a missing
//! topic or denied access is not retryable.

mod connect;
mod wire;
mod writer;

pub use connect::connect;
pub use wire::{
    ATTR_BODY_ENCODING, ATTR_CONTENT_TYPE, ATTR_HEADERS, ATTR_MESSAGE_ID, ATTR_MESSAGE_TIME,
    ATTR_STREAM_KEY, ATTR_STREAM_NAME,
};
pub use writer::{
    topic_arn, topic_name, SnsWriter, SnsWriterBuilder, ACCOUNT_ID_ENV, ENDPOINT_ENV,
    MAX_BATCH_ENTRIES, MAX_REQUEST_BYTES, MAX_TOPIC_MESSAGE_BYTES,
};

/// The AWS SDK for SNS, for configuration and calls this crate does not wrap.
pub use aws_sdk_sns;
