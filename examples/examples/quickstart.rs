//! Quickstart: typed events on the in-process bus, no services needed.
//!
//! Two services subscribe to `orders.placed`: billing (behind retry and dead-letter
//! middleware) and shipping. One order fails once and is retried; one can never be
//! billed and lands in `orders.placed.dlq`. Then the bus shuts down cleanly.
//!
//! Run: `cargo run -p streams-examples --example quickstart`

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streams_core::middleware::{DeadLetterLayer, RetryLayer, RetryPolicy, DLQ_REASON};
use streams_core::{typed, BoxError, Event, Message, Unrecoverable};
use tokio::sync::Notify;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: u64,
}

impl Event for OrderPlaced {
    fn key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // One line: a working in-process bus.
    let mut bus = streams_chanbuf::event_bus();
    bus.register::<OrderPlaced>("orders.placed");

    // Each of the 3 orders ends in exactly one of 6 outcomes we wait for:
    // 3 shipped, 2 billed, 1 dead-lettered.
    let outcomes = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let done = {
        let (outcomes, all_done) = (outcomes.clone(), all_done.clone());
        move || {
            if outcomes.fetch_add(1, Ordering::SeqCst) + 1 == 6 {
                all_done.notify_one();
            }
        }
    };

    // Billing: retried with backoff, dead-lettered when it cannot succeed.
    let attempts = Arc::new(AtomicUsize::new(0));
    let billed = done.clone();
    let billing = tower::ServiceBuilder::new()
        .layer(DeadLetterLayer::new(bus.publisher().writer().clone()))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(20)),
        ))
        .service(typed(move |order: OrderPlaced, _msg: Message| {
            let attempts = attempts.clone();
            let billed = billed.clone();
            async move {
                if order.total_cents == 0 {
                    return Err(Unrecoverable::new("cannot bill an empty order").into());
                }
                if order.order_id == "o-2" && attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    println!(
                        "billing   {}: payment gateway busy, will retry",
                        order.order_id
                    );
                    return Err("payment gateway busy".into());
                }
                println!(
                    "billing   {}: charged {} cents",
                    order.order_id, order.total_cents
                );
                billed();
                Ok::<_, BoxError>(())
            }
        }));
    bus.router().subscribe_event::<OrderPlaced, _>(billing)?;

    // Shipping: a plain typed subscriber.
    let shipped = done.clone();
    bus.router()
        .subscribe_typed(move |order: OrderPlaced, msg: Message| {
            let shipped = shipped.clone();
            async move {
                println!(
                    "shipping  {}: parcel prepared (message {})",
                    order.order_id, msg.id
                );
                shipped();
                Ok::<_, BoxError>(())
            }
        })?;

    // Whatever billing gives up on.
    let dead = done.clone();
    bus.router().subscribe_stream(
        "orders.placed.dlq",
        tower::service_fn(move |msg: Message| {
            println!(
                "dlq       {}: {}",
                msg.key.as_deref().unwrap_or("-"),
                msg.header(DLQ_REASON).unwrap_or("?")
            );
            dead();
            std::future::ready(Ok::<_, BoxError>(()))
        }),
    );

    bus.start().await?;
    for (order_id, total_cents) in [("o-1", 1999), ("o-2", 4500), ("o-3", 0)] {
        bus.publish(&OrderPlaced {
            order_id: order_id.into(),
            total_cents,
        })
        .await?;
    }

    tokio::time::timeout(Duration::from_secs(10), all_done.notified())
        .await
        .map_err(|_| "not every order was handled within 10 s")?;
    bus.shutdown(Duration::from_secs(5)).await?;
    println!(
        "done: {} outcomes, bus shut down cleanly",
        outcomes.load(Ordering::SeqCst)
    );
    Ok(())
}
