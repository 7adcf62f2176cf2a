//! Conformance scenarios written once and run by every driver's tests.
//!
//! A driver implements [`Harness`] (how to get a writer and a reader, which
//! [`Capabilities`] it promises) and expands [`conformance_tests!`] in a test file, which
//! writes the file's `main`:
//!
//! ```ignore
//! async fn harness() -> MyHarness { MyHarness::new().await }
//! streams_conformance::conformance_tests!(harness());
//! ```
//!
//! and declares that test target without libtest's harness in its `Cargo.toml`:
//!
//! ```toml
//! [[test]]
//! name = "conformance"
//! harness = false
//! ```
//!
//! Each scenario is one test named after it (`cargo test -p my-driver -- order_per_key`
//! runs one), with libtest's command line and output. A scenario needing what the
//! driver does not promise shows as `ignored` and is counted as such in the closing
//! `test result:` line. Each scenario uses its own unique stream, so scenarios run in
//! parallel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;
use std::process::ExitCode;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use libtest_mimic::Trial;
use streams_core::{BoxError, CancellationToken, Message, ReadTask, Reader, Result, Writer};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

mod batch;
mod proxy;
pub use batch::{
    batch_acknowledges_per_message, batch_failed_message_in_middle, batch_keeps_order_per_key,
};
pub use proxy::TcpProxy;

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
    /// Readers sharing a consumer group (or a queue) split its messages and still handle
    /// one key's messages one at a time, in publish order. Checked together with
    /// [`ordered_per_key`](Self::with_ordered_per_key).
    pub ordered_across_members: bool,
    /// The platform is reached over TCP, and [`Harness::behind_proxy`] gives a harness
    /// whose clients go through a [`TcpProxy`]: they reconnect after an outage.
    pub reconnect: bool,
    /// [`Reader::subscribe_batch`] hands batches to a batch handler and acknowledges
    /// each message by its outcome. The batch scenarios also check what
    /// [`redelivery`](Self::with_redelivery) and
    /// [`ordered_per_key`](Self::with_ordered_per_key) promise, for batches.
    pub batches: bool,
    /// A failed message comes again before the later messages of its key are handled
    /// (redelivery in place, as on Kafka and SQS FIFO queues), so order per key holds
    /// across failures too. Checked by `batch_failed_message_in_middle`.
    pub ordered_redelivery: bool,
    /// A handler error carrying a delay ([`RetryAfter`](streams_core::RetryAfter)) brings
    /// the message back no sooner than the delay and not much later
    /// ([`Harness::delay_tolerance`]).
    pub delayed_redelivery: bool,
}

impl Capabilities {
    /// Promises nothing beyond delivery to a live subscriber.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sets [`redelivery`](Self::with_redelivery).
    pub fn with_redelivery(mut self, yes: bool) -> Self {
        self.redelivery = yes;
        self
    }

    /// Sets [`persistent`](Self::with_persistent).
    pub fn with_persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// Sets [`ordered_per_key`](Self::with_ordered_per_key).
    pub fn with_ordered_per_key(mut self, yes: bool) -> Self {
        self.ordered_per_key = yes;
        self
    }

    /// Sets [`consumer_groups`](Self::with_consumer_groups).
    pub fn with_consumer_groups(mut self, yes: bool) -> Self {
        self.consumer_groups = yes;
        self
    }

    /// Sets [`reconnect`](Self::reconnect).
    pub fn with_reconnect(mut self, yes: bool) -> Self {
        self.reconnect = yes;
        self
    }

    /// Sets [`ordered_redelivery`](Self::with_ordered_redelivery).
    pub fn with_ordered_redelivery(mut self, yes: bool) -> Self {
        self.ordered_redelivery = yes;
        self
    }

    /// Sets [`batches`](Self::with_batches).
    pub fn with_batches(mut self, yes: bool) -> Self {
        self.batches = yes;
        self
    }

    /// Sets [`delayed_redelivery`](Self::delayed_redelivery).
    pub fn with_delayed_redelivery(mut self, yes: bool) -> Self {
        self.delayed_redelivery = yes;
        self
    }

    /// Sets [`ordered_across_members`](Self::with_ordered_across_members).
    pub fn with_ordered_across_members(mut self, yes: bool) -> Self {
        self.ordered_across_members = yes;
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

    /// How late past its delay a message asking for one may come back (the
    /// `delayed_redelivery` scenario); platforms that poll need more. Default 3 s.
    fn delay_tolerance(&self) -> Duration {
        Duration::from_secs(3)
    }

    /// For the reconnect scenario (when [`Capabilities::reconnect`] is promised): a
    /// [`TcpProxy`] in front of the platform and a harness whose writers and readers
    /// reach the platform only through it (a broker that advertises addresses must
    /// advertise the proxy's).
    ///
    /// # Errors
    ///
    /// When the proxy or the platform behind it cannot be set up.
    async fn behind_proxy(&self) -> Result<(Box<dyn Harness>, TcpProxy)> {
        Err(streams_core::Error::invalid(
            "conformance harness",
            "this harness has no proxy for the reconnect scenario",
        ))
    }
}

/// How a scenario ended when it did not fail (when called directly; the test binary
/// that [`conformance_tests!`] writes reports a skipped scenario as ignored before
/// running it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// Not run: the driver does not promise what it checks.
    Skipped(&'static str),
}

/// What a scenario needs beyond delivery to a live subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Nothing,
    Redelivery,
    Persistence,
    OrderPerKey,
    OrderAcrossMembers,
    ConsumerGroups,
    Reconnect,
    BatchRedelivery,
    BatchOrder,
    BatchRedeliveryInOrder,
    DelayedRedelivery,
}

impl Need {
    /// What the driver does not promise, if it does not.
    fn missing(self, c: &Capabilities) -> Option<&'static str> {
        let (met, what) = match self {
            Need::Nothing => (true, ""),
            Need::Redelivery => (c.redelivery, "redelivery after handler failure"),
            Need::Persistence => (c.persistent, "persistence across a closed subscriber"),
            Need::OrderPerKey => (c.ordered_per_key, "order per key"),
            Need::OrderAcrossMembers => (
                c.ordered_per_key && c.ordered_across_members,
                "order per key across the members of a group",
            ),
            Need::ConsumerGroups => (c.consumer_groups, "consumer groups"),
            Need::Reconnect => (c.reconnect, "a TCP connection to put a proxy in"),
            Need::BatchRedelivery => (c.batches && c.redelivery, "batch handlers with redelivery"),
            Need::BatchOrder => (
                c.batches && c.ordered_per_key,
                "batch handlers in order per key",
            ),
            Need::BatchRedeliveryInOrder => (
                c.batches && c.redelivery && c.ordered_per_key && c.ordered_redelivery,
                "batch handlers with redelivery in order per key",
            ),
            Need::DelayedRedelivery => (c.delayed_redelivery, "redelivery after a chosen delay"),
        };
        (!met).then_some(what)
    }

    pub(crate) fn skip(self, h: &dyn Harness) -> Option<Outcome> {
        self.missing(&h.capabilities()).map(Outcome::Skipped)
    }
}

pub(crate) type ScenarioResult = std::result::Result<Outcome, String>;

pub(crate) const PROBE: &str = "conformance-probe";

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
    subscribe_tracked(h, task, fail, None).await
}

/// Records, across the members of one group, which keys are being handled and in which
/// order each key's messages were first handled.
#[derive(Debug, Default)]
struct KeyLedger {
    inner: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    busy: HashSet<String>,
    overlaps: Vec<String>,
    first: HashSet<String>,
    seqs: BTreeMap<String, Vec<u32>>,
    per_member: BTreeMap<usize, usize>,
}

impl KeyLedger {
    fn enter(&self, m: &Message) {
        let key = m.key.clone().unwrap_or_default();
        let mut s = self.inner.lock().expect("lock");
        if !s.busy.insert(key.clone()) {
            s.overlaps.push(key);
        }
    }

    fn exit(&self, m: &Message, member: usize) {
        let key = m.key.clone().unwrap_or_default();
        let mut s = self.inner.lock().expect("lock");
        s.busy.remove(&key);
        *s.per_member.entry(member).or_default() += 1;
        if s.first.insert(m.id.clone()) {
            let seq = m
                .header("seq")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX);
            s.seqs.entry(key).or_default().push(seq);
        }
    }

    fn distinct(&self) -> usize {
        self.inner.lock().expect("lock").first.len()
    }
}

async fn subscribe_tracked(
    h: &dyn Harness,
    task: ReadTask,
    fail: Option<FailFn>,
    ledger: Option<(Arc<KeyLedger>, usize)>,
) -> std::result::Result<Sub, String> {
    let reader = h.reader().await.map_err(|e| format!("reader: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let ready = Arc::new(tokio::sync::Notify::new());
    let r = ready.clone();
    let svc = tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        let r = r.clone();
        let fail = fail.clone();
        let ledger = ledger.clone();
        async move {
            if m.header(PROBE).is_some() {
                r.notify_one();
                return Ok(());
            }
            if let Some((ledger, member)) = &ledger {
                ledger.enter(&m);
                // Long enough for a second handler of the same key to show up.
                tokio::time::sleep(Duration::from_millis(2)).await;
                ledger.exit(&m, *member);
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
    let subscription = reader
        .subscribe(task)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let join = tokio::spawn(subscription.run(handler, c));
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

pub(crate) fn ensure(cond: bool, what: impl FnOnce() -> String) -> std::result::Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

pub(crate) async fn setup(
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
    if let Some(skip) = Need::Redelivery.skip(h) {
        return Ok(skip);
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

/// The delay of the `delayed_redelivery` scenario.
pub const REDELIVERY_DELAY: Duration = Duration::from_secs(2);

/// A handler that fails with a delay ([`RetryAfter`](streams_core::RetryAfter)) sees
/// the message again no sooner than the delay and at most
/// [`Harness::delay_tolerance`] later; a reader that reports the delivery attempt
/// reports the second one as 2.
pub async fn delayed_redelivery(h: &dyn Harness) -> ScenarioResult {
    if let Some(skip) = Need::DelayedRedelivery.skip(h) {
        return Ok(skip);
    }
    let (stream, writer) = setup(h, "delayed").await?;
    let reader = h.reader().await.map_err(|e| format!("reader: {e}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(Message, Instant)>();
    let ready = Arc::new(tokio::sync::Notify::new());
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let r = ready.clone();
    let svc = tower::service_fn(move |m: Message| {
        let (tx, r, failed_once) = (tx.clone(), r.clone(), failed_once.clone());
        async move {
            if m.header(PROBE).is_some() {
                r.notify_one();
                return Ok(());
            }
            let first = failed_once.lock().expect("lock").insert(m.id.clone());
            let _ = tx.send((m, Instant::now()));
            if first {
                Err::<(), BoxError>(
                    streams_core::RetryAfter::new(REDELIVERY_DELAY, "conformance: later").into(),
                )
            } else {
                Ok(())
            }
        }
    });
    let cancel = CancellationToken::new();
    let subscription = reader
        .subscribe(h.task(&stream, "delayed"))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let (_, never) = mpsc::unbounded_channel();
    let sub = Sub {
        rx: never,
        ready,
        cancel: cancel.clone(),
        join: tokio::spawn(subscription.run(streams_core::handler(svc), cancel)),
    };
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let sent: Vec<Message> = (0..3)
        .map(|i| Message::new(&stream, format!("{i}")).with_key(format!("k{i}")))
        .collect();
    let sent_ids = ids(&sent);
    writer
        .write(sent)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut seen: HashMap<String, Vec<(Message, Instant)>> = HashMap::new();
    let deadline = Instant::now() + h.patience() + REDELIVERY_DELAY + h.delay_tolerance();
    while sent_ids
        .iter()
        .any(|id| seen.get(id).map_or(0, Vec::len) < 2)
    {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((m, at))) => seen.entry(m.id.clone()).or_default().push((m, at)),
            _ => break,
        }
    }
    sub.stop().await?;
    for id in &sent_ids {
        let deliveries = seen.get(id).map(Vec::as_slice).unwrap_or_default();
        ensure(deliveries.len() >= 2, || {
            format!(
                "message {id} delivered {} time(s), expected it again after {REDELIVERY_DELAY:?}",
                deliveries.len()
            )
        })?;
        let (first, failed_at) = &deliveries[0];
        let (second, back_at) = &deliveries[1];
        let away = back_at.duration_since(*failed_at);
        // The handler fails right after the first timestamp, so a message may be back
        // a hair sooner than the full delay measured from it.
        ensure(away + Duration::from_millis(50) >= REDELIVERY_DELAY, || {
            format!(
                "message {id} came back after {away:?}, before its delay of {REDELIVERY_DELAY:?}"
            )
        })?;
        ensure(away <= REDELIVERY_DELAY + h.delay_tolerance(), || {
            format!(
                "message {id} came back after {away:?}, more than {:?} past its delay of {REDELIVERY_DELAY:?}",
                h.delay_tolerance()
            )
        })?;
        if let Some(n) = first.delivery_attempt() {
            ensure(second.delivery_attempt() == Some(n + 1), || {
                format!(
                    "message {id}: delivery attempt {n} then {:?}",
                    second.delivery_attempt()
                )
            })?;
        }
    }
    Ok(Outcome::Passed)
}

/// Messages published while a group's reader is closed arrive when it reopens.
pub async fn resume_after_reopen(h: &dyn Harness) -> ScenarioResult {
    if let Some(skip) = Need::Persistence.skip(h) {
        return Ok(skip);
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
    if let Some(skip) = Need::OrderPerKey.skip(h) {
        return Ok(skip);
    }
    let (stream, writer) = setup(h, "order").await?;
    let mut sub = subscribe(h, h.task(&stream, "order"), None).await?;
    sub.wait_ready(writer.as_ref(), &stream, h.patience())
        .await?;
    let (keys, per_key) = (5, 40);
    write_keyed(writer.as_ref(), &stream, keys, per_key, 25).await?;
    let total = (keys * per_key) as usize;
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

/// Writes `per_key` messages for each of `keys` keys, interleaved (`key-K`, payload
/// `K:SEQ`, header `seq`), in writes of `chunk` messages.
pub(crate) async fn write_keyed(
    writer: &dyn Writer,
    stream: &str,
    keys: u32,
    per_key: u32,
    chunk: usize,
) -> std::result::Result<(), String> {
    let batch: Vec<Message> = (0..per_key)
        .flat_map(|seq| {
            (0..keys).map(move |k| {
                Message::new(stream, format!("{k}:{seq}"))
                    .with_key(format!("key-{k}"))
                    .with_header("seq", seq.to_string())
            })
        })
        .collect();
    for part in batch.chunks(chunk) {
        writer
            .write(part.to_vec())
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

/// Two members of one consumer group read one stream with several keys: both take part,
/// each key's messages are handled in publish order (first deliveries, where the driver
/// redelivers), never two of one key at once, and every message is handled.
pub async fn group_members_keep_order_per_key(h: &dyn Harness) -> ScenarioResult {
    if let Some(skip) = Need::OrderAcrossMembers.skip(h) {
        return Ok(skip);
    }
    let (stream, writer) = setup(h, "members_order").await?;
    let ledger = Arc::new(KeyLedger::default());
    let task = h.task(&stream, "members");
    // One member at a time, each receiving before the next joins, and nothing published
    // until both are: on Kafka a group whose members join together may stall.
    let a = subscribe_tracked(h, task.clone(), None, Some((ledger.clone(), 0))).await?;
    a.wait_ready(writer.as_ref(), &stream, h.patience()).await?;
    let b = subscribe_tracked(h, task, None, Some((ledger.clone(), 1))).await?;
    b.wait_ready(writer.as_ref(), &stream, h.patience()).await?;
    let (keys, per_key) = (6, 30);
    write_keyed(writer.as_ref(), &stream, keys, per_key, 20).await?;
    let total = (keys * per_key) as usize;
    let deadline = Instant::now() + h.patience();
    while ledger.distinct() < total && Instant::now() < deadline {
        if a.join.is_finished() || b.join.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await?;
    b.stop().await?;
    let s = ledger.inner.lock().expect("lock");
    ensure(s.overlaps.is_empty(), || {
        format!("keys handled twice at once: {:?}", s.overlaps)
    })?;
    ensure(s.first.len() == total, || {
        format!("handled {} of {total} messages", s.first.len())
    })?;
    for (key, seqs) in &s.seqs {
        ensure(seqs.windows(2).all(|w| w[0] < w[1]), || {
            format!("key {key} out of order: {seqs:?}")
        })?;
    }
    ensure(s.per_member.len() == 2, || {
        format!(
            "one member handled everything (messages per member: {:?})",
            s.per_member
        )
    })?;
    Ok(Outcome::Passed)
}

/// Each of two consumer groups receives every message.
pub async fn each_group_receives_everything(h: &dyn Harness) -> ScenarioResult {
    if let Some(skip) = Need::ConsumerGroups.skip(h) {
        return Ok(skip);
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

/// A read task with a field the driver cannot honour fails when it is attached, within
/// the harness's patience and with [`Error::Invalid`](streams_core::Error::Invalid)
/// naming the field, rather than being read without it or failing later.
pub async fn subscribe_refuses_what_it_cannot_honour(h: &dyn Harness) -> ScenarioResult {
    let (stream, _writer) = setup(h, "refuse").await?;
    let reader = h.reader().await.map_err(|e| format!("reader: {e}"))?;
    let task = h.task(&stream, "refuse").with_arg("no-such-argument", "1");
    let attached = timeout(h.patience(), reader.subscribe(task))
        .await
        .map_err(|_| format!("subscribe did not answer within {:?}", h.patience()))?;
    match attached {
        Err(streams_core::Error::Invalid { reason, .. }) if reason.contains("no-such-argument") => {
            Ok(Outcome::Passed)
        }
        Err(e) => Err(format!(
            "subscribe failed with {e}, want Error::Invalid naming `no-such-argument`"
        )),
        Ok(_) => Err("subscribe accepted an argument the driver does not know".into()),
    }
}

/// Every connection to the platform is cut, and new ones refused for three seconds,
/// while messages are written and read (through [`Harness::behind_proxy`]): the writer's
/// errors meanwhile are retryable, the reader never ends, and once the network is back
/// every message written arrives.
pub async fn reconnect(h: &dyn Harness) -> ScenarioResult {
    let (ph, proxy) = h.behind_proxy().await.map_err(|e| format!("proxy: {e}"))?;
    let ph = ph.as_ref();
    let patience = ph.patience();
    let (stream, writer) = setup(ph, "reconnect").await?;
    let mut sub = subscribe(ph, ph.task(&stream, "reconnect"), None).await?;
    sub.wait_ready(writer.as_ref(), &stream, patience).await?;
    let (batches, per_batch) = (20u32, 10u32);
    let mut sent = HashSet::new();
    let mut retried = 0usize;
    let started = Instant::now();
    for b in 0..batches {
        if b == 5 {
            proxy.cut(Duration::from_secs(3));
        }
        let batch: Vec<Message> = (0..per_batch)
            .map(|i| Message::new(&stream, format!("{b}-{i}")).with_key(format!("k{}", i % 3)))
            .collect();
        loop {
            match writer.write(batch.clone()).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    retried += 1;
                    ensure(started.elapsed() < patience * 2, || {
                        format!(
                            "writes still failing {:?} after the outage began: {e}",
                            started.elapsed()
                        )
                    })?;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("a write during the outage failed for good: {e}")),
            }
        }
        sent.extend(batch.into_iter().map(|m| m.id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = HashSet::new();
    let got = sub
        .collect_until(patience, |got| {
            seen.extend(got.iter().map(|m| m.id.clone()));
            sent.iter().all(|id| seen.contains(id))
        })
        .await;
    let received = ids(&got);
    let missing = sent.iter().filter(|id| !received.contains(*id)).count();
    ensure(missing == 0, || {
        format!("{missing} of {} messages never arrived after the outage (writes retried {retried} times)", sent.len())
    })?;
    ensure(!sub.join.is_finished(), || {
        "the reader ended during the outage".into()
    })?;
    sub.stop().await?;
    drop(proxy);
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

type ScenarioFn = for<'a> fn(&'a dyn Harness) -> BoxFuture<'a, ScenarioResult>;

/// Every scenario: its name (the test's name), what it needs, how to run it.
fn scenarios() -> Vec<(&'static str, Need, ScenarioFn)> {
    vec![
        ("round_trip", Need::Nothing, |h| Box::pin(round_trip(h))),
        ("concurrent_publishers", Need::Nothing, |h| {
            Box::pin(concurrent_publishers(h))
        }),
        ("streams_are_isolated", Need::Nothing, |h| {
            Box::pin(streams_are_isolated(h))
        }),
        ("redelivery_after_failure", Need::Redelivery, |h| {
            Box::pin(redelivery_after_failure(h))
        }),
        ("delayed_redelivery", Need::DelayedRedelivery, |h| {
            Box::pin(delayed_redelivery(h))
        }),
        ("resume_after_reopen", Need::Persistence, |h| {
            Box::pin(resume_after_reopen(h))
        }),
        ("order_per_key", Need::OrderPerKey, |h| {
            Box::pin(order_per_key(h))
        }),
        (
            "group_members_keep_order_per_key",
            Need::OrderAcrossMembers,
            |h| Box::pin(group_members_keep_order_per_key(h)),
        ),
        (
            "each_group_receives_everything",
            Need::ConsumerGroups,
            |h| Box::pin(each_group_receives_everything(h)),
        ),
        ("cancel_ends_subscription", Need::Nothing, |h| {
            Box::pin(cancel_ends_subscription(h))
        }),
        ("publish_after_shutdown", Need::Nothing, |h| {
            Box::pin(publish_after_shutdown(h))
        }),
        ("reconnect", Need::Reconnect, |h| Box::pin(reconnect(h))),
        (
            "batch_acknowledges_per_message",
            Need::BatchRedelivery,
            |h| Box::pin(batch_acknowledges_per_message(h)),
        ),
        ("batch_keeps_order_per_key", Need::BatchOrder, |h| {
            Box::pin(batch_keeps_order_per_key(h))
        }),
        (
            "batch_failed_message_in_middle",
            Need::BatchRedeliveryInOrder,
            |h| Box::pin(batch_failed_message_in_middle(h)),
        ),
        (
            "subscribe_refuses_what_it_cannot_honour",
            Need::Nothing,
            |h| Box::pin(subscribe_refuses_what_it_cannot_honour(h)),
        ),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime for a conformance scenario")
}

/// The `main` of a conformance test binary, which [`conformance_tests!`] writes: runs
/// every scenario as a test with libtest's command line (name filters, `--exact`,
/// `--skip`, `--test-threads`, `--list`, `--ignored`) and output.
///
/// `make` builds a harness; it is called once to read the harness's
/// [`capabilities`](Harness::capabilities) and once per scenario, each on its own tokio
/// runtime. A scenario needing what the driver does not promise is reported as
/// `ignored`, and counted in the closing `test result:` line; `--include-ignored` runs it
/// anyway (it then passes without checking anything). Scenarios run in parallel.
pub fn main<H, M, F>(make: M) -> ExitCode
where
    H: Harness,
    M: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = H>,
{
    let args = libtest_mimic::Arguments::from_args();
    let make = Arc::new(make);
    let capabilities = runtime().block_on(async { make().await.capabilities() });
    let trials = scenarios()
        .into_iter()
        .map(|(name, need, scenario)| {
            let make = make.clone();
            Trial::test(name, move || {
                runtime().block_on(async {
                    let h = make().await;
                    scenario(&h)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{}::{name} failed: {e}", h.name()).into())
                })
            })
            .with_ignored_flag(need.missing(&capabilities).is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// Writes the `main` of a conformance test binary: one test per scenario, each building
/// its harness with the given async expression (see [`main`](crate::main)).
///
/// The test target needs `harness = false` in the driver's `Cargo.toml`, so that this
/// `main` runs instead of libtest's:
///
/// ```toml
/// [[test]]
/// name = "conformance"
/// harness = false
/// ```
///
/// Without it the binary runs one test, which fails saying so.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        fn main() -> ::std::process::ExitCode {
            $crate::main(|| $make)
        }

        // Compiled only under libtest, that is when `harness = false` was forgotten.
        #[test]
        fn conformance_tests_need_harness_false() {
            panic!(
                "this conformance test target needs `harness = false` in its [[test]] \
                 entry of Cargo.toml; no scenario ran"
            );
        }
    };
}
