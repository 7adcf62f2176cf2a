//! Consumes typed events from Kafka in a consumer group, at least once, with retry and
//! dead-letter middleware. Stops after `--count` events or on Ctrl-C.
//!
//! Run (a broker on localhost:9092, see the README):
//! `cargo run -p streams-examples --features kafka --example kafka_consumer -- --count 10`

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use streams_core::middleware::{DeadLetterLayer, LoggingLayer, RetryLayer, RetryPolicy};
use streams_core::{typed, BoxError, Event, Message, ReadTask, Router};
use streams_kafka::{
    create_topic, KafkaConfig, KafkaReader, KafkaWriter, HEADER_CURRENT_OFFSET, HEADER_PARTITION_ID,
};
use tokio::sync::Notify;

/// Reads `OrderPlaced` events.
#[derive(Debug, Parser)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMS_KAFKA_BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// Topic to read.
    #[arg(long, default_value = "orders.placed")]
    topic: String,
    /// Consumer group.
    #[arg(long, default_value = "billing")]
    group: String,
    /// Stop after this many events (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer: String,
    total_cents: u64,
}

impl Event for OrderPlaced {}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = Args::parse();
    let config = KafkaConfig::new(&args.brokers);
    create_topic(&config, &args.topic, 3, 1).await?;
    create_topic(&config, &format!("{}.dlq", args.topic), 1, 1).await?;

    let seen = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(Notify::new());
    let (s, e, count) = (seen.clone(), enough.clone(), args.count);
    let handler = tower::ServiceBuilder::new()
        .layer(LoggingLayer::new())
        .layer(DeadLetterLayer::new(Arc::new(KafkaWriter::new(&config)?)))
        .layer(RetryLayer::new(RetryPolicy::default().with_max_attempts(5)))
        .service(typed(move |order: OrderPlaced, msg: Message| {
            let (s, e) = (s.clone(), e.clone());
            async move {
                println!(
                    "{} from {} ({} cents) partition {} offset {}",
                    order.order_id,
                    order.customer,
                    order.total_cents,
                    msg.header(HEADER_PARTITION_ID).unwrap_or("?"),
                    msg.header(HEADER_CURRENT_OFFSET).unwrap_or("?"),
                );
                if s.fetch_add(1, Ordering::SeqCst) + 1 == count {
                    e.notify_one();
                }
                Ok::<_, BoxError>(())
            }
        }));

    let mut subscriber = Router::new(Arc::new(KafkaReader::new(config)), Default::default());
    subscriber.subscribe(ReadTask::new(&args.topic).with_group(&args.group), handler);
    subscriber.start().await?;
    tokio::select! {
        _ = enough.notified() => {}
        _ = tokio::signal::ctrl_c() => {}
        r = subscriber.wait() => r?,
    }
    // Stop reading, let in-flight handlers finish, commit what they finished.
    subscriber.shutdown(Duration::from_secs(10)).await?;
    println!("handled {} events", seen.load(Ordering::SeqCst));
    Ok(())
}
