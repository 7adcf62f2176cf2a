use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};

use crate::{is_unrecoverable, retry_after, BoxError, Message, RetryAfter, Unrecoverable};

/// How often and how patiently to retry: exponential backoff with jitter, bounded by
/// attempts and by elapsed time.
///
/// ```
/// use std::time::Duration;
/// use streams_core::middleware::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(4)
///     .with_initial_backoff(Duration::from_millis(50))
///     .with_max_elapsed(Duration::from_secs(2));
/// assert_eq!(policy.max_attempts(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    jitter: f64,
    max_elapsed: Option<Duration>,
    platform_delay: bool,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms doubling up to 10 s, 50 % jitter, 30 s in all.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
            max_elapsed: Some(Duration::from_secs(30)),
            platform_delay: false,
        }
    }
}

impl RetryPolicy {
    /// Total attempts, the first included (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay before the second attempt.
    pub fn with_initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Upper bound of one delay.
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Growth factor of the delay per attempt (at least 1).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// Fraction of each delay that is randomised, between 0 (none) and 1 (full jitter).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Gives up when the next delay would end past this much time since the first
    /// attempt; `None` bounds by attempts only.
    pub fn with_max_elapsed(mut self, elapsed: impl Into<Option<Duration>>) -> Self {
        self.max_elapsed = elapsed.into();
        self
    }

    /// Hands the backoff to the platform instead of sleeping in the handler: after a
    /// failed attempt the layer returns the error wrapped in a [`RetryAfter`] with the
    /// backoff, and the reader delivers the message again once it is over, holding no
    /// handler slot meanwhile.
    ///
    /// The attempt number comes from the reader
    /// ([`Message::delivery_attempt`](crate::Message::delivery_attempt)); from attempt
    /// [`max_attempts`](Self::max_attempts) on the error is returned without a delay, so
    /// the platform's plain failure path (or a dead-letter layer outside) takes over.
    /// [`max_elapsed`](Self::with_max_elapsed) does not apply: attempts bound the
    /// retries. On a reader that does not report the attempt, the layer retries in the
    /// handler with sleeps, as without this setting.
    ///
    /// ```
    /// use streams_core::middleware::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_max_attempts(5).with_platform_delay(true);
    /// assert!(policy.platform_delay());
    /// ```
    pub fn with_platform_delay(mut self, yes: bool) -> Self {
        self.platform_delay = yes;
        self
    }

    /// Whether the backoff is handed to the platform
    /// ([`with_platform_delay`](Self::with_platform_delay)).
    pub fn platform_delay(&self) -> bool {
        self.platform_delay
    }

    /// Total attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The bound on total time, if any.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The delay after failed attempt number `attempt` (1-based), jitter applied.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = self
            .initial_backoff
            .mul_f64(exp.min(1e9))
            .min(self.max_backoff);
        // Jitter takes a random share off the delay so that many consumers failing
        // together do not retry together.
        base.mul_f64(1.0 - self.jitter * fastrand::f64())
    }
}

/// Layer of [`Retry`].
#[derive(Debug, Clone, Default)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// A retry layer with a policy.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer { policy }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.policy.clone())
    }
}

/// Calls the handler again after a failure, with backoff, until it succeeds, the
/// policy's bounds are reached, or the error is [unrecoverable](crate::Unrecoverable).
///
/// The last error is returned unchanged. Each retry counts in
/// [`MESSAGES_RETRIED`](crate::observe::MESSAGES_RETRIED).
///
/// An error that already carries a delay ([`RetryAfter`]) is the handler's own choice of
/// when to try again: the layer returns it at once for the platform to honour, and does
/// not sleep. With [`RetryPolicy::with_platform_delay`] the layer hands its backoff to the
/// platform the same way.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    pub(super) inner: S,
    pub(super) policy: RetryPolicy,
}

impl<S> Retry<S> {
    /// Wraps a handler.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Retry { inner, policy }
    }

    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Message> for Retry<S>
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
        // The ready service handles the first attempt; a fresh clone the retries.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        if policy.platform_delay {
            if let Some(attempt) = msg.delivery_attempt() {
                return Box::pin(async move {
                    let result = ready.call(msg.clone()).await.map_err(Into::into);
                    result.map_err(|err| hand_off(&policy, &msg, attempt, err))
                });
            }
        }
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let started = Instant::now();
            let mut result = ready.call(msg.clone()).await.map_err(Into::into);
            let mut attempt = 1;
            while let Err(err) = &result {
                if attempt >= policy.max_attempts
                    || is_unrecoverable(err.as_ref())
                    || retry_after(err.as_ref()).is_some()
                {
                    break;
                }
                let delay = policy.backoff(attempt);
                if let Some(max) = policy.max_elapsed {
                    if started.elapsed() + delay > max {
                        break;
                    }
                }
                tracing::debug!(
                    stream = %msg.stream, id = %msg.id, attempt, ?delay, error = %err,
                    "handler failed, retrying"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
                metrics::counter!(
                    crate::observe::MESSAGES_RETRIED,
                    crate::observe::STREAM_LABEL => msg.stream.clone()
                )
                .increment(1);
                let ready = inner.ready().await.map_err(Into::into);
                result = match ready {
                    Ok(svc) => svc.call(msg.clone()).await.map_err(Into::into),
                    Err(e) => Err(e),
                };
            }
            result
        })
    }
}

/// What the layer returns in hand-off mode after delivery `attempt` failed with `err`.
fn hand_off(policy: &RetryPolicy, msg: &Message, attempt: u32, err: BoxError) -> BoxError {
    if is_unrecoverable(err.as_ref()) {
        return err;
    }
    if attempt >= policy.max_attempts {
        // Out of attempts: whatever delay the handler asked for no longer applies.
        if retry_after(err.as_ref()).is_none() {
            return err;
        }
        return match err.downcast::<RetryAfter>() {
            Ok(r) => r.into_source(),
            Err(err) => Unrecoverable(err).into(),
        };
    }
    metrics::counter!(
        crate::observe::MESSAGES_RETRIED,
        crate::observe::STREAM_LABEL => msg.stream.clone()
    )
    .increment(1);
    if retry_after(err.as_ref()).is_some() {
        return err;
    }
    let delay = policy.backoff(attempt);
    tracing::debug!(
        stream = %msg.stream, id = %msg.id, attempt, ?delay, error = %err,
        "handler failed; the platform delivers it again after the backoff"
    );
    RetryAfter::new(delay, err).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Unrecoverable;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn failing(
        times: u32,
        calls: Arc<AtomicU32>,
    ) -> impl Service<
        Message,
        Response = (),
        Error = BoxError,
        Future = BoxFuture<'static, Result<(), BoxError>>,
    > + Clone {
        tower::service_fn(move |_m: Message| {
            let calls = calls.clone();
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= times {
                    Err::<(), BoxError>(format!("fail {n}").into())
                } else {
                    Ok(())
                }
            }) as BoxFuture<'static, _>
        })
    }

    fn quick() -> RetryPolicy {
        RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(1))
            .with_max_backoff(Duration::from_millis(5))
    }

    #[tokio::test]
    async fn succeeds_after_transient_failures() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut svc =
            RetryLayer::new(quick().with_max_attempts(5)).layer(failing(3, calls.clone()));
        svc.ready()
            .await
            .unwrap()
            .call(Message::new("s", "x"))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn stops_at_max_attempts_with_last_error() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut svc =
            RetryLayer::new(quick().with_max_attempts(3)).layer(failing(10, calls.clone()));
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Message::new("s", "x"))
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(err.to_string(), "fail 3");
    }

    #[tokio::test]
    async fn never_retries_unrecoverable() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let inner = tower::service_fn(move |_m: Message| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>(Unrecoverable::new("bad payload").into()) }
        });
        let mut svc = RetryLayer::new(quick().with_max_attempts(10)).layer(inner);
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Message::new("s", "x"))
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(crate::is_unrecoverable(err.as_ref()));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_elapsed_time() {
        let calls = Arc::new(AtomicU32::new(0));
        let policy = RetryPolicy::default()
            .with_max_attempts(1000)
            .with_initial_backoff(Duration::from_millis(100))
            .with_multiplier(1.0)
            .with_jitter(0.0)
            .with_max_elapsed(Duration::from_millis(1000));
        let mut svc = RetryLayer::new(policy).layer(failing(u32::MAX, calls.clone()));
        svc.ready()
            .await
            .unwrap()
            .call(Message::new("s", "x"))
            .await
            .unwrap_err();
        // 100 ms apart, the last one at exactly one second: the first call and ten
        // retries; an eleventh retry would end past the bound.
        assert_eq!(calls.load(Ordering::SeqCst), 11);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_millis(1000))
            .with_jitter(0.0);
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(10), Duration::from_millis(1000));
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(1000));
        let j = p.clone().with_jitter(1.0);
        let samples: Vec<_> = (0..50).map(|_| j.backoff(2)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(
            samples.iter().any(|d| *d != samples[0]),
            "jitter varies delays"
        );
    }

    fn delivered(n: i64) -> Message {
        let mut m = Message::new("s", "x");
        m.metadata.insert_i64(crate::DELIVERY_ATTEMPT, n);
        m
    }

    fn hand_off_policy() -> RetryPolicy {
        RetryPolicy::default()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_secs(2))
            .with_jitter(0.0)
            .with_platform_delay(true)
    }

    async fn call_once(
        svc: &mut Retry<
            impl Service<
                    Message,
                    Response = (),
                    Error = BoxError,
                    Future = BoxFuture<'static, Result<(), BoxError>>,
                > + Clone
                + Send
                + 'static,
        >,
        m: Message,
    ) -> Result<(), BoxError> {
        svc.ready().await.unwrap().call(m).await
    }

    #[tokio::test(start_paused = true)]
    async fn hands_the_backoff_to_the_platform_without_sleeping() {
        let calls = Arc::new(AtomicU32::new(0));
        let mut svc = RetryLayer::new(hand_off_policy()).layer(failing(u32::MAX, calls.clone()));
        let started = Instant::now();
        let err = call_once(&mut svc, delivered(1)).await.unwrap_err();
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no sleeping in the handler"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(retry_after(err.as_ref()), Some(Duration::from_secs(2)));
        let err = call_once(&mut svc, delivered(2)).await.unwrap_err();
        assert_eq!(retry_after(err.as_ref()), Some(Duration::from_secs(4)));
        // The last attempt: the plain error, for the platform's failure path.
        let err = call_once(&mut svc, delivered(3)).await.unwrap_err();
        assert_eq!(retry_after(err.as_ref()), None);
        assert_eq!(err.to_string(), "fail 3");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn hand_off_keeps_the_handlers_delay_until_attempts_run_out() {
        let inner = tower::service_fn(|_m: Message| {
            Box::pin(async {
                Err::<(), BoxError>(RetryAfter::new(Duration::from_secs(30), "rate limited").into())
            }) as BoxFuture<'static, _>
        });
        let mut svc = RetryLayer::new(hand_off_policy()).layer(inner);
        let err = call_once(&mut svc, delivered(1)).await.unwrap_err();
        assert_eq!(retry_after(err.as_ref()), Some(Duration::from_secs(30)));
        let err = call_once(&mut svc, delivered(3)).await.unwrap_err();
        assert_eq!(retry_after(err.as_ref()), None);
        assert_eq!(err.to_string(), "rate limited");
    }

    #[tokio::test(start_paused = true)]
    async fn hand_off_without_an_attempt_number_retries_in_the_handler() {
        let calls = Arc::new(AtomicU32::new(0));
        let policy = hand_off_policy().with_initial_backoff(Duration::from_millis(10));
        let mut svc = RetryLayer::new(policy).layer(failing(u32::MAX, calls.clone()));
        let err = call_once(&mut svc, Message::new("s", "x"))
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(retry_after(err.as_ref()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn hand_off_passes_unrecoverable_on() {
        let inner = tower::service_fn(|_m: Message| {
            Box::pin(async { Err::<(), BoxError>(Unrecoverable::new("bad").into()) })
                as BoxFuture<'static, _>
        });
        let mut svc = RetryLayer::new(hand_off_policy()).layer(inner);
        let err = call_once(&mut svc, delivered(1)).await.unwrap_err();
        assert!(is_unrecoverable(err.as_ref()));
        assert_eq!(retry_after(err.as_ref()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_delay_is_never_slept_in_the_handler() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let inner = tower::service_fn(move |_m: Message| {
            c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                Err::<(), BoxError>(RetryAfter::new(Duration::from_secs(30), "busy").into())
            }) as BoxFuture<'static, _>
        });
        let mut svc = RetryLayer::new(quick().with_max_attempts(5)).layer(inner);
        let started = Instant::now();
        let err = call_once(&mut svc, Message::new("s", "x"))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(retry_after(err.as_ref()), Some(Duration::from_secs(30)));
    }
}
