//! Writes with the batch calls of SQS (`SendMessageBatch`) and SNS (`PublishBatch`),
//! which take the same limits and answer alike.

use std::future::Future;

use futures::StreamExt;
use streams_core::{Error, FailedMessage, Message, Result};

use crate::wire::Encoded;

/// A message with its wire form.
pub type EncodedMessage = (Message, Encoded);

/// Encodes a batch and groups it by stream, streams and messages in batch order. Every
/// message is encoded and checked against `max_message_bytes` here, before any call, so
/// a batch holding an oversized message sends nothing at all.
///
/// `form` names the wire form in the error, such as `SQS form (body and attributes)`.
///
/// # Errors
///
/// [`Error::Rejected`] naming every message over `max_message_bytes` in wire form, with
/// its exact size and the limit.
pub fn encode_by_stream(
    batch: Vec<Message>,
    encode: impl Fn(&Message) -> Encoded,
    max_message_bytes: usize,
    form: &str,
) -> Result<Vec<(String, Vec<EncodedMessage>)>> {
    let mut streams: Vec<(String, Vec<EncodedMessage>)> = Vec::new();
    let mut oversized = Vec::new();
    for msg in batch {
        let enc = encode(&msg);
        if enc.size > max_message_bytes {
            oversized.push(FailedMessage {
                reason: format!(
                    "{} bytes in {form}; the limit is {max_message_bytes}",
                    enc.size
                ),
                id: msg.id,
            });
            continue;
        }
        match streams.iter_mut().find(|(s, _)| *s == msg.stream) {
            Some((_, list)) => list.push((msg, enc)),
            None => streams.push((msg.stream.clone(), vec![(msg, enc)])),
        }
    }
    if !oversized.is_empty() {
        return Err(Error::Rejected { failed: oversized });
    }
    Ok(streams)
}

/// Splits `items`, in order, into runs of at most `max_entries` items whose sizes (by
/// `size`) add up to at most `max_bytes`. An item over `max_bytes` makes a run of its
/// own.
///
/// ```
/// let runs = streams_aws::split_batch(vec![4, 4, 4, 1, 9, 2], 2, 8, |n| *n);
/// assert_eq!(runs, vec![vec![4, 4], vec![4, 1], vec![9], vec![2]]);
/// ```
pub fn split_batch<T>(
    items: Vec<T>,
    max_entries: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let item_bytes = size(&item);
        if !current.is_empty() && (current.len() == max_entries || bytes + item_bytes > max_bytes) {
            runs.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += item_bytes;
        current.push(item);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// One batch call: messages of one stream for one queue or topic, no more than the call
/// takes. The id of an entry in the call is its index in [`entries`](Self::entries),
/// which [`RequestOutcome::answered`] maps back to the message.
#[derive(Debug)]
pub struct BatchRequest {
    destination: String,
    fifo: bool,
    entries: Vec<EncodedMessage>,
}

impl BatchRequest {
    /// The queue URL or topic ARN.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Whether the queue or topic is FIFO: entries then need a group id (see
    /// [`message_group_id`](crate::message_group_id)) and a deduplication id.
    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// The messages with their wire forms.
    pub fn entries(&self) -> &[EncodedMessage] {
        &self.entries
    }
}

/// An entry a batch call refused, as the SQS and SNS answers describe it.
#[derive(Debug, Clone, Copy)]
pub struct EntryFailure<'a> {
    /// The entry id: its index in the request.
    pub id: &'a str,
    /// The error code.
    pub code: &'a str,
    /// The error message, when there is one.
    pub message: Option<&'a str>,
    /// Whether the entry itself is at fault (sending it again will not help).
    pub sender_fault: bool,
}

/// What a batch call left undelivered.
#[derive(Debug)]
pub struct RequestOutcome {
    failed: Vec<FailedMessage>,
    retryable: bool,
    call_error: Option<Error>,
}

impl RequestOutcome {
    /// The call failed as a whole: every message of the request failed with `err`.
    pub fn call_failed(request: &BatchRequest, err: Error) -> Self {
        Self::all_failed(&request.entries, err)
    }

    /// The service answered, refusing the entries in `failures` (none: all delivered).
    /// The failures are retryable unless an entry was at fault.
    pub fn answered<'a>(
        request: &BatchRequest,
        failures: impl IntoIterator<Item = EntryFailure<'a>>,
    ) -> Self {
        let mut retryable = true;
        let failed = failures
            .into_iter()
            .map(|f| {
                retryable &= !f.sender_fault;
                let id =
                    f.id.parse::<usize>()
                        .ok()
                        .and_then(|i| request.entries.get(i))
                        .map(|(m, _)| m.id.clone())
                        .unwrap_or_else(|| f.id.to_owned());
                FailedMessage {
                    id,
                    reason: format!("{}: {}", f.code, f.message.unwrap_or("no message")),
                }
            })
            .collect();
        RequestOutcome {
            failed,
            retryable,
            call_error: None,
        }
    }

    fn all_failed(entries: &[EncodedMessage], err: Error) -> Self {
        RequestOutcome {
            failed: entries
                .iter()
                .map(|(m, _)| FailedMessage {
                    id: m.id.clone(),
                    reason: err.to_string(),
                })
                .collect(),
            retryable: err.is_retryable(),
            call_error: Some(err),
        }
    }

    fn delivered(&self) -> bool {
        self.failed.is_empty() && self.call_error.is_none()
    }
}

/// One write with batch calls: planned first (messages split into calls by entry count
/// and request size), then [sent](Self::send). Calls for standard queues or topics go out
/// concurrently; those for a FIFO one go one after another, so order per group holds.
#[derive(Debug)]
pub struct BatchWrite {
    kind: &'static str,
    max_entries: usize,
    max_bytes: usize,
    standard: Vec<BatchRequest>,
    fifo: Vec<Vec<BatchRequest>>,
    report: Report,
}

impl BatchWrite {
    /// A write whose calls take at most `max_entries` entries and `max_bytes` bytes;
    /// `kind` names its destinations in failure reasons (`queue`, `topic`).
    pub fn new(kind: &'static str, max_entries: usize, max_bytes: usize) -> Self {
        BatchWrite {
            kind,
            max_entries,
            max_bytes,
            standard: Vec::new(),
            fifo: Vec::new(),
            report: Report::default(),
        }
    }

    /// Adds one stream's messages for `destination`, split into calls.
    pub fn add(&mut self, destination: &str, fifo: bool, messages: Vec<EncodedMessage>) {
        let requests = split_batch(messages, self.max_entries, self.max_bytes, |(_, e)| e.size)
            .into_iter()
            .map(|entries| BatchRequest {
                destination: destination.to_owned(),
                fifo,
                entries,
            });
        if fifo {
            self.fifo.push(requests.collect());
        } else {
            self.standard.extend(requests);
        }
    }

    /// Fails one stream's messages without a call, with the error that keeps them from
    /// being sent (such as a failed queue lookup).
    pub fn fail(&mut self, messages: Vec<EncodedMessage>, err: Error) {
        let size = messages.len();
        self.report
            .record(RequestOutcome::all_failed(&messages, err), size);
    }

    /// Makes the calls with `send`, at most `max_in_flight` at once. A FIFO
    /// destination's calls stop at the first that fails: its later messages fail as not
    /// sent, since they would overtake the failed ones.
    ///
    /// # Errors
    ///
    /// When nothing was delivered because calls failed (or were failed with
    /// [`fail`](Self::fail)) all with the same error, that error; otherwise, when any message failed,
    /// [`Error::PartialWrite`] with each, retryable when every failure is.
    pub async fn send<F, Fut>(self, max_in_flight: usize, send: F) -> Result<()>
    where
        F: Fn(BatchRequest) -> Fut,
        Fut: Future<Output = RequestOutcome>,
    {
        let BatchWrite {
            kind,
            standard,
            fifo,
            mut report,
            ..
        } = self;
        let mut outcomes = futures::stream::iter(standard)
            .map(|request| {
                let size = request.entries.len();
                let outcome = send(request);
                async move { (outcome.await, size) }
            })
            .buffer_unordered(max_in_flight);
        while let Some((outcome, size)) = outcomes.next().await {
            report.record(outcome, size);
        }
        drop(outcomes);
        for requests in fifo {
            let mut requests = requests.into_iter();
            while let Some(request) = requests.next() {
                let size = request.entries.len();
                let outcome = send(request).await;
                let stop = !outcome.delivered();
                report.record(outcome, size);
                if stop {
                    let reason =
                        format!("not sent: an earlier request for this FIFO {kind} failed");
                    let failed = requests
                        .by_ref()
                        .flat_map(|r| r.entries)
                        .map(|(m, _)| FailedMessage {
                            id: m.id,
                            reason: reason.clone(),
                        })
                        .collect();
                    let not_sent = RequestOutcome {
                        failed,
                        retryable: true,
                        call_error: None,
                    };
                    report.record(not_sent, 0);
                    break;
                }
            }
        }
        report.into_result()
    }
}

/// What a write's calls left undelivered.
#[derive(Debug)]
struct Report {
    failed: Vec<FailedMessage>,
    retryable: bool,
    call_errors: Vec<Error>,
    delivered: usize,
    entry_failures: bool,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            failed: Vec::new(),
            retryable: true,
            call_errors: Vec::new(),
            delivered: 0,
            entry_failures: false,
        }
    }
}

impl Report {
    /// Records the outcome of a call of `size` messages (0 for messages not sent).
    fn record(&mut self, outcome: RequestOutcome, size: usize) {
        let delivered = outcome.delivered();
        let RequestOutcome {
            failed,
            retryable,
            call_error,
        } = outcome;
        self.delivered += size.saturating_sub(failed.len());
        if delivered {
            return;
        }
        self.entry_failures |= call_error.is_none() && size > 0;
        self.retryable &= retryable;
        self.failed.extend(failed);
        self.call_errors.extend(call_error);
    }

    fn into_result(mut self) -> Result<()> {
        if self.failed.is_empty() {
            return Ok(());
        }
        // Nothing was written because calls failed, all alike (a missing queue, an
        // unreachable endpoint): that one error says it all, in one line, rather than a
        // list repeating it for every message.
        if self.delivered == 0 && !self.entry_failures && !self.call_errors.is_empty() {
            let first = self.call_errors[0].to_string();
            if self.call_errors.iter().all(|e| e.to_string() == first) {
                return Err(self.call_errors.remove(0));
            }
        }
        Err(Error::PartialWrite {
            failed: self.failed,
            retryable: self.retryable,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::executor::block_on;

    use super::*;
    use crate::wire::{encode, TimeFormat};

    fn encoded(msgs: Vec<Message>) -> Vec<EncodedMessage> {
        msgs.into_iter()
            .map(|m| {
                let e = encode(&m, TimeFormat::UnixMillis);
                (m, e)
            })
            .collect()
    }

    fn ids(failed: &[FailedMessage]) -> Vec<&str> {
        failed.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn splits_by_count_and_size() {
        let msgs = encoded((0..25).map(|i| Message::new("s", format!("{i}"))).collect());
        let runs = split_batch(msgs, 10, 262_144, |(_, e)| e.size);
        let sizes: Vec<_> = runs.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);

        let big = encoded(
            (0..5)
                .map(|_| Message::new("s", "x".repeat(100_000)))
                .collect(),
        );
        let runs = split_batch(big, 10, 262_144, |(_, e)| e.size);
        assert_eq!(runs.len(), 3);
        for run in &runs {
            assert!(run.iter().map(|(_, e)| e.size).sum::<usize>() <= 262_144);
        }
    }

    #[test]
    fn groups_by_stream_in_order_and_refuses_oversized() {
        let batch = vec![
            Message::new("a", "1"),
            Message::new("b", "2"),
            Message::new("a", "3"),
        ];
        let encode = |m: &Message| encode(m, TimeFormat::UnixMillis);
        let streams = encode_by_stream(batch, encode, 1000, "test form").unwrap();
        let layout: Vec<(&str, usize)> =
            streams.iter().map(|(s, l)| (s.as_str(), l.len())).collect();
        assert_eq!(layout, vec![("a", 2), ("b", 1)]);
        assert_eq!(streams[0].1[1].0.data.as_ref(), b"3");

        let ok = Message::new("a", "ok");
        let big = Message::new("a", "x".repeat(2000));
        let size = encode(&big).size;
        let err =
            encode_by_stream(vec![ok, big.clone()], encode, size - 1, "test form").unwrap_err();
        match &err {
            Error::Rejected { failed } => {
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].id, big.id);
                assert_eq!(
                    failed[0].reason,
                    format!("{size} bytes in test form; the limit is {}", size - 1)
                );
            }
            other => panic!("want Rejected, got {other:?}"),
        }
        assert!(err.is_message_fault() && !err.is_retryable());
        // Exactly at the limit is fine.
        encode_by_stream(vec![big], encode, size, "test form").unwrap();
    }

    /// Sends a plan, failing the calls whose first message id is in `fail_calls` and the
    /// entries whose message id is in `refuse`; returns the result and the calls made.
    fn run(
        write: BatchWrite,
        fail_calls: &[&str],
        refuse: &[&str],
    ) -> (Result<()>, Vec<Vec<String>>) {
        let calls = Mutex::new(Vec::new());
        let result = block_on(write.send(4, |request| {
            let ids: Vec<String> = request
                .entries()
                .iter()
                .map(|(m, _)| m.id.clone())
                .collect();
            calls.lock().unwrap().push(ids.clone());
            let outcome = if fail_calls.contains(&ids[0].as_str()) {
                let err = Error::driver("test", "Send", true, "unavailable");
                RequestOutcome::call_failed(&request, err)
            } else {
                let indexes: Vec<String> = ids
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| refuse.contains(&id.as_str()))
                    .map(|(i, _)| i.to_string())
                    .collect();
                RequestOutcome::answered(
                    &request,
                    indexes.iter().map(|i| EntryFailure {
                        id: i,
                        code: "Refused",
                        message: None,
                        sender_fault: true,
                    }),
                )
            };
            async move { outcome }
        }));
        (result, calls.into_inner().unwrap())
    }

    fn messages(stream: &str, n: usize) -> Vec<EncodedMessage> {
        encoded(
            (0..n)
                .map(|i| Message::new(stream, "x").with_id(format!("{stream}-{i}")))
                .collect(),
        )
    }

    #[test]
    fn all_delivered_is_ok() {
        let mut write = BatchWrite::new("queue", 10, 262_144);
        write.add("q", false, messages("s", 25));
        let (result, calls) = run(write, &[], &[]);
        result.unwrap();
        assert_eq!(calls.len(), 3);
    }

    #[test]
    fn failed_calls_that_delivered_nothing_are_their_error() {
        let mut write = BatchWrite::new("queue", 10, 262_144);
        write.add("q", false, messages("s", 3));
        let (result, _) = run(write, &["s-0"], &[]);
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Driver { .. }), "{err}");
        assert!(err.is_retryable());

        // Every call failed alike (25 messages, 3 calls, one missing queue): one error.
        let mut write = BatchWrite::new("queue", 10, 262_144);
        write.add("q", false, messages("s", 25));
        let (result, calls) = run(write, &["s-0", "s-10", "s-20"], &[]);
        assert_eq!(calls.len(), 3);
        let err = result.unwrap_err();
        assert_eq!(err.to_string(), "test: Send failed: unavailable");

        let mut write = BatchWrite::new("queue", 10, 262_144);
        write.fail(messages("s", 2), Error::invalid("queue", "no such queue"));
        let (result, calls) = run(write, &[], &[]);
        assert!(matches!(result, Err(Error::Invalid { .. })));
        assert!(calls.is_empty());
    }

    #[test]
    fn refused_entries_are_a_partial_write_with_message_ids() {
        let mut write = BatchWrite::new("topic", 10, 262_144);
        write.add("t", false, messages("s", 12));
        let (result, _) = run(write, &[], &["s-11"]);
        match result {
            Err(Error::PartialWrite { failed, retryable }) => {
                assert_eq!(ids(&failed), vec!["s-11"]);
                assert_eq!(failed[0].reason, "Refused: no message");
                assert!(!retryable);
            }
            other => panic!("{other:?}"),
        }
        // Entries refused in the only call: still a partial write, not a call error.
        let mut write = BatchWrite::new("topic", 10, 262_144);
        write.add("t", false, messages("s", 1));
        let (result, _) = run(write, &[], &["s-0"]);
        assert!(matches!(result, Err(Error::PartialWrite { .. })));
    }

    #[test]
    fn fifo_stops_at_the_first_failed_call() {
        let mut write = BatchWrite::new("queue", 10, 262_144);
        write.add("f.fifo", true, messages("f", 30));
        write.add("q", false, messages("s", 5));
        let (result, calls) = run(write, &["f-10"], &[]);
        // Standard calls first, then the FIFO ones in order until the failure.
        let firsts: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
        assert_eq!(firsts, vec!["s-0", "f-0", "f-10"]);
        match result {
            Err(Error::PartialWrite { failed, retryable }) => {
                assert_eq!(failed.len(), 20);
                assert!(retryable);
                assert_eq!(
                    failed[19].reason,
                    "not sent: an earlier request for this FIFO queue failed"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
