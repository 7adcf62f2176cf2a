//! Batch scenarios: a batch handler's outcome acknowledges each message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams_core::{
    batch_handler, Batch, BatchOutcome, BatchSize, BoxError, CancellationToken, Message, Result,
};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::{ensure, setup, write_keyed, Harness, Need, Outcome, ScenarioResult, PROBE};

/// One message as a batch handler saw it: its id, key, `seq` header, the batch it came
/// in (a number), whether it was failed, and whether an earlier message of its batch
/// was failed.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    key: String,
    seq: u32,
    batch: usize,
    failed: bool,
    after_failure: bool,
}

type FailFn = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// A running batch read task whose handler fails the messages `fail` picks and reports
/// every message it saw.
struct BatchSub {
    rx: mpsc::UnboundedReceiver<Seen>,
    ready: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<Result<()>>,
}

/// Small batches with a short wait: a reader that batches through its per-message path
/// hands one message per key at a time, and the scenarios should not wait long for it.
fn size() -> BatchSize {
    BatchSize::new(8, Duration::from_millis(100))
}

async fn subscribe_batch(
    h: &dyn Harness,
    stream: &str,
    group: &str,
    fail: FailFn,
) -> std::result::Result<BatchSub, String> {
    let reader = h.reader().await.map_err(|e| format!("reader: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let ready = Arc::new(tokio::sync::Notify::new());
    let r = ready.clone();
    let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = tower::service_fn(move |b: Batch| {
        let (tx, r, fail) = (tx.clone(), r.clone(), fail.clone());
        let n = batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let mut outcome = BatchOutcome::ok();
            let mut failed_before = false;
            for (i, m) in b.messages().iter().enumerate() {
                if m.header(PROBE).is_some() {
                    r.notify_one();
                    continue;
                }
                let failed = fail(m);
                let _ = tx.send(Seen {
                    id: m.id.clone(),
                    key: m.key.clone().unwrap_or_default(),
                    seq: m
                        .header("seq")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(u32::MAX),
                    batch: n,
                    failed,
                    after_failure: failed_before,
                });
                if failed {
                    outcome.fail(i, "conformance: failing on purpose");
                    failed_before = true;
                }
            }
            Ok::<_, BoxError>(outcome)
        }
    });
    let subscription = reader
        .subscribe_batch(h.task(stream, group), size())
        .await
        .map_err(|e| format!("subscribe_batch: {e}"))?;
    let cancel = CancellationToken::new();
    let join = tokio::spawn(subscription.run(batch_handler(svc), cancel.clone()));
    Ok(BatchSub {
        rx,
        ready,
        cancel,
        join,
    })
}

impl BatchSub {
    async fn wait_ready(
        &self,
        writer: &dyn streams_core::Writer,
        stream: &str,
        patience: Duration,
    ) -> std::result::Result<(), String> {
        let deadline = Instant::now() + patience;
        let mut wait = Duration::from_millis(100);
        while Instant::now() < deadline {
            if self.join.is_finished() {
                return Err("reader ended before it became ready".into());
            }
            writer
                .write(vec![Message::new(stream, "probe").with_header(PROBE, "1")])
                .await
                .map_err(|e| format!("probe write: {e}"))?;
            if timeout(wait, self.ready.notified()).await.is_ok() {
                return Ok(());
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        Err(format!(
            "batch reader of `{stream}` not receiving after {patience:?}"
        ))
    }

    async fn collect_until(
        &mut self,
        patience: Duration,
        mut done: impl FnMut(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + patience;
        let mut got = Vec::new();
        while !done(&got) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => got.push(m),
                _ => break,
            }
        }
        got
    }

    async fn stop(self) -> std::result::Result<(), String> {
        self.cancel.cancel();
        match timeout(Duration::from_secs(30), self.join).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("reader failed: {e}")),
            Ok(Err(e)) => Err(format!("reader task panicked: {e}")),
            Err(_) => Err("reader did not end within 30 s of cancellation".into()),
        }
    }
}

/// Messages acknowledged (handed over and not failed), by id.
fn acknowledged(seen: &[Seen]) -> HashSet<String> {
    seen.iter()
        .filter(|s| !s.failed)
        .map(|s| s.id.clone())
        .collect()
}

/// Fails each message whose `seq` is in `seqs` the first time it is handed over.
fn fail_once(seqs: &'static [u32]) -> FailFn {
    let failed = Arc::new(Mutex::new(HashSet::new()));
    Arc::new(move |m: &Message| {
        let seq: u32 = m
            .header("seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or(u32::MAX);
        seqs.contains(&seq) && failed.lock().expect("lock").insert(m.id.clone())
    })
}

/// A batch handler fails some messages of a batch: those are delivered again,
/// every message is acknowledged in the end, and a message acknowledged before any
/// failure of its batch is not delivered again.
pub async fn batch_acknowledges_per_message(h: &dyn Harness) -> ScenarioResult {
    if let Some(skip) = Need::BatchRedelivery.skip(h) {
        return Ok(skip);
    }
    let (stream, writer) = setup(h, "batch-ack").await?;
    let mut sub = subscribe_batch(h, &stream, "batch-ack", fail_once(&[1, 4, 6])).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    // Four keys, five messages each: seqs 0..20 over keys k0..k3.
    let sent: Vec<Message> = (0..20u32)
        .map(|i| {
            Message::new(&stream, format!("{i}"))
                .with_key(format!("k{}", i % 4))
                .with_header("seq", i.to_string())
        })
        .collect();
    let sent_ids: HashSet<String> = sent.iter().map(|m| m.id.clone()).collect();
    writer
        .write(sent)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = sub
        .collect_until(h.patience(), |g| {
            let again = g
                .iter()
                .filter(|s| s.failed)
                .all(|s| g.iter().filter(|t| t.id == s.id).count() >= 2);
            again && acknowledged(g).is_superset(&sent_ids)
        })
        .await;
    // What comes within a moment after: nothing acknowledged early may come again.
    got.extend(sub.collect_until(Duration::from_secs(1), |_| false).await);
    sub.stop().await?;
    let acked = acknowledged(&got);
    let missing = sent_ids.difference(&acked).count();
    ensure(missing == 0, || {
        format!("{missing} of 20 messages never acknowledged")
    })?;
    let mut handed: HashMap<&str, usize> = HashMap::new();
    for s in &got {
        *handed.entry(&s.id).or_default() += 1;
    }
    for s in got.iter().filter(|s| s.failed) {
        ensure(handed[s.id.as_str()] >= 2, || {
            format!("failed message seq {} was not delivered again", s.seq)
        })?;
    }
    for s in got.iter().filter(|s| !s.failed && !s.after_failure) {
        let later = got
            .iter()
            .filter(|t| t.id == s.id && t.batch > s.batch)
            .count();
        ensure(later == 0, || {
            format!(
                "seq {} was acknowledged before any failure of its batch and delivered again",
                s.seq
            )
        })?;
    }
    Ok(Outcome::Passed)
}

/// Batches keep each key's messages in publish order.
pub async fn batch_keeps_order_per_key(h: &dyn Harness) -> ScenarioResult {
    if let Some(skip) = Need::BatchOrder.skip(h) {
        return Ok(skip);
    }
    let (stream, writer) = setup(h, "batch-order").await?;
    let mut sub = subscribe_batch(h, &stream, "batch-order", Arc::new(|_| false)).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let (keys, per_key) = (5, 30);
    write_keyed(writer.as_ref(), &stream, keys, per_key, 25).await?;
    let total = (keys * per_key) as usize;
    let got = sub
        .collect_until(h.patience(), |g| acknowledged(g).len() >= total)
        .await;
    sub.stop().await?;
    let mut first = HashSet::new();
    let mut seqs: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for s in &got {
        if first.insert(s.id.clone()) {
            seqs.entry(s.key.clone()).or_default().push(s.seq);
        }
    }
    ensure(first.len() == total, || {
        format!("received {} of {total}", first.len())
    })?;
    for (key, seqs) in seqs {
        ensure(seqs.windows(2).all(|w| w[0] < w[1]), || {
            format!("key {key} out of order: {seqs:?}")
        })?;
    }
    Ok(Outcome::Passed)
}

/// One key; the batch handler fails a message in the middle once. It comes again, the
/// key's messages are acknowledged in publish order, each exactly once, and none
/// acknowledged before the failed one comes again.
pub async fn batch_failed_message_in_middle(h: &dyn Harness) -> ScenarioResult {
    if let Some(skip) = Need::BatchRedeliveryInOrder.skip(h) {
        return Ok(skip);
    }
    let (stream, writer) = setup(h, "batch-middle").await?;
    let mut sub = subscribe_batch(h, &stream, "batch-middle", fail_once(&[4])).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let sent: Vec<Message> = (0..10u32)
        .map(|i| {
            Message::new(&stream, format!("{i}"))
                .with_key("k")
                .with_header("seq", i.to_string())
        })
        .collect();
    let sent_ids: HashSet<String> = sent.iter().map(|m| m.id.clone()).collect();
    writer
        .write(sent)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let in_order = |g: &[Seen]| -> HashSet<String> {
        g.iter()
            .filter(|s| !s.failed && !s.after_failure)
            .map(|s| s.id.clone())
            .collect()
    };
    let mut got = sub
        .collect_until(h.patience(), |g| in_order(g).is_superset(&sent_ids))
        .await;
    got.extend(sub.collect_until(Duration::from_secs(1), |_| false).await);
    sub.stop().await?;
    let missing = sent_ids.difference(&in_order(&got)).count();
    ensure(missing == 0, || {
        format!("{missing} of 10 messages never acknowledged in order")
    })?;
    ensure(got.iter().any(|s| s.seq == 4 && s.failed), || {
        "the message in the middle was never failed".into()
    })?;
    // On an ordered platform the messages after a failure in its batch come again
    // behind it; what counts is each message acknowledged before any failure of its
    // batch: once each, in publish order.
    let acked_order: Vec<u32> = got
        .iter()
        .filter(|s| !s.failed && !s.after_failure)
        .map(|s| s.seq)
        .collect();
    let want: Vec<u32> = (0..10).collect();
    ensure(acked_order == want, || {
        format!("acknowledged {acked_order:?}, want 0 to 9 once each, in order")
    })?;
    Ok(Outcome::Passed)
}
