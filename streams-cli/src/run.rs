//! Running one read task until a count, an idle time-out or a stop signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams::{BoxError, CancellationToken, EventRegistry, Message, ReadTask, Reader, Router};

/// How long stopping waits for the reader: handlers in flight, and an SQS long poll
/// (up to 20 s, `wait_time_seconds` in the URL) that must end before its messages are
/// released.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// When a message was last handled, shared between the handler and the watchdog.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// The first failure a handler reports, which also stops the read.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    first: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
}

impl Failure {
    /// A failure slot that cancels `stop` when set.
    pub(crate) fn new(stop: CancellationToken) -> Self {
        Failure {
            first: Arc::new(Mutex::new(None)),
            stop,
        }
    }

    /// Keeps `reason` unless a failure came first, stops the read and returns the
    /// reason as the handler's error.
    pub(crate) fn set(&self, reason: String) -> BoxError {
        self.first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| reason.clone());
        self.stop.cancel();
        reason.into()
    }

    /// The first failure, if any.
    pub(crate) fn take(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Why a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The handler said it was done.
    Done,
    /// Stopped from outside (Ctrl-C).
    Stopped,
    /// Nothing arrived for the idle time.
    Idle,
}

/// Reads `task` with `service` until `done` or `stop` fires or, with `idle`, until no
/// message was handled for that long; then stops the reader, waiting for handlers in
/// flight. A reader that fails or ends by itself is an error. `attached` fires once
/// the read task is attached to its stream.
pub(crate) async fn read_until<S>(
    reader: Arc<dyn Reader>,
    task: ReadTask,
    service: S,
    done: CancellationToken,
    stop: CancellationToken,
    idle: Option<(Duration, Activity)>,
    attached: Option<CancellationToken>,
) -> Result<Ended, BoxError>
where
    S: tower::Service<Message, Response = ()> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let stream = task.stream.clone();
    read_routed(
        reader,
        stream,
        move |router| {
            router.subscribe(task, service);
        },
        done,
        stop,
        idle,
        attached,
    )
    .await
}

/// [`read_until`] with the subscription made by `subscribe` on the router (a batch
/// handler, say).
pub(crate) async fn read_routed(
    reader: Arc<dyn Reader>,
    stream: String,
    subscribe: impl FnOnce(&mut Router),
    done: CancellationToken,
    stop: CancellationToken,
    idle: Option<(Duration, Activity)>,
    attached: Option<CancellationToken>,
) -> Result<Ended, BoxError> {
    let mut sub = Router::new(reader, Arc::new(EventRegistry::new()));
    subscribe(&mut sub);
    sub.start().await?;
    if let Some(attached) = attached {
        attached.cancel();
    }
    let tick = idle.as_ref().map_or(Duration::from_secs(3600), |(d, _)| {
        (*d / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
    });
    let ended = loop {
        tokio::select! {
            _ = done.cancelled() => break Ok(Ended::Done),
            _ = stop.cancelled() => break Ok(Ended::Stopped),
            r = sub.wait() => break match r {
                Ok(()) => Err(format!("the reader of `{stream}` ended by itself").into()),
                Err(e) => Err(BoxError::from(e)),
            },
            _ = tokio::time::sleep(tick), if idle.is_some() => {
                if let Some((limit, activity)) = &idle {
                    if activity.idle_for() >= *limit {
                        break Ok(Ended::Idle);
                    }
                }
            }
        }
    };
    let shutdown = sub.shutdown(SHUTDOWN_GRACE).await;
    match (ended, shutdown) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(how), Ok(())) => Ok(how),
    }
}
