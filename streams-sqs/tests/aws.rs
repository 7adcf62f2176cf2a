//! SQS, SNS and DynamoDB together against the AWS emulator (`STREAMS_AWS_ENDPOINT`,
//! default `http://127.0.0.1:4566`). Every test uses fresh queues, topics and workers.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use streams_core::middleware::{DeadLetterLayer, DedupLayer, DLQ_REASON, DLQ_SOURCE_STREAM};
use streams_core::{
    handler, BoxError, CancellationToken, Error, Handler, Message, ReadTask, Reader, Writer,
};
use streams_sqs::aws_sdk_sqs::types::QueueAttributeName;
use streams_sqs::{SqsClient, SqsReader, SqsWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(60);

/// A running reader whose handler forwards every message to a channel.
struct Running {
    rx: mpsc::UnboundedReceiver<Message>,
    cancel: CancellationToken,
    join: JoinHandle<streams_core::Result<()>>,
}

impl Running {
    async fn next(&mut self) -> Message {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("a message within patience")
            .expect("reader running")
    }

    async fn take(&mut self, n: usize) -> Vec<Message> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            got.push(self.next().await);
        }
        got
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.join
            .await
            .expect("reader task")
            .expect("reader ended cleanly");
    }
}

fn reader(client: &SqsClient) -> SqsReader {
    SqsReader::builder(client.clone())
        .with_wait_time(Duration::from_secs(1))
        .build()
}

fn forward(tx: mpsc::UnboundedSender<Message>) -> Handler {
    handler(tower::service_fn(move |m: Message| {
        let _ = tx.send(m);
        async { Ok::<_, BoxError>(()) }
    }))
}

fn start(reader: SqsReader, stream: &str, h: Handler) -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = ReadTask::new(stream);
    tokio::spawn(async move { reader.read(task, h, c).await });
    cancel
}

fn run(reader: SqsReader, stream: &str) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = ReadTask::new(stream);
    let join = tokio::spawn(async move { reader.read(task, forward(tx), c).await });
    Running { rx, cancel, join }
}

async fn sns_writer() -> streams_sns::SnsWriter {
    streams_sns::SnsWriter::builder()
        .with_endpoint(common::endpoint())
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .with_account_id(common::ACCOUNT)
        .connect()
        .await
        .expect("sns writer")
}

fn binary() -> Bytes {
    Bytes::from((0..=255u8).rev().chain([0, 0xff, 0xc3]).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_to_sqs_raw_and_enveloped() {
    let client = common::client().await;
    let sns = sns_writer().await;
    let topic = common::unique("chain");
    let (raw_q, env_q) = (format!("{topic}.raw"), format!("{topic}.env"));
    sns.create_topic(&topic).await.unwrap();
    for (q, raw) in [(&raw_q, true), (&env_q, false)] {
        client.create_queue(q).await.unwrap();
        let arn = client.queue_arn(q).await.unwrap();
        sns.subscribe_queue(&topic, &arn, raw).await.unwrap();
    }
    let sent: Vec<Message> = (0..25)
        .map(|i| {
            let data = if i % 5 == 0 {
                binary()
            } else {
                Bytes::from(format!("{{\"n\":{i},\"text\":\"héllo\"}}"))
            };
            Message::new(&topic, data)
                .with_key(if i % 2 == 0 {
                    "customer-7"
                } else {
                    "kéy with spaces"
                })
                .with_header("n", i.to_string())
                .with_content_type("application/json")
        })
        .collect();
    sns.write(sent.clone()).await.unwrap();
    for q in [&raw_q, &env_q] {
        let mut r = run(reader(&client), q);
        let got = r.take(25).await;
        r.stop().await;
        let by_id: HashMap<_, _> = got.iter().map(|m| (m.id.clone(), m)).collect();
        for s in &sent {
            let g = by_id
                .get(&s.id)
                .unwrap_or_else(|| panic!("{q}: {} missing", s.id));
            assert_eq!(g.data, s.data, "{q}: payload");
            assert_eq!(g.stream, s.stream, "{q}: stream");
            assert_eq!(g.key, s.key, "{q}: key");
            assert_eq!(g.content_type, s.content_type);
            assert_eq!(g.headers["n"], s.headers["n"]);
            assert_eq!(g.time.timestamp_millis(), s.time.timestamp_millis());
            assert!(g.header("sqs-message-id").is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_by_count_and_size() {
    let client = common::client().await;
    let stream = common::unique("sizes");
    client.create_queue(&stream).await.unwrap();
    let writer = SqsWriter::new(client.clone());
    let mut r = run(reader(&client), &stream);

    let small: Vec<Message> = (0..25)
        .map(|i| Message::new(&stream, format!("{i}")))
        .collect();
    writer.write(small.clone()).await.unwrap();
    let got = r.take(25).await;
    let want: HashSet<_> = small.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        got.iter().map(|m| m.id.clone()).collect::<HashSet<_>>(),
        want
    );

    // 12 messages of 60 KB: 720 KB in all, over the 256 KiB request limit.
    let big: Vec<Message> = (0..12)
        .map(|i| Message::new(&stream, vec![b'a' + i as u8; 60_000]))
        .collect();
    writer.write(big.clone()).await.unwrap();
    let got = r.take(12).await;
    r.stop().await;
    let by_id: HashMap<_, _> = got.iter().map(|m| (m.id.clone(), m.data.clone())).collect();
    for m in &big {
        assert_eq!(by_id.get(&m.id), Some(&m.data));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_fails_before_any_call() {
    // No emulator behind this endpoint: an error other than Rejected would mean a call.
    let client = SqsClient::builder()
        .with_endpoint("http://127.0.0.1:9")
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .connect()
        .await;
    client.set_queue_url("big", "http://127.0.0.1:9/123456789012/big");
    let writer = SqsWriter::new(client);
    let big = Message::new("big", vec![b'x'; streams_sqs::MAX_REQUEST_BYTES]);
    let err = writer
        .write(vec![Message::new("big", "ok"), big.clone()])
        .await
        .unwrap_err();
    match &err {
        Error::Rejected { failed } => {
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].id, big.id);
        }
        other => panic!("want Rejected, got {other}"),
    }
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_payload_round_trips_and_text_stays_readable() {
    let client = common::client().await;
    let stream = common::unique("bytes");
    let url = client.create_queue(&stream).await.unwrap();
    let writer = SqsWriter::new(client.clone());
    let bin = Message::new(&stream, binary()).with_key("k");
    let ctrl = Message::new(&stream, "bell\u{7}");
    let text = Message::new(&stream, "plain text é");
    writer
        .write(vec![bin.clone(), ctrl.clone(), text.clone()])
        .await
        .unwrap();

    // On the wire: text as is (what the Go reader expects), the rest base64 and marked.
    let mut bodies = HashMap::new();
    while bodies.len() < 3 {
        let out = client
            .sdk()
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(0)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            let attrs = m.message_attributes.clone().unwrap_or_default();
            let id = attrs["streams-message-id"].string_value.clone().unwrap();
            let encoding = attrs
                .get("streams-body-encoding")
                .and_then(|v| v.string_value.clone());
            bodies.insert(id, (m.body.unwrap_or_default(), encoding));
        }
    }
    assert_eq!(bodies[&text.id], ("plain text é".to_owned(), None));
    assert_eq!(bodies[&bin.id].1.as_deref(), Some("base64"));
    assert_eq!(bodies[&ctrl.id].1.as_deref(), Some("base64"));

    let mut r = run(reader(&client), &stream);
    let got = r.take(3).await;
    r.stop().await;
    let by_id: HashMap<_, _> = got.iter().map(|m| (m.id.clone(), m.data.clone())).collect();
    for m in [&bin, &ctrl, &text] {
        assert_eq!(by_id[&m.id], m.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_message_is_redelivered_with_reader_headers() {
    let client = common::client().await;
    let stream = common::unique("redeliver");
    client.create_queue(&stream).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let h = handler(tower::service_fn(move |m: Message| {
        let first = c.fetch_add(1, Ordering::SeqCst) == 0;
        let _ = tx.send(m);
        async move {
            if first {
                Err::<(), BoxError>("first delivery fails".into())
            } else {
                Ok(())
            }
        }
    }));
    let cancel = start(reader(&client), &stream, h);
    let msg = Message::new(&stream, "again");
    SqsWriter::new(client.clone())
        .write(vec![msg.clone()])
        .await
        .unwrap();
    let first = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    assert_eq!(first.id, msg.id);
    assert_eq!(second.id, msg.id);
    for name in [
        "sqs-message-id",
        "sqs-message-receipt-handle",
        "sqs-message-body-md5",
        "sqs-message-attributes-md5",
    ] {
        assert!(second.header(name).is_some(), "{name} missing");
    }
    assert_eq!(
        first.header("sqs-message-id"),
        second.header("sqs-message-id")
    );
    assert_ne!(
        first.header("sqs-message-receipt-handle"),
        second.header("sqs-message-receipt-handle")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_policy_moves_failing_message_to_dead_letter_queue() {
    let client = common::client().await;
    let stream = common::unique("redrive");
    let dlq = format!("{stream}.dlq");
    client.create_queue(&stream).await.unwrap();
    client.create_queue(&dlq).await.unwrap();
    client.set_redrive_policy(&stream, &dlq, 2).await.unwrap();
    let h = handler(tower::service_fn(|_m: Message| async {
        Err::<(), BoxError>("always fails".into())
    }));
    let cancel = start(
        SqsReader::builder(client.clone())
            .with_wait_time(Duration::from_secs(1))
            .with_redelivery_backoff(Duration::ZERO, Duration::ZERO)
            .build(),
        &stream,
        h,
    );
    let msg = Message::new(&stream, "poison").with_header("tenant", "acme");
    SqsWriter::new(client.clone())
        .write(vec![msg.clone()])
        .await
        .unwrap();
    let mut r = run(reader(&client), &dlq);
    let got = r.next().await;
    r.stop().await;
    cancel.cancel();
    assert_eq!(got.id, msg.id);
    assert_eq!(got.data, msg.data);
    assert_eq!(got.headers["tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_middleware_writes_to_dlq_stream() {
    let client = common::client().await;
    let stream = common::unique("dlqmw");
    let dlq = streams_core::middleware::dead_letter_stream(&stream);
    client.create_queue(&stream).await.unwrap();
    client.create_queue(&dlq).await.unwrap();
    let writer: Arc<dyn Writer> = Arc::new(SqsWriter::new(client.clone()));
    let svc = tower::ServiceBuilder::new()
        .layer(DeadLetterLayer::new(writer.clone()))
        .service_fn(|_m: Message| async { Err::<(), BoxError>("cannot handle".into()) });
    let cancel = start(reader(&client), &stream, handler(svc));
    let msg = Message::new(&stream, binary())
        .with_key("k")
        .with_header("tenant", "acme");
    writer.write(vec![msg.clone()]).await.unwrap();
    let mut r = run(reader(&client), &dlq);
    let got = r.next().await;
    r.stop().await;
    cancel.cancel();
    assert_eq!(got.id, msg.id);
    assert_eq!(got.data, msg.data);
    assert_eq!(got.stream, dlq);
    assert_eq!(got.headers["tenant"], "acme");
    assert_eq!(got.headers[DLQ_SOURCE_STREAM], stream);
    assert!(got.headers[DLQ_REASON].contains("cannot handle"));
    // Reader headers of the original delivery travel too (packed beyond ten attributes).
    assert!(got.header("sqs-message-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_dynamodb_dedup_process_a_duplicate_once() {
    let client = common::client().await;
    let stream = common::unique("dedup");
    client.create_queue(&stream).await.unwrap();
    let store = streams_dynamodb::DynamoDedupStore::builder()
        .with_endpoint(common::endpoint())
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .with_table("streams-dedup-tests")
        .with_ttl(Duration::from_secs(600))
        .connect()
        .await;
    streams_dynamodb::create_table(store.sdk(), store.table())
        .await
        .unwrap();
    let store: Arc<dyn streams_core::middleware::DedupStore> = Arc::new(store);
    let worker = common::unique("billing");
    let seen = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut cancels = Vec::new();
    for _ in 0..2 {
        let (seen, handled, tx) = (seen.clone(), handled.clone(), tx.clone());
        let inner = tower::ServiceBuilder::new()
            .layer(DedupLayer::new(worker.clone(), store.clone()))
            .service_fn(move |_m: Message| {
                handled.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(()) }
            });
        // Outermost: counts every delivery once the stack is done with it.
        let svc = tower::service_fn(move |m: Message| {
            let (seen, tx) = (seen.clone(), tx.clone());
            let mut inner = inner.clone();
            async move {
                use tower::{Service, ServiceExt};
                inner.ready().await?.call(m).await?;
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
                Ok::<_, BoxError>(())
            }
        });
        cancels.push(start(reader(&client), &stream, handler(svc)));
    }
    let writer = SqsWriter::new(client.clone());
    let msg = Message::new(&stream, "charge 10 EUR");
    // The same message twice, as a retried publish would send it.
    writer.write(vec![msg.clone()]).await.unwrap();
    tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap();
    writer.write(vec![msg.clone()]).await.unwrap();
    tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap();
    for c in cancels {
        c.cancel();
    }
    assert_eq!(seen.load(Ordering::SeqCst), 2, "both copies delivered");
    assert_eq!(handled.load(Ordering::SeqCst), 1, "handled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_slow_message_invisible() {
    let client = common::client().await;
    let stream = common::unique("heartbeat");
    client.create_queue(&stream).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let c = calls.clone();
    let h = handler(tower::service_fn(move |_m: Message| {
        c.fetch_add(1, Ordering::SeqCst);
        let tx = tx.clone();
        async move {
            // Work that outlasts the 2 s visibility timeout twice over.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = tx.send(());
            Ok::<_, BoxError>(())
        }
    }));
    let r = SqsReader::builder(client.clone())
        .with_wait_time(Duration::from_secs(1))
        .with_visibility_timeout(Duration::from_secs(2))
        .without_redelivery_backoff()
        .build();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let task = ReadTask::new(&stream);
    let join = tokio::spawn(async move { r.read(task, h, c2).await });
    SqsWriter::new(client.clone())
        .write(vec![Message::new(&stream, "slow")])
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap();
    cancel.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "not redelivered while running"
    );
    assert_eq!(visible_or_in_flight(&client, &stream).await, 0, "deleted");
}

/// Messages in the queue, visible or not, by the queue's approximate counters.
async fn visible_or_in_flight(client: &SqsClient, stream: &str) -> usize {
    let url = client.queue_url(stream).await.unwrap();
    let out = client
        .sdk()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = out.attributes.unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish_and_deletes_them() {
    let client = common::client().await;
    let stream = common::unique("shutdown");
    client.create_queue(&stream).await.unwrap();
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (s, rl, d) = (started.clone(), release.clone(), done.clone());
    let h = handler(tower::service_fn(move |_m: Message| {
        let (s, rl, d) = (s.clone(), rl.clone(), d.clone());
        async move {
            s.add_permits(1);
            rl.acquire().await.unwrap().forget();
            d.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        }
    }));
    let r = reader(&client);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = ReadTask::new(&stream);
    let join = tokio::spawn(async move { r.read(task, h, c).await });
    let batch: Vec<Message> = (0..3)
        .map(|i| Message::new(&stream, format!("{i}")))
        .collect();
    SqsWriter::new(client.clone()).write(batch).await.unwrap();
    // All three handlers are running; cancel, then let them finish.
    tokio::time::timeout(PATIENCE, started.acquire_many(3))
        .await
        .unwrap()
        .unwrap()
        .forget();
    cancel.cancel();
    release.add_permits(3);
    join.await.unwrap().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 3);
    assert_eq!(
        visible_or_in_flight(&client, &stream).await,
        0,
        "all deleted"
    );
}

/// Answers every request with HTTP 500 and an `InternalError` body.
async fn failing_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                // Read the request head and its body before answering.
                loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = r#"{"__type":"InternalError","message":"emulated outage"}"#;
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-query-error: InternalError;Receiver\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_errors_are_retryable_and_missing_queues_are_not() {
    let endpoint = failing_server().await;
    let client = SqsClient::builder()
        .with_endpoint(&endpoint)
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .connect()
        .await;
    client.set_queue_url("down", format!("{endpoint}/123456789012/down"));
    let err = SqsWriter::new(client)
        .write(vec![Message::new("down", "x")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Driver {
                driver: "sqs",
                operation: "SendMessageBatch",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable(), "{err}");

    let client = common::client().await;
    let err = SqsWriter::new(client)
        .write(vec![Message::new(common::unique("missing"), "x")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Driver { .. }), "{err}");
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_keeps_order_per_group() {
    let client = common::client().await;
    let stream = format!("{}.fifo", common::unique("fifo"));
    client.create_queue(&stream).await.unwrap();
    let batch: Vec<Message> = (0..30)
        .map(|i| {
            Message::new(&stream, format!("{i}"))
                .with_key(format!("group-{}", i % 3))
                .with_header("seq", i.to_string())
        })
        .collect();
    SqsWriter::new(client.clone()).write(batch).await.unwrap();
    let mut r = run(
        SqsReader::builder(client.clone())
            .with_wait_time(Duration::from_secs(1))
            .build(),
        &stream,
    );
    let got = r.take(30).await;
    r.stop().await;
    let mut per_group: HashMap<String, Vec<u32>> = HashMap::new();
    for m in got {
        per_group
            .entry(m.key.clone().unwrap())
            .or_default()
            .push(m.headers["seq"].parse().unwrap());
    }
    assert_eq!(per_group.len(), 3);
    for (g, seqs) in per_group {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{g}: {seqs:?}");
        assert_eq!(seqs.len(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_after_close_is_closed() {
    let client = common::client().await;
    let writer = SqsWriter::new(client);
    writer.close().await.unwrap();
    let err = writer
        .write(vec![Message::new("x", "y")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_batches_over_the_size_limit_arrive_and_oversized_fails_early() {
    let client = common::client().await;
    let sns = sns_writer().await;
    let topic = common::unique("snssize");
    let queue = format!("{topic}.q");
    sns.create_topic(&topic).await.unwrap();
    client.create_queue(&queue).await.unwrap();
    let arn = client.queue_arn(&queue).await.unwrap();
    sns.subscribe_queue(&topic, &arn, true).await.unwrap();
    // 12 messages of 60 KB: several PublishBatch requests under 256 KiB each.
    let big: Vec<Message> = (0..12)
        .map(|i| Message::new(&topic, vec![b'a' + i as u8; 60_000]).with_key("k"))
        .collect();
    sns.write(big.clone()).await.unwrap();
    let mut r = run(reader(&client), &queue);
    let got = r.take(12).await;
    r.stop().await;
    let by_id: HashMap<_, _> = got.iter().map(|m| (m.id.clone(), m.data.clone())).collect();
    for m in &big {
        assert_eq!(by_id.get(&m.id), Some(&m.data));
    }
    // One byte over the limit: refused with the exact size, and nothing of the batch is
    // published (the queue stays empty).
    let over = Message::new(&topic, vec![b'x'; 200_000]);
    let size = streams_aws::encode(&over, streams_aws::TimeFormat::Rfc3339).size;
    let limited = streams_sns::SnsWriter::builder()
        .with_endpoint(common::endpoint())
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .with_account_id(common::ACCOUNT)
        .with_max_message_bytes(size - 1)
        .connect()
        .await
        .unwrap();
    let err = limited
        .write(vec![Message::new(&topic, "fits"), over.clone()])
        .await
        .unwrap_err();
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
    let out = client
        .sdk()
        .receive_message()
        .queue_url(client.queue_url(&queue).await.unwrap())
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(out.messages.unwrap_or_default().is_empty());
    // The default limit is what a topic takes unless configured otherwise: 256 KiB.
    let err = sns
        .write(vec![Message::new(&topic, vec![b'x'; 262_144])])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { failed } if failed[0].reason.ends_with("the limit is 262144")),
        "{err}"
    );
    // A topic that does not exist: a service error that retrying cannot fix.
    let err = sns
        .write(vec![Message::new(common::unique("nosuchtopic"), "x")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Driver { driver: "sns", .. }), "{err}");
    assert!(!err.is_retryable(), "{err}");
}
