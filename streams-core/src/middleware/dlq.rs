use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::{SecondsFormat, Utc};
use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::{BoxError, Message, Writer};

/// Header of a dead-lettered message: why its handler failed.
pub const DLQ_REASON: &str = "streams-dlq-reason";
/// Header of a dead-lettered message: the stream it was read from.
pub const DLQ_SOURCE_STREAM: &str = "streams-dlq-source-stream";
/// Header of a dead-lettered message: when it was dead-lettered (RFC 3339).
pub const DLQ_FAILED_AT: &str = "streams-dlq-failed-at";

/// The dead-letter stream of a stream: its name plus `.dlq`.
///
/// ```
/// assert_eq!(streams_core::middleware::dead_letter_stream("orders"), "orders.dlq");
/// ```
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}.dlq")
}

/// The copy of a failed message written to its dead-letter stream.
pub(super) fn dead_letter_copy(
    mut dead: Message,
    err: &(dyn std::error::Error + 'static),
) -> Message {
    let source = dead.stream.clone();
    // Where it was read (partition, offset) goes along as headers.
    dead.metadata_into_headers();
    dead.stream = dead_letter_stream(&source);
    dead.headers.insert(DLQ_REASON.into(), err.to_string());
    dead.headers.insert(DLQ_SOURCE_STREAM.into(), source);
    dead.headers.insert(
        DLQ_FAILED_AT.into(),
        Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    dead
}

/// Layer of [`DeadLetter`].
#[derive(Debug, Clone)]
pub struct DeadLetterLayer {
    writer: Arc<dyn Writer>,
}

impl DeadLetterLayer {
    /// Dead-letters failed messages through `writer`.
    pub fn new(writer: Arc<dyn Writer>) -> Self {
        DeadLetterLayer { writer }
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;

    fn layer(&self, inner: S) -> DeadLetter<S> {
        DeadLetter {
            inner,
            writer: self.writer.clone(),
        }
    }
}

/// On handler failure, writes the message to `<stream>.dlq` and acknowledges it.
///
/// The dead-lettered copy keeps id, key, payload, content type, time and every header
/// (driver headers such as partition and offset say where it came from), and gains
/// [`DLQ_REASON`], [`DLQ_SOURCE_STREAM`] and [`DLQ_FAILED_AT`]. When the dead-letter
/// write itself fails, the handler's error is returned so the message is not
/// acknowledged and nothing is lost. Each message written to the dead-letter stream
/// counts in [`MESSAGES_DEAD_LETTERED`](crate::observe::MESSAGES_DEAD_LETTERED).
///
/// An error that asks for a later delivery ([`RetryAfter`](crate::RetryAfter)) is passed
/// on, not dead-lettered: the message is still being retried.
#[derive(Debug, Clone)]
pub struct DeadLetter<S> {
    pub(super) inner: S,
    pub(super) writer: Arc<dyn Writer>,
}

impl<S> DeadLetter<S> {
    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Message> for DeadLetter<S>
where
    S: Service<Message, Response = ()>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, msg: Message) -> Self::Future {
        // Keep a copy to dead-letter; the payload is shared, not copied.
        let copy = msg.clone();
        let fut = self.inner.call(msg);
        let writer = self.writer.clone();
        Box::pin(async move {
            let err = match fut.await {
                Ok(()) => return Ok(()),
                Err(e) => e.into(),
            };
            // The platform delivers it again after the delay: not dead yet.
            if crate::retry_after(err.as_ref()).is_some() {
                return Err(err);
            }
            let source = copy.stream.clone();
            let dead = dead_letter_copy(copy, err.as_ref());
            let id = dead.id.clone();
            let dlq = dead.stream.clone();
            match writer.write(vec![dead]).await {
                Ok(()) => {
                    tracing::warn!(stream = %source, %id, %dlq, error = %err, "message dead-lettered");
                    metrics::counter!(
                        crate::observe::MESSAGES_DEAD_LETTERED,
                        crate::observe::STREAM_LABEL => source
                    )
                    .increment(1);
                    Ok(())
                }
                Err(write_err) => {
                    tracing::error!(
                        stream = %source, %id, %dlq, error = %err, %write_err,
                        "dead-letter write failed; message not acknowledged"
                    );
                    Err(err)
                }
            }
        })
    }
}
