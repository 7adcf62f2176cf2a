use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::{BoxError, Message, Result};

/// Remembers which messages a worker has processed.
///
/// `worker` names the consumer (a service, a group) so that several consumers of one
/// stream deduplicate independently; `message_id` is the key checked and committed.
#[async_trait]
pub trait DedupStore: Send + Sync + fmt::Debug {
    /// Whether the worker committed this message and the record has not expired.
    ///
    /// # Errors
    ///
    /// A storage failure; the message is then not acknowledged.
    async fn contains(&self, worker: &str, message_id: &str) -> Result<bool>;

    /// Records that the worker processed this message.
    ///
    /// # Errors
    ///
    /// A storage failure.
    async fn commit(&self, worker: &str, message_id: &str) -> Result<()>;
}

/// An in-process [`DedupStore`]: records expire after a TTL, and the oldest are evicted
/// beyond a bounded number of entries.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::time::Duration;
/// use streams_core::middleware::{DedupStore, MemoryDedupStore};
///
/// let store = MemoryDedupStore::new(Duration::from_secs(60), 10_000);
/// assert!(!store.contains("billing", "m-1").await.unwrap());
/// store.commit("billing", "m-1").await.unwrap();
/// assert!(store.contains("billing", "m-1").await.unwrap());
/// assert!(!store.contains("shipping", "m-1").await.unwrap());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryDedupStore {
    ttl: Duration,
    max_entries: usize,
    state: Mutex<DedupState>,
}

#[derive(Debug, Default)]
struct DedupState {
    // Value: (expiry, generation). The queue holds keys in commit order with the
    // generation they were committed at, so a re-committed key's old slot is skipped.
    entries: HashMap<(String, String), (Instant, u64)>,
    order: VecDeque<((String, String), u64)>,
    generation: u64,
}

impl Default for MemoryDedupStore {
    /// One hour TTL, 100,000 entries.
    fn default() -> Self {
        Self::new(Duration::from_secs(3600), 100_000)
    }
}

impl MemoryDedupStore {
    /// A store keeping each record for `ttl`, and at most `max_entries` records.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        MemoryDedupStore {
            ttl,
            max_entries: max_entries.max(1),
            state: Mutex::new(DedupState::default()),
        }
    }

    /// Number of records held, expired ones not yet evicted included.
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
    fn evict(&mut self, now: Instant, max_entries: usize) {
        while let Some((key, generation)) = self.order.front() {
            let live = match self.entries.get(key) {
                Some((expiry, g)) if g == generation => {
                    if *expiry > now && self.entries.len() < max_entries {
                        break;
                    }
                    true
                }
                _ => false,
            };
            let (key, _) = self.order.pop_front().expect("front exists");
            if live {
                self.entries.remove(&key);
            }
        }
    }
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn contains(&self, worker: &str, message_id: &str) -> Result<bool> {
        let state = self.lock();
        let key = (worker.to_owned(), message_id.to_owned());
        Ok(matches!(state.entries.get(&key), Some((expiry, _)) if *expiry > Instant::now()))
    }

    async fn commit(&self, worker: &str, message_id: &str) -> Result<()> {
        let now = Instant::now();
        let mut state = self.lock();
        state.evict(now, self.max_entries);
        state.generation += 1;
        let generation = state.generation;
        let key = (worker.to_owned(), message_id.to_owned());
        state
            .entries
            .insert(key.clone(), (now + self.ttl, generation));
        state.order.push_back((key, generation));
        Ok(())
    }
}

/// Layer of [`Dedup`].
#[derive(Debug, Clone)]
pub struct DedupLayer {
    worker: Arc<str>,
    store: Arc<dyn DedupStore>,
}

impl DedupLayer {
    /// Deduplicates by message id for `worker` in `store`.
    pub fn new(worker: impl Into<String>, store: Arc<dyn DedupStore>) -> Self {
        DedupLayer {
            worker: Arc::from(worker.into()),
            store,
        }
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;

    fn layer(&self, inner: S) -> Dedup<S> {
        Dedup {
            inner,
            worker: self.worker.clone(),
            store: self.store.clone(),
        }
    }
}

/// Skips messages the worker already processed: the message id is checked before the
/// handler runs and committed, the same key, after it succeeded.
///
/// A duplicate is acknowledged without calling the handler. A failed check is an error
/// (the message is not acknowledged); a failed commit after a successful handler is
/// logged and the message acknowledged, since its work is done.
///
/// Two copies of a message handled at the same moment can both pass the check; readers
/// deliver a key's messages one at a time, so give messages a key (or run one handler
/// at a time) where duplicates may arrive together.
#[derive(Debug, Clone)]
pub struct Dedup<S> {
    inner: S,
    worker: Arc<str>,
    store: Arc<dyn DedupStore>,
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
        Box::pin(async move {
            let id = msg.id.clone();
            if store.contains(&worker, &id).await? {
                tracing::debug!(stream = %msg.stream, %id, %worker, "duplicate skipped");
                return Ok(());
            }
            inner.call(msg).await.map_err(Into::into)?;
            if let Err(error) = store.commit(&worker, &id).await {
                tracing::warn!(%id, %worker, %error, "handled but not recorded for deduplication");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;

    #[tokio::test]
    async fn same_message_twice_is_handled_once() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let svc = DedupLayer::new("w", store).layer(tower::service_fn(move |_m: Message| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        }));
        let msg = Message::new("s", "x");
        svc.clone().oneshot(msg.clone()).await.unwrap();
        svc.clone().oneshot(msg.clone()).await.unwrap();
        svc.clone().oneshot(Message::new("s", "y")).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failed_handler_is_not_committed() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let store: Arc<dyn DedupStore> = Arc::new(MemoryDedupStore::default());
        let svc =
            DedupLayer::new("w", store.clone()).layer(tower::service_fn(move |_m: Message| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Err::<(), BoxError>("first try fails".into())
                    } else {
                        Ok(())
                    }
                }
            }));
        let msg = Message::new("s", "x");
        assert!(svc.clone().oneshot(msg.clone()).await.is_err());
        assert!(!store.contains("w", &msg.id).await.unwrap());
        svc.clone().oneshot(msg.clone()).await.unwrap();
        assert!(store.contains("w", &msg.id).await.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn memory_store_expires_and_is_bounded() {
        let store = MemoryDedupStore::new(Duration::from_millis(30), 3);
        store.commit("w", "a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !store.contains("w", "a").await.unwrap(),
            "expired entry is absent"
        );
        for id in ["b", "c", "d", "e"] {
            store.commit("w", id).await.unwrap();
        }
        assert!(store.len() <= 3, "bounded: {}", store.len());
        assert!(!store.contains("w", "b").await.unwrap(), "oldest evicted");
        assert!(store.contains("w", "e").await.unwrap());
        // Re-committing refreshes without leaking queue slots.
        for _ in 0..10 {
            store.commit("w", "e").await.unwrap();
        }
        assert!(store.len() <= 3);
        assert!(store.contains("w", "e").await.unwrap());
    }
}
