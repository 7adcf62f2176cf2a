//! Handler middleware as tower layers.
//!
//! Stack them with [`tower::ServiceBuilder`]; the first layer added sees the message
//! first. A typical order, outermost first: logging, dead-letter, deduplication, retry,
//! timeout, then the handler. Time-outs, concurrency and rate limits are tower's own
//! layers (`tower::timeout::TimeoutLayer`, ...): this module adds only what tower has
//! not. Dead-letter outside retry captures a message only once
//! retries are exhausted; deduplication outside retry commits a message once. For spans
//! and metrics per message, put [`ObserveLayer`](crate::ObserveLayer) outermost, or
//! wrap the reader in [`ObservedReader`](crate::ObservedReader), which does that.
//!
//! [`RetryLayer`] and [`DeadLetterLayer`] work on batch handlers too (see
//! [`BatchHandler`](crate::BatchHandler)): retry calls the handler again with the failed
//! messages of a batch only, dead-letter writes the failed messages of a batch in one
//! write and acknowledges them. Tower's timeout fails a whole batch;
//! [`ObserveLayer`](crate::ObserveLayer) counts per message.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use streams_core::middleware::{
//!     DeadLetterLayer, DedupLayer, LoggingLayer, MemoryDedupStore, RetryLayer, RetryPolicy,
//! };
//! use streams_core::{BoxError, Message, Writer};
//!
//! # fn demo(dlq_writer: Arc<dyn Writer>) {
//! let handler = tower::ServiceBuilder::new()
//!     .layer(LoggingLayer::new())
//!     .layer(DeadLetterLayer::new(dlq_writer))
//!     .layer(DedupLayer::new("billing", Arc::new(MemoryDedupStore::default())))
//!     .layer(RetryLayer::new(RetryPolicy::default().with_max_attempts(5)))
//!     .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(10)))
//!     .service_fn(|msg: Message| async move {
//!         tracing::info!(id = %msg.id, "handled");
//!         Ok::<_, BoxError>(())
//!     });
//! # let _ = streams_core::handler(handler);
//! # }
//! ```

mod batch;
mod dedup;
mod dlq;
mod logging;
mod retry;

pub use dedup::{Claim, ClaimToken, Dedup, DedupLayer, DedupStore, MemoryDedupStore};
pub use dlq::{
    dead_letter_stream, DeadLetter, DeadLetterLayer, DLQ_FAILED_AT, DLQ_REASON, DLQ_SOURCE_STREAM,
};
pub use logging::{Logging, LoggingLayer};
pub use retry::{Retry, RetryLayer, RetryPolicy};
