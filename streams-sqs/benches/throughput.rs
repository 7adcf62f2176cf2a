//! SQS writer and reader throughput next to raw `aws-sdk-sqs` loops, in the same run
//! against the same emulator (`STREAMS_AWS_ENDPOINT`, default `http://127.0.0.1:4566`).
//!
//! Run with `cargo bench -p streams-sqs --bench throughput`. `MESSAGES` (default 300)
//! sets messages per case, `ROUNDS` (default 3) the rounds, and `CONCURRENCY` (default
//! 4) the tasks or pollers of every case. Each case uses a fresh queue, since emulators slow down with queue depth.
//! Prints figures and ratios; asserts nothing. Under `cargo test` it runs a small smoke
//! pass.

#![allow(missing_docs, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_sqs::aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use streams_sqs::{SqsClient, SqsReader, SqsWriter};
use tokio::sync::Notify;

const PAYLOAD: &str = r#"{"order_id":"7c1f","customer":"customer-7","amount_cents":1999,"currency":"EUR","items":[{"sku":"A-1","qty":2}]}"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn client() -> SqsClient {
    let endpoint = std::env::var("STREAMS_AWS_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:4566".to_owned());
    SqsClient::builder()
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_static_credentials("test", "test")
        .connect()
        .await
}

async fn fresh_queue(client: &SqsClient, case: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    let stream = format!("bench-{case}-{}-{nanos}", std::process::id());
    let url = client.create_queue(&stream).await.expect("create queue");
    (stream, url)
}

/// The attributes a streams message carries, so raw and driver send the same bytes.
fn raw_attributes(stream: &str, i: usize) -> HashMap<String, MessageAttributeValue> {
    let s = |v: String| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("data type set")
    };
    HashMap::from([
        ("streams-message-id".to_owned(), s(format!("raw-{i}"))),
        ("streams-stream-name".to_owned(), s(stream.to_owned())),
        ("streams-stream-key".to_owned(), s("customer-7".to_owned())),
        (
            "streams-content-type".to_owned(),
            s("application/json".to_owned()),
        ),
        (
            "streams-message-time".to_owned(),
            s("1700000000000".to_owned()),
        ),
    ])
}

fn message(stream: &str) -> Message {
    Message::new(stream, PAYLOAD)
        .with_key("customer-7")
        .with_content_type("application/json")
}

/// Runs `tasks` tasks, each taking work items of `step` messages until `n` are done.
async fn spread<F, Fut>(n: usize, tasks: usize, step: usize, work: F) -> Duration
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (next, work) = (next.clone(), work.clone());
        set.spawn(async move {
            loop {
                let from = next.fetch_add(step, Ordering::Relaxed);
                if from >= n {
                    break;
                }
                work(from, step.min(n - from)).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    started.elapsed()
}

async fn raw_batch_send(client: &SqsClient, n: usize, c: usize) -> Duration {
    let (stream, url) = fresh_queue(client, "raw-batch").await;
    let sdk = client.sdk().clone();
    let s = stream.clone();
    let d = spread(n, c, 10, move |from, k| {
        let (sdk, url, stream) = (sdk.clone(), url.clone(), stream.clone());
        async move {
            let entries = (from..from + k)
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(PAYLOAD)
                        .set_message_attributes(Some(raw_attributes(&stream, i)))
                        .build()
                        .expect("id and body set")
                })
                .collect();
            let out = sdk
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send batch");
            assert!(out.failed.is_empty());
        }
    })
    .await;
    drop_queue(client, &s).await;
    d
}

/// Deletes a case's queue so that later cases run on an equally loaded emulator.
async fn drop_queue(client: &SqsClient, stream: &str) {
    client.delete_queue(stream).await.expect("delete queue");
}

async fn raw_single_send(client: &SqsClient, n: usize, c: usize) -> Duration {
    let (stream, url) = fresh_queue(client, "raw-single").await;
    let sdk = client.sdk().clone();
    let s = stream.clone();
    let d = spread(n, c, 1, move |i, _| {
        let (sdk, url, stream) = (sdk.clone(), url.clone(), stream.clone());
        async move {
            sdk.send_message()
                .queue_url(url)
                .message_body(PAYLOAD)
                .set_message_attributes(Some(raw_attributes(&stream, i)))
                .send()
                .await
                .expect("send");
        }
    })
    .await;
    drop_queue(client, &s).await;
    d
}

async fn writer_send(client: &SqsClient, n: usize, c: usize) -> Duration {
    let (stream, _) = fresh_queue(client, "writer").await;
    let writer = Arc::new(SqsWriter::new(client.clone()));
    let s = stream.clone();
    let d = spread(n, c, 10, move |_, k| {
        let (writer, stream) = (writer.clone(), stream.clone());
        async move {
            let batch = (0..k).map(|_| message(&stream)).collect();
            writer.write(batch).await.expect("write");
        }
    })
    .await;
    drop_queue(client, &s).await;
    d
}

async fn prefilled(client: &SqsClient, case: &str, n: usize) -> (String, String) {
    let (stream, url) = fresh_queue(client, case).await;
    let writer = SqsWriter::new(client.clone());
    for from in (0..n).step_by(100) {
        let batch = (from..(from + 100).min(n))
            .map(|_| message(&stream))
            .collect();
        writer.write(batch).await.expect("prefill");
    }
    (stream, url)
}

async fn raw_receive(client: &SqsClient, n: usize, c: usize) -> Duration {
    let (stream, url) = prefilled(client, "raw-receive", n).await;
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (sdk, url, done) = (client.sdk().clone(), url.clone(), done.clone());
        set.spawn(async move {
            while done.load(Ordering::Relaxed) < n {
                let out = sdk
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .send()
                    .await
                    .expect("receive");
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        std::hint::black_box(m.body());
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .expect("id and handle set")
                    })
                    .collect();
                sdk.delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("delete");
                done.fetch_add(messages.len(), Ordering::Relaxed);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let d = started.elapsed();
    drop_queue(client, &stream).await;
    d
}

async fn reader_receive(client: &SqsClient, n: usize, c: usize) -> Duration {
    let (stream, _) = prefilled(client, "reader", n).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let (s, a) = (seen.clone(), all.clone());
    let h = handler(tower::service_fn(move |m: Message| {
        std::hint::black_box(&m);
        if s.fetch_add(1, Ordering::Relaxed) + 1 == n {
            a.notify_one();
        }
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let reader = SqsReader::builder(client.clone())
        .with_pollers(c)
        .with_concurrency(10 * c)
        .with_wait_time(Duration::from_secs(1))
        .build();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let c2 = cancel.clone();
    let task = ReadTask::new(stream.clone());
    let join = tokio::spawn(async move { reader.read(task, h, c2).await });
    all.notified().await;
    // Until the last handler returned; the raw loop's last delete is one call, and the
    // reader's shutdown waits out a long poll, which is not throughput.
    let d = started.elapsed();
    cancel.cancel();
    join.await.expect("reader task").expect("reader");
    drop_queue(client, &stream).await;
    d
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench {
        env_usize("MESSAGES", 300)
    } else {
        20
    };
    let rounds = if bench {
        env_usize("ROUNDS", 3).max(1)
    } else {
        1
    };
    let c = env_usize("CONCURRENCY", 4).max(1);
    let client = client().await;
    println!(
        "sqs throughput: {n} messages per case, {rounds} rounds, concurrency {c}, {} B payload",
        PAYLOAD.len()
    );
    // Cases alternate within each round so that drift in the emulator's speed (and in
    // the machine's load) hits every case alike; totals are summed over the rounds.
    let mut t = [Duration::ZERO; 5];
    for round in 0..rounds {
        if round % 2 == 0 {
            t[0] += raw_batch_send(&client, n, c).await;
            t[1] += writer_send(&client, n, c).await;
            t[3] += raw_receive(&client, n, c).await;
            t[4] += reader_receive(&client, n, c).await;
        } else {
            t[1] += writer_send(&client, n, c).await;
            t[0] += raw_batch_send(&client, n, c).await;
            t[4] += reader_receive(&client, n, c).await;
            t[3] += raw_receive(&client, n, c).await;
        }
        t[2] += raw_single_send(&client, n, c).await;
    }
    let total = n * rounds;
    let [rb, w, rs, rr, r] = t.map(|d| rate(total, d));
    println!("write  raw SendMessageBatch loop : {rb:9.1} msg/s");
    println!(
        "write  SqsWriter                 : {w:9.1} msg/s  ({:.2} of raw batch loop)",
        w / rb
    );
    println!(
        "write  raw SendMessage per msg   : {rs:9.1} msg/s  (SqsWriter is {:.1}x this)",
        w / rs
    );
    println!("read   raw receive/delete loop   : {rr:9.1} msg/s");
    println!(
        "read   SqsReader                 : {r:9.1} msg/s  ({:.2} of raw loop)",
        r / rr
    );
}
