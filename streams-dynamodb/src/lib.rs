//! Amazon DynamoDB for `streams`: [`DynamoDedupStore`], a
//! [`DedupStore`] that lets every worker of a
//! service, on any host, skip messages another one already processed, and handle a
//! message once when several copies arrive at the same instant.
//!
//! Table layout (shared with the Go library): partition key `worker_id` (S), sort key
//! `message_id` (S), TTL attribute `expiration_time` (N, Unix seconds). DynamoDB deletes
//! expired items late (up to days after), so the store treats an expired item as absent
//! itself. While a copy is being handled its item is a claim: it also holds
//! `lease_owner` (S, the holder's token) and expires at the end of the lease; a
//! committed item has no `lease_owner` (as the Go library's items) and expires after the
//! TTL. [`create_table`] creates such a table with TTL enabled.
//!
//! ```no_run
//! # async fn demo() -> streams_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use streams_core::middleware::DedupLayer;
//! use streams_dynamodb::DynamoDedupStore;
//!
//! let store = DynamoDedupStore::builder()
//!     .with_endpoint("http://127.0.0.1:4566")
//!     .with_region("us-east-1")
//!     .with_static_credentials("test", "test")
//!     .with_table("streams-dedup")
//!     .with_ttl(Duration::from_secs(3600))
//!     .connect()
//!     .await;
//! streams_dynamodb::create_table(store.sdk(), store.table()).await?;
//! let layer = DedupLayer::new("billing", Arc::new(store));
//! # drop(layer);
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
};
use streams_aws::ClientConfig;
use streams_core::middleware::{Claim, ClaimToken, DedupStore};
use streams_core::{Error, Result};

/// The AWS SDK for DynamoDB, for configuration and calls this crate does not wrap.
pub use aws_sdk_dynamodb;

const DRIVER: &str = "dynamodb";

/// Partition key attribute: the worker (consumer) name.
pub const ATTR_WORKER_ID: &str = "worker_id";
/// Sort key attribute: the message id.
pub const ATTR_MESSAGE_ID: &str = "message_id";
/// TTL attribute: when the record expires, in Unix seconds.
pub const ATTR_EXPIRATION_TIME: &str = "expiration_time";
/// Claim attribute (S): the token of the copy being handled, present only while the
/// message is claimed; a record without it is done.
pub const ATTR_LEASE_OWNER: &str = "lease_owner";
/// The default table name.
pub const DEFAULT_TABLE: &str = "streams-deduplication";
/// The environment variable [`DynamoDedupStoreBuilder::from_env`] reads an endpoint
/// override from, for emulators such as LocalStack or moto.
pub const ENDPOINT_ENV: &str = streams_aws::ENDPOINT_ENV;

/// Deduplication records in a DynamoDB table, expiring after a TTL.
///
/// Every operation is one conditional write, so claims are atomic across hosts:
/// [`claim`](DedupStore::claim) is a `PutItem` that succeeds only when no unexpired item
/// exists (the item that failed the condition tells [`Claim::Done`] from
/// [`Claim::Busy`]); [`commit`](DedupStore::commit) an `UpdateItem` by the claim's owner
/// to the TTL (a done record is never overwritten, its expiry does not move);
/// [`release`](DedupStore::release) a `DeleteItem` by the claim's owner. Expiry is kept
/// in whole seconds: a lease is rounded up to the next second.
#[derive(Clone)]
pub struct DynamoDedupStore {
    sdk: aws_sdk_dynamodb::Client,
    table: String,
    ttl: Duration,
}

impl fmt::Debug for DynamoDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDedupStore")
            .field("table", &self.table)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Builds a [`DynamoDedupStore`].
#[derive(Debug, Clone)]
pub struct DynamoDedupStoreBuilder {
    client: Option<aws_sdk_dynamodb::Client>,
    aws: ClientConfig,
    table: String,
    ttl: Duration,
}

impl Default for DynamoDedupStoreBuilder {
    fn default() -> Self {
        DynamoDedupStoreBuilder {
            client: None,
            aws: ClientConfig::new(),
            table: DEFAULT_TABLE.to_owned(),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl DynamoDedupStoreBuilder {
    /// Reads the endpoint override from `STREAMS_AWS_ENDPOINT` when set; region and
    /// credentials come from the usual AWS environment at [`connect`](Self::connect).
    pub fn from_env() -> Self {
        DynamoDedupStoreBuilder {
            aws: ClientConfig::from_env(),
            ..Self::default()
        }
    }

    /// Uses this SDK client as it is (endpoint, region and credentials settings are
    /// then ignored).
    pub fn with_client(mut self, client: aws_sdk_dynamodb::Client) -> Self {
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

    /// The table. Default [`DEFAULT_TABLE`].
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long a record counts. Default 24 hours.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Builds the store, loading the AWS configuration unless a client or configuration
    /// was given.
    pub async fn connect(self) -> DynamoDedupStore {
        let sdk = match self.client {
            Some(client) => client,
            None => aws_sdk_dynamodb::Client::new(&self.aws.load().await),
        };
        DynamoDedupStore {
            sdk,
            table: self.table,
            ttl: self.ttl,
        }
    }
}

impl DynamoDedupStore {
    /// A builder.
    pub fn builder() -> DynamoDedupStoreBuilder {
        DynamoDedupStoreBuilder::default()
    }

    /// The SDK client.
    pub fn sdk(&self) -> &aws_sdk_dynamodb::Client {
        &self.sdk
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// How long a record counts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn is_conditional_check_failed<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

#[async_trait]
impl DedupStore for DynamoDedupStore {
    async fn claim(&self, worker: &str, message_id: &str, lease: Duration) -> Result<Claim> {
        // The item that failed the condition tells Done from Busy; should it vanish
        // between the write and the answer, try again.
        for _ in 0..3 {
            let now = now_millis();
            // Rounded up: a lease never ends before it was asked to.
            let expires = (now + lease.as_millis()).div_ceil(1000);
            let token = ClaimToken::generate();
            let result = self
                .sdk
                .put_item()
                .table_name(&self.table)
                .item(ATTR_WORKER_ID, AttributeValue::S(worker.to_owned()))
                .item(ATTR_MESSAGE_ID, AttributeValue::S(message_id.to_owned()))
                .item(ATTR_EXPIRATION_TIME, AttributeValue::N(expires.to_string()))
                .item(
                    ATTR_LEASE_OWNER,
                    AttributeValue::S(token.as_str().to_owned()),
                )
                .condition_expression("attribute_not_exists(#m) OR #e <= :now")
                .expression_attribute_names("#m", ATTR_MESSAGE_ID)
                .expression_attribute_names("#e", ATTR_EXPIRATION_TIME)
                .expression_attribute_values(":now", AttributeValue::N((now / 1000).to_string()))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(Claim::Acquired(token)),
                Err(e) => e,
            };
            let Some(PutItemError::ConditionalCheckFailedException(failed)) =
                err.as_service_error()
            else {
                return Err(sdk_error("PutItem", err));
            };
            match failed.item() {
                Some(item) if item.contains_key(ATTR_LEASE_OWNER) => return Ok(Claim::Busy),
                Some(_) => return Ok(Claim::Done),
                None => continue,
            }
        }
        Ok(Claim::Busy)
    }

    async fn commit(&self, worker: &str, message_id: &str, token: &ClaimToken) -> Result<()> {
        let now = now_millis() / 1000;
        let expires = now + u128::from(self.ttl.as_secs().max(1));
        let result = self
            .sdk
            .update_item()
            .table_name(&self.table)
            .key(ATTR_WORKER_ID, AttributeValue::S(worker.to_owned()))
            .key(ATTR_MESSAGE_ID, AttributeValue::S(message_id.to_owned()))
            .update_expression("SET #e = :expires REMOVE #o")
            // Ours, or (lapsed and not taken over) free: the message was handled.
            .condition_expression("#o = :token OR attribute_not_exists(#m) OR #e <= :now")
            .expression_attribute_names("#m", ATTR_MESSAGE_ID)
            .expression_attribute_names("#e", ATTR_EXPIRATION_TIME)
            .expression_attribute_names("#o", ATTR_LEASE_OWNER)
            .expression_attribute_values(":expires", AttributeValue::N(expires.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":token", AttributeValue::S(token.as_str().to_owned()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let Some(UpdateItemError::ConditionalCheckFailedException(failed)) = err.as_service_error()
        else {
            return Err(sdk_error("UpdateItem", err));
        };
        match failed.item() {
            Some(item) if item.contains_key(ATTR_LEASE_OWNER) => Err(Error::invalid(
                "deduplication claim",
                format!(
                    "message `{message_id}` of worker `{worker}` in table `{}` was claimed by \
                     another copy after this claim's lease ran out; make the lease longer \
                     than the handler takes",
                    self.table
                ),
            )),
            // Done already (by another copy, or a record of the Go library): its expiry
            // does not move.
            _ => Ok(()),
        }
    }

    async fn release(&self, worker: &str, message_id: &str, token: &ClaimToken) -> Result<()> {
        let result = self
            .sdk
            .delete_item()
            .table_name(&self.table)
            .key(ATTR_WORKER_ID, AttributeValue::S(worker.to_owned()))
            .key(ATTR_MESSAGE_ID, AttributeValue::S(message_id.to_owned()))
            .condition_expression("#o = :token")
            .expression_attribute_names("#o", ATTR_LEASE_OWNER)
            .expression_attribute_values(":token", AttributeValue::S(token.as_str().to_owned()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Not ours any more: lapsed and taken over, or committed.
            Err(e) if is_conditional_check_failed(&e) => Ok(()),
            Err(e) => Err(sdk_error("DeleteItem", e)),
        }
    }
}

/// Creates a deduplication table (on-demand billing) with TTL on `expiration_time`; an
/// existing table is fine. For examples, tests and first deployments; production
/// tables usually come from infrastructure code.
///
/// # Errors
///
/// A driver error.
pub async fn create_table(sdk: &aws_sdk_dynamodb::Client, table: &str) -> Result<()> {
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("name and type are set")
    };
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type are set")
    };
    let created = sdk
        .create_table()
        .table_name(table)
        .key_schema(key(ATTR_WORKER_ID, KeyType::Hash))
        .key_schema(key(ATTR_MESSAGE_ID, KeyType::Range))
        .attribute_definitions(attr(ATTR_WORKER_ID))
        .attribute_definitions(attr(ATTR_MESSAGE_ID))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => return Err(sdk_error("CreateTable", e)),
    }
    // TTL can be set only on an active table.
    let mut wait = Duration::from_millis(100);
    loop {
        let out = sdk
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeTable", e))?;
        let active = out
            .table
            .and_then(|t| t.table_status)
            .is_some_and(|s| s == aws_sdk_dynamodb::types::TableStatus::Active);
        if active {
            break;
        }
        if wait > Duration::from_secs(60) {
            return Err(Error::Timeout {
                operation: "waiting for the DynamoDB table to become active",
                after: wait,
            });
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    let ttl = sdk
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(ATTR_EXPIRATION_TIME)
                .build()
                .expect("enabled and attribute are set"),
        )
        .send()
        .await;
    match ttl {
        Ok(_) => Ok(()),
        // Enabled already (DynamoDB refuses to enable it twice).
        Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("ValidationException") => {
            Ok(())
        }
        Err(e) => Err(sdk_error("UpdateTimeToLive", e)),
    }
}

/// Error codes that mean "slow down" or "try later" whatever the HTTP status.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionConflictException",
    "LimitExceededException",
    "InternalServerError",
    "ServiceUnavailable",
];

/// Maps an SDK error to a driver error: time-outs, connection failures, throttling and
/// 5xx are retryable.
fn sdk_error<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    streams_aws::SdkErrors::new(DRIVER)
        .with_transient_codes(TRANSIENT_CODES)
        .map(operation, "", err)
}
