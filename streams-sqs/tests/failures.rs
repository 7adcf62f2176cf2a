//! The SQS driver on a bad day: missing queues, messages over the size limit, endpoints
//! where nothing listens or nothing answers. Against the AWS emulator
//! (`STREAMS_AWS_ENDPOINT`, default `http://127.0.0.1:4566`) where a queue is needed.

mod common;

use std::time::{Duration, Instant};

use streams_core::{
    handler, BoxError, CancellationToken, Error, Message, ReadTask, Reader, Writer,
};
use streams_sqs::{queue_name, SqsClient, SqsReader, SqsWriter, MAX_REQUEST_BYTES};
use tokio::sync::mpsc;

/// What the issue asks of a wait on an unreachable platform.
const BOUND: Duration = Duration::from_secs(30);

fn noop() -> streams_core::Handler {
    handler(tower::service_fn(|_m: Message| async {
        Ok::<_, BoxError>(())
    }))
}

/// Runs a reader until it returns, at most `within`.
async fn read_until_done(
    reader: SqsReader,
    stream: &str,
    within: Duration,
) -> streams_core::Result<()> {
    let cancel = CancellationToken::new();
    let task = ReadTask::new(stream);
    tokio::time::timeout(within, reader.read(task, noop(), cancel))
        .await
        .expect("the reader should have returned, not looped")
}

fn is_missing_queue(text: &str) -> bool {
    text.contains("AWS.SimpleQueueService.NonExistentQueue") || text.contains("QueueDoesNotExist")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_missing_queue_fails_at_once_in_one_line() {
    let client = common::client().await;
    let stream = common::unique("missing.read");
    // By name: the queue lookup fails.
    let err = read_until_done(
        SqsReader::new(client.clone()),
        &stream,
        Duration::from_secs(15),
    )
    .await
    .unwrap_err();
    let text = common::assert_one_line(&err);
    assert!(text.starts_with("sqs: GetQueueUrl failed: "), "{text}");
    assert!(
        text.contains(&format!("queue {}", queue_name(&stream))),
        "{text}"
    );
    assert!(is_missing_queue(&text), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(!err.is_message_fault(), "{text}");

    // By URL (a queue deleted under a running service): the first receive fails.
    let url = format!(
        "{}/{}/{}",
        common::endpoint(),
        common::ACCOUNT,
        queue_name(&stream)
    );
    client.set_queue_url(&stream, &url);
    let started = Instant::now();
    let err = read_until_done(SqsReader::new(client), &stream, Duration::from_secs(15))
        .await
        .unwrap_err();
    let text = common::assert_one_line(&err);
    assert!(text.starts_with("sqs: ReceiveMessage failed: "), "{text}");
    assert!(text.contains(&url), "{text}");
    assert!(is_missing_queue(&text), "{text}");
    assert!(!err.is_retryable(), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_a_missing_queue_fails_in_one_line() {
    let client = common::client().await;
    let stream = common::unique("missing.write");
    let writer = SqsWriter::new(client.clone());
    let err = writer
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap_err();
    let text = common::assert_one_line(&err);
    assert!(
        matches!(
            err,
            Error::Driver {
                driver: "sqs",
                operation: "GetQueueUrl",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains(&queue_name(&stream)), "{text}");
    assert!(is_missing_queue(&text), "{text}");
    assert!(!err.is_retryable() && !err.is_message_fault(), "{text}");

    let url = format!(
        "{}/{}/{}",
        common::endpoint(),
        common::ACCOUNT,
        queue_name(&stream)
    );
    client.set_queue_url(&stream, &url);
    // 25 messages, three calls, all refused alike: one error, not a list repeating it.
    let batch = (0..25)
        .map(|i| Message::new(&stream, format!("{i}")))
        .collect();
    let err = writer.write(batch).await.unwrap_err();
    let text = common::assert_one_line(&err);
    assert!(
        matches!(
            err,
            Error::Driver {
                driver: "sqs",
                operation: "SendMessageBatch",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains(&url), "{text}");
    assert!(is_missing_queue(&text), "{text}");
    assert!(!err.is_retryable() && !err.is_message_fault(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kib_binary_message_round_trips() {
    let client = common::client().await;
    let stream = common::unique("big");
    client.create_queue(&stream).await.unwrap();
    // Not UTF-8, so it travels as base64: about 273 KB in SQS form, over the old
    // 256 KiB limit and under the 1 MiB one.
    let data: Vec<u8> = (0..200 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let sent = Message::new(&stream, data.clone()).with_key("k");
    SqsWriter::new(client.clone())
        .write(vec![sent.clone()])
        .await
        .unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = handler(tower::service_fn(move |m: Message| {
        let _ = tx.send(m);
        async { Ok::<_, BoxError>(()) }
    }));
    let cancel = CancellationToken::new();
    let reader = SqsReader::builder(client)
        .with_wait_time(Duration::from_secs(1))
        .build();
    let (c, s) = (cancel.clone(), stream.clone());
    let join = tokio::spawn(async move { reader.read(ReadTask::new(s), h, c).await });
    let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the message within a minute")
        .expect("reader running");
    cancel.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(got.id, sent.id);
    assert_eq!(got.data.len(), data.len());
    assert!(got.data.as_ref() == data.as_slice(), "payload differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_over_the_limit_is_rejected_and_nothing_is_sent() {
    let client = common::client().await;
    let stream = common::unique("limit");
    let url = client.create_queue(&stream).await.unwrap();
    let big = Message::new(&stream, vec![b'x'; 10_000]);
    let size = streams_aws::encode(&big, streams_aws::TimeFormat::UnixMillis).size;
    let writer = SqsWriter::builder(client.clone())
        .with_max_message_bytes(size - 1)
        .build()
        .unwrap();
    let ok = Message::new(&stream, "fits");
    let err = writer.write(vec![ok, big.clone()]).await.unwrap_err();
    common::assert_one_line(&err);
    match &err {
        Error::Rejected { failed } => {
            assert_eq!(failed.len(), 1, "{err}");
            assert_eq!(failed[0].id, big.id);
            assert_eq!(
                failed[0].reason,
                format!(
                    "{size} bytes in SQS form (body and attributes); the limit is {}",
                    size - 1
                )
            );
        }
        other => panic!("want Rejected, got {other}"),
    }
    assert!(err.is_message_fault() && !err.is_retryable());

    // Nothing of the batch went out, not even the message that fits.
    let out = client
        .sdk()
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(out.messages.unwrap_or_default().is_empty());

    // At the limit it goes.
    SqsWriter::builder(client.clone())
        .with_max_message_bytes(size)
        .build()
        .unwrap()
        .write(vec![big])
        .await
        .unwrap();

    // The default limit is 1 MiB, and no more than that can be configured.
    let huge = Message::new(&stream, vec![b'x'; MAX_REQUEST_BYTES]);
    let err = SqsWriter::new(client.clone())
        .write(vec![huge])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { failed } if failed[0].reason.ends_with("the limit is 1048576")),
        "{err}"
    );
    let err = SqsWriter::builder(client)
        .with_max_message_bytes(MAX_REQUEST_BYTES + 1)
        .build()
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

/// Asserts a failure on an unreachable or silent endpoint: one line naming the platform,
/// the operation and the endpoint, retryable, within the bound.
fn assert_unreachable(
    err: &Error,
    started: Instant,
    operation: &str,
    endpoint: &str,
    within: Duration,
) {
    let text = common::assert_one_line(err);
    assert!(
        text.starts_with(&format!("sqs: {operation} failed: ")),
        "{text}"
    );
    assert!(text.contains(endpoint), "{text}");
    assert!(err.is_retryable(), "{text}");
    assert!(!err.is_message_fault(), "{text}");
    assert!(
        started.elapsed() < within,
        "{:?}: {text}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_within_the_bound() {
    let endpoint = "http://127.0.0.1:1";
    let client = common::client_of(endpoint).await;
    assert_eq!(client.endpoint(), endpoint);

    let started = Instant::now();
    let err = common::within(BOUND, client.create_queue("orders"))
        .await
        .unwrap_err();
    assert_unreachable(&err, started, "CreateQueue", endpoint, BOUND);
    assert!(err.to_string().contains("queue orders"), "{err}");

    let started = Instant::now();
    let err = common::within(BOUND, client.delete_queue("orders"))
        .await
        .unwrap_err();
    assert_unreachable(&err, started, "GetQueueUrl", endpoint, BOUND);

    let started = Instant::now();
    let err = common::within(
        BOUND,
        SqsWriter::new(client.clone()).write(vec![Message::new("orders", "x")]),
    )
    .await
    .unwrap_err();
    assert_unreachable(&err, started, "GetQueueUrl", endpoint, BOUND);

    // With the queue URL known, the calls on the queue itself.
    client.set_queue_url("orders", format!("{endpoint}/{}/orders", common::ACCOUNT));
    let started = Instant::now();
    let err = common::within(
        BOUND,
        SqsWriter::new(client.clone()).write(vec![Message::new("orders", "x")]),
    )
    .await
    .unwrap_err();
    assert_unreachable(&err, started, "SendMessageBatch", endpoint, BOUND);

    let started = Instant::now();
    let err = read_until_done(SqsReader::new(client.clone()), "orders", BOUND)
        .await
        .unwrap_err();
    assert_unreachable(&err, started, "ReceiveMessage", endpoint, BOUND);

    let started = Instant::now();
    let err = common::within(BOUND, client.delete_queue("orders"))
        .await
        .unwrap_err();
    assert_unreachable(&err, started, "DeleteQueue", endpoint, BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_fails_within_the_operation_timeout() {
    let endpoint = common::silent_server().await;
    // The default bound (20 s) holds without any setting.
    let client = common::client_of(&endpoint).await;
    client.set_queue_url("orders", format!("{endpoint}/{}/orders", common::ACCOUNT));
    let started = Instant::now();
    let err = common::within(
        BOUND,
        SqsWriter::new(client).write(vec![Message::new("orders", "x")]),
    )
    .await
    .unwrap_err();
    assert_unreachable(&err, started, "SendMessageBatch", &endpoint, BOUND);
    assert!(err.to_string().contains("no answer from"), "{err}");

    // And the setting changes it.
    let client = SqsClient::builder()
        .with_endpoint(&endpoint)
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .with_operation_timeout(Duration::from_secs(1))
        .connect()
        .await;
    let started = Instant::now();
    let err = common::within(BOUND, client.create_queue("orders"))
        .await
        .unwrap_err();
    assert_unreachable(
        &err,
        started,
        "CreateQueue",
        &endpoint,
        Duration::from_secs(8),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operation_timeout_does_not_cut_a_long_poll() {
    let client = SqsClient::builder()
        .with_endpoint(common::endpoint())
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .with_operation_timeout(Duration::from_secs(2))
        .connect()
        .await;
    let stream = common::unique("longpoll");
    client.create_queue(&stream).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = handler(tower::service_fn(move |m: Message| {
        let _ = tx.send(m);
        async { Ok::<_, BoxError>(()) }
    }));
    // Polls of 5 s on an empty queue: longer than the 2 s operation timeout. Were they
    // cut, the first receive would fail and end the read.
    let reader = SqsReader::builder(client.clone())
        .with_wait_time(Duration::from_secs(5))
        .build();
    let cancel = CancellationToken::new();
    let (c, s) = (cancel.clone(), stream.clone());
    let join = tokio::spawn(async move { reader.read(ReadTask::new(s), h, c).await });
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(!join.is_finished(), "the reader ended: {:?}", join.await);
    let sent = Message::new(&stream, "after a quiet while");
    SqsWriter::new(client)
        .write(vec![sent.clone()])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the message within 30 s")
        .expect("reader running");
    assert_eq!(got.id, sent.id);
    cancel.cancel();
    join.await.unwrap().unwrap();
}

/// Task fields SQS cannot honour are refused, naming the field, before any call.
#[tokio::test]
async fn partitions_offsets_and_arguments_are_refused() {
    let client = common::client().await;
    for (task, field) in [
        (ReadTask::new("q").with_partition(0), "`partition`"),
        (ReadTask::new("q").with_start_offset(3), "`start_offset`"),
        (ReadTask::new("q").with_arg("start", "end"), "`start`"),
        (ReadTask::new("q").with_group("billing"), "`group`"),
    ] {
        let err = SqsReader::new(client.clone())
            .read(task, noop(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, streams_core::Error::Invalid { .. }), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
}
