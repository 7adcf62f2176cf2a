//! Delays chosen by the handler ([`RetryAfter`]) on Kafka: the partition waits, the
//! others go on, and no handler slot is held meanwhile.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use streams_core::{handler, BoxError, Message, ReadTask, RetryAfter, Writer};
use streams_kafka::KafkaWriter;
use tokio::sync::mpsc;
use tokio::time::Instant;

struct Seen {
    data: String,
    partition: String,
    attempt: Option<u32>,
    at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_its_partition_only_and_no_handler_slot() {
    let delay = Duration::from_secs(2);
    let topic = topic("delay-partition", 3).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            let seen = Seen {
                data: String::from_utf8_lossy(&m.data).into_owned(),
                partition: m
                    .header("streams-kafka-partition-id")
                    .unwrap_or_default()
                    .to_owned(),
                attempt: m.delivery_attempt(),
                at: Instant::now(),
            };
            let fail = seen.data == "slow" && seen.attempt == Some(1);
            let _ = tx.send(seen);
            if fail {
                Err::<(), BoxError>(RetryAfter::new(delay, "rate limited").into())
            } else {
                Ok(())
            }
        }
    }));
    // One handler slot for all partitions: a delay that held it would stop them all.
    let task = ReadTask::new(&topic)
        .with_group(unique("delay-group"))
        .with_concurrency(1);
    let (cancel, join) = start(config(), task, h);
    let mut sent = vec![Message::new(&topic, "slow").with_key("slow-key")];
    sent.extend((0..12).map(|i| Message::new(&topic, format!("m{i}")).with_key(format!("k{i}"))));
    KafkaWriter::new(&config())
        .unwrap()
        .write(sent)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen
        .iter()
        .filter(|s: &&Seen| s.data.starts_with('m'))
        .count()
        < 12
        || seen.iter().filter(|s| s.data == "slow").count() < 2
    {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(s)) => seen.push(s),
            _ => panic!("only {} deliveries", seen.len()),
        }
    }
    cancel.cancel();
    join.await.unwrap().unwrap();
    let slow: Vec<&Seen> = seen.iter().filter(|s| s.data == "slow").collect();
    assert_eq!(
        slow.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    let away = slow[1].at - slow[0].at;
    assert!(away >= delay, "back after {away:?}");
    let held = &slow[0].partition;
    let others: HashSet<&str> = seen
        .iter()
        .filter(|s| s.data != "slow" && &s.partition != held)
        .map(|s| s.data.as_str())
        .collect();
    assert!(!others.is_empty(), "some keys land on other partitions");
    for s in seen.iter().filter(|s| s.data != "slow") {
        if &s.partition == held {
            // Behind the delayed record on its partition: order holds.
            assert!(s.at >= slow[1].at, "{} overtook the delayed record", s.data);
        } else {
            assert!(
                s.at < slow[1].at,
                "{} waited for another partition's delay",
                s.data
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_delay_is_prompt_and_loses_nothing() {
    let topic = topic("delay-shutdown", 1).await;
    let group = unique("delay-shutdown-group");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(m.delivery_attempt());
            Err::<(), BoxError>(RetryAfter::new(Duration::from_secs(300), "later").into())
        }
    }));
    let (cancel, join) = start(config(), ReadTask::new(&topic).with_group(&group), h);
    KafkaWriter::new(&config())
        .unwrap()
        .write(vec![Message::new(&topic, "x")])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(first, Some(1));
    // Five minutes to wait: cancellation does not.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), join)
        .await
        .expect("the reader stops without waiting for the delay")
        .unwrap()
        .unwrap();
    // Not committed: the group's next reader gets it.
    let mut next = run(ReadTask::new(&topic).with_group(&group));
    let again = next.take(1, Duration::from_secs(60)).await;
    assert_eq!(
        again.len(),
        1,
        "the delayed record comes back on the next run"
    );
    assert_eq!(again[0].data.as_ref(), b"x");
    next.stop().await;
}
