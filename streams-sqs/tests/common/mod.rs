//! Shared helpers of the SQS integration tests: the emulator endpoint, fresh names.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};

use streams_sqs::SqsClient;

/// The account id of the emulators.
pub const ACCOUNT: &str = "123456789012";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// `STREAMS_AWS_ENDPOINT`, default LocalStack's port from docker-compose.yml.
pub fn endpoint() -> String {
    std::env::var("STREAMS_AWS_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:4566".to_owned())
}

/// A client of the emulator with dummy credentials.
pub async fn client() -> SqsClient {
    SqsClient::builder()
        .endpoint(endpoint())
        .region(REGION)
        .static_credentials("test", "test")
        .build()
        .await
}

/// A stream name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
