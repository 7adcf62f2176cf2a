//! Turning `async-nats` errors into one-line `streams` errors.

use std::fmt::Display;

use streams_core::Error;

/// The driver name in errors, logs and `messaging.system`.
pub(crate) const DRIVER: &str = "nats";

/// A driver error naming the operation and the stream.
pub(crate) fn nats_error(
    operation: &'static str,
    stream: &str,
    retryable: bool,
    e: impl Display,
) -> Error {
    Error::driver(
        DRIVER,
        operation,
        retryable,
        format!("stream `{stream}`: {e}"),
    )
}

/// The one line for a stream that does not exist.
pub(crate) fn missing_stream(operation: &'static str, stream: &str) -> Error {
    nats_error(
        operation,
        stream,
        false,
        "no JetStream stream holds it (create it with `streams create` or `create_stream`)",
    )
}
