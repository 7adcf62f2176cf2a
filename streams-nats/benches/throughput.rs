//! NATS JetStream writer and reader throughput next to raw `async-nats` loops doing the
//! same work, in the same run against the same server (`STREAMS_NATS_SERVERS`, default
//! `127.0.0.1:4222`).
//!
//! Run with `cargo bench -p streams-nats --bench throughput`. `MESSAGES` (default
//! 100000) and `SIZE` (default 256 bytes) set each case, `ROUNDS` (default 2) the
//! rounds, `WINDOW` (default 256) the publishes awaiting acknowledgement at once and
//! `PREFETCH` (default 64) the messages pulled ahead, for both the raw loops and the
//! driver. Every case writes a fresh stream. Prints figures and ratios; asserts
//! nothing. Under `cargo test` it runs a small smoke pass.
//!
//! - publish: raw `send_publish` with the same headers (`Nats-Msg-Id`, key, content
//!   type, time), built first and sent back to back, keeping `WINDOW` acknowledgements
//!   pending, all awaited; the driver
//!   `NatsWriter::write` in batches of 10,000 with `with_max_in_flight(WINDOW)`.
//! - consume: a durable pull consumer with explicit acks; raw reads each message's
//!   payload and id and acknowledges it; the driver runs a `NatsReader` task (one
//!   handler at a time, `with_prefetch(PREFETCH)`) whose handler counts.

#![allow(missing_docs, clippy::print_stdout)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_nats::{
    create_stream, delete_stream, nats_name, NatsClient, NatsConfig, NatsReader, NatsWriter,
};
use tokio::sync::Notify;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Setup {
    messages: usize,
    size: usize,
    window: usize,
    prefetch: usize,
}

async fn client(s: &Setup) -> NatsClient {
    let servers = std::env::var("STREAMS_NATS_SERVERS").unwrap_or_else(|_| "127.0.0.1:4222".into());
    NatsClient::connect(
        NatsConfig::new(&servers)
            .with_max_in_flight(s.window)
            .with_prefetch(s.prefetch),
    )
    .await
    .expect("NATS with JetStream")
}

fn messages(stream: &str, s: &Setup) -> Vec<Message> {
    let payload = bytes::Bytes::from(vec![b'x'; s.size]);
    (0..s.messages)
        .map(|_| {
            Message::new(stream, payload.clone())
                .with_key("customer-7")
                .with_content_type("application/json")
        })
        .collect()
}

async fn fresh_stream(c: &NatsClient, case: &str) -> String {
    let stream = format!("bench-{case}-{}", uuid::Uuid::new_v4().simple());
    create_stream(c, &stream).await.expect("create stream");
    stream
}

async fn raw_publish(c: &NatsClient, stream: &str, batch: Vec<Message>, window: usize) -> Duration {
    let subject = nats_name(stream).expect("name");
    let js = c.jetstream();
    let started = Instant::now();
    // Built first, then sent back to back, as the driver does per write.
    let publishes: Vec<PublishMessage> = batch
        .into_iter()
        .map(|m| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_MESSAGE_ID, m.id.as_str());
            h.insert("streams-key", "customer-7");
            h.insert("content-type", "application/json");
            h.insert(
                "streams-time",
                m.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                    .as_str(),
            );
            PublishMessage::build().payload(m.data).headers(h)
        })
        .collect();
    let mut pending = VecDeque::with_capacity(window);
    for publish in publishes {
        if pending.len() >= window {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                pending.pop_front().expect("pending");
            ack.await.expect("ack");
        }
        pending.push_back(
            js.send_publish(subject.clone(), publish)
                .await
                .expect("publish"),
        );
    }
    for ack in pending {
        ack.await.expect("ack");
    }
    started.elapsed()
}

async fn driver_publish(c: &NatsClient, batch: Vec<Message>) -> Duration {
    let writer = NatsWriter::new(c.clone());
    let started = Instant::now();
    let mut batch = batch.into_iter().peekable();
    while batch.peek().is_some() {
        let chunk: Vec<_> = batch.by_ref().take(10_000).collect();
        writer.write(chunk).await.expect("write");
    }
    started.elapsed()
}

async fn raw_consume(c: &NatsClient, stream: &str, s: &Setup) -> Duration {
    let js_stream = c
        .jetstream()
        .get_stream(nats_name(stream).expect("name"))
        .await
        .expect("stream");
    let consumer = js_stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(s.prefetch)
        .messages()
        .await
        .expect("messages");
    let mut n = 0;
    let mut bytes = 0;
    while n < s.messages {
        let m = msgs.next().await.expect("open").expect("message");
        bytes += m.payload.len();
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().len());
        std::hint::black_box((bytes, id));
        m.ack().await.expect("ack");
        n += 1;
    }
    started.elapsed()
}

async fn driver_consume(c: &NatsClient, stream: &str, s: &Setup) -> Duration {
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (k, d, want) = (count.clone(), done.clone(), s.messages);
    let h = handler(tower::service_fn(move |m: Message| {
        std::hint::black_box(m.data.len());
        if k.fetch_add(1, Ordering::Relaxed) + 1 == want {
            d.notify_one();
        }
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let cancel = CancellationToken::new();
    let sub = NatsReader::new(c.clone())
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
    let s = Setup {
        messages: if smoke {
            500
        } else {
            env_usize("MESSAGES", 100_000)
        },
        size: env_usize("SIZE", 256),
        window: env_usize("WINDOW", 256),
        prefetch: env_usize("PREFETCH", 64),
    };
    let rounds = if smoke { 1 } else { env_usize("ROUNDS", 2) };
    let c = client(&s).await;
    println!(
        "nats throughput: {} messages of {} bytes, window {}, prefetch {}",
        s.messages, s.size, s.window, s.prefetch
    );
    for round in 1..=rounds {
        let raw_stream = fresh_stream(&c, "raw").await;
        let drv_stream = fresh_stream(&c, "driver").await;
        // Who goes first alternates, so warming up favours neither.
        let (pub_raw, con_raw, pub_drv, con_drv) = if round % 2 == 1 {
            let pub_raw = raw_publish(&c, &raw_stream, messages(&raw_stream, &s), s.window).await;
            let pub_drv = driver_publish(&c, messages(&drv_stream, &s)).await;
            let con_raw = raw_consume(&c, &raw_stream, &s).await;
            let con_drv = driver_consume(&c, &drv_stream, &s).await;
            (pub_raw, con_raw, pub_drv, con_drv)
        } else {
            let pub_drv = driver_publish(&c, messages(&drv_stream, &s)).await;
            let pub_raw = raw_publish(&c, &raw_stream, messages(&raw_stream, &s), s.window).await;
            let con_drv = driver_consume(&c, &drv_stream, &s).await;
            let con_raw = raw_consume(&c, &raw_stream, &s).await;
            (pub_raw, con_raw, pub_drv, con_drv)
        };
        let (pr, pd) = (rate(s.messages, pub_raw), rate(s.messages, pub_drv));
        let (cr, cd) = (rate(s.messages, con_raw), rate(s.messages, con_drv));
        println!(
            "round {round}: publish raw {pr:>9.0} msg/s  streams {pd:>9.0} msg/s  ratio {:.2}",
            pd / pr
        );
        println!(
            "round {round}: consume raw {cr:>9.0} msg/s  streams {cd:>9.0} msg/s  ratio {:.2}",
            cd / cr
        );
        delete_stream(&c, &raw_stream).await.expect("delete");
        delete_stream(&c, &drv_stream).await.expect("delete");
    }
}
