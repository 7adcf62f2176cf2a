//! Retry after a delay the handler chooses, on any platform: the platform comes from
//! `STREAMS_URL` (the in-process bus by default).
//!
//! Two streams, each with a subscriber:
//! - `quotes` is rate limited by a partner API: it answers "retry in 2 s" itself with
//!   [`RetryAfter`], and the platform brings the message back then (SQS sets its
//!   visibility, NATS naks with the delay, Kafka holds the partition, the in-process bus
//!   schedules it) without a handler slot waiting meanwhile.
//! - `ledger` fails twice; its [`RetryLayer`] hands its backoff (300 ms, then 600 ms) to
//!   the platform the same way instead of sleeping in the handler.
//!
//! ```text
//! cargo run -p streams-examples --example retry_after                      # memory://
//! STREAMS_URL='nats://127.0.0.1:4222?group=demo' \
//!     cargo run -p streams-examples --features streams/nats --example retry_after
//! ```
//!
//! The streams (`demo-price-requests`, `demo-ledger-entries`) must exist on platforms
//! that need them created first.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use streams::middleware::{RetryLayer, RetryPolicy};
use streams::{typed, BoxError, Event, Message, RetryAfter};
use tokio::sync::mpsc;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PriceRequested {
    sku: String,
}

impl Event for PriceRequested {}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LedgerEntry {
    sku: String,
}

impl Event for LedgerEntry {}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let conn = streams::connect_from_env().await?;
    println!("platform: {}", conn.platform());
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();

    let mut bus = conn.event_bus()?;
    bus.register::<PriceRequested>("demo-price-requests");
    bus.register::<LedgerEntry>("demo-ledger-entries");

    let log = tx.clone();
    bus.router()
        .subscribe_typed(move |req: PriceRequested, m: Message| {
            let log = log.clone();
            async move {
                let attempt = m.delivery_attempt().unwrap_or(1);
                let at = started.elapsed().as_secs_f32();
                if attempt == 1 {
                    log.send(format!(
                        "{at:5.2}s quotes: {} rate limited, asking for 2 s",
                        req.sku
                    ))?;
                    return Err(
                        RetryAfter::new(Duration::from_secs(2), "429 from the partner").into(),
                    );
                }
                log.send(format!(
                    "{at:5.2}s quotes: {} priced on delivery {attempt}",
                    req.sku
                ))?;
                Ok(())
            }
        })?;

    let log = tx.clone();
    let ledger = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(300))
                .with_jitter(0.0)
                .with_platform_delay(true),
        ))
        .service(typed(move |req: LedgerEntry, m: Message| {
            let log = log.clone();
            async move {
                let attempt = m.delivery_attempt().unwrap_or(1);
                let at = started.elapsed().as_secs_f32();
                if attempt < 3 {
                    log.send(format!(
                        "{at:5.2}s ledger: {} failed on delivery {attempt}",
                        req.sku
                    ))?;
                    return Err("ledger database busy".into());
                }
                log.send(format!(
                    "{at:5.2}s ledger: {} booked on delivery {attempt}",
                    req.sku
                ))?;
                Ok::<_, BoxError>(())
            }
        }));
    bus.router().subscribe_event::<LedgerEntry, _>(ledger)?;
    drop(tx);

    bus.start().await?;
    bus.publish(&PriceRequested {
        sku: "sku-42".into(),
    })
    .await?;
    bus.publish(&LedgerEntry {
        sku: "sku-42".into(),
    })
    .await?;
    let mut done = 0;
    while done < 2 {
        let line = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await?
            .ok_or("subscribers stopped")?;
        println!("{line}");
        if line.contains("priced") || line.contains("booked") {
            done += 1;
        }
    }
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
