//! `streams consume`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streams::{BoxError, CancellationToken, Connection, Message, ReadTask};

use crate::output::{JsonMessage, Output};
use crate::run::{read_until, Activity, Failure};

/// What `streams consume` reads.
#[derive(Debug, Clone, Default)]
pub struct ConsumeArgs {
    /// The stream.
    pub stream: String,
    /// Consumer group (Kafka, in-process bus); the URL's `group` otherwise.
    pub group: Option<String>,
    /// Read one partition (Kafka) instead of joining a group.
    pub partition: Option<i32>,
    /// With `partition`: the first offset.
    pub offset: Option<i64>,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop when nothing arrives for this long.
    pub idle: Option<Duration>,
    /// Handlers at once; above 1, lines may come out of order.
    pub concurrency: usize,
}

/// Prints each message of the stream as a JSON line ([`JsonMessage`]) and
/// acknowledges it once printed; returns how many were printed.
///
/// With `count`, messages beyond it are not acknowledged, so the platform delivers
/// them again to the next reader (the in-process bus keeps nothing).
///
/// # Errors
///
/// A reader failure, or the output failing (a closed pipe); the message being printed
/// is then not acknowledged.
pub async fn consume(
    conn: &Connection,
    args: ConsumeArgs,
    out: Output,
    stop: CancellationToken,
) -> Result<u64, BoxError> {
    let reader = conn.reader()?;
    let mut task = ReadTask::new(&args.stream).with_concurrency(args.concurrency.max(1));
    if let Some(group) = &args.group {
        task = task.with_group(group);
    }
    if let Some(p) = args.partition {
        task = task.with_partition(p);
    }
    if let Some(o) = args.offset {
        task = task.with_start_offset(o);
    }
    let printed = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();
    let failure = Failure::new(done.clone());
    let activity = Activity::new();
    let service = {
        let (printed, failure, done, activity, count) = (
            printed.clone(),
            failure.clone(),
            done.clone(),
            activity.clone(),
            args.count,
        );
        tower::service_fn(move |msg: Message| {
            let (printed, failure, done, activity, out) = (
                printed.clone(),
                failure.clone(),
                done.clone(),
                activity.clone(),
                out.clone(),
            );
            async move {
                if done.is_cancelled() {
                    return Err::<(), BoxError>("stopping; left for the next reader".into());
                }
                // Reserve a slot first, so concurrent handlers never print more than
                // `count`.
                let n = printed.fetch_add(1, Ordering::SeqCst) + 1;
                if count.is_some_and(|max| n > max) {
                    printed.fetch_sub(1, Ordering::SeqCst);
                    return Err("count reached; left for the next reader".into());
                }
                if let Err(e) = out.line(&JsonMessage::from_message(&msg).to_line()) {
                    printed.fetch_sub(1, Ordering::SeqCst);
                    return Err(failure.set(format!("cannot print: {e}")));
                }
                activity.touch();
                if count.is_some_and(|max| n >= max) {
                    done.cancel();
                }
                Ok(())
            }
        })
    };
    read_until(
        reader,
        task,
        service,
        done,
        stop,
        args.idle.map(|d| (d, activity)),
        None,
    )
    .await?;
    if let Some(reason) = failure.take() {
        return Err(reason.into());
    }
    Ok(printed.load(Ordering::SeqCst))
}
