//! Batch handlers on SQS against the AWS emulator: successes deleted together, failed
//! messages visible again and redelivered alone.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams_core::{
    batch_handler, Batch, BatchOutcome, BatchSize, BoxError, CancellationToken, Error, Message,
    ReadTask, Reader, Writer,
};
use streams_sqs::{SqsReader, SqsWriter};

const PATIENCE: Duration = Duration::from_secs(60);

/// Every batch's message ids, and the ids it failed.
type Calls = Arc<Mutex<Vec<(Vec<String>, Vec<String>)>>>;

fn reader(client: &streams_sqs::SqsClient) -> SqsReader {
    SqsReader::builder(client.clone())
        .with_wait_time(Duration::from_secs(1))
        .with_redelivery_backoff(Duration::from_secs(1), Duration::from_secs(1))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_messages_come_again_alone_and_successes_are_deleted() {
    let client = common::client().await;
    let q = common::unique("batch");
    client.create_queue(&q).await.unwrap();
    let sent: Vec<Message> = (0..10).map(|i| Message::new(&q, format!("m{i}"))).collect();
    SqsWriter::new(client.clone())
        .write(sent.clone())
        .await
        .unwrap();
    let poison: Vec<String> = vec![sent[2].id.clone(), sent[7].id.clone()];
    let calls = Calls::default();
    let c = calls.clone();
    let failures_left = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let h = batch_handler(tower::service_fn(move |b: Batch| {
        let (c, poison, left) = (c.clone(), poison.clone(), failures_left.clone());
        async move {
            let ids: Vec<String> = b.messages().iter().map(|m| m.id.clone()).collect();
            let mut outcome = BatchOutcome::ok();
            let mut failed = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let mut left = left.lock().unwrap();
                let n = left.entry(id.clone()).or_insert(1);
                if poison.contains(id) && *n > 0 {
                    *n -= 1;
                    outcome.fail(i, "not yet");
                    failed.push(id.clone());
                }
            }
            c.lock().unwrap().push((ids, failed));
            Ok::<_, BoxError>(outcome)
        }
    }));
    let cancel = CancellationToken::new();
    let r = reader(&client);
    let task = ReadTask::new(&q);
    let c2 = cancel.clone();
    let join = tokio::spawn(async move {
        r.read_batch(task, BatchSize::new(10, Duration::from_millis(500)), h, c2)
            .await
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let acked: usize = calls
            .lock()
            .unwrap()
            .iter()
            .map(|(ids, failed)| ids.len() - failed.len())
            .sum();
        if acked >= 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing else comes: the successes were deleted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cancel.cancel();
    join.await.unwrap().unwrap();
    let calls = calls.lock().unwrap().clone();
    let mut handed: HashMap<String, usize> = HashMap::new();
    for (ids, _) in calls.iter() {
        assert!(ids.len() <= 10);
        for id in ids {
            *handed.entry(id.clone()).or_default() += 1;
        }
    }
    for m in &sent {
        let want = if m.id == sent[2].id || m.id == sent[7].id {
            2
        } else {
            1
        };
        assert_eq!(handed.get(&m.id), Some(&want), "{}: {calls:?}", m.id);
    }
    assert!(calls.len() <= 6, "messages arrive together: {calls:?}");
    let attrs = client
        .sdk()
        .get_queue_attributes()
        .queue_url(client.queue_url(&q).await.unwrap())
        .attribute_names(streams_sqs::aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let count = |name| {
        attrs
            .attributes()
            .and_then(|a| a.get(&name))
            .cloned()
            .unwrap_or_default()
    };
    use streams_sqs::aws_sdk_sqs::types::QueueAttributeName as A;
    assert_eq!(count(A::ApproximateNumberOfMessages), "0");
    assert_eq!(count(A::ApproximateNumberOfMessagesNotVisible), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_collecting_hands_over_what_was_received() {
    let client = common::client().await;
    let q = common::unique("batch-cancel");
    client.create_queue(&q).await.unwrap();
    SqsWriter::new(client.clone())
        .write((0..3).map(|i| Message::new(&q, format!("m{i}"))).collect())
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(0usize));
    let s = seen.clone();
    let h = batch_handler(tower::service_fn(move |b: Batch| {
        *s.lock().unwrap() += b.len();
        async { Ok::<_, BoxError>(BatchOutcome::ok()) }
    }));
    let cancel = CancellationToken::new();
    let r = reader(&client);
    let c2 = cancel.clone();
    let task = ReadTask::new(&q);
    let join = tokio::spawn(async move {
        r.read_batch(task, BatchSize::new(100, Duration::from_secs(120)), h, c2)
            .await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(*seen.lock().unwrap(), 0, "still collecting");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .expect("cancel cuts the wait short")
        .unwrap()
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), 3);
}

#[tokio::test]
async fn bad_batch_sizes_are_refused_naming_the_field() {
    let client = common::client().await;
    let r = reader(&client);
    for (size, field) in [
        (BatchSize::new(0, Duration::ZERO), "`max_messages`"),
        (BatchSize::new(10, Duration::from_secs(3600)), "`max_wait`"),
    ] {
        let e = r
            .subscribe_batch(ReadTask::new("no-such-queue"), size)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains(field), "{e}");
    }
}
