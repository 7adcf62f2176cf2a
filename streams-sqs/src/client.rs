use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use aws_config::SdkConfig;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use streams_aws::ClientConfig;
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
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let client = streams_sqs::SqsClient::builder()
///     .endpoint("http://127.0.0.1:4566")
///     .region("us-east-1")
///     .static_credentials("test", "test")
///     .build()
///     .await;
/// client.create_queue("orders").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqsClient {
    sdk: aws_sdk_sqs::Client,
    urls: Arc<RwLock<HashMap<String, String>>>,
}

impl fmt::Debug for SqsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsClient")
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
    /// credentials come from the usual AWS environment at [`build`](Self::build).
    pub fn from_env() -> Self {
        SqsClientBuilder {
            aws: ClientConfig::from_env(),
        }
    }

    /// Uses this AWS configuration instead of loading one.
    pub fn sdk_config(mut self, config: SdkConfig) -> Self {
        self.aws = self.aws.sdk_config(config);
        self
    }

    /// Sends every request to this endpoint (an emulator, a VPC endpoint).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.aws = self.aws.endpoint(url);
        self
    }

    /// Sets the region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.aws = self.aws.region(region);
        self
    }

    /// Uses fixed credentials (for emulators and tests).
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.aws = self
            .aws
            .static_credentials(access_key_id, secret_access_key);
        self
    }

    /// Loads the AWS configuration (unless one was given) and builds the client.
    pub async fn build(self) -> SqsClient {
        SqsClient::from_sdk(aws_sdk_sqs::Client::new(&self.aws.load().await))
    }
}

impl SqsClient {
    /// A builder.
    pub fn builder() -> SqsClientBuilder {
        SqsClientBuilder::default()
    }

    /// A client configured from the environment, see [`SqsClientBuilder::from_env`].
    pub async fn from_env() -> SqsClient {
        SqsClientBuilder::from_env().build().await
    }

    /// Wraps an existing SDK client.
    pub fn from_sdk(sdk: aws_sdk_sqs::Client) -> SqsClient {
        SqsClient {
            sdk,
            urls: Arc::default(),
        }
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
        let out = self
            .sdk
            .get_queue_url()
            .queue_name(queue_name(stream))
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueUrl", e))?;
        let url = out
            .queue_url
            .ok_or_else(|| Error::driver(DRIVER, "GetQueueUrl", false, "no queue URL returned"))?;
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
        let mut req = self.sdk.create_queue().queue_name(queue_name(stream));
        if is_fifo(&queue_name(stream)) {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        for (name, value) in attributes {
            req = req.attributes(name, value);
        }
        let out = req.send().await.map_err(|e| sdk_error("CreateQueue", e))?;
        let url = out
            .queue_url
            .ok_or_else(|| Error::driver(DRIVER, "CreateQueue", false, "no queue URL returned"))?;
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
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        out.attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| Error::driver(DRIVER, "GetQueueAttributes", false, "no QueueArn"))
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
            .queue_url(url)
            .attributes(QueueAttributeName::RedrivePolicy, policy)
            .send()
            .await
            .map_err(|e| sdk_error("SetQueueAttributes", e))?;
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
            .queue_url(url)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteQueue", e))?;
        self.urls
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream);
        Ok(())
    }
}

/// Error codes that mean "slow down" or "try later" whatever the HTTP status.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
    "KMS.ThrottlingException",
];

/// Maps an SDK error to a driver error: time-outs, connection failures, throttling and
/// 5xx are retryable.
pub(crate) fn sdk_error<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    streams_aws::sdk_error(DRIVER, operation, TRANSIENT_CODES, err)
}
