//! Publishes typed events to Kafka.
//!
//! Run (a broker on localhost:9092, see the README):
//! `cargo run -p streams-examples --features kafka --example kafka_producer -- --count 10`

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use streams_core::{Event, EventRegistry, KsuidFactory, Publisher};
use streams_kafka::{create_topic, KafkaConfig, KafkaWriter};

/// Publishes `OrderPlaced` events.
#[derive(Debug, Parser)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMS_KAFKA_BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// Topic to publish to.
    #[arg(long, default_value = "orders.placed")]
    topic: String,
    /// Number of events.
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer: String,
    total_cents: u64,
}

impl Event for OrderPlaced {
    fn key(&self) -> Option<String> {
        // Orders of one customer stay in order: same key, same partition.
        Some(self.customer.clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), streams_core::BoxError> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = Args::parse();
    let config = KafkaConfig::new(&args.brokers);
    create_topic(&config, &args.topic, args.partitions, 1).await?;

    let registry = Arc::new(EventRegistry::new());
    registry.register::<OrderPlaced>(&args.topic);
    let writer = Arc::new(KafkaWriter::new(&config)?);
    let publisher = Publisher::new(writer.clone(), registry).with_id_factory(KsuidFactory);
    for i in 0..args.count {
        let event = OrderPlaced {
            order_id: format!("o-{i}"),
            customer: format!("c-{}", i % 3),
            total_cents: 1000 + u64::from(i),
        };
        let id = publisher.publish(&event).await?;
        println!("published {} as {id}", event.order_id);
    }
    // Flush and refuse further writes.
    tokio::time::timeout(
        Duration::from_secs(30),
        streams_core::Writer::close(writer.as_ref()),
    )
    .await??;
    Ok(())
}
