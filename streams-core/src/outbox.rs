//! The transactional outbox and its relay.
//!
//! A service writes its messages into an outbox ([`OutboxStore`]: a database table, or
//! [`MemoryOutbox`] in process) inside its own transaction; a [`Relay`] reads the stored
//! batches, decodes them and writes them to the destination, deleting each batch only
//! after the destination accepted it. A batch that cannot be decoded is quarantined with
//! the reason, never retried forever. Wake-ups come from the outbox
//! ([`Relay::with_wake`]), from a [`WakeSource`] such as database notifications, and
//! from polling as the fallback.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::middleware::RetryPolicy;
use crate::proto::{TransportMessage, TransportMessageBatch};
use crate::{Error, IdFactory, KsuidFactory, Message, Result, Writer};

/// A batch as the outbox stores it: its id and the encoded messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Batch id (a KSUID in the Go-compatible format).
    pub id: String,
    /// Protocol Buffers `TransportMessageBatch`.
    pub raw: Bytes,
}

/// Where outbox batches wait to be relayed.
#[async_trait]
pub trait OutboxStore: Send + Sync + fmt::Debug {
    /// Claims up to `limit` pending batches in insert order. Claimed batches are not
    /// handed to another relay until deleted, quarantined or released.
    ///
    /// # Errors
    ///
    /// A storage failure.
    async fn fetch(&self, limit: usize) -> Result<Vec<StoredBatch>>;

    /// Deletes batches the destination accepted.
    ///
    /// # Errors
    ///
    /// A storage failure; the batches are then relayed again (at least once).
    async fn delete(&self, batch_ids: &[String]) -> Result<()>;

    /// Moves a batch out of the way, keeping it with the reason.
    ///
    /// # Errors
    ///
    /// A storage failure.
    async fn quarantine(&self, batch_id: &str, reason: &str) -> Result<()>;

    /// Gives claimed batches back without relaying them, so they are fetched again.
    ///
    /// # Errors
    ///
    /// A storage failure.
    async fn release(&self, batch_ids: &[String]) -> Result<()> {
        let _ = batch_ids;
        Ok(())
    }
}

/// Encodes messages as a `TransportMessageBatch`, the outbox row format.
///
/// ```
/// use streams_core::{decode_batch, encode_batch, Message};
///
/// let batch = vec![Message::new("payments", "{}").with_key("acct-1")];
/// let raw = encode_batch(&batch);
/// assert_eq!(decode_batch(&raw).unwrap()[0].key.as_deref(), Some("acct-1"));
/// ```
pub fn encode_batch(messages: &[Message]) -> Bytes {
    let batch = TransportMessageBatch {
        messages: messages
            .iter()
            .map(|m| TransportMessage {
                message_id: m.id.clone(),
                stream_name: m.stream.clone(),
                stream_key: m.key.clone().unwrap_or_default(),
                // A message that was read keeps its reader metadata, as headers.
                headers: {
                    let mut h = m.headers.clone();
                    for (k, v) in m.metadata.iter() {
                        h.entry(k.to_owned()).or_insert_with(|| v.to_owned());
                    }
                    h
                },
                content_type: m.content_type.clone(),
                data: m.data.clone(),
                time: Some(prost_types::Timestamp {
                    seconds: m.time.timestamp(),
                    nanos: m.time.timestamp_subsec_nanos() as i32,
                }),
            })
            .collect(),
    };
    Bytes::from(batch.encode_to_vec())
}

/// Decodes a `TransportMessageBatch`.
///
/// # Errors
///
/// [`Error::Decode`] when the bytes are not a valid batch or a timestamp is out of
/// range.
pub fn decode_batch(raw: &[u8]) -> Result<Vec<Message>> {
    let decode_err = |e: crate::BoxError| Error::Decode {
        content_type: crate::CONTENT_TYPE_PROTOBUF.into(),
        source: e,
    };
    let batch = TransportMessageBatch::decode(raw).map_err(|e| decode_err(e.into()))?;
    batch
        .messages
        .into_iter()
        .map(|m| {
            let time = match m.time {
                Some(ts) => {
                    timestamp(ts).ok_or_else(|| decode_err("timestamp out of range".into()))?
                }
                None => DateTime::<Utc>::UNIX_EPOCH,
            };
            Ok(Message {
                id: m.message_id,
                stream: m.stream_name,
                key: (!m.stream_key.is_empty()).then_some(m.stream_key),
                headers: m.headers,
                metadata: crate::Metadata::new(),
                content_type: m.content_type,
                data: m.data,
                time,
            })
        })
        .collect()
}

fn timestamp(ts: prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    Utc.timestamp_opt(ts.seconds, nanos).single()
}

/// What one relay pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Batches fetched from storage.
    pub fetched: usize,
    /// Batches written to the destination and deleted.
    pub relayed: usize,
    /// Messages in the relayed batches.
    pub messages: usize,
    /// Batches quarantined.
    pub quarantined: usize,
}

/// Something that wakes a [`Relay`] when batches are committed, such as PostgreSQL
/// notifications; the relay runs it beside its loop and stops it with the loop.
#[async_trait]
pub trait WakeSource: Send + Sync + fmt::Debug {
    /// Calls `wake.notify_one()` whenever new batches may be waiting, until `cancel`
    /// fires. Failures are the source's own to log and retry: the relay still polls.
    async fn run(&self, wake: Arc<Notify>, cancel: CancellationToken);
}

/// Relays stored batches to a destination writer: the outbox's one relay.
///
/// Batches go out in the order storage returns them. When the destination keeps
/// failing, the pass stops at that batch and leaves it (and the ones after it) for the
/// next pass, so order per stream key is preserved.
///
/// ```
/// # async fn demo() -> streams_core::Result<()> {
/// use std::sync::Arc;
/// use streams_core::outbox::{MemoryOutbox, Relay};
/// use streams_core::{CancellationToken, Message, Writer};
///
/// let outbox = Arc::new(MemoryOutbox::new());
/// let destination = Arc::new(MemoryOutbox::new()); // any Writer: Kafka, SQS, ...
/// outbox.write(vec![Message::new("payments", "{}")]).await?;
/// let relay = Relay::new(outbox.clone(), destination.clone()).with_wake(outbox.wake());
/// let report = relay.relay_once().await?;
/// assert_eq!((report.relayed, destination.pending()), (1, 1));
/// let cancel = CancellationToken::new();
/// let running = relay.spawn(cancel.clone());
/// cancel.cancel();
/// running.await.expect("relay task")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Relay {
    storage: Arc<dyn OutboxStore>,
    writer: Arc<dyn Writer>,
    fetch_limit: usize,
    max_write_messages: usize,
    retry: RetryPolicy,
    poll_interval: Duration,
    wake: Arc<Notify>,
    wake_sources: Vec<Arc<dyn WakeSource>>,
}

impl Relay {
    /// A relay fetching 100 batches at a time, combining them into writes of up to
    /// 500 messages, retrying destination failures with the default [`RetryPolicy`] and
    /// polling every second when idle.
    pub fn new(storage: Arc<dyn OutboxStore>, writer: Arc<dyn Writer>) -> Self {
        Relay {
            storage,
            writer,
            fetch_limit: 100,
            max_write_messages: 500,
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(1),
            wake: Arc::new(Notify::new()),
            wake_sources: Vec::new(),
        }
    }

    /// Wakes on `wake` instead of the relay's own notifier: give it the outbox's
    /// notifier ([`MemoryOutbox::wake`], or the SQL outbox's `with_wake`) for the
    /// agentless mode, where service and relay share a process.
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// The notifier that wakes this relay.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs `source` beside the relay loop (see [`WakeSource`]).
    pub fn with_wake_source(mut self, source: impl WakeSource + 'static) -> Self {
        self.wake_sources.push(Arc::new(source));
        self
    }

    /// Batches fetched per pass (at least 1).
    pub fn with_fetch_limit(mut self, limit: usize) -> Self {
        self.fetch_limit = limit.max(1);
        self
    }

    /// Messages per destination write (at least 1). Consecutive batches of a pass are
    /// combined, in order, into one write up to this many messages, so an outbox of
    /// one-message rows does not cost a destination round trip per row; a batch larger
    /// than this is written alone. When a combined write fails, the batches are written
    /// one by one (with retries) to find the one at fault, so the others may reach the
    /// destination twice. 1 writes each batch on its own.
    pub fn with_max_write_messages(mut self, messages: usize) -> Self {
        self.max_write_messages = messages.max(1);
        self
    }

    /// How destination writes are retried within a pass.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long [`run`](Self::run) sleeps when storage is empty and nothing wakes it.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Fetches one set of batches and relays them.
    ///
    /// A batch is quarantined only when it is at fault: it does not decode, or the
    /// destination refused its messages for what they are
    /// ([`Error::is_message_fault`]). Any other destination failure (a missing queue or
    /// topic, denied access, an unreachable broker, a closed writer) is a fault of the
    /// destination: the pass stops there, that batch and every later one stay in the
    /// outbox in order, and the error is returned.
    ///
    /// # Errors
    ///
    /// A storage failure, or the destination's error once retries are exhausted (or at
    /// once when it is not retryable); the batches relayed before it are deleted
    /// first, the rest released.
    pub async fn relay_once(&self) -> Result<RelayReport> {
        self.pass().await.map_err(PassError::into_error)
    }

    async fn pass(&self) -> std::result::Result<RelayReport, PassError> {
        let batches = self
            .storage
            .fetch(self.fetch_limit)
            .await
            .map_err(PassError::Storage)?;
        let mut report = RelayReport {
            fetched: batches.len(),
            ..Default::default()
        };
        let mut decoded = Vec::with_capacity(batches.len());
        for stored in batches {
            match decode_batch(&stored.raw) {
                Ok(messages) => decoded.push((stored.id, messages)),
                Err(e) => {
                    tracing::error!(batch = %stored.id, error = %e, "quarantining undecodable outbox batch");
                    self.storage
                        .quarantine(&stored.id, &e.to_string())
                        .await
                        .map_err(PassError::Storage)?;
                    report.quarantined += 1;
                }
            }
        }
        let mut done = Vec::with_capacity(decoded.len());
        let mut failure = None;
        let mut rest = decoded.into_iter().peekable();
        'groups: while let Some(first) = rest.next() {
            // Consecutive batches, in order, up to `max_write_messages` per write.
            let mut total = first.1.len();
            let mut group = vec![first];
            while let Some((_, next)) = rest.peek() {
                if total + next.len() > self.max_write_messages {
                    break;
                }
                total += next.len();
                group.extend(rest.next());
            }
            if group.len() > 1 {
                let all: Vec<Message> = group.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
                match self.writer.write(all).await {
                    Ok(()) => {
                        for (id, messages) in group {
                            report.relayed += 1;
                            report.messages += messages.len();
                            done.push(id);
                        }
                        continue;
                    }
                    // The destination itself refuses: one write per batch would only
                    // fail again, so everything stays in place.
                    Err(e) if !e.is_message_fault() && !e.is_retryable() => {
                        let mut unsent: Vec<String> = group.into_iter().map(|(id, _)| id).collect();
                        unsent.extend(rest.map(|(id, _)| id));
                        failure = Some((unsent, e));
                        break 'groups;
                    }
                    // One write per batch finds the batch at fault; the others may be
                    // delivered twice, as at-least-once allows.
                    Err(e) => tracing::debug!(
                        batches = group.len(), error = %e,
                        "combined outbox write failed; writing batch by batch"
                    ),
                }
            }
            let mut group = group.into_iter();
            while let Some((id, messages)) = group.next() {
                let count = messages.len();
                match self.write_with_retry(messages).await {
                    Ok(()) => {
                        done.push(id);
                        report.relayed += 1;
                        report.messages += count;
                    }
                    Err(e) if e.is_message_fault() => {
                        tracing::error!(batch = %id, error = %e, "destination refused the outbox batch's messages; quarantining it");
                        self.storage
                            .quarantine(&id, &e.to_string())
                            .await
                            .map_err(PassError::Storage)?;
                        report.quarantined += 1;
                    }
                    Err(e) => {
                        let mut unsent = vec![id];
                        unsent.extend(group.map(|(id, _)| id));
                        unsent.extend(rest.map(|(id, _)| id));
                        failure = Some((unsent, e));
                        break 'groups;
                    }
                }
            }
        }
        if !done.is_empty() {
            self.storage
                .delete(&done)
                .await
                .map_err(PassError::Storage)?;
        }
        if let Some((unsent, error)) = failure {
            self.storage
                .release(&unsent)
                .await
                .map_err(PassError::Storage)?;
            return Err(PassError::Destination {
                error,
                left: unsent.len(),
            });
        }
        Ok(report)
    }

    /// Writes one batch, retrying what was not written: after a partial write, only
    /// the first message the destination names and every message after it (so order
    /// holds and nothing written is written again within the pass). When retries run
    /// out, the whole batch stays in the outbox: a stored batch is one row.
    async fn write_with_retry(&self, mut messages: Vec<Message>) -> Result<()> {
        let started = tokio::time::Instant::now();
        let mut attempt = 1;
        loop {
            let err = match self.writer.write(messages.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Error::PartialWrite { failed, .. } = &err {
                if let Some(first) = messages
                    .iter()
                    .position(|m| failed.iter().any(|f| f.id == m.id))
                {
                    messages.drain(..first);
                }
            }
            if !err.is_retryable() || attempt >= self.retry.max_attempts() {
                return Err(err);
            }
            let delay = self.retry.backoff(attempt);
            if let Some(max) = self.retry.max_elapsed() {
                if started.elapsed() + delay > max {
                    return Err(err);
                }
            }
            tracing::warn!(attempt, ?delay, error = %err, "outbox destination failed, retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Relays until `cancel` fires: passes follow each other while storage has full
    /// sets; when it runs dry the relay sleeps until its notifier
    /// ([`with_wake`](Self::with_wake), a [`WakeSource`]) wakes it or the poll interval
    /// passes. Returns once the pass in flight has finished.
    ///
    /// A failed pass is logged at error level and tried again after a backoff that
    /// grows with each failure in a row, capped by the retry policy's maximum backoff
    /// (see [`with_retry`](Self::with_retry)). A destination that keeps refusing (a
    /// missing queue, denied access) is retried the same way, with every batch kept in
    /// the outbox in order, so everything is delivered once it is fixed.
    ///
    /// # Errors
    ///
    /// Fatal failures, which no waiting can mend: the destination writer is closed
    /// ([`Error::Closed`]), or storage fails with an error that is not retryable (a
    /// missing or unusable table, denied access). Batches stay in the outbox.
    pub async fn run(&self, cancel: CancellationToken) -> Result<()> {
        let stop_sources = cancel.child_token();
        let sources: Vec<_> = self
            .wake_sources
            .iter()
            .map(|source| {
                let (source, wake, stop) =
                    (source.clone(), self.wake.clone(), stop_sources.clone());
                tokio::spawn(async move { source.run(wake, stop).await })
            })
            .collect();
        let result = self.relay_loop(&cancel).await;
        stop_sources.cancel();
        for source in sources {
            let _ = source.await;
        }
        result
    }

    /// Runs the relay on a task of its own; see [`run`](Self::run).
    pub fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<Result<()>> {
        tokio::spawn(async move { self.run(cancel).await })
    }

    async fn relay_loop(&self, cancel: &CancellationToken) -> Result<()> {
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let idle = match self.pass().await {
                Ok(report) => {
                    if failures > 0 {
                        tracing::info!(failures, "outbox relay recovered");
                    }
                    failures = 0;
                    if report.relayed + report.quarantined > 0 {
                        tracing::debug!(?report, "outbox pass");
                    }
                    report.fetched < self.fetch_limit
                }
                Err(e) if e.is_fatal() => {
                    let e = e.into_error();
                    tracing::error!(error = %e, "outbox relay stopped");
                    return Err(e);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = self.retry.backoff(failures).max(Duration::from_millis(10));
                    tracing::error!(error = %e, ?delay, failures, "outbox pass failed; trying again");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            if idle {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.poll_interval) => {}
                }
            }
        }
        Ok(())
    }
}

/// Why a pass failed, by side, so that [`Relay::run`] can tell what waiting mends.
#[derive(Debug)]
enum PassError {
    Storage(Error),
    Destination { error: Error, left: usize },
}

impl PassError {
    fn is_fatal(&self) -> bool {
        match self {
            PassError::Storage(e) => !e.is_retryable(),
            PassError::Destination { error, .. } => matches!(error, Error::Closed(_)),
        }
    }

    fn into_error(self) -> Error {
        match self {
            PassError::Storage(e) => e,
            PassError::Destination { error, .. } => error,
        }
    }
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassError::Storage(e) => write!(f, "outbox storage: {e}"),
            PassError::Destination { error, left, .. } => write!(
                f,
                "destination: {error} ({left} outbox batch(es) left in place, in order)"
            ),
        }
    }
}

/// An in-process outbox: [`OutboxStore`] in memory, with a [`Writer`] that stores
/// batches into it and wakes a relay.
///
/// Useful in tests and for the agentless mode where relay and service share a process.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    state: Mutex<OutboxState>,
    wake: Arc<Notify>,
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct OutboxState {
    pending: VecDeque<StoredBatch>,
    claimed: Vec<StoredBatch>,
    quarantined: Vec<(StoredBatch, String)>,
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notified on every stored batch; give it to [`Relay::with_wake`].
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Stores an already encoded batch (for example one written by another program).
    pub fn push_raw(&self, batch: StoredBatch) {
        self.lock().pending.push_back(batch);
        self.wake.notify_one();
    }

    /// Batches waiting or claimed.
    pub fn pending(&self) -> usize {
        let s = self.lock();
        s.pending.len() + s.claimed.len()
    }

    /// Quarantined batches with their reasons.
    pub fn quarantined(&self) -> Vec<(StoredBatch, String)> {
        self.lock().quarantined.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Writer for MemoryOutbox {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed("memory outbox"));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.push_raw(StoredBatch {
            id: KsuidFactory.new_id(),
            raw: encode_batch(&batch),
        });
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

#[async_trait]
impl OutboxStore for MemoryOutbox {
    async fn fetch(&self, limit: usize) -> Result<Vec<StoredBatch>> {
        let mut s = self.lock();
        let n = limit.min(s.pending.len());
        let taken: Vec<_> = s.pending.drain(..n).collect();
        s.claimed.extend(taken.iter().cloned());
        Ok(taken)
    }

    async fn delete(&self, batch_ids: &[String]) -> Result<()> {
        self.lock().claimed.retain(|b| !batch_ids.contains(&b.id));
        Ok(())
    }

    async fn quarantine(&self, batch_id: &str, reason: &str) -> Result<()> {
        let mut s = self.lock();
        if let Some(pos) = s.claimed.iter().position(|b| b.id == batch_id) {
            let b = s.claimed.remove(pos);
            s.quarantined.push((b, reason.to_owned()));
        }
        Ok(())
    }

    async fn release(&self, batch_ids: &[String]) -> Result<()> {
        let mut s = self.lock();
        // Put released batches back at the front, in their original order.
        let mut back: Vec<_> = Vec::new();
        s.claimed.retain(|b| {
            if batch_ids.contains(&b.id) {
                back.push(b.clone());
                false
            } else {
                true
            }
        });
        for b in back.into_iter().rev() {
            s.pending.push_front(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a batch byte by byte from the protobuf wire format, as the Go library's
    /// encoder lays it out, without going through prost.
    fn go_encoded_batch() -> Vec<u8> {
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn field(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
            varint(u64::from(tag << 3 | 2), out);
            varint(payload.len() as u64, out);
            out.extend_from_slice(payload);
        }
        let mut entry = Vec::new();
        field(1, b"tenant", &mut entry);
        field(2, b"acme", &mut entry);
        let mut ts = Vec::new();
        varint(1 << 3, &mut ts);
        varint(1_700_000_000, &mut ts);
        varint(2 << 3, &mut ts);
        varint(123_000_000, &mut ts);
        let mut msg = Vec::new();
        field(1, b"2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R", &mut msg);
        field(2, b"payments.created", &mut msg);
        field(3, b"acct-42", &mut msg);
        field(4, &entry, &mut msg);
        field(5, b"application/json", &mut msg);
        field(6, br#"{"amount":100}"#, &mut msg);
        field(7, &ts, &mut msg);
        let mut batch = Vec::new();
        field(1, &msg, &mut batch);
        batch
    }

    #[test]
    fn decodes_go_library_batch() {
        let msgs = decode_batch(&go_encoded_batch()).unwrap();
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(m.id, "2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R");
        assert_eq!(m.stream, "payments.created");
        assert_eq!(m.key.as_deref(), Some("acct-42"));
        assert_eq!(m.headers["tenant"], "acme");
        assert_eq!(m.content_type, "application/json");
        assert_eq!(&m.data[..], br#"{"amount":100}"#);
        assert_eq!(m.time.timestamp(), 1_700_000_000);
        assert_eq!(m.time.timestamp_subsec_nanos(), 123_000_000);
    }

    #[test]
    fn encodes_byte_identical_to_go_layout() {
        let m = decode_batch(&go_encoded_batch()).unwrap();
        assert_eq!(encode_batch(&m).to_vec(), go_encoded_batch());
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            decode_batch(b"\x0a\xff\xff\xff"),
            Err(Error::Decode { .. })
        ));
        assert!(decode_batch(b"").unwrap().is_empty());
    }
}
