//! `streams dlq redrive`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams::middleware::dead_letter_stream;
use streams::{BoxError, CancellationToken, Connection, Message, Metadata, ReadTask};

use crate::output::{is_dead_letter_header, is_reader_header, JsonMessage, Output};
use crate::run::{read_until, Activity, Failure};

/// The consumer group a redrive reads the dead-letter stream with, where the platform
/// has groups.
pub const REDRIVE_GROUP: &str = "streams-dlq-redrive";

/// What `streams dlq redrive` moves.
#[derive(Debug, Clone)]
pub struct RedriveArgs {
    /// The stream whose dead letters are moved; they are read from `<stream>.dlq`.
    pub stream: String,
    /// Where they go; `stream` by default.
    pub to: Option<String>,
    /// Print what would move, move nothing.
    pub dry_run: bool,
    /// Stop after this many.
    pub count: Option<u64>,
    /// Stop when nothing arrives for this long.
    pub idle: Duration,
    /// Consumer group for the dead-letter stream ([`REDRIVE_GROUP`] by default).
    pub group: Option<String>,
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Messages written back (or, in a dry run, that would be).
    pub moved: u64,
    /// Whether it was a dry run.
    pub dry_run: bool,
}

/// The message as it goes back: the dead-letter headers (`streams-dlq-*`) and the
/// reader's coordinates removed, on `to`; id, key, payload, content type, time and the
/// publisher's headers unchanged, so consumers that deduplicate by id still can.
pub fn restore(mut msg: Message, to: &str) -> Message {
    msg.headers
        .retain(|k, _| !is_dead_letter_header(k) && !is_reader_header(k));
    msg.metadata = Metadata::new();
    msg.stream = to.to_owned();
    msg
}

/// Moves the messages of `<stream>.dlq` back to `stream` (or `to`), printing each as a
/// JSON line. Each is acknowledged on the dead-letter stream only after the write to
/// the destination succeeded, so a failure leaves it where it was.
///
/// A dry run prints the messages and changes nothing: on Kafka and the in-process bus
/// it reads with a throwaway consumer group, elsewhere (SQS) it leaves every message
/// unacknowledged, so each becomes visible again after its redelivery delay and the
/// receive count of the message grows by one.
///
/// # Errors
///
/// A reader failure, or the first write failure (the redrive then stops).
pub async fn redrive(
    conn: &Connection,
    args: RedriveArgs,
    out: Output,
    stop: CancellationToken,
) -> Result<RedriveReport, BoxError> {
    if args.stream.is_empty() {
        return Err("the stream name is empty".into());
    }
    let source = dead_letter_stream(&args.stream);
    let target = args.to.clone().unwrap_or_else(|| args.stream.clone());
    if target == source {
        return Err(format!("refusing to redrive `{source}` into itself").into());
    }
    let reader = conn.reader()?;
    let writer = conn.writer();
    // Where a new group reads the stream from its start, a dry run reads with a group
    // of its own; elsewhere (SQS, and RabbitMQ, whose new group queue holds only what
    // arrives after it) it reads the URL's group and must not acknowledge.
    let per_group = crate::has_groups(conn.platform()) && conn.platform() != "amqp";
    let group = match (&args.group, args.dry_run && per_group) {
        (_, true) => Some(format!(
            "streams-dlq-dry-run-{}",
            uuid::Uuid::now_v7().simple()
        )),
        (Some(g), false) => Some(g.clone()),
        (None, false) if per_group => Some(REDRIVE_GROUP.to_owned()),
        (None, false) => None,
    };
    let mut task = ReadTask::new(&source).with_concurrency(1);
    if let Some(group) = group {
        task = task.with_group(group);
    }

    let moved = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    let done = CancellationToken::new();
    let failure = Failure::new(done.clone());
    let activity = Activity::new();
    let (dry_run, count) = (args.dry_run, args.count);
    let service = {
        let (moved, seen, failure, done, activity) = (
            moved.clone(),
            seen.clone(),
            failure.clone(),
            done.clone(),
            activity.clone(),
        );
        tower::service_fn(move |msg: Message| {
            let (moved, seen, failure, done, activity, out, writer, target) = (
                moved.clone(),
                seen.clone(),
                failure.clone(),
                done.clone(),
                activity.clone(),
                out.clone(),
                writer.clone(),
                target.clone(),
            );
            async move {
                if done.is_cancelled() || count.is_some_and(|c| moved.load(Ordering::SeqCst) >= c) {
                    return Err::<(), BoxError>("stopping; left on the dead-letter stream".into());
                }
                let restored = restore(msg, &target);
                if dry_run {
                    let first = seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(restored.id.clone());
                    if first {
                        print(&out, &restored, &failure)?;
                        activity.touch();
                        let n = moved.fetch_add(1, Ordering::SeqCst) + 1;
                        if count.is_some_and(|c| n >= c) {
                            done.cancel();
                        }
                    }
                    return if per_group {
                        Ok(())
                    } else {
                        Err("dry run: left on the dead-letter stream".into())
                    };
                }
                if let Err(e) = writer.write(vec![restored.clone()]).await {
                    return Err(failure.set(format!("writing to `{target}` failed: {e}")));
                }
                // Written: printing is a report, its failure must not undo the move.
                let _ = print(&out, &restored, &failure);
                activity.touch();
                let n = moved.fetch_add(1, Ordering::SeqCst) + 1;
                if count.is_some_and(|c| n >= c) {
                    done.cancel();
                }
                Ok(())
            }
        })
    };
    let ended = read_until(
        reader,
        task,
        service,
        done,
        stop,
        Some((args.idle, activity)),
        None,
    )
    .await?;
    tracing::debug!(?ended, "redrive ended");
    if let Some(reason) = failure.take() {
        return Err(format!(
            "{reason} ({} message(s) moved before this)",
            moved.load(Ordering::SeqCst)
        )
        .into());
    }
    Ok(RedriveReport {
        moved: moved.load(Ordering::SeqCst),
        dry_run,
    })
}

fn print(out: &Output, msg: &Message, failure: &Failure) -> Result<(), BoxError> {
    out.line(&JsonMessage::from_message(msg).to_line())
        .map_err(|e| failure.set(format!("cannot print: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_strips_dead_letter_and_reader_headers() {
        let msg = Message::new("orders.dlq", "x")
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header("streams-dlq-reason", "boom")
            .with_header("streams-dlq-source-stream", "orders")
            .with_header("streams-kafka-current-offset", "4")
            .with_header("sqs-message-receipt-handle", "r");
        let id = msg.id.clone();
        let back = restore(msg, "orders");
        assert_eq!(back.stream, "orders");
        assert_eq!(back.id, id);
        assert_eq!(back.key.as_deref(), Some("k"));
        assert_eq!(back.headers.keys().collect::<Vec<_>>(), ["tenant"]);
    }
}
