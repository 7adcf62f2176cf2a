use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Level;

use crate::{BoxError, Message};

/// Layer of [`Logging`].
///
/// This is where a failed message is logged at the level you choose: readers log a
/// handler's failure at `DEBUG` only, so one failed message makes one line.
#[derive(Debug, Clone, Copy)]
pub struct LoggingLayer {
    level: Level,
}

impl Default for LoggingLayer {
    fn default() -> Self {
        LoggingLayer {
            level: Level::ERROR,
        }
    }
}

impl LoggingLayer {
    /// Logs handler failures at `ERROR` through tracing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Logs handler failures at `level` instead (`WARN` for handlers whose failures
    /// are retried and expected now and then).
    pub fn with_level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }
}

impl<S> Layer<S> for LoggingLayer {
    type Service = Logging<S>;

    fn layer(&self, inner: S) -> Logging<S> {
        Logging::new(inner).with_level(self.level)
    }
}

/// Logs every handler failure with the stream, message id, key and elapsed time, and
/// successes at `TRACE`. The result passes through unchanged.
#[derive(Debug, Clone)]
pub struct Logging<S> {
    inner: S,
    level: Level,
}

impl<S> Logging<S> {
    /// Wraps a handler, logging failures at `ERROR`.
    pub fn new(inner: S) -> Self {
        Logging {
            inner,
            level: Level::ERROR,
        }
    }

    /// Logs failures at `level`.
    pub fn with_level(mut self, level: Level) -> Self {
        self.level = level;
        self
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
        let level = self.level;
        let fut = self.inner.call(msg);
        Box::pin(async move {
            let result = fut.await.map_err(Into::into);
            match &result {
                Ok(()) => tracing::trace!(%stream, %id, elapsed = ?started.elapsed(), "handled"),
                Err(error) => {
                    let key = key.as_deref().unwrap_or("");
                    let elapsed = started.elapsed();
                    // `tracing` needs the level as a constant at each call site.
                    macro_rules! failed {
                        ($lvl:expr) => {
                            tracing::event!($lvl, %stream, %id, key, ?elapsed, %error, "handler failed")
                        };
                    }
                    match level {
                        Level::ERROR => failed!(Level::ERROR),
                        Level::WARN => failed!(Level::WARN),
                        Level::INFO => failed!(Level::INFO),
                        Level::DEBUG => failed!(Level::DEBUG),
                        Level::TRACE => failed!(Level::TRACE),
                    }
                }
            }
            result
        })
    }
}
