//! RabbitMQ writer and reader throughput next to raw `lapin` loops doing the same work,
//! in the same run against the same broker (`STREAMS_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! Run with `cargo bench -p streams-amqp --bench throughput`. `MESSAGES` (default
//! 50000), `SIZE` (default 256 bytes), `WINDOW` (default 256: messages published before
//! their confirms are awaited, the driver's batch), `PREFETCH` (default 64) and `ROUNDS`
//! (default 2); who goes first alternates. Every case uses a fresh stream and a classic
//! queue (`QUEUE_TYPE=quorum` for quorum queues). Prints figures and ratios; asserts
//! nothing. Under `cargo test` it runs a small smoke pass.
//!
//! - publish: raw `basic_publish` (persistent, mandatory, the same properties and
//!   headers) of `WINDOW` messages, then every confirm awaited; the driver
//!   `AmqpWriter::write` with batches of `WINDOW`.
//! - consume: raw `basic_consume` with `basic.qos(PREFETCH)`, reading each payload and
//!   id and acknowledging each delivery; the driver an `AmqpReader` task (one handler at
//!   a time) whose handler counts.

#![allow(missing_docs, clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use streams_amqp::{
    create_stream, queue_name, AmqpClient, AmqpConfig, AmqpReader, AmqpWriter, QueueType,
};
use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use tokio::sync::Notify;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn messages(stream: &str, n: usize, size: usize) -> Vec<Message> {
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    (0..n)
        .map(|_| {
            Message::new(stream, payload.clone())
                .with_key("customer-7")
                .with_content_type("application/json")
        })
        .collect()
}

fn queue_args(quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    args
}

/// A group's queue, bound, as the driver's reader makes it.
async fn group_queue(conn: &Connection, stream: &str, group: &str, quorum: bool) -> String {
    let ch = conn.create_channel().await.expect("channel");
    let q = queue_name(stream, group).expect("name");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        queue_args(quorum),
    )
    .await
    .expect("queue");
    ch.queue_bind(
        q.as_str().into(),
        stream.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    q
}

async fn raw_publish(
    conn: &Connection,
    stream: &str,
    batch: Vec<Message>,
    window: usize,
) -> Duration {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let started = Instant::now();
    for chunk in batch.chunks(window) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for m in chunk {
            let mut headers = FieldTable::default();
            headers.insert(
                "streams-key".into(),
                AMQPValue::LongString(LongString::from("customer-7")),
            );
            headers.insert(
                "streams-time".into(),
                AMQPValue::LongString(LongString::from(
                    m.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                )),
            );
            let props = BasicProperties::default()
                .with_message_id(m.id.as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_timestamp(m.time.timestamp() as u64)
                .with_headers(headers);
            confirms.push(
                ch.basic_publish(
                    stream.into(),
                    "customer-7".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.data,
                    props,
                )
                .await
                .expect("publish"),
            );
        }
        for c in confirms {
            assert!(c.await.expect("confirm").is_ack());
        }
    }
    started.elapsed()
}

async fn driver_publish(c: &AmqpClient, batch: Vec<Message>, window: usize) -> Duration {
    let writer = AmqpWriter::new(c.clone());
    let started = Instant::now();
    let mut batch = batch.into_iter().peekable();
    while batch.peek().is_some() {
        writer
            .write(batch.by_ref().take(window).collect())
            .await
            .expect("write");
    }
    started.elapsed()
}

async fn raw_consume(conn: &Connection, queue: &str, n: usize, prefetch: u16) -> Duration {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let started = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut seen = 0;
    while seen < n {
        let d = consumer.next().await.expect("open").expect("delivery");
        std::hint::black_box((d.data.len(), d.properties.message_id().clone()));
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
        seen += 1;
    }
    started.elapsed()
}

async fn driver_consume(c: &AmqpClient, stream: &str, n: usize) -> Duration {
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (k, d) = (count.clone(), done.clone());
    let h = handler(tower::service_fn(move |m: Message| {
        std::hint::black_box(m.data.len());
        if k.fetch_add(1, Ordering::Relaxed) + 1 == n {
            d.notify_one();
        }
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let cancel = CancellationToken::new();
    let sub = AmqpReader::new(c.clone())
        .subscribe(ReadTask::new(stream).with_group("driver"))
        .await
        .expect("subscribe");
    let started = Instant::now();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    done.notified().await;
    let took = started.elapsed();
    cancel.cancel();
    run.await.expect("join").expect("run");
    took
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = std::env::args().all(|a| a != "--bench");
    let n = if smoke {
        300
    } else {
        env_usize("MESSAGES", 50_000)
    };
    let size = env_usize("SIZE", 256);
    let window = env_usize("WINDOW", 256);
    let prefetch = env_usize("PREFETCH", 64) as u16;
    let rounds = if smoke { 1 } else { env_usize("ROUNDS", 2) };
    let quorum = std::env::var("QUEUE_TYPE").is_ok_and(|t| t == "quorum");
    let url = std::env::var("STREAMS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let c = AmqpClient::connect(
        AmqpConfig::new(&url)
            .with_prefetch(prefetch)
            .with_queue_type(if quorum {
                QueueType::Quorum
            } else {
                QueueType::Classic
            }),
    )
    .await
    .expect("RabbitMQ");
    let raw = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("raw connection");
    println!("amqp throughput: {n} messages of {size} bytes, window {window}, prefetch {prefetch}, {} queues", if quorum { "quorum" } else { "classic" });
    for round in 1..=rounds {
        let raw_stream = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
        let drv_stream = format!("bench-driver-{}", uuid::Uuid::new_v4().simple());
        create_stream(&c, &raw_stream).await.expect("stream");
        create_stream(&c, &drv_stream).await.expect("stream");
        let raw_queue = group_queue(&raw, &raw_stream, "raw", quorum).await;
        group_queue(&raw, &drv_stream, "driver", quorum).await;
        let (pr, pd, cr, cd) = if round % 2 == 1 {
            let a = raw_publish(&raw, &raw_stream, messages(&raw_stream, n, size), window).await;
            let b = driver_publish(&c, messages(&drv_stream, n, size), window).await;
            let x = raw_consume(&raw, &raw_queue, n, prefetch).await;
            let y = driver_consume(&c, &drv_stream, n).await;
            (a, b, x, y)
        } else {
            let b = driver_publish(&c, messages(&drv_stream, n, size), window).await;
            let a = raw_publish(&raw, &raw_stream, messages(&raw_stream, n, size), window).await;
            let y = driver_consume(&c, &drv_stream, n).await;
            let x = raw_consume(&raw, &raw_queue, n, prefetch).await;
            (a, b, x, y)
        };
        let (pr, pd, cr, cd) = (rate(n, pr), rate(n, pd), rate(n, cr), rate(n, cd));
        println!(
            "round {round}: publish raw {pr:>8.0} msg/s  streams {pd:>8.0} msg/s  ratio {:.2}",
            pd / pr
        );
        println!(
            "round {round}: consume raw {cr:>8.0} msg/s  streams {cd:>8.0} msg/s  ratio {:.2}",
            cd / cr
        );
        let ch = raw.create_channel().await.expect("channel");
        for (s, g) in [(&raw_stream, "raw"), (&drv_stream, "driver")] {
            let _ = ch
                .queue_delete(
                    queue_name(s, g).expect("name").as_str().into(),
                    Default::default(),
                )
                .await;
            let _ = ch
                .exchange_delete(s.as_str().into(), Default::default())
                .await;
        }
    }
}
