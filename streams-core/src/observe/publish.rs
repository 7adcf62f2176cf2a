use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{record_error, MESSAGES_PUBLISHED, PUBLISH_DURATION, PUBLISH_FAILED, STREAM_LABEL};
use crate::{Error, Message, Result, Writer};

/// A [`Writer`] that runs each write in a `streams.publish` span and records
/// [`MESSAGES_PUBLISHED`], [`PUBLISH_FAILED`] and [`PUBLISH_DURATION`].
///
/// With the `opentelemetry` feature it also carries the span's trace context in each
/// message's headers (see the [module documentation](super)). It wraps any writer,
/// `Arc<dyn Writer>` included, and is one itself.
///
/// ```
/// use std::sync::Arc;
/// use streams_core::observe::ObservedWriter;
/// use streams_core::{Message, Writer};
///
/// # async fn demo(writer: Arc<dyn Writer>) -> streams_core::Result<()> {
/// let writer = ObservedWriter::new(writer).with_system("kafka");
/// writer.write(vec![Message::new("orders", "{}")]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ObservedWriter<W> {
    inner: W,
    system: Option<&'static str>,
}

impl<W> ObservedWriter<W> {
    /// Wraps a writer.
    pub fn new(inner: W) -> Self {
        ObservedWriter {
            inner,
            system: None,
        }
    }

    /// The `messaging.system` to record, such as `kafka` or `aws_sqs`.
    pub fn with_system(mut self, system: &'static str) -> Self {
        self.system = Some(system);
        self
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Unwraps the writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[async_trait]
impl<W: Writer> Writer for ObservedWriter<W> {
    #[allow(unused_mut)] // mutated only to inject trace context
    async fn write(&self, mut batch: Vec<Message>) -> Result<()> {
        if batch.is_empty() {
            return self.inner.write(batch).await;
        }
        let streams = BatchStreams::of(&batch);
        let span = publish_span(&batch, &streams, self.system);
        #[cfg(feature = "opentelemetry")]
        super::otel::inject_span_context(&span, &mut batch);
        let started = Instant::now();
        let result = self.inner.write(batch).instrument(span.clone()).await;
        if let Err(err) = &result {
            record_error(&span, err);
        }
        streams.record(&result, started);
        result
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

fn publish_span(batch: &[Message], streams: &BatchStreams, system: Option<&'static str>) -> Span {
    let span = tracing::info_span!(
        "streams.publish",
        "otel.kind" = "producer",
        "messaging.system" = system,
        "messaging.operation.type" = "send",
        "messaging.destination.name" = Empty,
        "streams.destinations" = Empty,
        // The conventions set the count on batches only, the id on single messages.
        "messaging.batch.message_count" = (batch.len() > 1).then_some(batch.len()),
        "messaging.message.id" = (batch.len() == 1).then(|| batch[0].id.as_str()),
        "otel.status_code" = Empty,
        "error.type" = Empty,
        "error.message" = Empty,
    );
    if !span.is_disabled() {
        match streams {
            BatchStreams::One { stream, .. } => {
                span.record("messaging.destination.name", &**stream);
            }
            BatchStreams::Many { streams, .. } => {
                let names: Vec<&str> = streams.iter().map(|(s, _)| &**s).collect();
                span.record("streams.destinations", names.join(","));
            }
        }
    }
    span
}

/// The streams of a batch, with what is needed to count its messages per stream.
enum BatchStreams {
    /// Every message on one stream: the common case, one label for the whole batch.
    One { stream: Arc<str>, count: u64 },
    /// Several streams: the count per stream, and each message id's stream so that the
    /// failures of a partial write are counted on the right one.
    Many {
        streams: Vec<(Arc<str>, u64)>,
        ids: Vec<(String, usize)>,
    },
}

impl BatchStreams {
    fn of(batch: &[Message]) -> Self {
        let first = &batch[0].stream;
        if batch.iter().all(|m| &m.stream == first) {
            return BatchStreams::One {
                stream: first.as_str().into(),
                count: batch.len() as u64,
            };
        }
        let mut streams: Vec<(Arc<str>, u64)> = Vec::new();
        let mut ids = Vec::with_capacity(batch.len());
        for msg in batch {
            let i = match streams.iter().position(|(s, _)| **s == *msg.stream) {
                Some(i) => i,
                None => {
                    streams.push((msg.stream.as_str().into(), 0));
                    streams.len() - 1
                }
            };
            streams[i].1 += 1;
            ids.push((msg.id.clone(), i));
        }
        BatchStreams::Many { streams, ids }
    }

    fn record(self, result: &Result<()>, started: Instant) {
        let elapsed = started.elapsed().as_secs_f64();
        match self {
            BatchStreams::One { stream, count } => {
                let failed = match result {
                    Ok(()) => 0,
                    Err(Error::PartialWrite { failed, .. }) => (failed.len() as u64).min(count),
                    Err(_) => count,
                };
                count_stream(&stream, count - failed, failed, elapsed);
            }
            BatchStreams::Many { streams, ids } => {
                let mut failed = vec![0u64; streams.len()];
                match result {
                    Ok(()) => {}
                    Err(Error::PartialWrite { failed: which, .. }) => {
                        let index: HashMap<&str, usize> =
                            ids.iter().map(|(id, i)| (id.as_str(), *i)).collect();
                        for f in which {
                            if let Some(&i) = index.get(f.id.as_str()) {
                                failed[i] = (failed[i] + 1).min(streams[i].1);
                            }
                        }
                    }
                    Err(_) => {
                        for (f, (_, count)) in failed.iter_mut().zip(&streams) {
                            *f = *count;
                        }
                    }
                }
                for ((stream, count), failed) in streams.iter().zip(failed) {
                    count_stream(stream, count - failed, failed, elapsed);
                }
            }
        }
    }
}

fn count_stream(stream: &Arc<str>, published: u64, failed: u64, elapsed: f64) {
    if published > 0 {
        metrics::counter!(MESSAGES_PUBLISHED, STREAM_LABEL => stream.clone()).increment(published);
    }
    if failed > 0 {
        metrics::counter!(PUBLISH_FAILED, STREAM_LABEL => stream.clone()).increment(failed);
    }
    metrics::histogram!(PUBLISH_DURATION, STREAM_LABEL => stream.clone()).record(elapsed);
}
