//! Amazon SNS for `streams`: an [`SnsWriter`] publishing to one topic per stream.
//!
//! Read what a topic delivers with `streams-sqs` from a queue subscribed to it, raw or
//! enveloped. The attributes follow the Go library, so services written with either
//! library share topics.

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
    MAX_BATCH_ENTRIES, MAX_REQUEST_BYTES,
};

/// The AWS SDK for SNS, for configuration and calls this crate does not wrap.
pub use aws_sdk_sns;
