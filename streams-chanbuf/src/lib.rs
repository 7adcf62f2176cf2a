//! In-process fan-out bus, the embedded default driver of `streams`.
//!
//! Every subscriber of a stream receives every message published after it subscribed;
//! readers that share a consumer group share the group's messages instead. Each
//! subscriber has a bounded buffer (the messages waiting, with those a worker has taken
//! and not yet handed to its handler): publishing waits while it is full (or fails at once
//! with [`MemoryBus::try_write`] or [`MemoryBusBuilder::with_fail_fast`]). A subscriber runs at
//! most `concurrency` handlers at once, one per lane; messages with the same key go to
//! the same lane, so order per key holds.
//!
//! Readers sharing a consumer group share its lanes (as many as the first reader's
//! `concurrency`) and take turns on each: one key's messages are handled one at a time,
//! in publish order, by one member at a time, while the members share the load. A member
//! that leaves stops taking messages and the others go on where it stopped; the last
//! member to leave handles what the group holds before its read ends, and a reader that
//! joins the group again meanwhile starts after it.
//!
//! Delivery is at most once: nothing is persisted and a failed handler is not retried
//! by the bus (put [`RetryLayer`](streams_core::middleware::RetryLayer) in front of
//! the handler), unless its error asks for a delay
//! ([`RetryAfter`](streams_core::RetryAfter)): then the bus delivers the message again
//! once the delay is over, to whichever member of the group holds the lane then, and
//! meanwhile the lane goes on with the messages behind it (a delayed message gives up
//! its place in its key's order). No task or handler slot waits for it: the lane keeps
//! it, at most as many as its buffer holds; with that many delayed, the lane takes no
//! new messages until one is due, so publishers wait. Handlers see the delivery in
//! [`Message::delivery_attempt`](streams_core::Message::delivery_attempt) (1 the first
//! time). Graceful shutdown delivers what was already accepted, delayed messages
//! included: the last member of a group to leave waits for their delays to pass.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> streams_core::Result<()> {
//! use std::time::Duration;
//! use streams_core::{BoxError, Event, Message};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Greeted { name: String }
//! impl Event for Greeted {}
//!
//! let mut bus = streams_chanbuf::event_bus();
//! bus.register::<Greeted>("greetings");
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! bus.router().subscribe_typed(move |g: Greeted, _m: Message| {
//!     let tx = tx.clone();
//!     async move { tx.send(g.name).map_err(BoxError::from) }
//! })?;
//! bus.start().await?;
//! bus.publish(&Greeted { name: "Ada".into() }).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("Ada"));
//! bus.shutdown(Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

mod bus;
mod connect;
mod queue;
mod retained;

pub use bus::{event_bus, MemoryBus, MemoryBusBuilder};
pub use connect::connect;
