use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::{BoxError, Error, Message, Result};

/// Remembers which messages a worker has handled, and which one of several copies of a
/// message is being handled now.
///
/// `worker` names the consumer (a service, a group) so that several consumers of one
/// stream deduplicate independently; `message_id` is the key claimed and committed.
///
/// A copy of a message is handled only by whoever [claims](DedupStore::claim) it: the
/// claim is atomic, so of several copies claimed at the same instant exactly one gets
/// [`Claim::Acquired`]. Its holder then [commits](DedupStore::commit) (the message is
/// done for the store's TTL) or [releases](DedupStore::release) it (another copy may
/// take it). A claim that is neither, because its holder crashed, lapses after its
/// lease.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::time::Duration;
/// use streams_core::middleware::{Claim, DedupStore, MemoryDedupStore};
///
/// let store = MemoryDedupStore::new(Duration::from_secs(60), 10_000);
/// let lease = Duration::from_secs(30);
/// let Claim::Acquired(token) = store.claim("billing", "m-1", lease).await.unwrap() else {
///     panic!("the first copy gets the claim");
/// };
/// assert_eq!(store.claim("billing", "m-1", lease).await.unwrap(), Claim::Busy);
/// store.commit("billing", "m-1", &token).await.unwrap();
/// assert_eq!(store.claim("billing", "m-1", lease).await.unwrap(), Claim::Done);
/// // Another worker deduplicates on its own.
/// assert!(matches!(store.claim("shipping", "m-1", lease).await.unwrap(), Claim::Acquired(_)));
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[async_trait]
pub trait DedupStore: Send + Sync + fmt::Debug {
    /// Claims the message for the worker, atomically, for `lease`.
    ///
    /// [`Claim::Acquired`] when no record exists, or the record expired (a done record
    /// after the TTL, a claim after its lease); [`Claim::Done`] when the message was
    /// committed and the record has not expired; [`Claim::Busy`] when another holder's
    /// claim has not expired.
    ///
    /// # Errors
    ///
    /// A storage failure; the copy is then not handled and not acknowledged.
    async fn claim(&self, worker: &str, message_id: &str, lease: Duration) -> Result<Claim>;

    /// Records that the message was handled: the claim held with `token` becomes a done
    /// record that lives for the store's TTL.
    ///
    /// If the claim lapsed and nobody took it over, the done record is written all the
    /// same; if the message is done already, nothing changes.
    ///
    /// # Errors
    ///
    /// A storage failure, or [`Error::Invalid`] when another holder claimed the message
    /// after this claim's lease ran out (that copy is being handled too).
    async fn commit(&self, worker: &str, message_id: &str, token: &ClaimToken) -> Result<()>;

    /// Gives up the claim held with `token`, so that another copy can be handled now
    /// rather than after the lease. Does nothing when the claim is no longer held with
    /// `token` (it lapsed, was taken over or committed).
    ///
    /// # Errors
    ///
    /// A storage failure; the claim then lapses after its lease.
    async fn release(&self, worker: &str, message_id: &str, token: &ClaimToken) -> Result<()>;
}

/// What [`DedupStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the claim: handle the message, then commit or release with this
    /// token.
    Acquired(ClaimToken),
    /// The message was handled already: drop this copy.
    Done,
    /// Another copy holds an unexpired claim: it will commit, release, or lapse after
    /// its lease.
    Busy,
}

/// Names the holder of a claim, so that a holder whose lease ran out cannot commit or
/// release the claim of the copy that took over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken(String);

impl ClaimToken {
    /// A token with this text, for stores that make their own.
    pub fn new(token: impl Into<String>) -> Self {
        ClaimToken(token.into())
    }

    /// A fresh random token (a UUID).
    pub fn generate() -> Self {
        ClaimToken(uuid::Uuid::new_v4().to_string())
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An in-process [`DedupStore`]: done records expire after a TTL, claims after their
/// lease, and the oldest records are evicted beyond a bounded number of entries.
///
/// Claims are atomic within the process (one mutex); workers in several processes need a
/// shared store such as `streams-dynamodb`'s.
///
/// ```
/// use std::time::Duration;
/// use streams_core::middleware::MemoryDedupStore;
///
/// let store = MemoryDedupStore::new(Duration::from_secs(600), 10_000);
/// assert!(store.is_empty());
/// ```
#[derive(Debug)]
pub struct MemoryDedupStore {
    ttl: Duration,
    max_entries: usize,
    state: Mutex<DedupState>,
}

#[derive(Debug, Default)]
struct DedupState {
    entries: HashMap<(String, String), Entry>,
    // Keys in the order they were last written, with the generation they were written
    // at, so that a rewritten or removed key's old slot is skipped.
    order: VecDeque<((String, String), u64)>,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    expiry: Instant,
    generation: u64,
    record: Record,
}

#[derive(Debug)]
enum Record {
    Claimed(ClaimToken),
    Done,
}

impl Default for MemoryDedupStore {
    /// One hour TTL, 100,000 entries.
    fn default() -> Self {
        Self::new(Duration::from_secs(3600), 100_000)
    }
}

impl MemoryDedupStore {
    /// A store keeping each done record for `ttl`, and at most `max_entries` records
    /// (claims included).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        MemoryDedupStore {
            ttl,
            max_entries: max_entries.max(1),
            state: Mutex::new(DedupState::default()),
        }
    }

    /// Number of records held (claims and done records), expired ones not yet evicted
    /// included.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DedupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DedupState {
    /// Drops expired records from the front of the order and the oldest ones beyond
    /// `max_entries - 1`, making room for one more.
    fn evict(&mut self, now: Instant, max_entries: usize) {
        while let Some((key, generation)) = self.order.front() {
            let current = match self.entries.get(key) {
                Some(entry) if entry.generation == *generation => {
                    if entry.expiry > now && self.entries.len() < max_entries {
                        break;
                    }
                    true
                }
                _ => false,
            };
            let (key, _) = self.order.pop_front().expect("front exists");
            if current {
                self.entries.remove(&key);
            }
        }
    }

    /// Writes the key's record, first making room for it.
    fn insert(
        &mut self,
        key: (String, String),
        record: Record,
        expiry: Instant,
        now: Instant,
        max_entries: usize,
    ) {
        self.entries.remove(&key);
        self.evict(now, max_entries);
        self.generation += 1;
        let generation = self.generation;
        self.entries.insert(
            key.clone(),
            Entry {
                expiry,
                generation,
                record,
            },
        );
        self.order.push_back((key, generation));
        // Stale slots (rewritten or released keys) behind a live front would pile up.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(key, g)| entries.get(key).is_some_and(|e| e.generation == *g));
        }
    }
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn claim(&self, worker: &str, message_id: &str, lease: Duration) -> Result<Claim> {
        let now = Instant::now();
        let key = (worker.to_owned(), message_id.to_owned());
        let mut state = self.lock();
        match state.entries.get(&key) {
            Some(entry) if entry.expiry > now => {
                return Ok(match entry.record {
                    Record::Done => Claim::Done,
                    Record::Claimed(_) => Claim::Busy,
                });
            }
            _ => {}
        }
        let token = ClaimToken::generate();
        let record = Record::Claimed(token.clone());
        state.insert(key, record, now + lease, now, self.max_entries);
        Ok(Claim::Acquired(token))
    }

    async fn commit(&self, worker: &str, message_id: &str, token: &ClaimToken) -> Result<()> {
        let now = Instant::now();
        let key = (worker.to_owned(), message_id.to_owned());
        let mut state = self.lock();
        match state.entries.get(&key) {
            Some(Entry {
                record: Record::Claimed(held),
                ..
            }) if held == token => {}
            Some(entry) if entry.expiry > now => {
                return match entry.record {
                    Record::Done => Ok(()),
                    Record::Claimed(_) => Err(taken_over(worker, message_id)),
                };
            }
            // Absent or expired: the message was handled all the same.
            _ => {}
        }
        state.insert(key, Record::Done, now + self.ttl, now, self.max_entries);
        Ok(())
    }

    async fn release(&self, worker: &str, message_id: &str, token: &ClaimToken) -> Result<()> {
        let key = (worker.to_owned(), message_id.to_owned());
        let mut state = self.lock();
        if matches!(
            state.entries.get(&key),
            Some(Entry { record: Record::Claimed(held), .. }) if held == token
        ) {
            state.entries.remove(&key);
        }
        Ok(())
    }
}

fn taken_over(worker: &str, message_id: &str) -> Error {
    Error::invalid(
        "deduplication claim",
        format!(
            "message `{message_id}` of worker `{worker}` was claimed by another copy after \
             this claim's lease ran out; make the lease longer than the handler takes"
        ),
    )
}

/// Layer of [`Dedup`].
#[derive(Debug, Clone)]
pub struct DedupLayer {
    worker: Arc<str>,
    store: Arc<dyn DedupStore>,
    lease: Duration,
}

impl DedupLayer {
    /// The lease of a claim unless [`with_lease`](Self::with_lease) says otherwise: one
    /// minute.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

    /// Deduplicates by message id for `worker` in `store`.
    pub fn new(worker: impl Into<String>, store: Arc<dyn DedupStore>) -> Self {
        DedupLayer {
            worker: Arc::from(worker.into()),
            store,
            lease: Self::DEFAULT_LEASE,
        }
    }

    /// How long a claim holds before another copy may take the message over. Make it
    /// longer than the handler takes, retries included: a holder still running after
    /// its lease is no longer alone. A crashed holder blocks the message's copies for
    /// this long. Default [`DEFAULT_LEASE`](Self::DEFAULT_LEASE).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// The lease of a claim.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;

    fn layer(&self, inner: S) -> Dedup<S> {
        Dedup {
            inner,
            worker: self.worker.clone(),
            store: self.store.clone(),
            lease: self.lease,
        }
    }
}

/// Handles each message id once per worker, however many copies arrive and however
/// they are delivered (at the same instant, to several handlers or hosts).
///
/// Before the handler runs, the copy [claims](DedupStore::claim) its message id,
/// atomically, for the layer's [lease](DedupLayer::with_lease):
/// - **Acquired**: the handler runs. Success [commits](DedupStore::commit) (the message
///   is done for the store's TTL); failure [releases](DedupStore::release) the claim and
///   returns the error, so a redelivered or waiting copy is handled.
/// - **Done**: the copy is acknowledged without calling the handler.
/// - **Busy** (another copy is being handled): the copy waits, polling with a short
///   backoff, until the other commits (the copy is dropped) or releases or its lease
///   lapses (the copy takes the claim). A copy is never lost because the one ahead of it
///   failed. After twice the lease plus a second of waiting it fails with a retryable
///   [`Error::Timeout`].
///
/// A failed claim is an error (the message is not acknowledged); a failed commit after a
/// successful handler is logged and the message acknowledged, since its work is done. A
/// copy dropped while its handler runs (shutdown, an outer timeout) releases its claim.
#[derive(Debug, Clone)]
pub struct Dedup<S> {
    inner: S,
    worker: Arc<str>,
    store: Arc<dyn DedupStore>,
    lease: Duration,
}

impl<S> Dedup<S> {
    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Message> for Dedup<S>
where
    S: Service<Message, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, msg: Message) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let worker = self.worker.clone();
        let store = self.store.clone();
        let lease = self.lease;
        Box::pin(async move {
            let id = msg.id.clone();
            let Some(token) = wait_for_claim(&*store, &worker, &id, lease).await? else {
                tracing::debug!(stream = %msg.stream, %id, %worker, "duplicate skipped");
                return Ok(());
            };
            let mut held = HeldClaim {
                store,
                worker,
                id,
                token: Some(token),
            };
            let result = inner.call(msg).await.map_err(Into::into);
            let token = held.token.take().expect("the claim is held until here");
            let (store, worker, id) = (&held.store, &held.worker, &held.id);
            match &result {
                Ok(()) => {
                    if let Err(error) = store.commit(worker, id, &token).await {
                        tracing::warn!(%id, %worker, %error, "handled but not recorded for deduplication");
                    }
                }
                Err(_) => {
                    if let Err(error) = store.release(worker, id, &token).await {
                        tracing::warn!(%id, %worker, %error, "deduplication claim not released; it lapses after its lease");
                    }
                }
            }
            result
        })
    }
}

/// Claims the message, waiting while another copy holds it: `Some(token)` to handle the
/// copy, `None` when the message is done.
async fn wait_for_claim(
    store: &dyn DedupStore,
    worker: &str,
    id: &str,
    lease: Duration,
) -> Result<Option<ClaimToken>> {
    let max_wait = lease * 2 + Duration::from_secs(1);
    let max_backoff = (lease / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(5);
    loop {
        match store.claim(worker, id, lease).await? {
            Claim::Acquired(token) => return Ok(Some(token)),
            Claim::Done => return Ok(None),
            Claim::Busy => {}
        }
        if started.elapsed() >= max_wait {
            return Err(Error::Timeout {
                operation: "waiting for another copy of the message to be handled",
                after: max_wait,
            });
        }
        tracing::trace!(%id, %worker, "another copy is being handled; waiting");
        // Jitter keeps many waiting copies from polling in step.
        tokio::time::sleep(backoff.mul_f64(0.5 + 0.5 * fastrand::f64())).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// A claim the handler is working under; released in the background if the work is
/// dropped before it commits or releases.
struct HeldClaim {
    store: Arc<dyn DedupStore>,
    worker: Arc<str>,
    id: String,
    token: Option<ClaimToken>,
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, worker, id) = (self.store.clone(), self.worker.clone(), self.id.clone());
        runtime.spawn(async move {
            if let Err(error) = store.release(&worker, &id, &token).await {
                tracing::warn!(%id, %worker, %error, "deduplication claim of a dropped copy not released; it lapses after its lease");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;

    fn counting(
        calls: &Arc<AtomicU32>,
        sleep: Duration,
        fail_first: bool,
    ) -> impl Service<
        Message,
        Response = (),
        Error = BoxError,
        Future = BoxFuture<'static, Result<(), BoxError>>,
    > + Clone {
        let calls = calls.clone();
        tower::service_fn(move |_m: Message| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(sleep).await;
                if fail_first && n == 0 {
                    Err::<(), BoxError>("first try fails".into())
                } else {
                    Ok(())
                }
            }) as BoxFuture<'static, Result<(), BoxError>>
        })
    }

    #[test]
    fn store_is_object_safe_send_and_sync() {
        fn send_sync<T: Send + Sync + ?Sized>() {}
        send_sync::<dyn DedupStore>();
        let _: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
    }

    #[tokio::test]
    async fn same_message_twice_is_handled_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let svc = DedupLayer::new("w", store).layer(counting(&calls, Duration::ZERO, false));
        let msg = Message::new("s", "x");
        svc.clone().oneshot(msg.clone()).await.unwrap();
        svc.clone().oneshot(msg.clone()).await.unwrap();
        svc.clone().oneshot(Message::new("s", "y")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn copies_handled_at_the_same_instant_call_the_handler_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let svc =
            DedupLayer::new("w", store).layer(counting(&calls, Duration::from_millis(50), false));
        let msg = Message::new("s", "x");
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let mut copies = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (svc, msg, start) = (svc.clone(), msg.clone(), start.clone());
            copies.spawn(async move {
                start.wait().await;
                svc.oneshot(msg).await
            });
        }
        while let Some(done) = copies.join_next().await {
            done.unwrap().unwrap();
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one handler call for 16 copies"
        );
    }

    #[tokio::test]
    async fn failed_handler_releases_the_claim_for_a_redelivery() {
        let calls = Arc::new(AtomicU32::new(0));
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let svc = DedupLayer::new("w", store.clone()).layer(counting(&calls, Duration::ZERO, true));
        let msg = Message::new("s", "x");
        assert!(svc.clone().oneshot(msg.clone()).await.is_err());
        svc.clone().oneshot(msg.clone()).await.unwrap();
        svc.clone().oneshot(msg.clone()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let lease = Duration::from_secs(1);
        assert_eq!(store.claim("w", &msg.id, lease).await.unwrap(), Claim::Done);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_copy_is_handled_when_the_first_copy_fails() {
        let calls = Arc::new(AtomicU32::new(0));
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let svc = DedupLayer::new("w", store.clone()).layer(counting(
            &calls,
            Duration::from_millis(100),
            true,
        ));
        let msg = Message::new("s", "x");
        let first = tokio::spawn(svc.clone().oneshot(msg.clone()));
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The first copy holds the claim now: this one waits for it.
        let second = tokio::spawn(svc.clone().oneshot(msg.clone()));
        assert!(first.await.unwrap().is_err());
        second.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Done now: a third copy is dropped.
        svc.clone().oneshot(msg.clone()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn waiting_copy_is_dropped_when_the_first_copy_commits() {
        let calls = Arc::new(AtomicU32::new(0));
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let svc =
            DedupLayer::new("w", store).layer(counting(&calls, Duration::from_millis(50), false));
        let msg = Message::new("s", "x");
        let first = tokio::spawn(svc.clone().oneshot(msg.clone()));
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        svc.clone().oneshot(msg.clone()).await.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_lease_is_taken_over() {
        let store = MemoryDedupStore::new(Duration::from_secs(60), 100);
        let lease = Duration::from_millis(30);
        let Claim::Acquired(lapsed) = store.claim("w", "m", lease).await.unwrap() else {
            panic!("first claim");
        };
        assert_eq!(store.claim("w", "m", lease).await.unwrap(), Claim::Busy);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Claim::Acquired(current) = store.claim("w", "m", lease * 10).await.unwrap() else {
            panic!("a lapsed claim is taken over");
        };
        // The lapsed holder can neither release nor commit the new holder's claim.
        store.release("w", "m", &lapsed).await.unwrap();
        assert_eq!(store.claim("w", "m", lease).await.unwrap(), Claim::Busy);
        let err = store.commit("w", "m", &lapsed).await.unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        store.commit("w", "m", &current).await.unwrap();
        assert_eq!(store.claim("w", "m", lease).await.unwrap(), Claim::Done);
        // Committing again, or late, changes nothing.
        store.commit("w", "m", &lapsed).await.unwrap();
        store.release("w", "m", &current).await.unwrap();
        assert_eq!(store.claim("w", "m", lease).await.unwrap(), Claim::Done);
    }

    #[tokio::test]
    async fn copy_is_handled_once_a_crashed_holders_lease_lapses() {
        let calls = Arc::new(AtomicU32::new(0));
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let msg = Message::new("s", "x");
        // A holder that never commits nor releases.
        let crashed = store
            .claim("w", &msg.id, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(matches!(crashed, Claim::Acquired(_)));
        let svc =
            DedupLayer::new("w", store.clone()).layer(counting(&calls, Duration::ZERO, false));
        svc.oneshot(msg.clone()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let lease = Duration::from_secs(1);
        assert_eq!(store.claim("w", &msg.id, lease).await.unwrap(), Claim::Done);
    }

    #[tokio::test]
    async fn dropped_copy_releases_its_claim() {
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let hang = DedupLayer::new("w", store.clone()).layer(tower::service_fn(|_m: Message| {
            futures::future::pending::<Result<(), BoxError>>()
        }));
        let msg = Message::new("s", "x");
        let dropped =
            tokio::time::timeout(Duration::from_millis(20), hang.oneshot(msg.clone())).await;
        assert!(dropped.is_err(), "the handler never finishes");
        // Without the release the copy below would wait a whole lease (a minute).
        let calls = Arc::new(AtomicU32::new(0));
        let svc = DedupLayer::new("w", store).layer(counting(&calls, Duration::ZERO, false));
        tokio::time::timeout(Duration::from_secs(10), svc.oneshot(msg))
            .await
            .expect("claim released")
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[derive(Debug)]
    struct AlwaysBusy;

    #[async_trait]
    impl DedupStore for AlwaysBusy {
        async fn claim(&self, _: &str, _: &str, _: Duration) -> Result<Claim> {
            Ok(Claim::Busy)
        }
        async fn commit(&self, _: &str, _: &str, _: &ClaimToken) -> Result<()> {
            Ok(())
        }
        async fn release(&self, _: &str, _: &str, _: &ClaimToken) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded_and_retryable() {
        let calls = Arc::new(AtomicU32::new(0));
        let svc = DedupLayer::new("w", Arc::new(AlwaysBusy))
            .with_lease(Duration::from_secs(10))
            .layer(counting(&calls, Duration::ZERO, false));
        let started = tokio::time::Instant::now();
        let err = svc.oneshot(Message::new("s", "x")).await.unwrap_err();
        let err = err.downcast::<Error>().expect("a streams error");
        assert!(err.is_retryable(), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(21) && waited < Duration::from_secs(25),
            "{waited:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn memory_store_expires_and_is_bounded() {
        async fn commit(store: &MemoryDedupStore, id: &str) {
            let lease = Duration::from_secs(10);
            if let Claim::Acquired(token) = store.claim("w", id, lease).await.unwrap() {
                store.commit("w", id, &token).await.unwrap();
            }
        }
        async fn done(store: &MemoryDedupStore, id: &str) -> bool {
            match store.claim("w", id, Duration::from_secs(10)).await.unwrap() {
                Claim::Done => true,
                Claim::Acquired(token) => {
                    store.release("w", id, &token).await.unwrap();
                    false
                }
                Claim::Busy => panic!("{id} busy"),
            }
        }
        let store = MemoryDedupStore::new(Duration::from_millis(30), 3);
        commit(&store, "a").await;
        assert!(done(&store, "a").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!done(&store, "a").await, "expired entry is absent");
        for id in ["b", "c", "d", "e"] {
            commit(&store, id).await;
        }
        assert!(store.len() <= 3, "bounded: {}", store.len());
        assert!(!done(&store, "b").await, "oldest evicted");
        assert!(done(&store, "e").await);
        // Claims and releases over and over do not leak order slots.
        for _ in 0..1000 {
            assert!(!done(&store, "f").await);
        }
        assert!(store.len() <= 3);
        assert!(store.lock().order.len() <= 2 * 3 + 64 + 1);
        assert!(done(&store, "e").await);
    }
}
