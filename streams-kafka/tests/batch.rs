//! Batch handlers on Kafka against a real broker: per partition, the commit never
//! passes a failed message, the failed one and those after it come again in order.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use streams_core::{
    batch_handler, Batch, BatchHandler, BatchOutcome, BatchSize, BoxError, CancellationToken,
    Error, Message, ReadTask, Reader, Writer,
};
use streams_kafka::{KafkaReader, KafkaWriter, HEADER_PARTITION_ID};

const PATIENCE: Duration = Duration::from_secs(60);

/// Each message as its own record batch: tansu cannot fetch from inside one (see
/// tests/kafka.rs), and the resume test starts at an offset inside the topic.
async fn write_one_by_one(writer: &KafkaWriter, messages: &[Message]) {
    for m in messages {
        writer.write(vec![m.clone()]).await.unwrap();
    }
}

/// A batch's partition and messages.
type Handed = (Option<i32>, Vec<Message>);

/// What a batch handler saw: each batch's partition and ids, and which failed.
type Calls = Arc<Mutex<Vec<(Option<i32>, Vec<String>, Option<usize>)>>>;

/// Fails the message `poison` the first `times` times it is handed over.
fn failing(calls: Calls, poison: Option<String>, times: usize) -> BatchHandler {
    let left = Arc::new(Mutex::new(times));
    batch_handler(tower::service_fn(move |b: Batch| {
        let (calls, poison, left) = (calls.clone(), poison.clone(), left.clone());
        async move {
            let ids: Vec<String> = b.messages().iter().map(|m| m.id.clone()).collect();
            let mut outcome = BatchOutcome::ok();
            let at = poison
                .as_ref()
                .and_then(|p| ids.iter().position(|id| id == p));
            let mut failed = None;
            if let Some(i) = at {
                let mut left = left.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    outcome.fail(i, "transient");
                    failed = Some(i);
                }
            }
            calls.lock().unwrap().push((b.partition(), ids, failed));
            Ok::<_, BoxError>(outcome)
        }
    }))
}

fn start_batch(
    task: ReadTask,
    size: BatchSize,
    handler: BatchHandler,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<streams_core::Result<()>>,
) {
    let reader = Arc::new(KafkaReader::new(config()));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    (
        cancel,
        tokio::spawn(async move { reader.read_batch(task, size, handler, c).await }),
    )
}

/// The messages acknowledged, in order: each batch's messages before its failure.
fn acknowledged(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, ids, failed)| ids[..failed.unwrap_or(ids.len())].to_vec())
        .collect()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_in_the_middle_comes_again_with_the_ones_after_it() {
    let t = topic("batch-middle", 1).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 10, "m");
    writer.write(sent.clone()).await.unwrap();
    let calls = Calls::default();
    let (cancel, join) = start_batch(
        ReadTask::new(&t).with_group(format!("g-{t}")),
        BatchSize::new(10, Duration::from_millis(300)),
        failing(calls.clone(), Some(sent[4].id.clone()), 2),
    );
    until("every message acknowledged", || {
        acknowledged(&calls).len() >= 10
    })
    .await;
    cancel.cancel();
    join.await.unwrap().unwrap();
    let want: Vec<_> = sent.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        acknowledged(&calls),
        want,
        "each message acknowledged once, in order"
    );
    let calls = calls.lock().unwrap();
    // After each failure, the next batch starts with the failed message.
    for pair in calls.windows(2) {
        if let Some(f) = pair[0].2 {
            assert_eq!(pair[1].1[0], pair[0].1[f], "{calls:?}");
        }
    }
    assert_eq!(calls.iter().filter(|c| c.2.is_some()).count(), 2);
    assert!(calls.iter().all(|c| c.0 == Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_never_passes_a_failed_message() {
    let t = topic("batch-commit", 1).await;
    let group = format!("g-{t}");
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 10, "c");
    write_one_by_one(&writer, &sent).await;
    // The first reader fails message 5 for ever.
    let calls = Calls::default();
    let (cancel, join) = start_batch(
        ReadTask::new(&t).with_group(&group),
        BatchSize::new(4, Duration::from_millis(100)),
        failing(calls.clone(), Some(sent[5].id.clone()), usize::MAX),
    );
    until("the poison message failed twice", || {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.2.is_some())
            .count()
            >= 2
    })
    .await;
    cancel.cancel();
    join.await.unwrap().unwrap();
    // The next member of the group starts at the failed message.
    let again = Calls::default();
    let (cancel, join) = start_batch(
        ReadTask::new(&t).with_group(&group),
        BatchSize::new(10, Duration::from_millis(100)),
        failing(again.clone(), None, 0),
    );
    until("the rest acknowledged", || acknowledged(&again).len() >= 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    join.await.unwrap().unwrap();
    let want: Vec<_> = sent[5..].iter().map(|m| m.id.clone()).collect();
    assert_eq!(acknowledged(&again), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_one_partition_and_keep_order_per_key() {
    let t = topic("batch-order", 3).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 300, "o");
    writer.write(sent.clone()).await.unwrap();
    let seen: Arc<Mutex<Vec<Handed>>> = Arc::default();
    let s = seen.clone();
    let h = batch_handler(tower::service_fn(move |b: Batch| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push((b.partition(), b.messages().to_vec()));
            Ok::<_, BoxError>(BatchOutcome::ok())
        }
    }));
    let (cancel, join) = start_batch(
        ReadTask::new(&t).with_group(format!("g-{t}")),
        BatchSize::new(50, Duration::from_millis(100)),
        h,
    );
    until("everything handled", || {
        seen.lock()
            .unwrap()
            .iter()
            .map(|b| b.1.len())
            .sum::<usize>()
            >= 300
    })
    .await;
    cancel.cancel();
    join.await.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (partition, messages) in seen.iter() {
        assert!(messages.len() <= 50);
        for m in messages {
            let p = m
                .header(HEADER_PARTITION_ID)
                .unwrap()
                .parse::<i32>()
                .unwrap();
            assert_eq!(Some(p), *partition, "a batch holds one partition");
            per_key
                .entry(m.key.clone().unwrap())
                .or_default()
                .push(m.header("seq").unwrap().parse().unwrap());
        }
    }
    for (key, seqs) in per_key {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "order of {key}");
        assert_eq!(seqs.len(), 60);
    }
    assert!(
        seen.len() < 300,
        "records are taken together: {} batches",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_handler_fails_its_batch_and_the_reader_goes_on() {
    let t = topic("batch-panic", 1).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 5, "p");
    writer.write(sent.clone()).await.unwrap();
    let calls = Arc::new(Mutex::new(Vec::<usize>::new()));
    let c = calls.clone();
    let h = batch_handler(tower::service_fn(move |b: Batch| {
        let c = c.clone();
        async move {
            let n = {
                let mut c = c.lock().unwrap();
                c.push(b.len());
                c.len()
            };
            if n == 1 {
                panic!("bad batch");
            }
            Ok::<_, BoxError>(BatchOutcome::ok())
        }
    }));
    let (cancel, join) = start_batch(
        ReadTask::new(&t).with_group(format!("g-{t}")),
        BatchSize::new(10, Duration::from_millis(300)),
        h,
    );
    until("handed over again after the panic", || {
        let c = calls.lock().unwrap();
        c.len() >= 2 && c[1..].iter().sum::<usize>() >= 5
    })
    .await;
    cancel.cancel();
    join.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_batch_sizes_are_refused_before_reaching_the_broker() {
    // Nothing listens on this port: the size is checked first.
    let reader = KafkaReader::new(streams_kafka::KafkaConfig::new("127.0.0.1:1"));
    for (size, field) in [
        (BatchSize::new(0, Duration::ZERO), "`max_messages`"),
        (BatchSize::new(usize::MAX, Duration::ZERO), "`max_messages`"),
        (BatchSize::new(10, Duration::from_secs(7200)), "`max_wait`"),
    ] {
        let e = reader
            .subscribe_batch(ReadTask::new("t").with_group("g"), size)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}
