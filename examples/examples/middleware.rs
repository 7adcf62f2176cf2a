//! The handler middleware stack: ours (logging, dead-letter, deduplication, retry,
//! timeout) composed with tower's own concurrency limit, rate limit and buffer.
//!
//! The same message is published twice and handled once; a flaky handler is retried;
//! a hopeless one is dead-lettered.
//!
//! Run: `cargo run -p streams-examples --example middleware`

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streams_chanbuf::MemoryBus;
use streams_core::middleware::{
    DeadLetterLayer, DedupLayer, LoggingLayer, MemoryDedupStore, RetryLayer, RetryPolicy,
    DLQ_REASON,
};
use streams_core::{BoxError, Message, Router, Writer};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();

    let bus = Arc::new(MemoryBus::builder().with_concurrency(4).build());
    let dedup = Arc::new(MemoryDedupStore::new(Duration::from_secs(600), 10_000));
    let calls = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();

    let handled = done_tx.clone();
    let c = calls.clone();
    let stack = tower::ServiceBuilder::new()
        // Ours, outermost first: the first layer sees the message first.
        .layer(LoggingLayer::new())
        .layer(DeadLetterLayer::new(bus.clone()))
        .layer(DedupLayer::new("payments-worker", dedup))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_max_attempts(4)
                .with_initial_backoff(Duration::from_millis(10)),
        ))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
        // Tower's: the buffer makes the rate limiter cloneable for concurrent lanes.
        .layer(tower::buffer::BufferLayer::new(128))
        .layer(tower::limit::RateLimitLayer::new(
            500,
            Duration::from_secs(1),
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(2))
        .service_fn(move |msg: Message| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let handled = handled.clone();
            async move {
                match &msg.data[..] {
                    b"flaky" if n.is_multiple_of(2) => {
                        Err::<(), BoxError>("flaky dependency".into())
                    }
                    b"hopeless" => Err("this can never work".into()),
                    data => {
                        let text = String::from_utf8_lossy(data).into_owned();
                        let _ = handled.send(format!("handled {text}"));
                        Ok(())
                    }
                }
            }
        });

    let dead = done_tx.clone();
    let mut subscriber = Router::new(bus.clone(), Default::default());
    subscriber
        .subscribe_stream("payments", stack)
        .subscribe_stream(
            "payments.dlq",
            tower::service_fn(move |msg: Message| {
                let reason = msg.header(DLQ_REASON).unwrap_or_default().to_owned();
                let _ = dead.send(format!("dead-lettered {:?}: {reason}", msg.data));
                std::future::ready(Ok::<_, BoxError>(()))
            }),
        );
    subscriber.start().await?;

    // A duplicate delivery: the copy that claims the id first is handled, the other is
    // dropped (or waits while the first is being handled).
    let once = Message::new("payments", "charge-42").with_key("order-42");
    bus.write(vec![
        once.clone(),
        once, // a duplicate delivery of the same message id
        Message::new("payments", "flaky"),
        Message::new("payments", "hopeless"),
    ])
    .await?;

    // charge-42 once, flaky after a retry, hopeless dead-lettered.
    for _ in 0..3 {
        let line = tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await?
            .ok_or("channel closed")?;
        println!("{line}");
    }
    subscriber.shutdown(Duration::from_secs(5)).await?;
    println!("handler calls: {}", calls.load(Ordering::SeqCst));
    Ok(())
}
