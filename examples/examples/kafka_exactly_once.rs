//! Exactly-once on Kafka: a transactional writer places orders, a consume-transform-produce
//! pipeline turns each order into an invoice and commits the order's offset in the same
//! transaction as the invoice, and a `read_committed` reader prints the invoices. Kill
//! the program at any point and run it again: every order gets exactly one invoice.
//! Stops after `--count` invoices or on Ctrl-C.
//!
//! Run (a broker on localhost:9092 that supports transactions, see the README):
//! `cargo run -p streams-examples --features kafka --example kafka_exactly_once -- --count 10`

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_kafka::{create_topic, KafkaConfig, KafkaPipeline, KafkaReader, KafkaWriter};
use tokio::sync::Notify;

/// Orders in, invoices out, each exactly once.
#[derive(Debug, Parser)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "STREAMS_KAFKA_BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// Orders to place before billing them (0: place none, bill what is there).
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// This instance's transactional id: stable across restarts, unique per instance.
    #[arg(long, default_value = "billing-0")]
    transactional_id: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = Args::parse();
    let config = KafkaConfig::new(&args.brokers);
    create_topic(&config, "orders.placed", 3, 1).await?;
    create_topic(&config, "orders.invoiced", 1, 1).await?;

    // A transactional writer: each write is one transaction, all of it or nothing.
    let writer = KafkaWriter::new(&config.clone().with_property(
        "transactional.id",
        format!("{}-orders", args.transactional_id),
    ))?;
    let orders: Vec<Message> = (0..args.count)
        .map(|i| {
            Message::new("orders.placed", format!("order {i}"))
                .with_key(format!("customer-{}", i % 3))
        })
        .collect();
    writer.write(orders).await?;
    writer.close().await?;

    // Orders to invoices, the order's offset committed with the invoice.
    let stop = CancellationToken::new();
    let pipeline = KafkaPipeline::new(
        config
            .clone()
            .with_property("transactional.id", &args.transactional_id),
        "orders.placed",
        "billing",
    );
    let bill = tower::service_fn(|order: Message| async move {
        let text = String::from_utf8_lossy(&order.data);
        let invoice = Message::new("orders.invoiced", format!("invoice for {text}"))
            .with_key(order.key.clone().unwrap_or_default())
            .with_header("order-id", order.id.clone());
        Ok::<_, BoxError>(vec![invoice])
    });
    let s = stop.clone();
    let billing = tokio::spawn(async move { pipeline.run(bill, s).await });

    // Invoices as a read_committed consumer sees them: no aborted transaction's output.
    let seen = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(Notify::new());
    let (n, e, count) = (seen.clone(), enough.clone(), args.count);
    let print = handler(tower::service_fn(move |invoice: Message| {
        let (n, e) = (n.clone(), e.clone());
        async move {
            println!(
                "{} (order {})",
                String::from_utf8_lossy(&invoice.data),
                invoice.header("order-id").unwrap_or("?")
            );
            if n.fetch_add(1, Ordering::SeqCst) + 1 == count {
                e.notify_one();
            }
            Ok::<_, BoxError>(())
        }
    }));
    let reader = Arc::new(KafkaReader::new(
        config.with_property("isolation.level", "read_committed"),
    ));
    let r = stop.clone();
    let invoices = tokio::spawn(async move {
        reader
            .read(
                ReadTask::new("orders.invoiced").with_group("invoice-printer"),
                print,
                r,
            )
            .await
    });
    tokio::select! {
        _ = enough.notified() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), billing)
        .await??
        .map_err(BoxError::from)?;
    tokio::time::timeout(Duration::from_secs(30), invoices)
        .await??
        .map_err(BoxError::from)?;
    println!("printed {} invoices", seen.load(Ordering::SeqCst));
    Ok(())
}
