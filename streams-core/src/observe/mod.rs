//! Observability: `tracing` spans and [`metrics`] counters and histograms for publishing
//! and handling, and (behind the `opentelemetry` feature) W3C trace context carried in
//! message headers.
//!
//! Wrap a writer in [`ObservedWriter`] and a reader in [`ObservedReader`] (or a handler in
//! [`ObserveLayer`]) and every driver reports the same spans and metrics:
//!
//! ```
//! use std::sync::Arc;
//! use streams_core::observe::{describe_metrics, ObservedReader, ObservedWriter};
//! use streams_core::{Reader, Writer};
//!
//! # fn demo(writer: Arc<dyn Writer>, reader: Arc<dyn Reader>) {
//! describe_metrics(); // once, after installing a metrics recorder
//! let writer: Arc<dyn Writer> = Arc::new(ObservedWriter::new(writer));
//! let reader: Arc<dyn Reader> = Arc::new(ObservedReader::new(reader));
//! # let _ = (writer, reader);
//! # }
//! ```
//!
//! # Spans
//!
//! Both spans are at `INFO` and use the OpenTelemetry messaging semantic conventions where
//! one applies; `streams.*` fields are this crate's own.
//!
//! | span | fields |
//! |---|---|
//! | `streams.publish`, one per [`Writer::write`](crate::Writer::write) | `otel.kind = "producer"`, `messaging.operation.type = "send"`, `messaging.system` (when set), `messaging.destination.name` (when every message of the batch has the same stream, else `streams.destinations`: the distinct names, comma separated), `messaging.batch.message_count`, `messaging.message.id` (a batch of one), and on failure `otel.status_code = "ERROR"`, `error.type`, `error.message` |
//! | `streams.handle`, one per message handed to a handler | `otel.kind = "consumer"`, `messaging.operation.type = "process"`, `messaging.system` (when set), `messaging.destination.name`, `messaging.message.id`, `streams.key`, the platform coordinates the driver put in the headers (Kafka: `messaging.destination.partition.id`, `messaging.kafka.offset`, `messaging.consumer.group.name`; SQS: `streams.sqs.message_id`), the consumer group of the read task otherwise, and on failure `otel.status_code = "ERROR"`, `error.type`, `error.message` |
//!
//! # Metrics
//!
//! Recorded through the [`metrics`] facade: free when no recorder is installed, exported
//! by whichever recorder the application installs (for Prometheus,
//! `metrics-exporter-prometheus`; the `prometheus` example shows it). Every metric has one
//! label, [`STREAM_LABEL`] (`stream`), the stream name: one series per stream, never per
//! message or partition. The names already end in `_total` and the unit, so the
//! Prometheus exporter prints them unchanged with or without its recommended naming.
//!
//! | name | kind | counts |
//! |---|---|---|
//! | [`MESSAGES_PUBLISHED`] | counter | messages a writer accepted |
//! | [`PUBLISH_FAILED`] | counter | messages a write did not deliver (only the failed ones of a [partial write](crate::Error::PartialWrite)) |
//! | [`PUBLISH_DURATION`] | histogram, seconds | time of each write call, once per stream in the batch |
//! | [`MESSAGES_HANDLED`] | counter | messages the handler acknowledged (a dead-lettered message is acknowledged) |
//! | [`MESSAGES_FAILED`] | counter | messages the handler failed (negative acknowledgements, panics, cancelled calls) |
//! | [`HANDLER_DURATION`] | histogram, seconds | time from handing a message to the handler to its answer, retries included |
//! | [`MESSAGES_RETRIED`] | counter | retries made by [`Retry`](crate::middleware::Retry) |
//! | [`MESSAGES_DEAD_LETTERED`] | counter | messages [`DeadLetter`](crate::middleware::DeadLetter) wrote to a dead-letter stream, by source stream |
//!
//! # Trace context (feature `opentelemetry`)
//!
//! With the `opentelemetry` feature, [`ObservedWriter`] injects the context of its
//! `streams.publish` span into each message's headers and [`Observe`] makes the context it
//! finds in a message's headers the parent of the `streams.handle` span, so a trace
//! follows a message from the producer to every consumer. Both go through OpenTelemetry's
//! global text-map propagator, the one every OpenTelemetry setup configures; for W3C
//! trace context (`traceparent`, `tracestate`) install it once at start-up:
//!
//! ```
//! # #[cfg(feature = "opentelemetry")] {
//! opentelemetry::global::set_text_map_propagator(
//!     opentelemetry_sdk::propagation::TraceContextPropagator::new(),
//! );
//! # }
//! ```
//!
//! The global propagator, rather than a fixed W3C one, lets an application add baggage or
//! speak another format its other services use; without one installed nothing is
//! injected. Spans reach OpenTelemetry through a `tracing_opentelemetry` layer.
//!
//! A message that already carries a `traceparent` keeps it: OpenTelemetry's messaging
//! conventions attach the context of a message's creation once and intermediaries do not
//! change it, so a message relayed from an outbox or dead-lettered still links to the
//! trace that produced it. Remove the header to start from the current span instead.
//! Empty values (an empty `tracestate`) are not written, since SQS and SNS reject empty
//! attributes.

mod handle;
#[cfg(feature = "opentelemetry")]
mod otel;
mod publish;
#[cfg(test)]
mod tests;

pub use handle::{Observe, ObserveFuture, ObserveLayer, ObservedReader};
#[cfg(feature = "opentelemetry")]
pub use otel::{extract_context, inject_context, HeaderExtractor, HeaderInjector};
pub use publish::ObservedWriter;

/// Counter: messages a writer accepted, by stream.
pub const MESSAGES_PUBLISHED: &str = "streams_messages_published_total";
/// Counter: messages a write did not deliver, by stream.
pub const PUBLISH_FAILED: &str = "streams_publish_failed_total";
/// Histogram: seconds each write call took, by stream.
pub const PUBLISH_DURATION: &str = "streams_publish_duration_seconds";
/// Counter: messages a handler acknowledged, by stream.
pub const MESSAGES_HANDLED: &str = "streams_messages_handled_total";
/// Counter: messages a handler failed, by stream.
pub const MESSAGES_FAILED: &str = "streams_messages_failed_total";
/// Histogram: seconds a handler took per message, by stream.
pub const HANDLER_DURATION: &str = "streams_handler_duration_seconds";
/// Counter: handler retries, by stream.
pub const MESSAGES_RETRIED: &str = "streams_messages_retried_total";
/// Counter: messages written to a dead-letter stream, by the stream they failed on.
pub const MESSAGES_DEAD_LETTERED: &str = "streams_messages_dead_lettered_total";
/// The label every metric of this crate carries: the stream name.
pub const STREAM_LABEL: &str = "stream";

/// Every metric name of this crate, for dashboards and tests.
pub const METRIC_NAMES: [&str; 8] = [
    MESSAGES_PUBLISHED,
    PUBLISH_FAILED,
    PUBLISH_DURATION,
    MESSAGES_HANDLED,
    MESSAGES_FAILED,
    HANDLER_DURATION,
    MESSAGES_RETRIED,
    MESSAGES_DEAD_LETTERED,
];

/// Describes every metric of this crate (unit and help text) to the installed recorder.
///
/// Call it once after installing the recorder; exporters such as Prometheus print the
/// help text. Metrics are recorded whether or not they were described.
///
/// ```
/// // After installing a recorder, such as metrics-exporter-prometheus's:
/// streams_core::observe::describe_metrics();
/// ```
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        MESSAGES_PUBLISHED,
        Unit::Count,
        "Messages a writer accepted."
    );
    describe_counter!(
        PUBLISH_FAILED,
        Unit::Count,
        "Messages a write did not deliver."
    );
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Time a write call took, once per stream in the batch."
    );
    describe_counter!(
        MESSAGES_HANDLED,
        Unit::Count,
        "Messages a handler acknowledged, dead-lettered ones included."
    );
    describe_counter!(
        MESSAGES_FAILED,
        Unit::Count,
        "Messages a handler failed (negative acknowledgements)."
    );
    describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Time a handler took per message, retries included."
    );
    describe_counter!(
        MESSAGES_RETRIED,
        Unit::Count,
        "Handler retries after a failure."
    );
    describe_counter!(
        MESSAGES_DEAD_LETTERED,
        Unit::Count,
        "Messages written to a dead-letter stream, by the stream they failed on."
    );
}

// Platform coordinates drivers add to a message's headers on read. The driver crates
// export the same names (streams-kafka `HEADER_PARTITION_ID`, `HEADER_CURRENT_OFFSET`,
// `HEADER_GROUP_ID`; streams-sqs `HEADER_SQS_MESSAGE_ID`); core cannot depend on them, and
// the names are fixed by the wire format shared with the Go library.
pub(crate) const KAFKA_PARTITION_HEADER: &str = "streams-kafka-partition-id";
pub(crate) const KAFKA_OFFSET_HEADER: &str = "streams-kafka-current-offset";
pub(crate) const KAFKA_GROUP_HEADER: &str = "streams-kafka-group-id";
pub(crate) const SQS_MESSAGE_ID_HEADER: &str = "sqs-message-id";

/// The low-cardinality `error.type` of a failure: the variant of a crate [`Error`],
/// `unrecoverable` or `handler`.
///
/// [`Error`]: crate::Error
pub(crate) fn error_type(err: &(dyn std::error::Error + 'static)) -> &'static str {
    use crate::Error;
    match err.downcast_ref::<Error>() {
        Some(Error::Closed(_)) => "closed",
        Some(Error::Full { .. }) => "full",
        Some(Error::UnknownContentType { .. }) => "unknown_content_type",
        Some(Error::Encode { .. }) => "encode",
        Some(Error::Decode { .. }) => "decode",
        Some(Error::EventNotRegistered(_)) => "event_not_registered",
        Some(Error::Invalid { .. }) => "invalid",
        Some(Error::Timeout { .. }) => "timeout",
        Some(Error::PartialWrite { .. }) => "partial_write",
        Some(Error::Rejected { .. }) => "rejected",
        Some(Error::Readers(_)) => "readers",
        Some(Error::Driver { .. }) => "driver",
        None if err.is::<crate::Unrecoverable>() => "unrecoverable",
        None if err.is::<crate::RetryAfter>() => "retry_after",
        None => "handler",
    }
}

/// Records a failure on a span: OpenTelemetry status, error type and message.
pub(crate) fn record_error(span: &tracing::Span, err: &(dyn std::error::Error + 'static)) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type(err));
    span.record("error.message", tracing::field::display(err));
}

/// A shared copy of a stream name for metric labels, reused while the stream stays the
/// same, so a handler or writer serving one stream does not copy its name per message.
/// The metric keys of the last stream a handler saw, built once per stream: building a
/// key with a label allocates and hashes, which per message would cost more than the
/// rest of the observation. Metrics are still registered at every use, so a recorder
/// installed later (or a thread-local one) sees them.
#[derive(Debug, Default)]
pub(crate) struct StreamLabel(Option<std::sync::Arc<StreamKeys>>);

impl Clone for StreamLabel {
    /// Empty: each clone of a handler (a reader runs one per worker, on its own
    /// thread) builds its own keys, so handling a message never touches a reference
    /// count another thread is touching.
    fn clone(&self) -> Self {
        StreamLabel::default()
    }
}

/// The keys of one stream's handling metrics.
#[derive(Debug)]
pub(crate) struct StreamKeys {
    pub(crate) stream: std::sync::Arc<str>,
    pub(crate) handled: metrics::Key,
    pub(crate) failed: metrics::Key,
    pub(crate) duration: metrics::Key,
}

impl StreamKeys {
    fn new(stream: &str) -> Self {
        let stream: std::sync::Arc<str> = stream.into();
        let key = |name: &'static str| {
            metrics::Key::from_parts(
                name,
                vec![metrics::Label::new(STREAM_LABEL, stream.clone())],
            )
        };
        StreamKeys {
            handled: key(MESSAGES_HANDLED),
            failed: key(MESSAGES_FAILED),
            duration: key(HANDLER_DURATION),
            stream,
        }
    }
}

impl StreamLabel {
    pub(crate) fn get(&mut self, stream: &str) -> std::sync::Arc<StreamKeys> {
        match &self.0 {
            Some(keys) if &*keys.stream == stream => keys.clone(),
            _ => {
                let keys = std::sync::Arc::new(StreamKeys::new(stream));
                self.0 = Some(keys.clone());
                keys
            }
        }
    }
}
