//! The SNS writer on a bad day: a missing topic, messages over the size limit, endpoints
//! where nothing listens or nothing answers. Against the AWS emulator
//! (`STREAMS_AWS_ENDPOINT`, default `http://127.0.0.1:4566`) where a topic is needed.
//! Delivery through SQS is tested with the SQS reader in `streams-sqs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use streams_core::{Error, Message, Writer};
use streams_sns::{SnsWriter, SnsWriterBuilder, MAX_REQUEST_BYTES, MAX_TOPIC_MESSAGE_BYTES};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const BOUND: Duration = Duration::from_secs(30);

fn endpoint() -> String {
    streams_testkit::aws_endpoint()
}

fn builder(endpoint: &str) -> SnsWriterBuilder {
    SnsWriter::builder()
        .with_endpoint(endpoint)
        .with_region(REGION)
        .with_static_credentials("test", "test")
        .with_account_id(ACCOUNT)
}

fn unique(prefix: &str) -> String {
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

fn one_line(err: &Error) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_topic_fails_in_one_line() {
    let writer = builder(&endpoint()).connect().await.unwrap();
    let stream = unique("missing");
    let arn = writer.topic_arn(&stream).unwrap();
    let started = Instant::now();
    // 25 messages, three calls, all refused alike: one error, not a list repeating it.
    let batch = (0..25)
        .map(|i| Message::new(&stream, format!("{i}")))
        .collect();
    let err = writer.write(batch).await.unwrap_err();
    let text = one_line(&err);
    assert!(text.starts_with("sns: PublishBatch failed: "), "{text}");
    assert!(text.contains(&format!("topic {arn}")), "{text}");
    assert!(text.contains("NotFound"), "{text}");
    assert!(!err.is_retryable() && !err.is_message_fault(), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_over_the_limit_is_rejected_before_any_call() {
    let over = Message::new("orders", [0u8, 0xff].repeat(5_000));
    let size = streams_aws::encode(&over, streams_aws::TimeFormat::Rfc3339).size;
    // Nothing listens here: an error other than Rejected would mean a call was made.
    let writer = builder("http://127.0.0.1:1")
        .with_max_message_bytes(size - 1)
        .connect()
        .await
        .unwrap();
    let err = writer
        .write(vec![Message::new("orders", "fits"), over.clone()])
        .await
        .unwrap_err();
    one_line(&err);
    match &err {
        Error::Rejected { failed } => {
            assert_eq!(failed.len(), 1, "{err}");
            assert_eq!(failed[0].id, over.id);
            assert_eq!(
                failed[0].reason,
                format!(
                    "{size} bytes in SNS form (message and attributes); the limit is {}",
                    size - 1
                )
            );
        }
        other => panic!("want Rejected, got {other}"),
    }
    assert!(err.is_message_fault() && !err.is_retryable());

    // The default is what a topic takes unless its MaximumMessageSize is raised; 1 MiB at
    // most can be configured.
    let writer = builder("http://127.0.0.1:1").connect().await.unwrap();
    let err = writer
        .write(vec![Message::new("orders", vec![b'x'; MAX_REQUEST_BYTES])])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { failed } if failed[0].reason.ends_with("the limit is 262144")),
        "{err}"
    );
    let err = builder("http://127.0.0.1:1")
        .with_max_message_bytes(MAX_TOPIC_MESSAGE_BYTES + 1)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid {
                what: "max_message_bytes",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_is_published() {
    let writer = builder(&endpoint()).connect().await.unwrap();
    let stream = unique("limit");
    writer.create_topic(&stream).await.unwrap();
    let msg = Message::new(&stream, vec![b'x'; 100_000]);
    let size = streams_aws::encode(&msg, streams_aws::TimeFormat::Rfc3339).size;
    builder(&endpoint())
        .with_max_message_bytes(size)
        .connect()
        .await
        .unwrap()
        .write(vec![msg])
        .await
        .unwrap();
}

fn assert_unreachable(
    err: &Error,
    started: Instant,
    operation: &str,
    endpoint: &str,
    within: Duration,
) {
    let text = one_line(err);
    assert!(
        text.starts_with(&format!("sns: {operation} failed: ")),
        "{text}"
    );
    assert!(text.contains(endpoint), "{text}");
    assert!(err.is_retryable() && !err.is_message_fault(), "{text}");
    assert!(
        started.elapsed() < within,
        "{:?}: {text}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_within_the_bound() {
    let endpoint = "http://127.0.0.1:1";
    let writer = builder(endpoint).connect().await.unwrap();
    assert_eq!(writer.endpoint(), endpoint);
    let started = Instant::now();
    let err = within(BOUND, writer.write(vec![Message::new("orders", "x")]))
        .await
        .unwrap_err();
    assert_unreachable(&err, started, "PublishBatch", endpoint, BOUND);
    assert!(
        err.to_string()
            .contains("topic arn:aws:sns:us-east-1:123456789012:orders"),
        "{err}"
    );

    let started = Instant::now();
    let err = within(BOUND, writer.create_topic("orders"))
        .await
        .unwrap_err();
    assert_unreachable(&err, started, "CreateTopic", endpoint, BOUND);
}

/// Awaits `fut` for at most `limit` plus a margin for a loaded machine, failing the test
/// instead of hanging when a call is not bounded.
async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    let margin = limit + Duration::from_secs(15);
    tokio::time::timeout(margin, fut)
        .await
        .unwrap_or_else(|_| panic!("still waiting after {margin:?}"))
}

/// A TCP endpoint that accepts connections and never answers.
async fn silent_server() -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_fails_within_the_operation_timeout() {
    let endpoint = silent_server().await;
    let writer = builder(&endpoint)
        .with_operation_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let err = within(BOUND, writer.write(vec![Message::new("orders", "x")]))
        .await
        .unwrap_err();
    assert_unreachable(
        &err,
        started,
        "PublishBatch",
        &endpoint,
        Duration::from_secs(8),
    );
    assert!(err.to_string().contains("no answer from"), "{err}");

    // The default bound holds without any setting.
    let writer = builder(&endpoint).connect().await.unwrap();
    let started = Instant::now();
    let err = within(BOUND, writer.create_topic("orders"))
        .await
        .unwrap_err();
    assert_unreachable(&err, started, "CreateTopic", &endpoint, BOUND);
}
