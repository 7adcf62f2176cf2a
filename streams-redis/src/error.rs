//! Turning `redis` errors into one-line `streams` errors.

use streams_core::Error;

/// The driver name in errors, logs and `messaging.system`.
pub(crate) const DRIVER: &str = "redis";

/// A driver error naming the operation and the stream; retryable for connection
/// trouble and time-outs, not for what the server refused (a key of another type,
/// denied access, a bad argument).
pub(crate) fn redis_error(operation: &'static str, stream: &str, e: &redis::RedisError) -> Error {
    let retryable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN")
        );
    let line = e.to_string().replace(['\r', '\n'], " ");
    Error::driver(
        DRIVER,
        operation,
        retryable,
        format!("stream `{stream}`: {line}"),
    )
}
