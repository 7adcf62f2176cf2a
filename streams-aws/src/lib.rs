//! What the AWS drivers of `streams` (`streams-sqs`, `streams-sns`, `streams-dynamodb`)
//! share:
//!
//! - [`ClientConfig`]: where an SDK client gets its configuration, with the endpoint,
//!   region, credential and time-limit overrides every driver builder offers; every
//!   call is bounded (connect timeout 5 s, operation timeout 20 s by default);
//! - [`AwsUrl`]: endpoint, region and credentials of `sqs://` and `sns://` URLs;
//! - [`SdkErrors`]: an SDK error as a one-line driver error naming the operation, the
//!   resource and AWS's error code and message (or the unreachable endpoint), and saying
//!   whether to retry: misconfigurations are not retryable, transient trouble is;
//! - [`BatchWrite`]: a write with the SQS and SNS batch calls, split by entry count and
//!   request size, FIFO destinations in order, partial failures reported per message;
//!   messages over the size limit are [`Rejected`](streams_core::Error::Rejected) before
//!   anything is sent ([`encode_by_stream`]);
//! - [`encode`]: the attribute wire format the SQS and SNS drivers share with the Go
//!   library. A payload that is XML-safe UTF-8 travels as it is (the Go library reads it
//!   unchanged); anything else is base64, marked by [`ATTR_BODY_ENCODING`]. Headers that
//!   do not fit the ten attributes AWS allows, or whose names it rejects, travel together
//!   as JSON in [`ATTR_HEADERS`].

mod batch;
mod config;
mod error;
mod url;
mod wire;

pub use batch::{
    encode_by_stream, split_batch, BatchRequest, BatchWrite, EncodedMessage, EntryFailure,
    RequestOutcome,
};
pub use config::{ClientConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, ENDPOINT_ENV};
pub use error::{one_line, SdkErrors, MAX_ERROR_TEXT};
pub use url::{AwsUrl, AWS_URL_PARAMS};
pub use wire::{
    attribute_name_ok, encode, message_group_id, xml_safe, Encoded, TimeFormat, ATTR_BODY_ENCODING,
    ATTR_CONTENT_TYPE, ATTR_HEADERS, ATTR_MESSAGE_ID, ATTR_MESSAGE_TIME, ATTR_STREAM_KEY,
    ATTR_STREAM_NAME, ENCODING_BASE64, ENCODING_EMPTY, MAX_ATTRIBUTES,
};
