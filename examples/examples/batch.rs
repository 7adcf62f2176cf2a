//! A batch handler on any platform: orders are handled up to 50 at a time (or what
//! arrived within 100 ms), per partition on Kafka; one order in each batch is refused
//! and comes again while the rest are acknowledged. Retry and dead-letter middleware
//! work on batches; a payload that does not decode fails alone.
//!
//! ```text
//! cargo run -p streams-examples --example batch                                  # memory://
//! STREAMS_URL='kafka://localhost:9092?group=demo' \
//!     cargo run -p streams-examples --features streams/kafka --example batch
//! STREAMS_URL='sqs://127.0.0.1:4566?region=us-east-1' AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//!     cargo run -p streams-examples --features streams/sqs --example batch
//! ```
//!
//! The stream (topic or queue) and its `.dlq` must exist on platforms that need them
//! created first.

#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams::middleware::{DeadLetterLayer, RetryLayer, RetryPolicy};
use streams::{BatchOutcome, BatchSize, BoxError, Event, Message};
use tokio::sync::mpsc;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order: u32,
    customer: String,
}

impl Event for OrderPlaced {
    fn key(&self) -> Option<String> {
        Some(self.customer.clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let conn = streams::connect_from_env().await?;
    println!("platform: {}", conn.platform());
    let mut bus = conn.event_bus()?;
    bus.register::<OrderPlaced>("demo-orders");

    // The first time an order number ending in 7 is seen, it fails: the retry layer
    // calls the handler again with the failed orders only.
    let refused_once = Arc::new(Mutex::new(HashSet::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = streams::typed_batch(move |orders: Vec<(OrderPlaced, Message)>| {
        let (tx, refused_once) = (tx.clone(), refused_once.clone());
        async move {
            let mut outcome = BatchOutcome::ok();
            for (i, (o, _)) in orders.iter().enumerate() {
                if o.order % 10 == 7 && refused_once.lock().unwrap().insert(o.order) {
                    outcome.fail(i, format!("order {}: stock not confirmed yet", o.order));
                } else {
                    let _ = tx.send(o.order);
                }
            }
            println!(
                "batch of {:>2}: {} acknowledged, {} failed",
                orders.len(),
                orders.len() - outcome.failed_count(),
                outcome.failed_count()
            );
            Ok::<_, BoxError>(outcome)
        }
    });
    let stack = tower::ServiceBuilder::new()
        .layer(DeadLetterLayer::new(conn.writer()))
        .layer(RetryLayer::new(
            RetryPolicy::default().with_initial_backoff(Duration::from_millis(20)),
        ))
        .service(handle);
    bus.router().subscribe_batch(
        streams::ReadTask::new("demo-orders").with_group("demo-batch"),
        BatchSize::new(50, Duration::from_millis(100)),
        stack,
    );
    bus.start().await?;

    for order in 0..100 {
        let customer = format!("customer-{}", order % 8);
        bus.publish(&OrderPlaced { order, customer }).await?;
    }
    let mut handled = HashSet::new();
    while handled.len() < 100 {
        let order = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await?
            .ok_or("handler stopped")?;
        handled.insert(order);
    }
    println!("all 100 orders acknowledged");
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
