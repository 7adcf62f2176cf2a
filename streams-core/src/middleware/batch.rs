//! [`Retry`] and [`DeadLetter`] on batch handlers.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::dlq::{dead_letter_copy, dead_letter_stream};
use super::{DeadLetter, Retry};
use crate::{is_unrecoverable, Batch, BatchOutcome, BoxError};

/// On batches: calls the handler again with only the failed messages of the batch
/// whose errors are not [unrecoverable](crate::Unrecoverable), with the policy's
/// backoff and bounds, until none is left; each message retried counts in
/// [`MESSAGES_RETRIED`](crate::observe::MESSAGES_RETRIED). An `Err` of a call counts
/// as a failure of every message it held. The outcome names the messages that still
/// failed, each with its last error.
impl<S> Service<Batch> for Retry<S>
where
    S: Service<Batch, Response = BatchOutcome> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = BatchOutcome;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<BatchOutcome, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, batch: Batch) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let mut inner = self.inner.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let started = Instant::now();
            let len = batch.len();
            let first = ready.call(batch.clone()).await.map_err(Into::into);
            let mut outcome = settle(first, len);
            let mut attempt = 1;
            loop {
                let retry: Vec<usize> = outcome
                    .failed_indices()
                    .into_iter()
                    .filter(|&i| {
                        outcome
                            .error(i)
                            .is_some_and(|e| !is_unrecoverable(e.as_ref()))
                    })
                    .collect();
                if retry.is_empty() || attempt >= policy.max_attempts() {
                    break;
                }
                let delay = policy.backoff(attempt);
                if policy
                    .max_elapsed()
                    .is_some_and(|max| started.elapsed() + delay > max)
                {
                    break;
                }
                tracing::debug!(
                    stream = %batch.stream(), failed = retry.len(), attempt, ?delay,
                    "batch handler failed messages, retrying them"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
                metrics::counter!(
                    crate::observe::MESSAGES_RETRIED,
                    crate::observe::STREAM_LABEL => batch.stream().to_owned()
                )
                .increment(retry.len() as u64);
                let subset = batch.select(&retry);
                let result = match inner.ready().await.map_err(Into::into) {
                    Ok(svc) => svc.call(subset).await.map_err(Into::into),
                    Err(e) => Err(e),
                };
                let again = settle(result, retry.len());
                for (j, &i) in retry.iter().enumerate() {
                    if !again.is_failed(j) {
                        outcome.succeed(i);
                    }
                }
                for (j, e) in again.into_failed() {
                    outcome.fail(retry[j], e);
                }
            }
            Ok(outcome)
        })
    }
}

/// The outcome of a call of `len` messages: an `Err` fails them all.
fn settle(result: Result<BatchOutcome, BoxError>, len: usize) -> BatchOutcome {
    match result {
        Ok(mut outcome) => {
            outcome.truncate(len);
            outcome
        }
        Err(e) => BatchOutcome::all_failed(len, e),
    }
}

/// On batches: writes the failed messages of a batch to their dead-letter streams in
/// one write, with the same headers as for a single message, and acknowledges them.
/// An `Err` of the handler dead-letters every message of the batch. When the
/// dead-letter write fails, the messages stay failed, so nothing is lost; when it
/// partly fails ([`Error::PartialWrite`](crate::Error::PartialWrite)), the messages it
/// names stay failed.
impl<S> Service<Batch> for DeadLetter<S>
where
    S: Service<Batch, Response = BatchOutcome>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = BatchOutcome;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<BatchOutcome, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, batch: Batch) -> Self::Future {
        let copy = batch.clone();
        let fut = self.inner.call(batch);
        let writer = self.writer.clone();
        Box::pin(async move {
            let mut outcome = settle(fut.await.map_err(Into::into), copy.len());
            if outcome.is_ok() {
                return Ok(outcome);
            }
            let failed = outcome.failed_indices();
            let dead: Vec<_> = failed
                .iter()
                .map(|&i| {
                    let err = outcome.error(i).expect("failed index");
                    dead_letter_copy(copy.messages()[i].clone(), err.as_ref())
                })
                .collect();
            let ids: Vec<String> = dead.iter().map(|m| m.id.clone()).collect();
            let source = copy.stream().to_owned();
            let dlq = dead_letter_stream(&source);
            let not_written: Vec<String> = match writer.write(dead).await {
                Ok(()) => Vec::new(),
                Err(crate::Error::PartialWrite { failed, .. }) => {
                    failed.into_iter().map(|f| f.id).collect()
                }
                Err(write_err) => {
                    tracing::error!(
                        stream = %source, %dlq, count = ids.len(), %write_err,
                        "dead-letter write failed; messages not acknowledged"
                    );
                    return Ok(outcome);
                }
            };
            let mut written = 0u64;
            for (&i, id) in failed.iter().zip(&ids) {
                if not_written.contains(id) {
                    continue;
                }
                if let Some(err) = outcome.succeed(i) {
                    tracing::warn!(stream = %source, %id, %dlq, error = %err, "message dead-lettered");
                    written += 1;
                }
            }
            if !not_written.is_empty() {
                tracing::error!(
                    stream = %source, %dlq, count = not_written.len(),
                    "dead-letter write partly failed; those messages not acknowledged"
                );
            }
            metrics::counter!(
                crate::observe::MESSAGES_DEAD_LETTERED,
                crate::observe::STREAM_LABEL => source
            )
            .increment(written);
            Ok(outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tower::Layer;

    use super::*;
    use crate::middleware::{DeadLetterLayer, RetryLayer, RetryPolicy, DLQ_REASON};
    use crate::{batch_handler, call_batch_handler, Message, Unrecoverable, Writer};

    fn batch(n: usize) -> Batch {
        Batch::new(
            "orders",
            (0..n)
                .map(|i| {
                    let mut m = Message::new("orders", i.to_string());
                    m.id = format!("m{i}");
                    m
                })
                .collect(),
        )
    }

    fn quick() -> RetryPolicy {
        RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(1))
            .with_max_backoff(Duration::from_millis(2))
    }

    /// Fails "1" twice, "2" always (unrecoverable), "3" always; records each call's
    /// payloads.
    fn flaky(calls: Arc<Mutex<Vec<Vec<String>>>>) -> crate::BatchHandler {
        let ones = Arc::new(AtomicUsize::new(0));
        batch_handler(tower::service_fn(move |b: Batch| {
            let calls = calls.clone();
            let ones = ones.clone();
            async move {
                let data: Vec<String> = b
                    .messages()
                    .iter()
                    .map(|m| String::from_utf8(m.data.to_vec()).unwrap())
                    .collect();
                calls.lock().unwrap().push(data.clone());
                let mut o = BatchOutcome::ok();
                for (i, d) in data.iter().enumerate() {
                    match d.as_str() {
                        "1" if ones.fetch_add(1, Ordering::SeqCst) < 2 => o.fail(i, "flaky"),
                        "2" => o.fail(i, Unrecoverable::new("poison")),
                        "3" => o.fail(i, "down"),
                        _ => {}
                    }
                }
                Ok::<_, BoxError>(o)
            }
        }))
    }

    #[tokio::test]
    async fn retry_calls_again_with_the_failed_messages_only() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut h = batch_handler(
            RetryLayer::new(quick().with_max_attempts(4)).layer(flaky(calls.clone())),
        );
        let o = call_batch_handler(&mut h, batch(5)).await;
        assert_eq!(o.failed_indices(), vec![2, 3]);
        assert_eq!(o.error(3).unwrap().to_string(), "down");
        let calls = calls.lock().unwrap();
        assert_eq!(calls[0], vec!["0", "1", "2", "3", "4"]);
        // The unrecoverable "2" is never retried; "1" succeeds on its third call.
        assert_eq!(calls[1], vec!["1", "3"]);
        assert_eq!(calls[2], vec!["1", "3"]);
        assert_eq!(calls[3], vec!["3"]);
        assert_eq!(calls.len(), 4);
    }

    #[tokio::test]
    async fn retry_treats_an_err_as_every_message_failed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let inner = batch_handler(tower::service_fn(move |_b: Batch| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err::<BatchOutcome, BoxError>("broker hiccup".into())
                } else {
                    Ok(BatchOutcome::ok())
                }
            }
        }));
        let mut h = batch_handler(RetryLayer::new(quick()).layer(inner));
        assert!(call_batch_handler(&mut h, batch(3)).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[derive(Debug, Default)]
    struct Capture {
        written: Mutex<Vec<Message>>,
        refuse: Option<&'static str>,
        down: bool,
    }

    #[async_trait::async_trait]
    impl Writer for Capture {
        async fn write(&self, batch: Vec<Message>) -> crate::Result<()> {
            if self.down {
                return Err(crate::Error::Closed("dlq"));
            }
            let mut failed = Vec::new();
            for m in batch {
                if Some(m.id.as_str()) == self.refuse {
                    failed.push(crate::FailedMessage {
                        id: m.id,
                        reason: "too big".into(),
                    });
                } else {
                    self.written.lock().unwrap().push(m);
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(crate::Error::PartialWrite {
                    failed,
                    retryable: true,
                })
            }
        }

        async fn close(&self) -> crate::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn dead_letter_writes_the_failed_messages_and_acknowledges_them() {
        let dlq = Arc::new(Capture::default());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut h = batch_handler(
            DeadLetterLayer::new(dlq.clone())
                .layer(RetryLayer::new(quick().with_max_attempts(2)).layer(flaky(calls))),
        );
        let o = call_batch_handler(&mut h, batch(5)).await;
        assert!(o.is_ok(), "{o:?}");
        let written = dlq.written.lock().unwrap();
        let ids: Vec<_> = written.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, vec!["m1", "m2", "m3"]);
        assert!(written.iter().all(|m| m.stream == "orders.dlq"));
        assert_eq!(written[1].header(DLQ_REASON), Some("unrecoverable: poison"));
    }

    #[tokio::test]
    async fn dead_letter_keeps_failed_what_it_could_not_write() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let partly = Arc::new(Capture {
            refuse: Some("m3"),
            ..Default::default()
        });
        let mut h = batch_handler(DeadLetterLayer::new(partly.clone()).layer(flaky(calls.clone())));
        let o = call_batch_handler(&mut h, batch(5)).await;
        assert_eq!(o.failed_indices(), vec![3]);
        assert_eq!(partly.written.lock().unwrap().len(), 2);

        let down = Arc::new(Capture {
            down: true,
            ..Default::default()
        });
        let mut h = batch_handler(DeadLetterLayer::new(down).layer(flaky(calls)));
        let o = call_batch_handler(&mut h, batch(5)).await;
        assert_eq!(o.failed_indices(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn tower_timeout_fails_the_whole_batch() {
        let slow = tower::service_fn(|_b: Batch| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, BoxError>(BatchOutcome::ok())
        });
        let mut h =
            batch_handler(tower::timeout::TimeoutLayer::new(Duration::from_millis(10)).layer(slow));
        let o = call_batch_handler(&mut h, batch(3)).await;
        assert_eq!(o.failed_indices(), vec![0, 1, 2]);
    }
}
