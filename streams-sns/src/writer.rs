use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sns::config::http::HttpResponse;
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use streams_aws::{
    encode_by_stream, message_group_id, BatchRequest, BatchWrite, ClientConfig, EntryFailure,
    RequestOutcome, SdkErrors,
};
use streams_core::{Error, Message, Result, Writer};

use crate::wire::{encode, valid_subject};

const DRIVER: &str = "sns";

/// The environment variable [`SnsWriterBuilder::from_env`] reads an endpoint override
/// from, for emulators such as LocalStack or moto.
pub const ENDPOINT_ENV: &str = streams_aws::ENDPOINT_ENV;
/// The environment variable [`SnsWriterBuilder::from_env`] reads the account id from.
pub const ACCOUNT_ID_ENV: &str = "AWS_ACCOUNT_ID";
/// The most SNS accepts in one message and in one `PublishBatch` request on a topic with
/// the default `MaximumMessageSize`: 256 KiB (262,144 bytes), the writer's default limit.
/// A topic whose `MaximumMessageSize` attribute is raised (up to
/// [`MAX_TOPIC_MESSAGE_BYTES`]) takes more: set the limit with
/// [`SnsWriterBuilder::with_max_message_bytes`].
pub const MAX_REQUEST_BYTES: usize = 262_144;
/// The most any SNS topic accepts in one message, once its `MaximumMessageSize`
/// attribute is raised to the maximum: 1 MiB (1,048,576 bytes).
pub const MAX_TOPIC_MESSAGE_BYTES: usize = 1_048_576;
/// The most entries SNS accepts in one `PublishBatch` request.
pub const MAX_BATCH_ENTRIES: usize = 10;

/// The SNS topic name of a stream: dots become dashes, and a stream ending in `.fifo`
/// names a FIFO topic.
///
/// ```
/// assert_eq!(streams_sns::topic_name("orders.created"), "orders-created");
/// assert_eq!(streams_sns::topic_name("orders.eu.fifo"), "orders-eu.fifo");
/// ```
pub fn topic_name(stream: &str) -> String {
    match stream.strip_suffix(".fifo") {
        Some(stem) => format!("{}.fifo", stem.replace('.', "-")),
        None => stream.replace('.', "-"),
    }
}

/// The topic ARN of a stream, as the Go library builds it:
/// `arn:aws:sns:{region}:{account}:{topic name}`.
///
/// ```
/// assert_eq!(
///     streams_sns::topic_arn("us-east-1", "123456789012", "orders.created"),
///     "arn:aws:sns:us-east-1:123456789012:orders-created"
/// );
/// ```
pub fn topic_arn(region: &str, account_id: &str, stream: &str) -> String {
    format!("arn:aws:sns:{region}:{account_id}:{}", topic_name(stream))
}

/// Publishes messages to SNS topics with `PublishBatch`, one topic per stream.
///
/// Batches are split into requests of at most ten entries and the size limit (256 KiB by
/// default), sent concurrently for standard topics and in order for FIFO topics (stream
/// name ending in `.fifo`: group id = stream key, else the stream name; deduplication
/// id = message id). Attributes follow the Go library (`streams-message-time` as RFC 3339); the
/// subject is the stream key when SNS accepts it as one. Payloads that are not XML-safe
/// UTF-8 are sent base64-encoded with `streams-body-encoding: base64`; the
/// `streams-sqs` reader decodes them from raw and enveloped deliveries alike.
///
/// The Go writer sends `MessageStructure=json` with the data under every protocol key;
/// every subscriber receives the same data from a plain message, which leaves the whole
/// size limit to the payload, so this writer sends plain messages.
///
/// # Size limit
///
/// AWS documents 256 KiB (262,144 bytes) for a message and for a `PublishBatch` request
/// on a topic as created, and up to 1 MiB on a topic whose `MaximumMessageSize`
/// attribute is raised ([large message payloads]). Each message is measured in SNS form
/// (message plus attribute names, types and values; a binary payload is base64) before
/// anything is sent; when any message of a batch is over the limit, the write sends
/// nothing of the batch and fails with [`Error::Rejected`] naming each such message with
/// its exact size and the limit. A missing topic, denied access or an unreachable
/// endpoint is an [`Error::Driver`] (retryable only for transient trouble), never
/// `Rejected`.
///
/// [large message payloads]: https://docs.aws.amazon.com/sns/latest/dg/large-message-payloads.html
///
/// # Errors and time limits
///
/// Every call is bounded (see [`SnsWriterBuilder::with_connect_timeout`] and
/// [`SnsWriterBuilder::with_operation_timeout`]); errors read as one line naming the
/// operation, the topic and AWS's error code and message, or the endpoint that could
/// not be reached.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// use streams_core::{Message, Writer};
///
/// let writer = streams_sns::SnsWriter::builder()
///     .with_endpoint("http://127.0.0.1:4566")
///     .with_region("us-east-1")
///     .with_static_credentials("test", "test")
///     .with_account_id("123456789012")
///     .connect()
///     .await?;
/// writer.create_topic("orders").await?;
/// writer.write(vec![Message::new("orders", "hello")]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SnsWriter {
    inner: Arc<Inner>,
}

struct Inner {
    sdk: aws_sdk_sns::Client,
    errors: SdkErrors,
    region: Option<String>,
    account_id: Option<String>,
    arns: RwLock<HashMap<String, String>>,
    max_in_flight: usize,
    max_message_bytes: usize,
    closed: AtomicBool,
}

impl fmt::Debug for SnsWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnsWriter")
            .field("endpoint", &self.inner.errors.endpoint_label())
            .field("region", &self.inner.region)
            .field("account_id", &self.inner.account_id)
            .field("closed", &self.inner.closed)
            .finish_non_exhaustive()
    }
}

/// Builds an [`SnsWriter`].
#[derive(Debug, Clone)]
pub struct SnsWriterBuilder {
    client: Option<aws_sdk_sns::Client>,
    aws: ClientConfig,
    account_id: Option<String>,
    arns: HashMap<String, String>,
    max_in_flight: usize,
    max_message_bytes: usize,
}

impl Default for SnsWriterBuilder {
    fn default() -> Self {
        SnsWriterBuilder {
            client: None,
            aws: ClientConfig::new(),
            account_id: None,
            arns: HashMap::new(),
            max_in_flight: 8,
            max_message_bytes: MAX_REQUEST_BYTES,
        }
    }
}

impl SnsWriterBuilder {
    /// Reads the endpoint override from `STREAMS_AWS_ENDPOINT` and the account id from
    /// `AWS_ACCOUNT_ID` when set; region and credentials come from the usual AWS
    /// environment at [`connect`](Self::connect).
    pub fn from_env() -> Self {
        SnsWriterBuilder {
            aws: ClientConfig::from_env(),
            account_id: std::env::var(ACCOUNT_ID_ENV).ok().filter(|v| !v.is_empty()),
            ..Self::default()
        }
    }

    /// Uses this SDK client as it is (endpoint, region and credentials settings are
    /// then ignored).
    pub fn with_client(mut self, client: aws_sdk_sns::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Uses this AWS configuration instead of loading one.
    pub fn with_sdk_config(mut self, config: SdkConfig) -> Self {
        self.aws = self.aws.with_sdk_config(config);
        self
    }

    /// Sends every request to this endpoint (an emulator, a VPC endpoint).
    pub fn with_endpoint(mut self, url: impl Into<String>) -> Self {
        self.aws = self.aws.with_endpoint(url);
        self
    }

    /// Sets the region (also used in topic ARNs).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.aws = self.aws.with_region(region);
        self
    }

    /// Uses fixed credentials (for emulators and tests).
    pub fn with_static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.aws = self
            .aws
            .with_static_credentials(access_key_id, secret_access_key);
        self
    }

    /// Replaces the client configuration (endpoint, region, credentials, time limits)
    /// at once, as `connect` does with what a URL says.
    pub fn with_client_config(mut self, config: ClientConfig) -> Self {
        self.aws = config;
        self
    }

    /// The AWS account id used in topic ARNs.
    pub fn with_account_id(mut self, account_id: impl Into<String>) -> Self {
        self.account_id = Some(account_id.into());
        self
    }

    /// Publishes messages of `stream` to this topic ARN.
    pub fn with_topic_arn(mut self, stream: impl Into<String>, arn: impl Into<String>) -> Self {
        self.arns.insert(stream.into(), arn.into());
        self
    }

    /// How many requests of one write may be in flight at once (standard topics).
    /// Default 8.
    pub fn with_max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// The size limit of one message, in SNS form, and of one request. Default 256 KiB
    /// ([`MAX_REQUEST_BYTES`]), what a topic accepts unless its `MaximumMessageSize`
    /// attribute is raised; set up to 1 MiB ([`MAX_TOPIC_MESSAGE_BYTES`]) for topics
    /// configured so.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes.max(1);
        self
    }

    /// How long a connection attempt to SNS may take. Default 5 s; see
    /// [`ClientConfig`](streams_aws::ClientConfig#time-limits). Ignored when a
    /// [`client`](Self::with_client) is given.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.aws = self.aws.with_connect_timeout(timeout);
        self
    }

    /// How long one SNS call may take, retries included. Default 20 s. Ignored when a
    /// [`client`](Self::with_client) is given.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.aws = self.aws.with_operation_timeout(timeout);
        self
    }

    /// Builds the writer, loading the AWS configuration unless a client or
    /// configuration was given.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a size limit over 1 MiB.
    pub async fn connect(self) -> Result<SnsWriter> {
        if self.max_message_bytes > MAX_TOPIC_MESSAGE_BYTES {
            return Err(Error::invalid(
                "max_message_bytes",
                format!(
                    "{} is over the SNS maximum of {MAX_TOPIC_MESSAGE_BYTES} bytes",
                    self.max_message_bytes
                ),
            ));
        }
        // The region set here names topics in ARNs even when a client was given.
        let region = self.aws.region_override().map(str::to_owned);
        let (sdk, endpoint) = match self.client {
            Some(client) => (client, None),
            None => {
                let config = self.aws.load().await;
                let endpoint = config.endpoint_url().map(str::to_owned);
                (aws_sdk_sns::Client::new(&config), endpoint)
            }
        };
        let region = region.or_else(|| sdk.config().region().map(|r| r.to_string()));
        let errors = SdkErrors::new(DRIVER)
            .with_transient_codes(TRANSIENT_CODES)
            .with_endpoint_of(endpoint.as_deref(), region.as_deref());
        Ok(SnsWriter {
            inner: Arc::new(Inner {
                sdk,
                errors,
                region,
                account_id: self.account_id,
                arns: RwLock::new(self.arns),
                max_in_flight: self.max_in_flight,
                max_message_bytes: self.max_message_bytes,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

impl SnsWriter {
    /// A builder.
    pub fn builder() -> SnsWriterBuilder {
        SnsWriterBuilder::default()
    }

    /// The SDK client, for calls this crate does not wrap.
    pub fn sdk(&self) -> &aws_sdk_sns::Client {
        &self.inner.sdk
    }

    /// The topic ARN of a stream: the one set for it, else built from region, account
    /// id and [`topic_name`].
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when region or account id is unknown.
    pub fn topic_arn(&self, stream: &str) -> Result<String> {
        if let Some(arn) = self
            .inner
            .arns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
        {
            return Ok(arn.clone());
        }
        match (&self.inner.region, &self.inner.account_id) {
            (Some(region), Some(account)) => Ok(topic_arn(region, account, stream)),
            _ => Err(Error::invalid(
                "topic",
                format!("no ARN for stream `{stream}`: set an account id and a region, or the topic ARN"),
            )),
        }
    }

    /// Creates a stream's topic (FIFO when the stream ends in `.fifo`), remembers and
    /// returns its ARN.
    ///
    /// # Errors
    ///
    /// A driver error.
    pub async fn create_topic(&self, stream: &str) -> Result<String> {
        let mut req = self.inner.sdk.create_topic().name(topic_name(stream));
        if stream.ends_with(".fifo") {
            req = req.attributes("FifoTopic", "true");
        }
        let name = format!("topic {}", topic_name(stream));
        let out = req
            .send()
            .await
            .map_err(|e| self.error("CreateTopic", &name, e))?;
        let arn = out.topic_arn.ok_or_else(|| {
            let reason = format!("{name}: no topic ARN in the answer");
            Error::driver(DRIVER, "CreateTopic", false, reason)
        })?;
        self.inner
            .arns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream.to_owned(), arn.clone());
        Ok(arn)
    }

    /// Subscribes an SQS queue (by ARN) to a stream's topic. With `raw` the queue
    /// receives the payload and attributes as they were published; without, SNS wraps
    /// them in a JSON envelope, which the `streams-sqs` reader unwraps. Returns the
    /// subscription ARN.
    ///
    /// On AWS the queue's access policy must also allow the topic to send to it.
    ///
    /// # Errors
    ///
    /// A driver error.
    pub async fn subscribe_queue(
        &self,
        stream: &str,
        queue_arn: &str,
        raw: bool,
    ) -> Result<String> {
        let arn = self.topic_arn(stream)?;
        let mut req = self
            .inner
            .sdk
            .subscribe()
            .topic_arn(&arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .return_subscription_arn(true);
        if raw {
            req = req.attributes("RawMessageDelivery", "true");
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.error("Subscribe", &format!("topic {arn}"), e))?;
        Ok(out.subscription_arn.unwrap_or_default())
    }

    /// The endpoint as errors name it: the endpoint override, else the SNS endpoint of
    /// the region.
    pub fn endpoint(&self) -> &str {
        self.inner.errors.endpoint_label()
    }

    /// Maps an SDK error of `operation` on `resource` (`topic ARN`).
    fn error<E>(
        &self,
        operation: &'static str,
        resource: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.inner.errors.map(operation, resource, err)
    }

    /// Makes one `PublishBatch` call.
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
            let mut entry = PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .message(&enc.body)
                .set_message_attributes(Some(attributes));
            if let Some(key) = msg.key.as_deref().filter(|k| valid_subject(k)) {
                entry = entry.subject(key);
            }
            if request.is_fifo() {
                entry = entry
                    .message_group_id(message_group_id(msg))
                    .message_deduplication_id(&msg.id);
            }
            entries.push(entry.build().expect("id and message are set"));
        }
        let result = self
            .inner
            .sdk
            .publish_batch()
            .topic_arn(request.destination())
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        match result {
            Err(e) => {
                let topic = format!("topic {}", request.destination());
                let err = self.error("PublishBatch", &topic, e);
                RequestOutcome::call_failed(&request, err)
            }
            Ok(out) => RequestOutcome::answered(
                &request,
                out.failed().iter().map(|f| EntryFailure {
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
impl Writer for SnsWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("sns writer"));
        }
        let max_bytes = self.inner.max_message_bytes;
        let form = "SNS form (message and attributes)";
        let mut write = BatchWrite::new("topic", MAX_BATCH_ENTRIES, max_bytes);
        for (stream, messages) in encode_by_stream(batch, encode, max_bytes, form)? {
            let arn = self.topic_arn(&stream)?;
            let fifo = arn.ends_with(".fifo");
            write.add(&arn, fifo, messages);
        }
        write
            .send(self.inner.max_in_flight, |r| self.send_request(r))
            .await
    }

    async fn close(&self) -> Result<()> {
        // Writes return only once SNS answered, so nothing is pending.
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }
}

/// SNS error codes that mean "try later" besides the throttling codes every AWS service
/// shares.
const TRANSIENT_CODES: &[&str] = &["KMSThrottling"];
