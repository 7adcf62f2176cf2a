//! Conformance scenarios written once and run by every driver's tests.
//!
//! A driver implements [`Harness`] (how to get a writer and a reader, which
//! [`Capabilities`] it promises) and expands [`conformance_tests!`] in a test file:
//!
//! ```ignore
//! async fn harness() -> MyHarness { MyHarness::new().await }
//! streams_conformance::conformance_tests!(harness());
//! ```
//!
//! Each scenario uses its own unique stream, so scenarios run in parallel. A scenario
//! the driver does not promise is skipped with a line on standard error saying so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use streams_core::{BoxError, CancellationToken, Message, ReadTask, Reader, Result, Writer};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// What a driver promises; scenarios that need more are skipped.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// A message whose handler failed is delivered again (at-least-once).
    pub redelivery: bool,
    /// Messages published while no reader of a group runs are delivered when it returns.
    pub persistent: bool,
    /// Messages with the same key arrive in publish order.
    pub ordered_per_key: bool,
    /// Every consumer group receives every message.
    pub consumer_groups: bool,
}

impl Capabilities {
    /// Promises nothing beyond delivery to a live subscriber.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sets [`redelivery`](Self::redelivery).
    pub fn redelivery(mut self, yes: bool) -> Self {
        self.redelivery = yes;
        self
    }

    /// Sets [`persistent`](Self::persistent).
    pub fn persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// Sets [`ordered_per_key`](Self::ordered_per_key).
    pub fn ordered_per_key(mut self, yes: bool) -> Self {
        self.ordered_per_key = yes;
        self
    }

    /// Sets [`consumer_groups`](Self::consumer_groups).
    pub fn consumer_groups(mut self, yes: bool) -> Self {
        self.consumer_groups = yes;
        self
    }
}

/// How the scenarios reach a driver.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Driver name for messages.
    fn name(&self) -> &'static str;

    /// What the driver promises.
    fn capabilities(&self) -> Capabilities;

    /// A writer. The publish-after-shutdown scenario closes the one it gets.
    async fn writer(&self) -> Result<Arc<dyn Writer>>;

    /// A reader sharing the platform with [`writer`](Self::writer).
    async fn reader(&self) -> Result<Arc<dyn Reader>>;

    /// Creates a stream (topic, queue) before a scenario uses it.
    async fn create_stream(&self, stream: &str) -> Result<()> {
        let _ = stream;
        Ok(())
    }

    /// The read task for a stream and consumer group; drivers add their arguments.
    fn task(&self, stream: &str, group: &str) -> ReadTask {
        ReadTask::new(stream).with_group(group)
    }

    /// How long a scenario waits for deliveries.
    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// How a scenario ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// Not run: the driver does not promise what it checks.
    Skipped(&'static str),
}

type ScenarioResult = std::result::Result<Outcome, String>;

const PROBE: &str = "conformance-probe";

/// A new stream name no other scenario or run uses.
pub fn unique_stream(scenario: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "conf-{}-{}-{}-{}",
        scenario.replace('_', "-"),
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running read task whose handler forwards non-probe messages to a channel.
struct Sub {
    rx: mpsc::UnboundedReceiver<Message>,
    ready: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<Result<()>>,
}

type FailFn = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

async fn subscribe(
    h: &dyn Harness,
    task: ReadTask,
    fail: Option<FailFn>,
) -> std::result::Result<Sub, String> {
    let reader = h.reader().await.map_err(|e| format!("reader: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let ready = Arc::new(tokio::sync::Notify::new());
    let r = ready.clone();
    let svc = tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        let r = r.clone();
        let fail = fail.clone();
        async move {
            if m.header(PROBE).is_some() {
                r.notify_one();
                return Ok(());
            }
            let failed = fail.as_ref().is_some_and(|f| f(&m));
            let _ = tx.send(m);
            if failed {
                Err::<(), BoxError>("conformance: failing on purpose".into())
            } else {
                Ok(())
            }
        }
    });
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let handler = streams_core::handler(svc);
    let join = tokio::spawn(async move { reader.read(task, handler, c).await });
    Ok(Sub {
        rx,
        ready,
        cancel,
        join,
    })
}

impl Sub {
    /// Publishes probes until one reaches this subscription, so that a scenario starts
    /// only once the reader is really receiving (group joins take time on some
    /// platforms).
    async fn wait_ready(
        &self,
        writer: &dyn Writer,
        stream: &str,
        patience: Duration,
    ) -> std::result::Result<(), String> {
        let deadline = Instant::now() + patience;
        let mut wait = Duration::from_millis(50);
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
            "reader of `{stream}` not receiving after {patience:?}"
        ))
    }

    /// Collects messages until `done` says so or patience runs out.
    async fn collect_until(
        &mut self,
        patience: Duration,
        mut done: impl FnMut(&[Message]) -> bool,
    ) -> Vec<Message> {
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

    async fn collect(&mut self, n: usize, patience: Duration) -> Vec<Message> {
        self.collect_until(patience, |g| g.len() >= n).await
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

fn ids(msgs: &[Message]) -> HashSet<String> {
    msgs.iter().map(|m| m.id.clone()).collect()
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> std::result::Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

async fn setup(
    h: &dyn Harness,
    scenario: &str,
) -> std::result::Result<(String, Arc<dyn Writer>), String> {
    let stream = unique_stream(scenario);
    h.create_stream(&stream)
        .await
        .map_err(|e| format!("create stream: {e}"))?;
    let writer = h.writer().await.map_err(|e| format!("writer: {e}"))?;
    Ok((stream, writer))
}

/// 100 messages with key, headers and content type arrive intact.
pub async fn round_trip(h: &dyn Harness) -> ScenarioResult {
    let (stream, writer) = setup(h, "round_trip").await?;
    let mut sub = subscribe(h, h.task(&stream, "rt"), None).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let content_types = [
        "application/json",
        "application/x-google-protobuf",
        "text/plain; charset=utf-8",
    ];
    let sent: Vec<Message> = (0..100u32)
        .map(|i| {
            let data: Bytes = if i % 10 == 3 {
                // Not UTF-8: every driver must carry arbitrary bytes.
                Bytes::from((0..=255u8).rev().chain([0, 0xff, 0xc3]).collect::<Vec<_>>())
            } else {
                Bytes::from(format!("{{\"n\":{i},\"text\":\"héllo wörld\"}}"))
            };
            Message::new(&stream, data)
                .with_key(format!("key-{}", i % 7))
                .with_header("n", i.to_string())
                .with_header("tenant", "acme")
                .with_content_type(content_types[i as usize % 3])
        })
        .collect();
    for chunk in sent.chunks(10) {
        writer
            .write(chunk.to_vec())
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    let got = sub.collect(100, h.patience()).await;
    sub.stop().await?;
    let by_id: HashMap<_, _> = got.iter().map(|m| (m.id.clone(), m)).collect();
    for s in &sent {
        let g = by_id.get(&s.id).ok_or_else(|| {
            format!(
                "message {} not received ({} of 100 arrived)",
                s.id,
                by_id.len()
            )
        })?;
        ensure(g.stream == s.stream, || {
            format!("stream {} != {}", g.stream, s.stream)
        })?;
        ensure(g.key == s.key, || format!("key {:?} != {:?}", g.key, s.key))?;
        ensure(g.content_type == s.content_type, || {
            format!("content type {} != {}", g.content_type, s.content_type)
        })?;
        ensure(g.data == s.data, || format!("payload of {} changed", s.id))?;
        for (k, v) in &s.headers {
            ensure(g.headers.get(k) == Some(v), || {
                format!("header {k} lost or changed: {:?}", g.headers.get(k))
            })?;
        }
        let drift = (g.time - s.time).num_milliseconds().abs();
        ensure(drift <= 1, || format!("time {} != {}", g.time, s.time))?;
    }
    Ok(Outcome::Passed)
}

/// 50 publishers writing at once lose nothing.
pub async fn concurrent_publishers(h: &dyn Harness) -> ScenarioResult {
    let (stream, writer) = setup(h, "concurrent_publishers").await?;
    let mut sub = subscribe(h, h.task(&stream, "cp"), None).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..50 {
        let writer = writer.clone();
        let stream = stream.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let m = Message::new(&stream, format!("{p}-{i}")).with_key(format!("p{p}"));
                ids.push(m.id.clone());
                writer.write(vec![m]).await?;
            }
            Ok::<_, streams_core::Error>(ids)
        });
    }
    let mut sent = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        sent.extend(
            r.map_err(|e| e.to_string())?
                .map_err(|e| format!("write: {e}"))?,
        );
    }
    let got = sub
        .collect_until(h.patience(), |g| ids(g).len() >= sent.len())
        .await;
    sub.stop().await?;
    let got = ids(&got);
    let missing = sent.difference(&got).count();
    ensure(missing == 0, || {
        format!("{missing} of {} messages missing", sent.len())
    })?;
    Ok(Outcome::Passed)
}

/// Subscribers of different streams see only their own stream.
pub async fn streams_are_isolated(h: &dyn Harness) -> ScenarioResult {
    let mut subs = Vec::new();
    let mut writer = None;
    for i in 0..3 {
        let (stream, w) = setup(h, &format!("isolation{i}")).await?;
        let sub = subscribe(h, h.task(&stream, "iso"), None).await?;
        sub.wait_ready(w.as_ref(), &stream, h.patience()).await?;
        writer = Some(w);
        subs.push((stream, sub));
    }
    let writer = writer.expect("three streams");
    for (stream, _) in &subs {
        let batch = (0..20)
            .map(|i| Message::new(stream, format!("{i}")))
            .collect();
        writer
            .write(batch)
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    for (stream, mut sub) in subs {
        let mut got = sub.collect(20, h.patience()).await;
        // A short grace period catches strays from the other streams.
        got.extend(
            sub.collect_until(Duration::from_millis(300), |_| false)
                .await,
        );
        sub.stop().await?;
        ensure(got.len() == 20, || {
            format!("`{stream}` got {} messages, want 20", got.len())
        })?;
        ensure(got.iter().all(|m| m.stream == stream), || {
            format!("`{stream}` received another stream's message")
        })?;
    }
    Ok(Outcome::Passed)
}

/// A message whose handler failed is delivered again while the reader keeps running.
pub async fn redelivery_after_failure(h: &dyn Harness) -> ScenarioResult {
    if !h.capabilities().redelivery {
        return Ok(Outcome::Skipped("redelivery after handler failure"));
    }
    let (stream, writer) = setup(h, "redelivery").await?;
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let f = failed_once.clone();
    let fail: FailFn = Arc::new(move |m: &Message| f.lock().expect("lock").insert(m.id.clone()));
    let mut sub = subscribe(h, h.task(&stream, "redelivery"), Some(fail)).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let sent: Vec<Message> = (0..10)
        .map(|i| Message::new(&stream, format!("{i}")).with_key("k"))
        .collect();
    let sent_ids = ids(&sent);
    writer
        .write(sent)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let got = sub
        .collect_until(h.patience(), |g| {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for m in g {
                *counts.entry(&m.id).or_default() += 1;
            }
            sent_ids
                .iter()
                .all(|id| counts.get(id.as_str()).copied().unwrap_or(0) >= 2)
        })
        .await;
    sub.stop().await?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &got {
        *counts.entry(m.id.clone()).or_default() += 1;
    }
    let not_redelivered = sent_ids
        .iter()
        .filter(|id| counts.get(*id).copied().unwrap_or(0) < 2)
        .count();
    ensure(not_redelivered == 0, || {
        format!("{not_redelivered} of 10 failed messages were not delivered again")
    })?;
    Ok(Outcome::Passed)
}

/// Messages published while a group's reader is closed arrive when it reopens.
pub async fn resume_after_reopen(h: &dyn Harness) -> ScenarioResult {
    if !h.capabilities().persistent {
        return Ok(Outcome::Skipped("persistence across a closed subscriber"));
    }
    let (stream, writer) = setup(h, "resume").await?;
    let task = h.task(&stream, "resume");
    let mut sub = subscribe(h, task.clone(), None).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let first: Vec<Message> = (0..10)
        .map(|i| Message::new(&stream, format!("a{i}")))
        .collect();
    let first_ids = ids(&first);
    writer
        .write(first)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let got = sub
        .collect_until(h.patience(), |g| first_ids.is_subset(&ids(g)))
        .await;
    ensure(first_ids.is_subset(&ids(&got)), || {
        "first batch not received".into()
    })?;
    sub.stop().await?;
    let second: Vec<Message> = (0..10)
        .map(|i| Message::new(&stream, format!("b{i}")))
        .collect();
    let second_ids = ids(&second);
    writer
        .write(second)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut sub = subscribe(h, task, None).await?;
    let got = sub
        .collect_until(h.patience(), |g| second_ids.is_subset(&ids(g)))
        .await;
    sub.stop().await?;
    let missing = second_ids.difference(&ids(&got)).count();
    ensure(missing == 0, || {
        format!("{missing} of 10 messages published while closed were lost")
    })?;
    Ok(Outcome::Passed)
}

/// Messages with the same key arrive in the order they were published.
pub async fn order_per_key(h: &dyn Harness) -> ScenarioResult {
    if !h.capabilities().ordered_per_key {
        return Ok(Outcome::Skipped("order per key"));
    }
    let (stream, writer) = setup(h, "order").await?;
    let mut sub = subscribe(h, h.task(&stream, "order"), None).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let keys = 5;
    let per_key = 40;
    let mut batch = Vec::new();
    for seq in 0..per_key {
        for k in 0..keys {
            batch.push(
                Message::new(&stream, format!("{k}:{seq}"))
                    .with_key(format!("key-{k}"))
                    .with_header("seq", seq.to_string()),
            );
        }
    }
    for chunk in batch.chunks(25) {
        writer
            .write(chunk.to_vec())
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    let total = keys * per_key;
    let got = sub
        .collect_until(h.patience(), |g| ids(g).len() >= total)
        .await;
    sub.stop().await?;
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut first = HashSet::new();
    for m in &got {
        if first.insert(m.id.clone()) {
            let seq = m
                .header("seq")
                .and_then(|s| s.parse().ok())
                .ok_or("seq header lost")?;
            seen.entry(m.key.clone().unwrap_or_default())
                .or_default()
                .push(seq);
        }
    }
    ensure(first.len() == total, || {
        format!("received {} of {total}", first.len())
    })?;
    for (key, seqs) in seen {
        ensure(seqs.windows(2).all(|w| w[0] < w[1]), || {
            format!("key {key} out of order: {seqs:?}")
        })?;
    }
    Ok(Outcome::Passed)
}

/// Each of two consumer groups receives every message.
pub async fn each_group_receives_everything(h: &dyn Harness) -> ScenarioResult {
    if !h.capabilities().consumer_groups {
        return Ok(Outcome::Skipped("consumer groups"));
    }
    let (stream, writer) = setup(h, "groups").await?;
    let mut a = subscribe(h, h.task(&stream, "group-a"), None).await?;
    let mut b = subscribe(h, h.task(&stream, "group-b"), None).await?;
    a.wait_ready(writer.as_ref(), &stream, h.patience()).await?;
    b.wait_ready(writer.as_ref(), &stream, h.patience()).await?;
    let sent: Vec<Message> = (0..30)
        .map(|i| Message::new(&stream, format!("{i}")))
        .collect();
    let sent_ids = ids(&sent);
    writer
        .write(sent)
        .await
        .map_err(|e| format!("write: {e}"))?;
    for (name, sub) in [("group-a", &mut a), ("group-b", &mut b)] {
        let got = sub
            .collect_until(h.patience(), |g| sent_ids.is_subset(&ids(g)))
            .await;
        let missing = sent_ids.difference(&ids(&got)).count();
        ensure(missing == 0, || format!("{name} missed {missing} of 30"))?;
    }
    a.stop().await?;
    b.stop().await?;
    Ok(Outcome::Passed)
}

/// Cancelling a subscription ends its reader cleanly and promptly.
pub async fn cancel_ends_subscription(h: &dyn Harness) -> ScenarioResult {
    let (stream, writer) = setup(h, "cancel").await?;
    let sub = subscribe(h, h.task(&stream, "cancel"), None).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    sub.stop().await?;
    Ok(Outcome::Passed)
}

/// Writing after the writer was closed is an error, never a panic or a silent loss.
pub async fn publish_after_shutdown(h: &dyn Harness) -> ScenarioResult {
    let (stream, writer) = setup(h, "after_shutdown").await?;
    writer.close().await.map_err(|e| format!("close: {e}"))?;
    let result = writer.write(vec![Message::new(&stream, "late")]).await;
    match result {
        Err(streams_core::Error::Closed(_)) => Ok(Outcome::Passed),
        Err(e) => Err(format!(
            "write after close failed with {e}, want Error::Closed"
        )),
        Ok(()) => Err("write after close succeeded".into()),
    }
}

/// Runs a scenario and returns how it ended; the tests [`conformance_tests!`] expands
/// to report a skip on standard error.
///
/// # Panics
///
/// When the scenario fails, with what failed: that is how the test fails.
pub async fn run<H: Harness>(
    h: &H,
    name: &str,
    scenario: for<'a> fn(&'a dyn Harness) -> futures::future::BoxFuture<'a, ScenarioResult>,
) -> Outcome {
    match scenario(h).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("{}::{name} failed: {e}", h.name()),
    }
}

/// Expands to one `#[tokio::test]` per scenario, each building its harness with the
/// given async expression. The calling crate needs `tokio` with `macros` and
/// `rt-multi-thread`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__scenario!($make, round_trip);
        $crate::__scenario!($make, concurrent_publishers);
        $crate::__scenario!($make, streams_are_isolated);
        $crate::__scenario!($make, redelivery_after_failure);
        $crate::__scenario!($make, resume_after_reopen);
        $crate::__scenario!($make, order_per_key);
        $crate::__scenario!($make, each_group_receives_everything);
        $crate::__scenario!($make, cancel_ends_subscription);
        $crate::__scenario!($make, publish_after_shutdown);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenario {
    ($make:expr, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[allow(clippy::print_stderr)]
        async fn $name() {
            let harness = $make.await;
            let outcome =
                $crate::run(&harness, stringify!($name), |h| Box::pin($crate::$name(h))).await;
            if let $crate::Outcome::Skipped(what) = outcome {
                // The test says it skipped, in the test runner's output.
                eprintln!(
                    "SKIPPED {}::{}: the driver does not promise {what}",
                    $crate::Harness::name(&harness),
                    stringify!($name)
                );
            }
        }
    };
}
