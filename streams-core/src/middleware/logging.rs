use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::{BoxError, Message};

/// Layer of [`Logging`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingLayer {
    _priv: (),
}

impl LoggingLayer {
    /// Logs handler failures at `ERROR` through tracing.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for LoggingLayer {
    type Service = Logging<S>;

    fn layer(&self, inner: S) -> Logging<S> {
        Logging::new(inner)
    }
}

/// Logs every handler failure with the stream, message id, key and elapsed time, and
/// successes at `TRACE`. The result passes through unchanged.
#[derive(Debug, Clone)]
pub struct Logging<S> {
    inner: S,
}

impl<S> Logging<S> {
    /// Wraps a handler.
    pub fn new(inner: S) -> Self {
        Logging { inner }
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

impl<S> Service<Message> for Logging<S>
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
        let stream = msg.stream.clone();
        let id = msg.id.clone();
        let key = msg.key.clone();
        let started = Instant::now();
        let fut = self.inner.call(msg);
        Box::pin(async move {
            let result = fut.await.map_err(Into::into);
            match &result {
                Ok(()) => tracing::trace!(%stream, %id, elapsed = ?started.elapsed(), "handled"),
                Err(error) => tracing::error!(
                    %stream, %id, key = key.as_deref().unwrap_or(""),
                    elapsed = ?started.elapsed(), error = %error, "handler failed"
                ),
            }
            result
        })
    }
}
