//! Shared helpers of the Kafka integration tests. The broker is this test binary's
//! container, or `STREAMS_KAFKA_BROKERS` (default `localhost:9092`): see streams-testkit.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    missing_debug_implementations
)]

use std::sync::Arc;
use std::time::Duration;

use streams_core::{BoxError, CancellationToken, Handler, Message, ReadTask, Reader};
use streams_kafka::{create_topic, KafkaConfig, KafkaReader};
use tokio::sync::mpsc;

/// Settings for tests: short session time-outs so group joins are quick.
pub fn config() -> KafkaConfig {
    // RUST_LOG=streams_kafka=debug,librdkafka=debug shows what the client does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = KafkaConfig::new(streams_testkit::kafka_brokers());
    if let Ok(contexts) = std::env::var("STREAMS_KAFKA_DEBUG") {
        // librdkafka debug contexts, such as `consumer,fetch,cgrp`.
        config = config.with_property("debug", contexts);
    }
    config
        .with_property("session.timeout.ms", "6000")
        .with_property("heartbeat.interval.ms", "1000")
        .with_property("topic.metadata.refresh.interval.ms", "1000")
        .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

pub fn unique(name: &str) -> String {
    streams_conformance::unique_stream(name)
}

pub async fn topic(name: &str, partitions: i32) -> String {
    let t = unique(name);
    create_topic(&config(), &t, partitions, 1)
        .await
        .expect("create topic");
    t
}

/// A reader task that forwards every message to a channel.
pub struct Running {
    pub rx: mpsc::UnboundedReceiver<Message>,
    pub cancel: CancellationToken,
    pub join: tokio::task::JoinHandle<streams_core::Result<()>>,
}

pub fn forwarding(tx: mpsc::UnboundedSender<Message>) -> Handler {
    streams_core::handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move { tx.send(m).map_err(BoxError::from) }
    }))
}

pub fn start(
    config: KafkaConfig,
    task: ReadTask,
    handler: Handler,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<streams_core::Result<()>>,
) {
    let reader = Arc::new(KafkaReader::new(config));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    (
        cancel,
        tokio::spawn(async move { reader.read(task, handler, c).await }),
    )
}

pub fn run(task: ReadTask) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let (cancel, join) = start(config(), task, forwarding(tx));
    Running { rx, cancel, join }
}

impl Running {
    /// Receives until `n` messages arrived or `patience` passed.
    pub async fn take(&mut self, n: usize, patience: Duration) -> Vec<Message> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + patience;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => got.push(m),
                _ => break,
            }
        }
        got
    }

    /// Whatever else arrives within `quiet`.
    pub async fn rest(&mut self, quiet: Duration) -> Vec<Message> {
        let mut got = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            got.push(m);
        }
        got
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .expect("reader stops")
            .expect("join")
            .expect("reader ok");
    }
}

pub fn batch(topic: &str, n: usize, tag: &str) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(topic, format!("{tag}-{i}"))
                .with_key(format!("k{}", i % 5))
                .with_header("seq", i.to_string())
        })
        .collect()
}
