//! Delays chosen by the handler ([`RetryAfter`]) on SQS, against the AWS emulator
//! (`STREAMS_AWS_ENDPOINT`, default `http://127.0.0.1:4566`).

mod common;

use std::time::Duration;

use streams_core::{
    handler, BoxError, CancellationToken, Message, ReadTask, Reader, RetryAfter, Writer,
};
use streams_sqs::{SqsReader, SqsWriter};
use tokio::sync::mpsc;
use tokio::time::Instant;

type Seen = mpsc::UnboundedSender<(Option<u32>, Instant)>;

/// Fails every delivery before `until` with `delay`, recording each delivery.
fn delaying(delay: Duration, until: u32, tx: Seen) -> streams_core::Handler {
    handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            let attempt = m.delivery_attempt();
            let _ = tx.send((attempt, Instant::now()));
            if attempt.unwrap_or(1) < until {
                Err::<(), BoxError>(RetryAfter::new(delay, "rate limited").into())
            } else {
                Ok(())
            }
        }
    }))
}

fn reader(client: &streams_sqs::SqsClient) -> SqsReader {
    SqsReader::builder(client.clone())
        .with_wait_time(Duration::from_secs(1))
        .with_redelivery_backoff(Duration::from_secs(1), Duration::from_secs(1))
        .build()
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(Option<u32>, Instant)>,
    within: Duration,
) -> (Option<u32>, Instant) {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a delivery in time")
        .expect("the handler lives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_over_twelve_hours_is_refused_and_the_message_comes_back_as_after_a_failure() {
    let client = common::client().await;
    let stream = common::unique("delay.too-long");
    client.create_queue(&stream).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let sub = reader(&client)
        .subscribe(ReadTask::new(&stream))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(
        delaying(Duration::from_secs(13 * 3600), 2, tx),
        cancel.clone(),
    ));
    SqsWriter::new(client.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    let (first, at) = next(&mut rx, Duration::from_secs(30)).await;
    assert_eq!(first, Some(1));
    // Refused (logged as an error), so the 1 s redelivery backoff applies instead of a
    // visibility SQS would reject.
    let (second, back) = next(&mut rx, Duration::from_secs(15)).await;
    assert_eq!(second, Some(2));
    assert!(
        back - at >= Duration::from_secs(1),
        "back after {:?}",
        back - at
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_delay_makes_the_message_visible_at_once() {
    let client = common::client().await;
    let stream = common::unique("delay.zero");
    client.create_queue(&stream).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    // A long backoff the zero delay must override.
    let reader = SqsReader::builder(client.clone())
        .with_wait_time(Duration::from_secs(1))
        .with_redelivery_backoff(Duration::from_secs(60), Duration::from_secs(60))
        .build();
    let sub = reader.subscribe(ReadTask::new(&stream)).await.unwrap();
    let run = tokio::spawn(sub.run(delaying(Duration::ZERO, 2, tx), cancel.clone()));
    SqsWriter::new(client.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    let (first, at) = next(&mut rx, Duration::from_secs(30)).await;
    let (second, back) = next(&mut rx, Duration::from_secs(10)).await;
    assert_eq!((first, second), (Some(1), Some(2)));
    assert!(back - at < Duration::from_secs(10));
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_delay_is_pending_loses_nothing() {
    let client = common::client().await;
    let stream = common::unique("delay.shutdown");
    client.create_queue(&stream).await.unwrap();
    let delay = Duration::from_secs(3);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let sub = reader(&client)
        .subscribe(ReadTask::new(&stream))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(delaying(delay, 2, tx.clone()), cancel.clone()));
    SqsWriter::new(client.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    let (first, failed_at) = next(&mut rx, Duration::from_secs(30)).await;
    assert_eq!(first, Some(1));
    // Stop at once: the delay is with SQS, not with the reader.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("shutdown does not wait for the delay")
        .unwrap()
        .unwrap();
    // The next run gets it, after the delay.
    let cancel = CancellationToken::new();
    let sub = reader(&client)
        .subscribe(ReadTask::new(&stream))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(delaying(delay, 2, tx), cancel.clone()));
    let (second, back) = next(&mut rx, Duration::from_secs(30)).await;
    assert_eq!(second, Some(2));
    assert!(
        back - failed_at >= delay,
        "back after {:?}",
        back - failed_at
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}
