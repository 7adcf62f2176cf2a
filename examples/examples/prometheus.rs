//! Metrics for Prometheus: a writer and a reader wrapped in `ObservedWriter` and
//! `ObservedReader` on the in-process bus, an order handler that fails some messages so
//! that retries and dead-lettering happen, a payment handler that refuses some, then the
//! text a Prometheus scrape would read.
//!
//! Run: `cargo run -p streams-examples --example prometheus`
//!
//! It finishes on its own. To keep serving the metrics to Prometheus (or curl), name an
//! address to listen on:
//!
//! ```text
//! PROMETHEUS_LISTEN=127.0.0.1:9000 cargo run -p streams-examples --example prometheus
//! curl http://127.0.0.1:9000/metrics
//! ```
//!
//! Ctrl-C stops it then.

#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use streams_chanbuf::MemoryBus;
use streams_core::middleware::{DeadLetterLayer, RetryLayer, RetryPolicy};
use streams_core::observe::{describe_metrics, ObservedReader, ObservedWriter, METRIC_NAMES};
use streams_core::{BoxError, Message, ReadTask, Router, Unrecoverable, Writer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const MESSAGES: usize = 100;
const PAYMENTS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();

    // Durations as real Prometheus histograms (the exporter's default is a summary).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            &[0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
        )?
        .install_recorder()?;
    describe_metrics();

    let bus = Arc::new(MemoryBus::builder().with_concurrency(4).build());
    let writer: Arc<dyn Writer> =
        Arc::new(ObservedWriter::new(bus.clone()).with_system("in_process"));
    let reader = Arc::new(ObservedReader::new(bus.clone()).with_system("in_process"));

    // Every tenth order can never be handled; every fourth fails once, then works.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let handled = done_tx.clone();
    let orders = tower::ServiceBuilder::new()
        .layer(DeadLetterLayer::new(writer.clone()))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(5)),
        ))
        .service_fn(move |msg: Message| {
            let n: usize = String::from_utf8_lossy(&msg.data).parse().unwrap_or(0);
            let first_failure =
                n.is_multiple_of(4) && failed_once.lock().unwrap().insert(msg.id.clone());
            let handled = handled.clone();
            async move {
                if n.is_multiple_of(10) {
                    return Err::<(), BoxError>(format!("order {n} is malformed").into());
                }
                if first_failure {
                    return Err("inventory service unavailable".into());
                }
                let _ = handled.send(());
                Ok(())
            }
        });
    let dead = done_tx.clone();
    let dead_letters = tower::service_fn(move |_msg: Message| {
        let _ = dead.send(());
        std::future::ready(Ok::<_, BoxError>(()))
    });
    // Payments have no dead-letter stream: a refused payment is a negative
    // acknowledgement (Kafka or SQS would deliver it again; the in-process bus drops it).
    let payments = tower::service_fn(move |msg: Message| {
        let _ = done_tx.send(());
        let refused = msg.data.ends_with(b"0");
        std::future::ready(if refused {
            Err::<(), BoxError>(Unrecoverable::new("card declined").into())
        } else {
            Ok(())
        })
    });

    let mut subscriber = Router::new(reader, Default::default());
    subscriber
        .subscribe(ReadTask::new("orders").with_group("billing"), orders)
        .subscribe_stream("orders.dlq", dead_letters)
        .subscribe_stream("payments", payments);
    subscriber.start().await?;

    for batch in (0..MESSAGES).collect::<Vec<_>>().chunks(10) {
        let batch = batch
            .iter()
            .map(|n| Message::new("orders", n.to_string()).with_key(format!("customer-{}", n % 7)))
            .collect();
        writer.write(batch).await?;
    }
    let payments = (0..PAYMENTS)
        .map(|n| Message::new("payments", n.to_string()))
        .collect();
    writer.write(payments).await?;
    // Every order ends handled or dead-lettered, every payment handled or refused.
    for _ in 0..MESSAGES + PAYMENTS {
        tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
            .await?
            .ok_or("handlers stopped early")?;
    }
    subscriber.shutdown(Duration::from_secs(5)).await?;

    // A write after close fails, and is counted as such.
    writer.close().await?;
    let refused = writer.write(vec![Message::new("orders", "late")]).await;
    assert!(refused.is_err(), "the bus is closed");

    let text = prometheus.render();
    println!("{text}");
    for name in METRIC_NAMES {
        if !text.contains(name) {
            return Err(format!("metric {name} missing from the scrape").into());
        }
    }

    if let Ok(addr) = std::env::var("PROMETHEUS_LISTEN") {
        serve(&addr, prometheus).await?;
    }
    Ok(())
}

/// Answers every HTTP request with the current scrape until Ctrl-C.
async fn serve(addr: &str, prometheus: PrometheusHandle) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "serving metrics on http://{}/metrics (Ctrl-C stops)",
        listener.local_addr()?
    );
    loop {
        let (mut conn, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let body = prometheus.render();
        tokio::spawn(async move {
            // One request per connection; its content does not matter.
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
