//! SNS to SQS chaining with DynamoDB deduplication.
//!
//! An `orders` topic fans out to two queues: `billing` (raw delivery) and `shipping`
//! (SNS envelope, unwrapped by the reader). Each service runs two workers sharing a
//! DynamoDB deduplication table, so an order published twice (a retried publish) is
//! handled once per service. The program ends once both services handled every order.
//!
//! Needs an AWS emulator: `docker compose up -d localstack`, or `moto_server -p 4566`.
//!
//! Run: `cargo run -p streams-examples --features aws --example aws_chaining`
//! (`--endpoint URL`, `--orders N`; default endpoint `STREAMS_AWS_ENDPOINT` or
//! `http://127.0.0.1:4566`).

#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use streams_core::middleware::{DedupLayer, DedupStore};
use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_dynamodb::{create_table, DynamoDedupStore};
use streams_sns::SnsWriter;
use streams_sqs::{SqsClient, SqsReader};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
struct Args {
    /// AWS endpoint (an emulator).
    #[arg(
        long,
        env = "STREAMS_AWS_ENDPOINT",
        default_value = "http://127.0.0.1:4566"
    )]
    endpoint: String,
    /// Orders to publish.
    #[arg(long, default_value_t = 20)]
    orders: usize,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    // Emulators take any credentials; moto's account id is 123456789012.
    let (region, account) = ("us-east-1", "123456789012");

    let sqs = SqsClient::builder()
        .with_endpoint(&args.endpoint)
        .with_region(region)
        .with_static_credentials("test", "test")
        .connect()
        .await;
    let sns = SnsWriter::builder()
        .with_endpoint(&args.endpoint)
        .with_region(region)
        .with_static_credentials("test", "test")
        .with_account_id(account)
        .connect()
        .await?;
    let store = DynamoDedupStore::builder()
        .with_endpoint(&args.endpoint)
        .with_region(region)
        .with_static_credentials("test", "test")
        .with_table("streams-example-dedup")
        .with_ttl(Duration::from_secs(3600))
        .connect()
        .await;
    create_table(store.sdk(), store.table()).await?;
    let store: Arc<dyn DedupStore> = Arc::new(store);

    // A run id keeps reruns apart: fresh topic and queues every time.
    let run = std::process::id();
    let topic = format!("orders-{run}");
    sns.create_topic(&topic).await?;
    let services = [("billing", true), ("shipping", false)];
    for (service, raw) in services {
        let queue = format!("{topic}.{service}");
        sqs.create_queue(&queue).await?;
        let arn = sqs.queue_arn(&queue).await?;
        sns.subscribe_queue(&topic, &arn, raw).await?;
        println!("queue {queue} subscribed to {topic} (raw delivery: {raw})");
    }

    // Two workers per service. Events: the handler ran (`true`), or a delivery went
    // through the deduplicating stack, handled or skipped (`false`).
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, String, bool)>();
    let cancel = CancellationToken::new();
    let mut readers = Vec::new();
    for (slot, (service, _)) in services.into_iter().enumerate() {
        for worker in 0..2 {
            let tx = done_tx.clone();
            let inner = tower::ServiceBuilder::new()
                .layer(DedupLayer::new(format!("{service}-{run}"), store.clone()))
                .service_fn(move |m: Message| {
                    let tx = tx.clone();
                    async move {
                        let order = String::from_utf8_lossy(&m.data).into_owned();
                        tracing::info!(service, worker, id = %m.id, %order, "handled");
                        let _ = tx.send((slot, m.id, true));
                        Ok::<_, BoxError>(())
                    }
                });
            let tx = done_tx.clone();
            let svc = tower::service_fn(move |m: Message| {
                let (mut inner, tx) = (inner.clone(), tx.clone());
                async move {
                    use tower::{Service, ServiceExt};
                    let id = m.id.clone();
                    inner.ready().await?.call(m).await?;
                    let _ = tx.send((slot, id, false));
                    Ok::<_, BoxError>(())
                }
            });
            let reader = SqsReader::builder(sqs.clone())
                .with_wait_time(Duration::from_secs(2))
                .build();
            let task = ReadTask::new(format!("{topic}.{service}"));
            let c = cancel.clone();
            readers.push(tokio::spawn(async move {
                reader.read(task, handler(svc), c).await
            }));
        }
    }
    drop(done_tx);

    let orders: Vec<Message> = (0..args.orders)
        .map(|i| {
            Message::new(
                &topic,
                format!(r#"{{"order":{i},"total_cents":{}}}"#, 1000 + i),
            )
            .with_key(format!("customer-{}", i % 4))
            .with_content_type(streams_core::CONTENT_TYPE_JSON)
        })
        .collect();
    sns.write(orders.clone()).await?;
    println!("published {} orders", orders.len());

    // Each service receives every order plus the duplicate.
    let deliveries_each = orders.len() + 1;
    let mut handled: [HashSet<String>; 2] = Default::default();
    let mut handler_runs = [0usize; 2];
    let mut delivered = [0usize; 2];
    let mut duplicate_sent = false;
    while delivered.iter().any(|d| *d < deliveries_each) {
        let Some((slot, id, ran)) = done_rx.recv().await else {
            break;
        };
        if ran {
            handler_runs[slot] += 1;
            handled[slot].insert(id);
        } else {
            delivered[slot] += 1;
        }
        // Once both services handled the first order, publish it again with the same
        // id, as a retried publish would.
        if !duplicate_sent && handled.iter().all(|h| h.contains(&orders[0].id)) {
            sns.write(vec![orders[0].clone()]).await?;
            duplicate_sent = true;
            println!("published order 0 again (same message id)");
        }
    }
    cancel.cancel();
    for r in readers {
        r.await??;
    }
    for (slot, (service, _)) in services.into_iter().enumerate() {
        println!(
            "{service}: {} deliveries, {} orders handled, handler ran {} times",
            delivered[slot],
            handled[slot].len(),
            handler_runs[slot]
        );
    }
    Ok(())
}
