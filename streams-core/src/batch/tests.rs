use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::{handler, is_unrecoverable, Handler, ReadTask, Reader, Unrecoverable};

/// A per-message reader for the generic path: hands messages over on `lanes` lanes by
/// key (a lane waits for its handler before the next message, as drivers do), takes
/// failed messages again (redelivery), and records every delivery.
#[derive(Debug, Clone)]
struct LaneReader {
    messages: Vec<Message>,
    /// (id, attempt, acknowledged) in the order handlers answered.
    log: Arc<Mutex<Vec<(String, bool)>>>,
    concurrency_seen: Arc<Mutex<Option<usize>>>,
    redeliver: bool,
}

impl LaneReader {
    fn new(messages: Vec<Message>, redeliver: bool) -> Self {
        LaneReader {
            messages,
            log: Arc::default(),
            concurrency_seen: Arc::default(),
            redeliver,
        }
    }

    fn acked(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, ok)| *ok)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[async_trait]
impl Reader for LaneReader {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        let lanes = task.concurrency.unwrap_or(1);
        *self.concurrency_seen.lock().unwrap() = Some(lanes);
        let me = self.clone();
        Ok(Subscription::new(
            task.stream,
            move |h: Handler, cancel| async move {
                let mut per_lane: Vec<Vec<Message>> = vec![Vec::new(); lanes];
                for m in me.messages.clone() {
                    let lane = m.key.as_deref().map_or(0, |k| k.len() % lanes);
                    per_lane[lane].push(m);
                }
                let workers = per_lane.into_iter().map(|queue| {
                    let mut h = h.clone();
                    let log = me.log.clone();
                    let cancel = cancel.clone();
                    let redeliver = me.redeliver;
                    async move {
                        for m in queue {
                            loop {
                                if cancel.is_cancelled() {
                                    return;
                                }
                                let id = m.id.clone();
                                let ok = crate::call_handler(&mut h, m.clone()).await.is_ok();
                                log.lock().unwrap().push((id, ok));
                                if ok || !redeliver {
                                    break;
                                }
                            }
                        }
                    }
                });
                futures::future::join_all(workers).await;
                Ok(())
            },
        ))
    }
}

fn msg(key: &str, n: usize) -> Message {
    let mut m = Message::new("orders", format!("{key}-{n}")).with_key(key);
    m.id = format!("{key}-{n}");
    m
}

fn recording(
    seen: Arc<Mutex<Vec<Vec<String>>>>,
    fail_once: Arc<Mutex<Vec<String>>>,
) -> BatchHandler {
    batch_handler(tower::service_fn(move |batch: Batch| {
        let seen = seen.clone();
        let fail_once = fail_once.clone();
        async move {
            let ids: Vec<String> = batch.messages().iter().map(|m| m.id.clone()).collect();
            seen.lock().unwrap().push(ids.clone());
            let mut outcome = BatchOutcome::ok();
            let mut fail = fail_once.lock().unwrap();
            for (i, id) in ids.iter().enumerate() {
                if let Some(pos) = fail.iter().position(|f| f == id) {
                    fail.remove(pos);
                    outcome.fail(i, format!("{id} failed"));
                }
            }
            Ok::<_, BoxError>(outcome)
        }
    }))
}

#[test]
fn size_is_checked_by_field() {
    let e = BatchSize::new(0, Duration::ZERO).check().unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }));
    assert!(e.to_string().contains("`max_messages`"), "{e}");
    let e = BatchSize::new(MAX_BATCH_MESSAGES + 1, Duration::ZERO)
        .check()
        .unwrap_err();
    assert!(e.to_string().contains("`max_messages`"), "{e}");
    let e = BatchSize::new(10, Duration::from_secs(3600))
        .check()
        .unwrap_err();
    assert!(e.to_string().contains("`max_wait`"), "{e}");
    BatchSize::new(MAX_BATCH_MESSAGES, MAX_BATCH_WAIT)
        .check()
        .unwrap();
}

#[tokio::test]
async fn a_bad_size_is_refused_at_subscribe() {
    let reader = LaneReader::new(vec![], false);
    let e = reader
        .subscribe_batch(ReadTask::new("orders"), BatchSize::new(0, Duration::ZERO))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`max_messages`"), "{e}");
}

#[tokio::test]
async fn outcome_maps_results_and_shares_whole_batch_errors() {
    let o = BatchOutcome::from_results(vec![Ok(()), Err("a"), Ok(()), Err("b")]);
    assert_eq!(o.failed_indices(), vec![1, 3]);
    assert_eq!(o.first_failed(), Some(1));
    assert_eq!(o.error(3).unwrap().to_string(), "b");
    let o = BatchOutcome::all_failed(3, Unrecoverable::new("bad"));
    assert_eq!(o.failed_count(), 3);
    for (_, e) in o.into_failed() {
        assert!(is_unrecoverable(e.as_ref()), "{e}");
        assert_eq!(e.to_string(), "unrecoverable: bad");
    }
}

#[tokio::test]
async fn a_panicking_batch_handler_fails_every_message() {
    let mut h = batch_handler(tower::service_fn(|_b: Batch| async move {
        if true {
            panic!("boom");
        }
        Ok::<_, BoxError>(BatchOutcome::ok())
    }));
    let batch = Batch::new("s", vec![Message::new("s", "a"), Message::new("s", "b")]);
    let o = call_batch_handler(&mut h, batch).await;
    assert_eq!(o.failed_indices(), vec![0, 1]);
    assert_eq!(
        o.error(0).unwrap().to_string(),
        "batch handler panicked: boom"
    );
    // Failures naming no message of the batch are dropped.
    let mut h = batch_handler(tower::service_fn(|_b: Batch| async move {
        Ok::<_, BoxError>(BatchOutcome::ok().with_failed(7, "no such message"))
    }));
    let o = call_batch_handler(&mut h, Batch::new("s", vec![Message::new("s", "a")])).await;
    assert!(o.is_ok());
}

#[tokio::test]
async fn generic_path_fills_batches_up_to_max_messages() {
    // Ten keys, ten lanes: a batch can take one message of each.
    let messages: Vec<_> = (0..10)
        .flat_map(|n| (0..3).map(move |k| msg(&"k".repeat(k + 1), n)))
        .collect();
    let reader = LaneReader::new(messages.clone(), true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let h = recording(seen.clone(), Arc::default());
    let sub = reader
        .subscribe_batch(
            ReadTask::new("orders"),
            BatchSize::new(3, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(*reader.concurrency_seen.lock().unwrap(), Some(3));
    tokio::time::timeout(
        Duration::from_secs(10),
        sub.run(h, CancellationToken::new()),
    )
    .await
    .expect("the run ends once the reader handed everything over")
    .unwrap();
    let seen = seen.lock().unwrap();
    // Three lanes of one key each: every batch is full, never two of one key.
    assert!(seen.iter().all(|b| b.len() == 3), "{seen:?}");
    assert_eq!(seen.len(), 10);
    assert_eq!(reader.acked().len(), 30);
}

#[tokio::test]
async fn generic_path_acknowledges_per_message_and_keeps_order_per_key() {
    let messages: Vec<_> = (0..5)
        .flat_map(|n| ["a", "bb"].into_iter().map(move |k| msg(k, n)))
        .collect();
    let reader = LaneReader::new(messages, true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fail = Arc::new(Mutex::new(vec!["a-2".to_owned()]));
    let h = recording(seen.clone(), fail);
    reader
        .read_batch(
            ReadTask::new("orders"),
            BatchSize::new(2, Duration::from_millis(20)),
            h,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let log = reader.log.lock().unwrap().clone();
    let nacked: Vec<_> = log.iter().filter(|(_, ok)| !ok).collect();
    assert_eq!(nacked, vec![&("a-2".to_owned(), false)]);
    // Each key acknowledged in order, a-2 after its redelivery, exactly once each.
    let acked = reader.acked();
    for key in ["a", "bb"] {
        let order: Vec<_> = acked
            .iter()
            .filter(|id| id.starts_with(&format!("{key}-")))
            .cloned()
            .collect();
        let want: Vec<_> = (0..5).map(|n| format!("{key}-{n}")).collect();
        assert_eq!(order, want);
    }
}

#[tokio::test(start_paused = true)]
async fn generic_path_hands_over_after_max_wait() {
    // One key: the reader hands one message at a time, so each batch waits out
    // max_wait and holds one message.
    let reader = LaneReader::new((0..3).map(|n| msg("a", n)).collect(), true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let h = recording(seen.clone(), Arc::default());
    let started = tokio::time::Instant::now();
    reader
        .read_batch(
            ReadTask::new("orders"),
            BatchSize::new(10, Duration::from_millis(100)),
            h,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn cancel_while_collecting_hands_over_at_once_and_loses_nothing() {
    // A reader that hands over one message and then waits for cancellation.
    #[derive(Debug)]
    struct OneThenWait(Arc<Mutex<Option<bool>>>);
    #[async_trait]
    impl Reader for OneThenWait {
        async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
            let answer = self.0.clone();
            Ok(Subscription::new(
                task.stream,
                move |mut h: Handler, cancel: CancellationToken| async move {
                    let call = crate::call_handler(&mut h, Message::new("orders", "x"));
                    tokio::pin!(call);
                    let r = tokio::select! {
                        r = &mut call => r,
                        _ = cancel.cancelled() => call.await,
                    };
                    *answer.lock().unwrap() = Some(r.is_ok());
                    Ok(())
                },
            ))
        }
    }
    let answer = Arc::new(Mutex::new(None));
    let reader = OneThenWait(answer.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let h = recording(seen.clone(), Arc::default());
    let cancel = CancellationToken::new();
    let run = reader.read_batch(
        ReadTask::new("orders"),
        // A wait far longer than the test: the cancel must cut it short.
        BatchSize::new(100, Duration::from_secs(120)),
        h,
        cancel.clone(),
    );
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
    };
    let (r, ()) = tokio::time::timeout(Duration::from_secs(5), async {
        futures::join!(run, stopper)
    })
    .await
    .expect("cancel hands the partial batch over at once");
    r.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(*answer.lock().unwrap(), Some(true));
}

#[tokio::test]
async fn a_huge_batch_of_huge_messages_is_handed_over_whole() {
    let big = bytes::Bytes::from(vec![7u8; 4 << 20]);
    let messages: Vec<_> = (0..8)
        .map(|n| {
            let mut m =
                Message::new("orders", big.clone()).with_key(format!("{n:0width$}", width = n + 1));
            m.id = n.to_string();
            m
        })
        .collect();
    let reader = LaneReader::new(messages, false);
    let sizes = Arc::new(Mutex::new(HashMap::new()));
    let s = sizes.clone();
    let h = batch_handler(tower::service_fn(move |b: Batch| {
        let s = s.clone();
        async move {
            for m in b.messages() {
                s.lock().unwrap().insert(m.id.clone(), m.data.len());
            }
            Ok::<_, BoxError>(BatchOutcome::ok())
        }
    }));
    reader
        .read_batch(
            ReadTask::new("orders"),
            BatchSize::new(8, Duration::from_millis(50)),
            h,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let sizes = sizes.lock().unwrap();
    assert_eq!(sizes.len(), 8);
    assert!(sizes.values().all(|&n| n == 4 << 20));
}

#[test]
fn select_keeps_stream_and_partition() {
    let b = Batch::new(
        "s",
        (0..4).map(|i| Message::new("s", i.to_string())).collect(),
    )
    .with_partition(3);
    let s = b.select(&[1, 3, 9]);
    assert_eq!(s.partition(), Some(3));
    assert_eq!(s.stream(), "s");
    let data: Vec<_> = s.messages().iter().map(|m| m.data.clone()).collect();
    assert_eq!(data, vec!["1", "3"]);
    let _ = handler(tower::service_fn(|_m: Message| async {
        Ok::<_, BoxError>(())
    }));
}
