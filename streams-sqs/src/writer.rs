use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use streams_aws::{
    encode_by_stream, message_group_id, BatchRequest, BatchWrite, EntryFailure, RequestOutcome,
};
use streams_core::{Error, Message, Result, Writer};

use crate::client::{is_fifo, SqsClient};
use crate::wire::encode;

/// The most SQS accepts in one message and in one `SendMessageBatch` request: 1 MiB
/// (1,048,576 bytes) since August 2025, the writer's default limit. Queues whose
/// `MaximumMessageSize` is lower, older emulators and some regions may accept less:
/// set the limit with [`SqsWriterBuilder::with_max_message_bytes`].
pub const MAX_REQUEST_BYTES: usize = 1_048_576;
/// The most entries SQS accepts in one `SendMessageBatch` request.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Writes messages to SQS queues with `SendMessageBatch`, one queue per stream (see
/// [`queue_name`](crate::queue_name)).
///
/// A batch is split into requests of at most ten entries and the size limit (1 MiB by
/// default); requests for standard queues go out concurrently, those for FIFO queues one
/// after another so order per group holds. FIFO messages get the stream key as group id
/// (the stream name when there is no key) and the message id as deduplication id.
///
/// # Size limit
///
/// Each message is measured in SQS form (body plus attribute names, types and values;
/// a binary payload is base64, a third larger) before anything is sent. When any message
/// of a batch is over the limit, the write sends nothing of the batch and fails with
/// [`Error::Rejected`] naming each such message with its exact size and the limit: the
/// fault is the message's, and an outbox relay quarantines it. A missing queue, denied
/// access or an unreachable endpoint is an [`Error::Driver`] (retryable only for
/// transient trouble), never `Rejected`.
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
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// How many requests of one write may be in flight at once (standard queues).
    /// Default 8.
    pub fn with_max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// The size limit of one message, in SQS form, and of one request. Default 1 MiB
    /// ([`MAX_REQUEST_BYTES`], the SQS limit since 2025); lower it for queues whose
    /// `MaximumMessageSize` is lower, for emulators and for regions that still refuse
    /// more than 256 KiB (262,144 bytes).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes.max(1);
        self
    }

    /// Builds the writer.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a delay over 15 minutes or a size limit over 1 MiB.
    pub fn build(self) -> Result<SqsWriter> {
        if self.max_message_bytes > MAX_REQUEST_BYTES {
            return Err(Error::invalid(
                "max_message_bytes",
                format!(
                    "{} is over the SQS maximum of {MAX_REQUEST_BYTES} bytes",
                    self.max_message_bytes
                ),
            ));
        }
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

    /// Makes one `SendMessageBatch` call.
    async fn send_request(&self, request: BatchRequest) -> RequestOutcome {
        let mut entries = Vec::with_capacity(request.entries().len());
        for (i, (msg, enc)) in request.entries().iter().enumerate() {
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
            if request.is_fifo() {
                entry = entry
                    .message_group_id(message_group_id(msg))
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
            .queue_url(request.destination())
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Err(e) => {
                let queue = format!("queue {}", request.destination());
                let err = self.inner.client.error("SendMessageBatch", &queue, e);
                RequestOutcome::call_failed(&request, err)
            }
            Ok(out) => RequestOutcome::answered(
                &request,
                out.failed.iter().map(|f| EntryFailure {
                    id: &f.id,
                    code: &f.code,
                    message: f.message.as_deref(),
                    sender_fault: f.sender_fault,
                }),
            ),
        }
    }
}

#[async_trait]
impl Writer for SqsWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("sqs writer"));
        }
        let max_bytes = self.inner.max_message_bytes;
        let form = "SQS form (body and attributes)";
        let mut write = BatchWrite::new("queue", MAX_BATCH_ENTRIES, max_bytes);
        for (stream, messages) in encode_by_stream(batch, encode, max_bytes, form)? {
            match self.inner.client.queue_url(&stream).await {
                Ok(url) => write.add(&url, is_fifo(&url), messages),
                Err(e) => write.fail(messages, e),
            }
        }
        write
            .send(self.inner.max_in_flight, |r| self.send_request(r))
            .await
    }

    async fn close(&self) -> Result<()> {
        // Writes return only once SQS answered, so nothing is pending.
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}
