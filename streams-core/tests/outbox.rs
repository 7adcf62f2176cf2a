//! The outbox relay with an in-memory outbox and the in-process bus.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use streams_chanbuf::MemoryBus;
use streams_core::middleware::RetryPolicy;
use streams_core::outbox::{MemoryOutbox, RelayReport};
use streams_core::{
    handler, BoxError, CancellationToken, Error, Message, OutboxStore, ReadTask, Reader, Relay,
    Result, StoredBatch, Writer,
};
use tokio::sync::mpsc;

fn quick_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(4)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(5))
}

/// Records what it is given; fails the first `fail` writes with `retryable` errors.
#[derive(Debug, Default)]
struct Recording {
    fail: AtomicUsize,
    retryable: bool,
    got: Mutex<Vec<Message>>,
    calls: AtomicUsize,
}

#[async_trait]
impl Writer for Recording {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::driver(
                "test",
                "write",
                self.retryable,
                "destination unavailable",
            ));
        }
        self.got.lock().unwrap().extend(batch);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

fn batch(stream: &str, n: usize, tag: &str) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(stream, format!("{tag}-{i}")).with_key("same-key"))
        .collect()
}

#[tokio::test]
async fn forwards_in_order_and_deletes() {
    let outbox = Arc::new(MemoryOutbox::new());
    for tag in ["a", "b", "c"] {
        outbox.write(batch("payments", 3, tag)).await.unwrap();
    }
    let dest = Arc::new(Recording::default());
    let fwd = Relay::new(outbox.clone(), dest.clone()).with_retry(quick_retry());
    let report = fwd.relay_once().await.unwrap();
    assert_eq!(
        report,
        RelayReport {
            fetched: 3,
            relayed: 3,
            messages: 9,
            quarantined: 0
        }
    );
    assert_eq!(outbox.pending(), 0);
    let got: Vec<_> = dest
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.data.to_vec()).unwrap())
        .collect();
    assert_eq!(
        got,
        ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2", "c-0", "c-1", "c-2"]
    );
}

#[tokio::test]
async fn poison_batch_is_quarantined_and_the_rest_flows() {
    let outbox = Arc::new(MemoryOutbox::new());
    outbox.write(batch("s", 1, "before")).await.unwrap();
    outbox.push_raw(StoredBatch {
        id: "poison".into(),
        raw: bytes::Bytes::from_static(b"\x0a\xff\xff\xff\xff"),
    });
    outbox.write(batch("s", 1, "after")).await.unwrap();
    let dest = Arc::new(Recording::default());
    let fwd = Relay::new(outbox.clone(), dest.clone());
    let report = fwd.relay_once().await.unwrap();
    assert_eq!(report.relayed, 2);
    assert_eq!(report.quarantined, 1);
    let q = outbox.quarantined();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0.id, "poison");
    assert!(q[0].1.contains("cannot decode"), "{}", q[0].1);
    assert_eq!(outbox.pending(), 0, "poison batch is not retried forever");
    assert_eq!(dest.got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn transient_destination_failures_are_retried() {
    let outbox = Arc::new(MemoryOutbox::new());
    outbox.write(batch("s", 2, "x")).await.unwrap();
    let dest = Arc::new(Recording {
        fail: AtomicUsize::new(2),
        retryable: true,
        ..Default::default()
    });
    let fwd = Relay::new(outbox.clone(), dest.clone()).with_retry(quick_retry());
    let report = fwd.relay_once().await.unwrap();
    assert_eq!(report.relayed, 1);
    assert_eq!(dest.calls.load(Ordering::SeqCst), 3);
    assert_eq!(outbox.pending(), 0);
}

#[tokio::test]
async fn persistent_failure_keeps_batches_in_order_for_the_next_pass() {
    let outbox = Arc::new(MemoryOutbox::new());
    for tag in ["first", "second"] {
        outbox.write(batch("s", 1, tag)).await.unwrap();
    }
    let dest = Arc::new(Recording {
        fail: AtomicUsize::new(100),
        retryable: true,
        ..Default::default()
    });
    let fwd = Relay::new(outbox.clone(), dest.clone()).with_retry(quick_retry());
    let err = fwd.relay_once().await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(outbox.pending(), 2, "nothing lost");
    // The destination recovers: both go out, in order.
    dest.fail.store(0, Ordering::SeqCst);
    fwd.relay_once().await.unwrap();
    let got: Vec<_> = dest
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.data.clone())
        .collect();
    assert_eq!(got, [&b"first-0"[..], &b"second-0"[..]]);
}

#[tokio::test]
async fn rejected_batch_is_quarantined_not_retried() {
    let outbox = Arc::new(MemoryOutbox::new());
    outbox
        .write(vec![Message::new("s", "poison")])
        .await
        .unwrap();
    let dest = Arc::new(RejectsPoison::default());
    let fwd = Relay::new(outbox.clone(), dest.clone()).with_retry(quick_retry());
    let report = fwd.relay_once().await.unwrap();
    assert_eq!(report.quarantined, 1);
    assert_eq!(*dest.writes.lock().unwrap(), [1], "not retried");
    let q = outbox.quarantined();
    assert!(q[0].1.contains("refused by the destination"), "{}", q[0].1);
}

fn texts(dest: &Recording) -> Vec<String> {
    dest.got
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.data.to_vec()).unwrap())
        .collect()
}

/// A wrong queue name, a missing topic or denied access is the destination's fault:
/// nothing is quarantined, every batch stays in order, and the error comes back.
#[tokio::test]
async fn a_misconfigured_destination_quarantines_nothing() {
    let outbox = Arc::new(MemoryOutbox::new());
    for tag in ["a", "b", "c"] {
        outbox.write(batch("s", 1, tag)).await.unwrap();
    }
    let dest = Arc::new(Recording {
        fail: AtomicUsize::new(100),
        retryable: false,
        ..Default::default()
    });
    let fwd = Relay::new(outbox.clone(), dest.clone()).with_retry(quick_retry());
    let err = fwd.relay_once().await.unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("destination unavailable"), "{err}");
    assert!(outbox.quarantined().is_empty(), "healthy rows quarantined");
    assert_eq!(outbox.pending(), 3);
    assert_eq!(
        dest.calls.load(Ordering::SeqCst),
        1,
        "one combined try only"
    );
    // One batch alone: the same.
    let fwd1 = fwd.clone().with_max_write_messages(1);
    fwd1.relay_once().await.unwrap_err();
    assert!(outbox.quarantined().is_empty());
    assert_eq!(outbox.pending(), 3);
    // Fixed: everything goes out, in order.
    dest.fail.store(0, Ordering::SeqCst);
    let report = fwd.relay_once().await.unwrap();
    assert_eq!((report.relayed, report.quarantined), (3, 0));
    assert_eq!(texts(&dest), ["a-0", "b-0", "c-0"]);
}

/// A closed destination writer is not the rows' fault either, and `run` stops on it.
#[tokio::test]
async fn a_closed_destination_stops_the_relay_and_keeps_the_rows() {
    let outbox = Arc::new(MemoryOutbox::new());
    outbox.write(batch("s", 2, "x")).await.unwrap();
    let bus = Arc::new(MemoryBus::new());
    MemoryBus::close(&bus);
    let fwd = Relay::new(outbox.clone(), bus).with_retry(quick_retry());
    let err = fwd.relay_once().await.unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err}");
    let ran = tokio::time::timeout(Duration::from_secs(5), fwd.run(CancellationToken::new()))
        .await
        .expect("run returns on a closed destination");
    assert!(matches!(ran, Err(Error::Closed(_))), "{ran:?}");
    assert!(outbox.quarantined().is_empty());
    assert_eq!(outbox.pending(), 1);
}

/// A long-running relay keeps trying a refusing destination with capped backoff and
/// delivers everything, in order, once it is fixed.
#[tokio::test]
async fn run_waits_out_a_refusing_destination_and_then_delivers_in_order() {
    let outbox = Arc::new(MemoryOutbox::new());
    for tag in ["a", "b", "c", "d"] {
        outbox.write(batch("s", 1, tag)).await.unwrap();
    }
    let dest = Arc::new(Recording {
        fail: AtomicUsize::new(usize::MAX),
        retryable: false,
        ..Default::default()
    });
    let fwd = Relay::new(outbox.clone(), dest.clone())
        .with_retry(quick_retry())
        .with_poll_interval(Duration::from_millis(10));
    let cancel = CancellationToken::new();
    let relay = {
        let (fwd, cancel) = (fwd.clone(), cancel.clone());
        tokio::spawn(async move { fwd.run(cancel).await })
    };
    while dest.calls.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!relay.is_finished(), "a refusing destination is not fatal");
    assert!(outbox.quarantined().is_empty());
    assert_eq!(outbox.pending(), 4);
    dest.fail.store(0, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), async {
        while outbox.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("delivered once fixed");
    cancel.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(texts(&dest), ["a-0", "b-0", "c-0", "d-0"]);
}

/// Storage that cannot work (a missing table) ends `run` with its error.
#[derive(Debug)]
struct BrokenStorage;

#[async_trait]
impl OutboxStore for BrokenStorage {
    async fn fetch(&self, _limit: usize) -> Result<Vec<StoredBatch>> {
        Err(Error::invalid("outbox table", "`missing` does not exist"))
    }
    async fn delete(&self, _ids: &[String]) -> Result<()> {
        Ok(())
    }
    async fn quarantine(&self, _id: &str, _reason: &str) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn run_returns_fatal_storage_errors() {
    let fwd = Relay::new(Arc::new(BrokenStorage), Arc::new(Recording::default()));
    let ran = tokio::time::timeout(Duration::from_secs(5), fwd.run(CancellationToken::new()))
        .await
        .expect("run returns on a fatal storage error");
    assert!(matches!(ran, Err(Error::Invalid { .. })), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_loop_wakes_on_notify_and_delivers_to_the_bus() {
    let outbox = Arc::new(MemoryOutbox::new());
    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let subscription = bus.subscribe(ReadTask::new("payments")).await.unwrap();
    let reader = tokio::spawn(subscription.run(
        handler(tower::service_fn(move |m: Message| {
            let tx = tx.clone();
            async move { tx.send(m).map_err(BoxError::from) }
        })),
        cancel.clone(),
    ));
    // A long poll interval: only the wake-up can make this fast.
    let relay = Relay::new(outbox.clone(), bus.clone())
        .with_poll_interval(Duration::from_secs(3600))
        .with_wake(outbox.wake())
        .spawn(cancel.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = batch("payments", 5, "p");
    outbox.write(sent.clone()).await.unwrap();
    for s in &sent {
        let mut got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        // The bus says which delivery this is; the rest is what was written.
        assert_eq!(got.delivery_attempt(), Some(1));
        got.metadata = Default::default();
        assert_eq!(got, *s, "decoded message equals what was written");
    }
    cancel.cancel();
    relay.await.unwrap().unwrap();
    reader.await.unwrap().unwrap();
    assert_eq!(outbox.pending(), 0);
}

#[tokio::test]
async fn memory_outbox_release_returns_batches_to_the_front() {
    let outbox = MemoryOutbox::new();
    for tag in ["a", "b"] {
        outbox.write(batch("s", 1, tag)).await.unwrap();
    }
    let claimed = outbox.fetch(10).await.unwrap();
    assert!(
        outbox.fetch(10).await.unwrap().is_empty(),
        "claimed batches are not handed out twice"
    );
    outbox
        .release(&claimed.iter().map(|b| b.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    let again = outbox.fetch(10).await.unwrap();
    assert_eq!(again, claimed);
}

/// Rejects, as not retryable, any write holding a message whose payload is `poison`.
#[derive(Debug, Default)]
struct RejectsPoison {
    writes: Mutex<Vec<usize>>,
    got: Mutex<Vec<String>>,
}

#[async_trait]
impl Writer for RejectsPoison {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        self.writes.lock().unwrap().push(batch.len());
        if batch.iter().any(|m| &m.data[..] == b"poison") {
            let poison = batch.iter().find(|m| &m.data[..] == b"poison").unwrap();
            return Err(Error::rejected(&poison.id, "poison"));
        }
        self.got.lock().unwrap().extend(
            batch
                .iter()
                .map(|m| String::from_utf8(m.data.to_vec()).unwrap()),
        );
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn consecutive_batches_share_one_write_up_to_the_limit() {
    let outbox = Arc::new(MemoryOutbox::new());
    for i in 0..7 {
        outbox
            .write(batch("s", 1, &format!("row{i}")))
            .await
            .unwrap();
    }
    let dest = Arc::new(RejectsPoison::default());
    let fwd = Relay::new(outbox.clone(), dest.clone()).with_max_write_messages(3);
    let report = fwd.relay_once().await.unwrap();
    assert_eq!((report.relayed, report.messages), (7, 7));
    assert_eq!(*dest.writes.lock().unwrap(), [3, 3, 1]);
    let expected: Vec<_> = (0..7).map(|i| format!("row{i}-0")).collect();
    assert_eq!(*dest.got.lock().unwrap(), expected);
    assert_eq!(outbox.pending(), 0);
}

#[tokio::test]
async fn a_failed_combined_write_falls_back_to_one_write_per_batch() {
    let outbox = Arc::new(MemoryOutbox::new());
    for tag in ["a", "b"] {
        outbox.write(batch("s", 1, tag)).await.unwrap();
    }
    outbox
        .write(vec![Message::new("s", "poison")])
        .await
        .unwrap();
    for tag in ["d", "e"] {
        outbox.write(batch("s", 1, tag)).await.unwrap();
    }
    let dest = Arc::new(RejectsPoison::default());
    let fwd = Relay::new(outbox.clone(), dest.clone()).with_retry(quick_retry());
    let report = fwd.relay_once().await.unwrap();
    assert_eq!((report.relayed, report.quarantined), (4, 1));
    // One combined try, then each batch alone.
    assert_eq!(*dest.writes.lock().unwrap(), [5, 1, 1, 1, 1, 1]);
    assert_eq!(*dest.got.lock().unwrap(), ["a-0", "b-0", "d-0", "e-0"]);
    assert_eq!(outbox.quarantined().len(), 1);
    assert_eq!(outbox.pending(), 0);
}

/// Wakes the relay when `ring` is notified, and records that it was stopped.
#[derive(Debug)]
struct Doorbell {
    ring: Arc<tokio::sync::Notify>,
    stopped: Arc<AtomicUsize>,
}

#[async_trait]
impl streams_core::WakeSource for Doorbell {
    async fn run(&self, wake: Arc<tokio::sync::Notify>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.ring.notified() => wake.notify_one(),
            }
        }
        self.stopped.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_wake_source_wakes_the_relay_and_stops_with_it() {
    let outbox = Arc::new(MemoryOutbox::new());
    let dest = Arc::new(Recording::default());
    let ring = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    // Neither polling (an hour) nor the outbox's own notifier (not given) wakes it.
    let relay = Relay::new(outbox.clone(), dest.clone())
        .with_poll_interval(Duration::from_secs(3600))
        .with_wake_source(Doorbell {
            ring: ring.clone(),
            stopped: stopped.clone(),
        })
        .spawn(cancel.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    outbox
        .write(vec![Message::new("payments", "rung")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(dest.got.lock().unwrap().is_empty(), "nothing woke it yet");
    ring.notify_one();
    tokio::time::timeout(Duration::from_secs(5), async {
        while dest.got.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the wake source woke the relay");
    cancel.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        1,
        "the source stopped with the relay"
    );
}

/// Writes everything except the messages named in `refuse` the first `times` times it
/// sees them, which it reports in a partial write.
#[derive(Debug, Default)]
struct PartlyFailing {
    refuse: Vec<String>,
    times: AtomicUsize,
    got: Mutex<Vec<Vec<String>>>,
}

#[async_trait]
impl Writer for PartlyFailing {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        self.got.lock().unwrap().push(
            batch
                .iter()
                .map(|m| String::from_utf8_lossy(&m.data).into_owned())
                .collect(),
        );
        let failing = self
            .times
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let failed: Vec<_> = batch
            .iter()
            .filter(|m| {
                failing
                    && self
                        .refuse
                        .contains(&String::from_utf8_lossy(&m.data).into_owned())
            })
            .map(|m| streams_core::FailedMessage {
                id: m.id.clone(),
                reason: "throttled".into(),
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::PartialWrite {
                failed,
                retryable: true,
            })
        }
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_partial_write_is_retried_from_the_first_failed_message() {
    let outbox = Arc::new(MemoryOutbox::new());
    outbox.write(batch("s", 5, "a")).await.unwrap();
    outbox.write(batch("s", 2, "b")).await.unwrap();
    let dest = Arc::new(PartlyFailing {
        refuse: vec!["a-2".into(), "a-4".into()],
        times: AtomicUsize::new(1),
        ..Default::default()
    });
    let relay = Relay::new(outbox.clone(), dest.clone())
        .with_retry(quick_retry())
        // One write per stored batch, so the partial write is the first batch's.
        .with_max_write_messages(5);
    let report = relay.relay_once().await.unwrap();
    assert_eq!(report.relayed, 2);
    assert_eq!(outbox.pending(), 0);
    let got = dest.got.lock().unwrap();
    // The retry holds the first failed message and its successors, nothing before.
    assert_eq!(got[0], vec!["a-0", "a-1", "a-2", "a-3", "a-4"]);
    assert_eq!(got[1], vec!["a-2", "a-3", "a-4"]);
    assert_eq!(got[2], vec!["b-0", "b-1"]);
}

#[tokio::test]
async fn a_partial_write_that_keeps_failing_leaves_its_batch_and_the_later_ones() {
    let outbox = Arc::new(MemoryOutbox::new());
    outbox.write(batch("s", 3, "a")).await.unwrap();
    outbox.write(batch("s", 2, "b")).await.unwrap();
    let dest = Arc::new(PartlyFailing {
        refuse: vec!["a-1".into()],
        times: AtomicUsize::new(usize::MAX),
        ..Default::default()
    });
    let relay = Relay::new(outbox.clone(), dest.clone())
        .with_retry(quick_retry())
        .with_max_write_messages(3);
    let err = relay.relay_once().await.unwrap_err();
    assert!(err.to_string().contains("throttled"), "{err}");
    // Both batches stay, in order; the later one was not written.
    assert_eq!(outbox.pending(), 2);
    assert!(dest
        .got
        .lock()
        .unwrap()
        .iter()
        .all(|w| !w.contains(&"b-0".to_owned())));
}
