use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::{BoxError, Error, Message};

/// Layer of [`Timeout`].
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// Fails handlers that run longer than `after`.
    pub fn new(after: Duration) -> Self {
        TimeoutLayer { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::new(inner, self.after)
    }
}

/// Fails a handler call that runs too long with a retryable
/// [`Error::Timeout`](crate::Error::Timeout); the call is dropped.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
}

impl<S> Timeout<S> {
    /// Wraps a handler.
    pub fn new(inner: S, after: Duration) -> Self {
        Timeout { inner, after }
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

impl<S> Service<Message> for Timeout<S>
where
    S: Service<Message, Response = ()>,
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
        let after = self.after;
        let fut = self.inner.call(msg);
        Box::pin(async move {
            match tokio::time::timeout(after, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Error::Timeout {
                    operation: "handler",
                    after,
                }
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn slow_handler_times_out_retryably() {
        let svc = TimeoutLayer::new(Duration::from_millis(50)).layer(tower::service_fn(
            |_m: Message| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, BoxError>(())
            },
        ));
        let err = svc.oneshot(Message::new("s", "x")).await.unwrap_err();
        let err = err.downcast::<Error>().unwrap();
        assert!(matches!(*err, Error::Timeout { .. }));
        assert!(err.is_retryable());
    }
}
