use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use futures::StreamExt;
use streams_core::{Error, FailedMessage, Message, Result, Writer};

use crate::client::{is_fifo, sdk_error, SqsClient};
use crate::wire::{encode, Encoded};

/// The most SQS accepts in one message and in one `SendMessageBatch` request.
pub const MAX_REQUEST_BYTES: usize = 262_144;
/// The most entries SQS accepts in one `SendMessageBatch` request.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Writes messages to SQS queues with `SendMessageBatch`, one queue per stream (see
/// [`queue_name`](crate::queue_name)).
///
/// A batch is split into requests of at most ten entries and 256 KiB; requests for
/// standard queues go out concurrently, those for FIFO queues one after another so
/// order per group holds. FIFO messages get the stream key as group id (the stream name
/// when there is no key) and the message id as deduplication id.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// use streams_core::{Message, Writer};
///
/// let client = streams_sqs::SqsClient::from_env().await;
/// let writer = streams_sqs::SqsWriter::new(client);
/// writer.write(vec![Message::new("orders", "hello").with_key("customer-7")]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqsWriter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: SqsClient,
    delay_seconds: Option<i32>,
    max_in_flight: usize,
    max_message_bytes: usize,
    closed: AtomicBool,
}

/// Options of an [`SqsWriter`].
#[derive(Debug, Clone)]
pub struct SqsWriterBuilder {
    client: SqsClient,
    delay: Option<Duration>,
    max_in_flight: usize,
    max_message_bytes: usize,
}

impl SqsWriterBuilder {
    /// Delays delivery of every message (standard queues only; up to 15 minutes).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// How many requests of one write may be in flight at once (standard queues).
    /// Default 8.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// The size limit of one message and of one request. Default 256 KiB, the SQS
    /// limit; raise it only for queues configured for larger messages.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes.max(1);
        self
    }

    /// Builds the writer.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a delay over 15 minutes.
    pub fn build(self) -> Result<SqsWriter> {
        let delay_seconds = match self.delay {
            None => None,
            Some(d) if d <= Duration::from_secs(900) => Some(d.as_secs() as i32),
            Some(d) => {
                return Err(Error::invalid(
                    "delay",
                    format!("{d:?} is over the SQS maximum of 15 minutes"),
                ))
            }
        };
        Ok(SqsWriter {
            inner: Arc::new(Inner {
                client: self.client,
                delay_seconds,
                max_in_flight: self.max_in_flight,
                max_message_bytes: self.max_message_bytes,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

/// One `SendMessageBatch` request.
struct Chunk {
    url: String,
    fifo: bool,
    entries: Vec<(Message, Encoded)>,
}

/// What a chunk left undelivered.
enum ChunkOutcome {
    Done,
    Failed {
        failed: Vec<FailedMessage>,
        retryable: bool,
        call_error: Option<Error>,
    },
}

impl SqsWriter {
    /// A writer with default options.
    pub fn new(client: SqsClient) -> SqsWriter {
        Self::builder(client).build().expect("defaults are valid")
    }

    /// A builder.
    pub fn builder(client: SqsClient) -> SqsWriterBuilder {
        SqsWriterBuilder {
            client,
            delay: None,
            max_in_flight: 8,
            max_message_bytes: MAX_REQUEST_BYTES,
        }
    }

    /// The client this writer sends through.
    pub fn client(&self) -> &SqsClient {
        &self.inner.client
    }

    async fn send_chunk(&self, chunk: Chunk) -> ChunkOutcome {
        let mut entries = Vec::with_capacity(chunk.entries.len());
        for (i, (msg, enc)) in chunk.entries.iter().enumerate() {
            let attributes: HashMap<String, MessageAttributeValue> = enc
                .attributes
                .iter()
                .map(|(name, value)| {
                    let value = MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(value)
                        .build()
                        .expect("data type is set");
                    (name.clone(), value)
                })
                .collect();
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&enc.body)
                .set_message_attributes(Some(attributes));
            if chunk.fifo {
                let group = msg.key.clone().unwrap_or_else(|| msg.stream.clone());
                entry = entry
                    .message_group_id(group)
                    .message_deduplication_id(&msg.id);
            } else if let Some(delay) = self.inner.delay_seconds {
                entry = entry.delay_seconds(delay);
            }
            entries.push(entry.build().expect("id and body are set"));
        }
        let result = self
            .inner
            .client
            .sdk()
            .send_message_batch()
            .queue_url(&chunk.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Err(e) => {
                let err = sdk_error("SendMessageBatch", e);
                ChunkOutcome::Failed {
                    failed: chunk
                        .entries
                        .iter()
                        .map(|(m, _)| FailedMessage {
                            id: m.id.clone(),
                            reason: err.to_string(),
                        })
                        .collect(),
                    retryable: err.is_retryable(),
                    call_error: Some(err),
                }
            }
            Ok(out) if out.failed.is_empty() => ChunkOutcome::Done,
            Ok(out) => {
                let mut retryable = true;
                let failed = out
                    .failed
                    .iter()
                    .map(|f| {
                        retryable &= !f.sender_fault;
                        let id =
                            f.id.parse::<usize>()
                                .ok()
                                .and_then(|i| chunk.entries.get(i))
                                .map(|(m, _)| m.id.clone())
                                .unwrap_or_else(|| f.id.clone());
                        FailedMessage {
                            id,
                            reason: format!(
                                "{}: {}",
                                f.code,
                                f.message.as_deref().unwrap_or("no message")
                            ),
                        }
                    })
                    .collect();
                ChunkOutcome::Failed {
                    failed,
                    retryable,
                    call_error: None,
                }
            }
        }
    }
}

/// Splits one stream's messages into requests by count and by size.
fn chunk(url: &str, fifo: bool, messages: Vec<(Message, Encoded)>, max_bytes: usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (msg, enc) in messages {
        if !current.is_empty()
            && (current.len() == MAX_BATCH_ENTRIES || bytes + enc.size > max_bytes)
        {
            chunks.push(Chunk {
                url: url.to_owned(),
                fifo,
                entries: std::mem::take(&mut current),
            });
            bytes = 0;
        }
        bytes += enc.size;
        current.push((msg, enc));
    }
    if !current.is_empty() {
        chunks.push(Chunk {
            url: url.to_owned(),
            fifo,
            entries: current,
        });
    }
    chunks
}

#[async_trait]
impl Writer for SqsWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("sqs writer"));
        }
        // Encode and check sizes before any call, grouping by stream in batch order.
        let mut streams: Vec<(String, Vec<(Message, Encoded)>)> = Vec::new();
        for msg in batch {
            let enc = encode(&msg);
            if enc.size > self.inner.max_message_bytes {
                return Err(Error::invalid(
                    "message",
                    format!(
                        "message {} is {} bytes in SQS form (body and attributes); the limit is {}",
                        msg.id, enc.size, self.inner.max_message_bytes
                    ),
                ));
            }
            match streams.iter_mut().find(|(s, _)| *s == msg.stream) {
                Some((_, list)) => list.push((msg, enc)),
                None => streams.push((msg.stream.clone(), vec![(msg, enc)])),
            }
        }
        let mut failed = Vec::new();
        let mut retryable = true;
        let mut call_errors = Vec::new();
        let mut delivered = 0usize;
        let mut entry_failures = false;
        let mut standard = Vec::new();
        let mut fifo = Vec::new();
        for (stream, messages) in streams {
            let url = match self.inner.client.queue_url(&stream).await {
                Ok(url) => url,
                Err(e) => {
                    retryable &= e.is_retryable();
                    failed.extend(messages.iter().map(|(m, _)| FailedMessage {
                        id: m.id.clone(),
                        reason: e.to_string(),
                    }));
                    call_errors.push(e);
                    continue;
                }
            };
            let is_fifo = is_fifo(&url);
            let chunks = chunk(&url, is_fifo, messages, self.inner.max_message_bytes);
            if is_fifo {
                fifo.push(chunks);
            } else {
                standard.extend(chunks);
            }
        }
        let mut record = |outcome: ChunkOutcome, size: usize| match outcome {
            ChunkOutcome::Done => delivered += size,
            ChunkOutcome::Failed {
                failed: f,
                retryable: r,
                call_error,
            } => {
                delivered += size.saturating_sub(f.len());
                entry_failures |= call_error.is_none() && size > 0;
                retryable &= r;
                failed.extend(f);
                call_errors.extend(call_error);
            }
        };
        let mut outcomes = futures::stream::iter(standard)
            .map(|c| {
                let size = c.entries.len();
                async move { (self.send_chunk(c).await, size) }
            })
            .buffer_unordered(self.inner.max_in_flight);
        while let Some((outcome, size)) = outcomes.next().await {
            record(outcome, size);
        }
        drop(outcomes);
        for chunks in fifo {
            let mut chunks = chunks.into_iter();
            while let Some(c) = chunks.next() {
                let size = c.entries.len();
                let outcome = self.send_chunk(c).await;
                let stop = !matches!(outcome, ChunkOutcome::Done);
                record(outcome, size);
                if stop {
                    // Later messages of the stream would overtake the failed ones.
                    let rest: Vec<FailedMessage> = chunks
                        .by_ref()
                        .flat_map(|c| c.entries)
                        .map(|(m, _)| FailedMessage {
                            id: m.id,
                            reason: "not sent: an earlier request for this FIFO queue failed"
                                .into(),
                        })
                        .collect();
                    record(
                        ChunkOutcome::Failed {
                            failed: rest,
                            retryable: true,
                            call_error: None,
                        },
                        0,
                    );
                    break;
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if delivered == 0 && call_errors.len() == 1 && !entry_failures {
            return Err(call_errors.remove(0));
        }
        Err(Error::PartialWrite { failed, retryable })
    }

    async fn close(&self) -> Result<()> {
        // Writes return only once SQS answered, so nothing is pending.
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_by_count_and_size() {
        let msgs: Vec<_> = (0..25)
            .map(|i| {
                let m = Message::new("s", format!("{i}"));
                let e = encode(&m);
                (m, e)
            })
            .collect();
        let chunks = chunk("u", false, msgs, MAX_REQUEST_BYTES);
        let sizes: Vec<_> = chunks.iter().map(|c| c.entries.len()).collect();
        assert_eq!(sizes, vec![10, 10, 5]);

        let big: Vec<_> = (0..5)
            .map(|_| {
                let m = Message::new("s", "x".repeat(100_000));
                let e = encode(&m);
                (m, e)
            })
            .collect();
        let chunks = chunk("u", false, big, MAX_REQUEST_BYTES);
        assert_eq!(chunks.len(), 3);
        for c in &chunks {
            assert!(c.entries.iter().map(|(_, e)| e.size).sum::<usize>() <= MAX_REQUEST_BYTES);
        }
    }
}
