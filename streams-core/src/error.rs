use std::fmt;
use std::time::Duration;

/// A boxed error, as tower uses for handler and middleware failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `streams-core` and in the drivers built on it.
///
/// Every variant answers [`Error::is_retryable`], so callers decide whether to try again
/// without downcasting. Drivers wrap their client errors in [`Error::Driver`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The writer, reader or bus was shut down; nothing was written.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// A non-waiting write found the buffer full; nothing was written.
    #[error("buffer of stream `{stream}` is full")]
    Full {
        /// The stream whose buffer was full.
        stream: String,
    },

    /// No codec is registered for a message's content type.
    #[error("unknown content type `{content_type}` (supported: {supported})")]
    UnknownContentType {
        /// The content type of the message.
        content_type: String,
        /// The content types that could have been decoded, comma separated.
        supported: String,
    },

    /// A payload could not be encoded.
    #[error("cannot encode payload as `{content_type}`: {source}")]
    Encode {
        /// The content type that was asked for.
        content_type: String,
        /// Why encoding failed.
        #[source]
        source: BoxError,
    },

    /// A payload did not decode with the codec of its content type.
    #[error("cannot decode payload of content type `{content_type}`: {source}")]
    Decode {
        /// The content type of the payload.
        content_type: String,
        /// Why decoding failed.
        #[source]
        source: BoxError,
    },

    /// An event type was published or subscribed to without a stream in the registry.
    #[error("event type `{0}` is not registered to a stream")]
    EventNotRegistered(&'static str),

    /// An argument or configuration value was rejected.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// An operation did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        operation: &'static str,
        /// How long it was given.
        after: Duration,
    },

    /// A write reached the platform but some messages were not accepted.
    ///
    /// `failed` names each message that was not written and why; the others were.
    #[error("{} of the batch's messages were not written: {}", failed.len(), FailedList(failed))]
    PartialWrite {
        /// The messages that failed, by id, with the reason.
        failed: Vec<FailedMessage>,
        /// Whether writing the failed messages again may succeed.
        retryable: bool,
    },

    /// The destination refused these messages for what they are (too large, malformed,
    /// not valid for the platform); writing them again unchanged fails again.
    ///
    /// This is a fault of the messages, not of the destination: an outbox relay
    /// quarantines the batch holding them and goes on. A fault of the destination itself
    /// (a missing queue or topic, denied access, an unreachable broker, a closed writer)
    /// is never `Rejected`. Whether the other messages of the batch were written depends
    /// on where the refusal happened: a writer that checks a limit before sending sends
    /// nothing; one the platform answered per message wrote the others.
    #[error("{} message(s) refused by the destination: {}", failed.len(), FailedList(failed))]
    Rejected {
        /// The refused messages, by id, with the reason.
        failed: Vec<FailedMessage>,
    },

    /// One or more readers failed; each entry names the stream.
    #[error("{} reader(s) failed: {}", .0.len(), ReaderErrors(.0))]
    Readers(Vec<(String, Error)>),

    /// A platform client failed.
    #[error("{driver}: {operation} failed: {source}")]
    Driver {
        /// The driver, such as `kafka` or `sqs`.
        driver: &'static str,
        /// The operation that failed, such as `produce` or `SendMessageBatch`.
        operation: &'static str,
        /// Whether the same call may succeed if tried again.
        retryable: bool,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether the failed operation may succeed if it is tried again unchanged.
    ///
    /// Bad input (an unknown content type, an undecodable payload, an unregistered event,
    /// an invalid argument) and a closed writer are never retryable; time-outs, full
    /// buffers and driver errors marked retryable are.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Full { .. } | Error::Timeout { .. } => true,
            Error::PartialWrite { retryable, .. } | Error::Driver { retryable, .. } => *retryable,
            Error::Readers(errors) => errors.iter().all(|(_, e)| e.is_retryable()),
            Error::Closed(_)
            | Error::Rejected { .. }
            | Error::UnknownContentType { .. }
            | Error::Encode { .. }
            | Error::Decode { .. }
            | Error::EventNotRegistered(_)
            | Error::Invalid { .. } => false,
        }
    }

    /// Whether this is a fault of the messages themselves rather than of the platform:
    /// [`Error::Rejected`], or an [`Error::Encode`] of a payload. A relay quarantines
    /// the messages behind such an error; for every other error it keeps them and tries
    /// again later.
    pub fn is_message_fault(&self) -> bool {
        matches!(self, Error::Rejected { .. } | Error::Encode { .. })
    }

    /// Builds an [`Error::Rejected`] for one message.
    pub fn rejected(id: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Rejected {
            failed: vec![FailedMessage {
                id: id.into(),
                reason: reason.into(),
            }],
        }
    }

    /// Builds a driver error.
    pub fn driver(
        driver: &'static str,
        operation: &'static str,
        retryable: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Driver {
            driver,
            operation,
            retryable,
            source: source.into(),
        }
    }

    /// Builds an [`Error::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

/// A message a write did not deliver, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedMessage {
    /// The message id.
    pub id: String,
    /// Why it was not written.
    pub reason: String,
}

struct FailedList<'a>(&'a [FailedMessage]);

impl fmt::Display for FailedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().take(5).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", m.id, m.reason)?;
        }
        if self.0.len() > 5 {
            write!(f, "; and {} more", self.0.len() - 5)?;
        }
        Ok(())
    }
}

struct ReaderErrors<'a>(&'a [(String, Error)]);

impl fmt::Display for ReaderErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (stream, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "`{stream}`: {e}")?;
        }
        Ok(())
    }
}

/// Marks a handler error as unrecoverable: retry middleware passes it on at once.
///
/// Wrap an error in it when trying again cannot help, for example when a payload is
/// malformed. The dead-letter middleware still captures such messages.
///
/// ```
/// use streams_core::{BoxError, Unrecoverable};
///
/// let err: BoxError = Unrecoverable::new("order id is missing").into();
/// assert!(streams_core::is_unrecoverable(err.as_ref()));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("unrecoverable: {0}")]
pub struct Unrecoverable(#[source] pub BoxError);

impl Unrecoverable {
    /// Wraps an error.
    pub fn new(err: impl Into<BoxError>) -> Self {
        Unrecoverable(err.into())
    }
}

/// Whether a handler error must not be retried.
///
/// True for an [`Unrecoverable`] anywhere in the source chain and for a [`enum@Error`]
/// that is not [retryable](Error::is_retryable).
pub fn is_unrecoverable(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<Unrecoverable>() {
            return true;
        }
        if let Some(e) = e.downcast_ref::<Error>() {
            if !e.is_retryable() {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// A handler error that says when to try again: the reader makes the message available
/// again after `delay` instead of at once, without holding a handler slot meanwhile.
///
/// Return it for a failure that will pass with time, such as "rate limited, retry in
/// 30 s". Each platform honours it its own way (the README lists them): SQS changes the
/// message's visibility, NATS naks with the delay, Kafka pauses the partition and seeks
/// back when the delay is over, the in-process bus schedules the redelivery. A delay the
/// platform cannot honour (over SQS's 12 hours) is refused with a clear error and the
/// message comes back as after any other failure. A zero delay asks for redelivery at
/// once.
///
/// [`RetryLayer`](crate::middleware::RetryLayer) in
/// [hand-off mode](crate::middleware::RetryPolicy::with_platform_delay) returns its
/// backoff this way; [`DeadLetterLayer`](crate::middleware::DeadLetterLayer) passes such
/// an error on instead of dead-lettering the message.
///
/// ```
/// use std::time::Duration;
/// use streams_core::{BoxError, RetryAfter};
///
/// let err: BoxError = RetryAfter::new(Duration::from_secs(30), "rate limited").into();
/// assert_eq!(streams_core::retry_after(err.as_ref()), Some(Duration::from_secs(30)));
/// assert_eq!(err.to_string(), "retry after 30s: rate limited");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("retry after {delay:?}: {source}")]
pub struct RetryAfter {
    delay: Duration,
    #[source]
    source: BoxError,
}

impl RetryAfter {
    /// Wraps the error that made the handler fail, with the delay after which the
    /// message should be delivered again.
    pub fn new(delay: Duration, err: impl Into<BoxError>) -> Self {
        RetryAfter {
            delay,
            source: err.into(),
        }
    }

    /// How long the message should stay away.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The wrapped error, without the delay.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

/// The delay a handler error asks for, if it asks for one: that of the first
/// [`RetryAfter`] in the source chain. An [`Unrecoverable`] met first in the chain
/// cancels it (`None`): an error that must not be retried is not redelivered later either.
///
/// Readers call it on every handler error to decide when the message comes back.
pub fn retry_after(err: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<RetryAfter>() {
            return Some(r.delay);
        }
        if e.is::<Unrecoverable>() {
            return None;
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_answers_per_kind() {
        assert!(!Error::Closed("bus").is_retryable());
        assert!(Error::Full { stream: "s".into() }.is_retryable());
        assert!(Error::driver("kafka", "produce", true, "broker down").is_retryable());
        assert!(!Error::driver("kafka", "produce", false, "too large").is_retryable());
        assert!(!Error::invalid("table", "bad").is_retryable());
    }

    #[test]
    fn message_faults_are_only_rejections() {
        let rejected = Error::rejected("m-1", "1048577 bytes; the limit is 1048576");
        assert!(rejected.is_message_fault());
        assert!(!rejected.is_retryable());
        assert_eq!(
            rejected.to_string(),
            "1 message(s) refused by the destination: m-1: 1048577 bytes; the limit is 1048576"
        );
        // A destination that is missing or misconfigured is not the messages' fault.
        assert!(!Error::driver("sqs", "SendMessageBatch", false, "no queue").is_message_fault());
        assert!(!Error::Closed("writer").is_message_fault());
        assert!(!Error::invalid("queue", "missing").is_message_fault());
        let partial = Error::PartialWrite {
            failed: vec![],
            retryable: false,
        };
        assert!(!partial.is_message_fault());
    }

    #[test]
    fn unrecoverable_found_in_chain() {
        let err: BoxError = Box::new(Error::Decode {
            content_type: "application/json".into(),
            source: "eof".into(),
        });
        assert!(is_unrecoverable(err.as_ref()));
        let err: BoxError = Box::new(Error::Timeout {
            operation: "handler",
            after: Duration::from_secs(1),
        });
        assert!(!is_unrecoverable(err.as_ref()));
        let err: BoxError = "plain".into();
        assert!(!is_unrecoverable(err.as_ref()));
    }

    #[test]
    fn partial_write_lists_failures() {
        let failed = (0..7)
            .map(|i| FailedMessage {
                id: format!("m{i}"),
                reason: "nope".into(),
            })
            .collect();
        let e = Error::PartialWrite {
            failed,
            retryable: true,
        };
        let text = e.to_string();
        assert!(text.starts_with("7 of the batch's messages"), "{text}");
        assert!(text.contains("and 2 more"), "{text}");
    }

    #[test]
    fn retry_after_found_in_chain_unless_unrecoverable_first() {
        let d = Duration::from_millis(1500);
        let err: BoxError = RetryAfter::new(d, "rate limited").into();
        assert_eq!(retry_after(err.as_ref()), Some(d));
        assert!(!is_unrecoverable(err.as_ref()));
        // Deeper in the chain: a driver error wrapping the handler's.
        let wrapped: BoxError = Error::driver("x", "handle", true, err).into();
        assert_eq!(retry_after(wrapped.as_ref()), Some(d));
        // Unrecoverable outside the delay wins.
        let gave_up: BoxError = Unrecoverable::new(RetryAfter::new(d, "late")).into();
        assert_eq!(retry_after(gave_up.as_ref()), None);
        let plain: BoxError = "plain".into();
        assert_eq!(retry_after(plain.as_ref()), None);
        let zero: BoxError = RetryAfter::new(Duration::ZERO, "now").into();
        assert_eq!(retry_after(zero.as_ref()), Some(Duration::ZERO));
        let back = RetryAfter::new(d, "inner").into_source();
        assert_eq!(back.to_string(), "inner");
    }
}
