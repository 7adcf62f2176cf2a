//! Shared helpers of the SQS integration tests: the emulator endpoint, fresh names.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};

use streams_sqs::SqsClient;

/// The account id of the emulators.
pub const ACCOUNT: &str = "123456789012";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// The AWS emulator: this binary's container, or `STREAMS_AWS_ENDPOINT` (see streams-testkit).
pub fn endpoint() -> String {
    streams_testkit::aws_endpoint()
}

/// A client of the emulator with dummy credentials.
pub async fn client() -> SqsClient {
    SqsClient::builder()
        .with_endpoint(endpoint())
        .with_region(REGION)
        .with_static_credentials("test", "test")
        .connect()
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

/// A TCP endpoint that accepts connections and never answers, as a hung server or a
/// proxy that swallows requests would; returns its URL.
pub async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    format!("http://{addr}")
}

/// A client of `endpoint` with dummy credentials and the default time limits.
pub async fn client_of(endpoint: &str) -> SqsClient {
    SqsClient::builder()
        .with_endpoint(endpoint)
        .with_region(REGION)
        .with_static_credentials("test", "test")
        .connect()
        .await
}

/// Asserts what every driver error shown to a user must be: one line of at most 300
/// characters.
pub fn assert_one_line(err: &streams_core::Error) -> String {
    let text = err.to_string();
    assert!(
        !text.contains('\n') && !text.contains('\r'),
        "not one line: {text}"
    );
    assert!(
        text.chars().count() <= 300,
        "{} characters: {text}",
        text.chars().count()
    );
    text
}

/// Awaits `fut` for at most `limit` (plus a margin for a loaded machine), failing the
/// test instead of hanging when a call is not bounded.
pub async fn within<T>(limit: std::time::Duration, fut: impl std::future::Future<Output = T>) -> T {
    let margin = limit + std::time::Duration::from_secs(15);
    tokio::time::timeout(margin, fut)
        .await
        .unwrap_or_else(|_| panic!("still waiting after {margin:?}"))
}
