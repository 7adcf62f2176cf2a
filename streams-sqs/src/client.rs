use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use streams_aws::{ClientConfig, SdkErrors};
use streams_core::{Error, Result};

/// The environment variable [`SqsClientBuilder::from_env`] reads an endpoint override
/// from, for emulators such as LocalStack or moto.
pub const ENDPOINT_ENV: &str = streams_aws::ENDPOINT_ENV;

pub(crate) const DRIVER: &str = "sqs";

/// The SQS queue name of a stream: dots become dashes, and a stream ending in `.fifo`
/// names a FIFO queue (`orders.eu.fifo` becomes `orders-eu.fifo`).
///
/// ```
/// assert_eq!(streams_sqs::queue_name("orders.created"), "orders-created");
/// assert_eq!(streams_sqs::queue_name("orders.eu.fifo"), "orders-eu.fifo");
/// ```
pub fn queue_name(stream: &str) -> String {
    match stream.strip_suffix(".fifo") {
        Some(stem) => format!("{}.fifo", stem.replace('.', "-")),
        None => stream.replace('.', "-"),
    }
}

/// Whether a queue URL (or name) is that of a FIFO queue.
pub(crate) fn is_fifo(queue: &str) -> bool {
    queue.ends_with(".fifo")
}

/// An SQS client shared by [`SqsWriter`](crate::SqsWriter) and
/// [`SqsReader`](crate::SqsReader): the SDK client plus a cache of queue URLs by stream.
///
/// Cloning is cheap and shares the cache.
///
/// Every call is bounded by the client's time limits (see
/// [`SqsClientBuilder::with_connect_timeout`] and [`SqsClientBuilder::with_operation_timeout`]),
/// so against a wrong or unreachable endpoint writes, reads and queue administration
/// fail within seconds. Errors read as one line naming the operation, the queue and
/// AWS's error code and message, or the endpoint that could not be reached; a missing
/// queue, denied access or invalid credentials are not retryable.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let client = streams_sqs::SqsClient::builder()
///     .with_endpoint("http://127.0.0.1:4566")
///     .with_region("us-east-1")
///     .with_static_credentials("test", "test")
///     .connect()
///     .await;
/// client.create_queue("orders").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqsClient {
    sdk: aws_sdk_sqs::Client,
    errors: SdkErrors,
    urls: Arc<RwLock<HashMap<String, String>>>,
}

impl fmt::Debug for SqsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsClient")
            .field("endpoint", &self.errors.endpoint_label())
            .field("cached_queue_urls", &self.urls.read().map(|u| u.len()).ok())
            .finish_non_exhaustive()
    }
}

/// Builds an [`SqsClient`]: AWS configuration from the environment unless given, with
/// optional overrides of endpoint, region and credentials.
#[derive(Debug, Default, Clone)]
pub struct SqsClientBuilder {
    aws: ClientConfig,
}

impl SqsClientBuilder {
    /// Reads the endpoint override from `STREAMS_AWS_ENDPOINT` when set; region and
    /// credentials come from the usual AWS environment at [`build`](Self::connect).
    pub fn from_env() -> Self {
        SqsClientBuilder {
            aws: ClientConfig::from_env(),
        }
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

    /// Sets the region.
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

    /// How long a connection attempt to SQS may take. Default 5 s; see
    /// [`ClientConfig`](streams_aws::ClientConfig#time-limits).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.aws = self.aws.with_connect_timeout(timeout);
        self
    }

    /// How long one SQS call may take, retries included. Default 20 s; a receive gets
    /// its long-poll wait on top, so a healthy long poll is never cut.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.aws = self.aws.with_operation_timeout(timeout);
        self
    }

    /// Replaces the client configuration (endpoint, region, credentials, time limits)
    /// at once, as `connect` does with what a URL says.
    pub fn with_client_config(mut self, config: ClientConfig) -> Self {
        self.aws = config;
        self
    }

    /// Loads the AWS configuration (unless one was given) and builds the client.
    pub async fn connect(self) -> SqsClient {
        let config = self.aws.load().await;
        let errors =
            errors().with_endpoint_of(config.endpoint_url(), config.region().map(|r| r.as_ref()));
        SqsClient {
            sdk: aws_sdk_sqs::Client::new(&config),
            errors,
            urls: Arc::default(),
        }
    }
}

impl SqsClient {
    /// A builder.
    pub fn builder() -> SqsClientBuilder {
        SqsClientBuilder::default()
    }

    /// A client configured from the environment, see [`SqsClientBuilder::from_env`].
    pub async fn from_env() -> SqsClient {
        SqsClientBuilder::from_env().connect().await
    }

    /// Wraps an existing SDK client, with its own time limits (the SDK sets none by
    /// default but a connect timeout). Errors name the SQS endpoint of its region.
    pub fn from_sdk(sdk: aws_sdk_sqs::Client) -> SqsClient {
        let errors = errors().with_endpoint_of(None, sdk.config().region().map(|r| r.as_ref()));
        SqsClient {
            sdk,
            errors,
            urls: Arc::default(),
        }
    }

    /// The endpoint as errors name it: the endpoint override, else the SQS endpoint of
    /// the region.
    pub fn endpoint(&self) -> &str {
        self.errors.endpoint_label()
    }

    /// The operation timeout of the client's calls, if it has one.
    pub(crate) fn operation_timeout(&self) -> Option<Duration> {
        self.sdk
            .config()
            .timeout_config()
            .and_then(|t| t.operation_timeout())
    }

    /// Maps an SDK error of `operation` on `resource` (`queue NAME` or `queue URL`).
    pub(crate) fn error<E>(
        &self,
        operation: &'static str,
        resource: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.errors.map(operation, resource, err)
    }

    /// The SDK client, for calls this crate does not wrap.
    pub fn sdk(&self) -> &aws_sdk_sqs::Client {
        &self.sdk
    }

    /// Uses `url` for `stream` instead of looking the queue up by name.
    pub fn set_queue_url(&self, stream: &str, url: impl Into<String>) {
        self.urls
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream.to_owned(), url.into());
    }

    /// The URL of a stream's queue, looked up once by [`queue_name`] and cached.
    ///
    /// # Errors
    ///
    /// A driver error; `QueueDoesNotExist` is not retryable.
    pub async fn queue_url(&self, stream: &str) -> Result<String> {
        if let Some(url) = self
            .urls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
        {
            return Ok(url.clone());
        }
        let name = queue_name(stream);
        let out = self
            .sdk
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .map_err(|e| self.error("GetQueueUrl", &format!("queue {name}"), e))?;
        let url = out.queue_url.ok_or_else(|| {
            let reason = format!("queue {name}: no queue URL in the answer");
            Error::driver(DRIVER, "GetQueueUrl", false, reason)
        })?;
        self.set_queue_url(stream, url.clone());
        Ok(url)
    }

    /// Creates a stream's queue (FIFO when the stream ends in `.fifo`) and returns its
    /// URL; an existing queue with the same attributes is fine.
    ///
    /// # Errors
    ///
    /// A driver error.
    pub async fn create_queue(&self, stream: &str) -> Result<String> {
        self.create_queue_with(stream, []).await
    }

    /// As [`create_queue`](Self::create_queue), with queue attributes such as
    /// `VisibilityTimeout` or `RedrivePolicy`.
    ///
    /// # Errors
    ///
    /// A driver error.
    pub async fn create_queue_with(
        &self,
        stream: &str,
        attributes: impl IntoIterator<Item = (QueueAttributeName, String)>,
    ) -> Result<String> {
        let name = queue_name(stream);
        let mut req = self.sdk.create_queue().queue_name(&name);
        if is_fifo(&name) {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        for (attribute, value) in attributes {
            req = req.attributes(attribute, value);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.error("CreateQueue", &format!("queue {name}"), e))?;
        let url = out.queue_url.ok_or_else(|| {
            let reason = format!("queue {name}: no queue URL in the answer");
            Error::driver(DRIVER, "CreateQueue", false, reason)
        })?;
        self.set_queue_url(stream, url.clone());
        Ok(url)
    }

    /// The ARN of a stream's queue (to subscribe it to an SNS topic, or to name it as a
    /// dead-letter target).
    ///
    /// # Errors
    ///
    /// A driver error.
    pub async fn queue_arn(&self, stream: &str) -> Result<String> {
        let url = self.queue_url(stream).await?;
        let out = self
            .sdk
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| self.error("GetQueueAttributes", &format!("queue {url}"), e))?;
        out.attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| {
                let reason = format!("queue {url}: no QueueArn in the answer");
                Error::driver(DRIVER, "GetQueueAttributes", false, reason)
            })
    }

    /// Sets a redrive policy: after `max_receive_count` failed receives SQS moves a
    /// message of `stream` to the queue of `dead_letter_stream`.
    ///
    /// # Errors
    ///
    /// A driver error.
    pub async fn set_redrive_policy(
        &self,
        stream: &str,
        dead_letter_stream: &str,
        max_receive_count: u32,
    ) -> Result<()> {
        let target = self.queue_arn(dead_letter_stream).await?;
        let url = self.queue_url(stream).await?;
        let policy = serde_json::json!({
            "deadLetterTargetArn": target,
            "maxReceiveCount": max_receive_count,
        })
        .to_string();
        self.sdk
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::RedrivePolicy, policy)
            .send()
            .await
            .map_err(|e| self.error("SetQueueAttributes", &format!("queue {url}"), e))?;
        Ok(())
    }

    /// Deletes a stream's queue and forgets its URL.
    ///
    /// # Errors
    ///
    /// A driver error.
    pub async fn delete_queue(&self, stream: &str) -> Result<()> {
        let url = self.queue_url(stream).await?;
        self.sdk
            .delete_queue()
            .queue_url(&url)
            .send()
            .await
            .map_err(|e| self.error("DeleteQueue", &format!("queue {url}"), e))?;
        self.urls
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream);
        Ok(())
    }
}

/// SQS error codes that mean "try later" besides the throttling codes every AWS service
/// shares.
const TRANSIENT_CODES: &[&str] = &["KmsThrottled", "KMS.ThrottlingException"];

/// How SQS errors are mapped: see [`SdkErrors`].
fn errors() -> SdkErrors {
    SdkErrors::new(DRIVER).with_transient_codes(TRANSIENT_CODES)
}
