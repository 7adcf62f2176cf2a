//! Reading streams with consumer groups.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use streams_core::{
    call_handler, retry_after, CancellationToken, Error, Handler, Message, ReadTask, Reader,
    Result, Subscription, DELIVERY_ATTEMPT,
};
use tokio::sync::mpsc;

use crate::error::redis_error;
use crate::reply::{self, Entry};
use crate::{wire, RedisClient};

/// Reads Redis streams; implements [`Reader`].
///
/// With a consumer group (`ReadTask::group`) the reader joins the group with
/// `XREADGROUP` under a consumer name of its own, creating the group on first use at
/// the start of the stream (`XGROUP CREATE ... 0 MKSTREAM`): every group receives every
/// entry, and the members of a group share them. An entry is acknowledged (`XACK`)
/// after its handler succeeded. One whose handler failed, or whose member died, stays
/// pending and is claimed (`XAUTOCLAIM`) by a member of the group once it has been idle
/// for [`RedisConfig::with_claim_idle`](crate::RedisConfig::with_claim_idle) (30 s);
/// a handler running longer keeps its entry by claiming it again meanwhile. Handlers see
/// `streams-redis-delivered` (1 the first time, also
/// [`Message::delivery_attempt`](streams_core::Message::delivery_attempt) in a group) and
/// `streams-redis-entry-id`.
///
/// A handler error that asks for a delay ([`RetryAfter`](streams_core::RetryAfter))
/// leaves the entry pending and records its due time in a sorted set next to the stream,
/// `streams-delayed:{group}:{stream}` (score: Unix milliseconds). Members look at it at
/// least once a second, and the member that delayed an entry wakes for its due time:
/// the first member to take a due entry off the set claims it and handles it, so it
/// comes back after the delay, about a second late at most, to any member of the group,
/// also after every reader was restarted. Until then no member handles it: one that
/// claims it as idle sees it is not due, puts it back and leaves it alone. Without a
/// group nothing is redelivered, so a delay is only logged.
///
/// Without a group the reader reads with `XREAD` from the argument `start`: `$` (the
/// default, what is appended after [`subscribe`](Reader::subscribe)), `0` (the whole
/// stream) or an entry id; nothing is acknowledged or redelivered.
///
/// Handler calls run `concurrency` at once (the task's, else
/// [`RedisConfig::with_concurrency`](crate::RedisConfig::with_concurrency)) on lanes by
/// key: entries with the same key are handled one at a time, in order, by this member.
///
/// # On a bad day
///
/// - A lost connection is made again in the background; reads resume, and entries read
///   but not acknowledged before the loss are claimed after the idle time.
/// - On cancellation entries already read but not started are released at once (their
///   idle time set past the claim time), so another member takes them without waiting.
/// - A key holding something other than a stream fails `subscribe`, not retryable.
#[derive(Debug, Clone)]
pub struct RedisReader {
    client: RedisClient,
}

impl RedisReader {
    /// A reader on `client`'s connection (each run opens one more for its blocking
    /// reads).
    pub fn new(client: RedisClient) -> Self {
        RedisReader { client }
    }
}

/// Where a run reads from.
enum Source {
    Group { group: String, consumer: String },
    Plain { after: String },
}

#[async_trait]
impl Reader for RedisReader {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        if task.stream.is_empty() {
            return Err(Error::invalid("read task", "stream is empty"));
        }
        task.refuse_partitions("Redis Streams")?;
        let mut conn = self.client.conn.clone();
        let source = match &task.group {
            Some(g) if g.is_empty() => {
                return Err(Error::invalid("read task", "the consumer group is empty"))
            }
            Some(group) => {
                task.refuse_args("Redis Streams with a consumer group", &[])?;
                let created: redis::RedisResult<redis::Value> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(task.stream.as_bytes())
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return Err(redis_error("XGROUP CREATE", &task.stream, &e)),
                }
                Source::Group {
                    group: group.clone(),
                    consumer: format!("streams-{}", uuid::Uuid::new_v4().simple()),
                }
            }
            None => {
                task.refuse_args("Redis Streams", &["start"])?;
                let after = match task.args.get("start").map(String::as_str) {
                    None | Some("$") => last_id(&mut conn, &task.stream).await?,
                    Some("0") => "0-0".to_owned(),
                    Some(id) if is_entry_id(id) => id.to_owned(),
                    Some(other) => {
                        return Err(Error::invalid(
                            "read task",
                            format!("argument `start` is `$`, `0` or an entry id such as `1700000000000-0`, not `{other}`"),
                        ))
                    }
                };
                Source::Plain { after }
            }
        };
        let reads = self.client.dedicated(self.client.config.block).await?;
        tracing::info!(stream = %task.stream, group = ?task.group, "redis reader attached");
        let client = self.client.clone();
        Ok(Subscription::new(
            task.stream.clone(),
            move |handler, cancel| run(client, reads, source, task, handler, cancel),
        ))
    }
}

fn is_entry_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let ms = parts.next().unwrap_or_default();
    let seq = parts.next().unwrap_or("0");
    !ms.is_empty()
        && ms.bytes().all(|b| b.is_ascii_digit())
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// The id of the last entry of `stream`, `0-0` when it has none.
async fn last_id(conn: &mut ConnectionManager, stream: &str) -> Result<String> {
    let last: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream.as_bytes())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| redis_error("XREVRANGE", stream, &e))?;
    Ok(reply::entries(last)
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .unwrap_or_else(|| "0-0".to_owned()))
}

/// What a lane needs to handle and settle an entry.
struct Ctx {
    client: RedisClient,
    stream: String,
    /// Group and consumer, when reading in a group.
    group: Option<(String, String)>,
    acks: mpsc::UnboundedSender<String>,
    /// The earliest due time of an entry this member delayed, for the read loop to wake
    /// for; the set in Redis is the record.
    next_due: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// How often a member looks for due entries that other members delayed.
const DELAYED_CHECK: Duration = Duration::from_secs(1);

/// The sorted set holding the due times of a group's delayed entries.
fn delayed_key(stream: &str, group: &str) -> String {
    format!("streams-delayed:{group}:{stream}")
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn run(
    client: RedisClient,
    mut reads: ConnectionManager,
    mut source: Source,
    task: ReadTask,
    handler: Handler,
    cancel: CancellationToken,
) -> Result<()> {
    let lanes = task.concurrency.unwrap_or(client.config.concurrency).max(1);
    let (acks, ack_rx) = mpsc::unbounded_channel();
    let group = match &source {
        Source::Group { group, consumer } => Some((group.clone(), consumer.clone())),
        Source::Plain { .. } => None,
    };
    let acker = tokio::spawn(ack_loop(
        client.clone(),
        task.stream.clone(),
        group.clone(),
        ack_rx,
    ));
    let ctx = std::sync::Arc::new(Ctx {
        client: client.clone(),
        stream: task.stream.clone(),
        group,
        acks,
        next_due: std::sync::Mutex::new(None),
    });
    let stop = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    let mut dispatch = if lanes == 1 {
        Dispatch::Inline(handler)
    } else {
        let mut senders = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel::<(Entry, u64)>(1);
            senders.push(tx);
            workers.spawn(lane(ctx.clone(), rx, handler.clone(), stop.clone()));
        }
        Dispatch::Lanes(senders, 0)
    };
    let result = read_loop(&ctx, &mut reads, &mut source, &mut dispatch, &cancel).await;
    stop.cancel();
    drop(dispatch);
    while workers.join_next().await.is_some() {}
    let consumer = ctx.group.clone();
    drop(ctx);
    let _ = acker.await;
    if let Some((group, consumer)) = consumer {
        forget_consumer(&client, &task.stream, &group, &consumer).await;
    }
    tracing::info!(stream = %task.stream, group = ?task.group, "redis reader stopped");
    result
}

enum Dispatch {
    Inline(Handler),
    Lanes(Vec<mpsc::Sender<(Entry, u64)>>, usize),
}

async fn read_loop(
    ctx: &Ctx,
    reads: &mut ConnectionManager,
    source: &mut Source,
    dispatch: &mut Dispatch,
    cancel: &CancellationToken,
) -> Result<()> {
    let config = &ctx.client.config;
    let mut failures = 0u32;
    let mut next_claim = tokio::time::Instant::now();
    let mut next_delayed = tokio::time::Instant::now();
    while !cancel.is_cancelled() {
        let now = tokio::time::Instant::now();
        let own_due = *ctx.next_due.lock().unwrap_or_else(|e| e.into_inner());
        if let (Source::Group { group, consumer }, true) = (
            &*source,
            now >= next_delayed || own_due.is_some_and(|d| d <= now),
        ) {
            next_delayed = now + DELAYED_CHECK;
            *ctx.next_due.lock().unwrap_or_else(|e| e.into_inner()) = None;
            match take_due(ctx, group, consumer).await {
                Ok(due) => {
                    for item in due {
                        deliver(ctx, dispatch, item, cancel).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %ctx.stream, error = %e, "redis delayed entries check failed")
                }
            }
        }
        // Entries left pending by a failed handler or a member that died.
        if let (Source::Group { group, consumer }, true) =
            (&*source, tokio::time::Instant::now() >= next_claim)
        {
            next_claim = tokio::time::Instant::now() + config.claim_idle / 2;
            match claim(ctx, group, consumer).await {
                Ok(claimed) => {
                    for item in claimed {
                        if not_due(ctx, group, consumer, &item).await {
                            continue;
                        }
                        deliver(ctx, dispatch, item, cancel).await;
                    }
                }
                Err(e) => tracing::warn!(stream = %ctx.stream, error = %e, "redis claim failed"),
            }
        }
        let mut cmd = match &*source {
            Source::Group { group, consumer } => {
                let mut c = redis::cmd("XREADGROUP");
                c.arg("GROUP").arg(group).arg(consumer);
                c
            }
            Source::Plain { .. } => redis::cmd("XREAD"),
        };
        // In a group, wake for the next look at delayed entries.
        let block = match &*source {
            Source::Group { .. } => {
                let own_due = *ctx.next_due.lock().unwrap_or_else(|e| e.into_inner());
                let wake = own_due.map_or(next_delayed, |d| d.min(next_delayed));
                config
                    .block
                    .min(wake.saturating_duration_since(tokio::time::Instant::now()))
            }
            Source::Plain { .. } => config.block,
        };
        cmd.arg("COUNT")
            .arg(config.batch)
            .arg("BLOCK")
            // BLOCK 0 would wait for ever.
            .arg((block.as_millis() as u64).max(1))
            .arg("STREAMS")
            .arg(ctx.stream.as_bytes());
        match &*source {
            Source::Group { .. } => cmd.arg(">"),
            Source::Plain { after } => cmd.arg(after),
        };
        // A blocking read is not cut short: it ends within the block time, and what it
        // returns is handled or released below.
        let got: redis::RedisResult<redis::Value> = cmd.query_async(reads).await;
        let entries = match got {
            Ok(v) => {
                failures = 0;
                reply::read(v)
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                return Err(redis_error("XREADGROUP", &ctx.stream, &e));
            }
            Err(e) => {
                failures += 1;
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
                tracing::warn!(stream = %ctx.stream, error = %e, ?delay, "redis read failed; reading again");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        if let (Source::Plain { after }, Some((last, _))) = (&mut *source, entries.last()) {
            *after = last.clone();
        }
        for entry in entries {
            deliver(ctx, dispatch, (entry, 1), cancel).await;
        }
    }
    Ok(())
}

/// Hands an entry to its lane, handles it inline, or releases it when stopping.
async fn deliver(
    ctx: &Ctx,
    dispatch: &mut Dispatch,
    item: (Entry, u64),
    cancel: &CancellationToken,
) {
    if cancel.is_cancelled() {
        release(ctx, &item.0 .0).await;
        return;
    }
    match dispatch {
        Dispatch::Inline(handler) => handle(ctx, handler, item).await,
        Dispatch::Lanes(lanes, next) => {
            let key = item
                .0
                 .1
                .iter()
                .find(|(k, _)| k == wire::FIELD_KEY.as_bytes())
                .map(|(_, v)| {
                    let mut h = DefaultHasher::new();
                    v.hash(&mut h);
                    h.finish() as usize
                });
            let lane = match key {
                Some(h) => h % lanes.len(),
                None => {
                    *next = (*next + 1) % lanes.len();
                    *next
                }
            };
            let id = item.0 .0.clone();
            tokio::select! {
                biased;
                permit = lanes[lane].reserve() => match permit {
                    Ok(permit) => permit.send(item),
                    Err(_) => release(ctx, &id).await,
                },
                _ = cancel.cancelled() => release(ctx, &id).await,
            }
        }
    }
}

async fn lane(
    ctx: std::sync::Arc<Ctx>,
    mut rx: mpsc::Receiver<(Entry, u64)>,
    mut handler: Handler,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        handle(&ctx, &mut handler, item).await;
    }
    rx.close();
    while let Some((entry, _)) = rx.recv().await {
        release(&ctx, &entry.0).await;
    }
}

async fn handle(ctx: &Ctx, handler: &mut Handler, ((id, fields), delivered): (Entry, u64)) {
    let mut msg: Message = wire::message(&ctx.stream, &id, fields, delivered);
    if ctx.group.is_some() {
        // Only a group redelivers: without one, the attempt is unknown to retry layers.
        msg.metadata.insert_i64(
            DELIVERY_ATTEMPT,
            i64::try_from(delivered).unwrap_or(i64::MAX),
        );
    }
    let call = call_handler(handler, msg);
    tokio::pin!(call);
    let outcome = match (&mut call).now_or_never() {
        Some(done) => done,
        None => {
            let every = ctx.client.config.claim_idle / 3;
            let mut keep = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    done = &mut call => break done,
                    _ = keep.tick() => keep_claim(ctx, &id).await,
                }
            }
        }
    };
    match outcome {
        Ok(()) => {
            if ctx.group.is_some() {
                let _ = ctx.acks.send(id);
            }
        }
        Err(e) => match (retry_after(e.as_ref()), &ctx.group) {
            (Some(delay), Some((group, _))) => {
                tracing::debug!(stream = %ctx.stream, entry = %id, error = %e, ?delay, "handler failed; the entry comes back after the delay it asked for");
                delay_entry(ctx, group, &id, delay).await;
            }
            (Some(delay), None) => tracing::warn!(
                stream = %ctx.stream, entry = %id, error = %e, ?delay,
                "handler asked for a delay, but without a consumer group nothing is redelivered"
            ),
            (None, _) => tracing::debug!(
                stream = %ctx.stream, entry = %id, error = %e,
                "handler failed; the entry stays pending and is claimed again after the idle time"
            ),
        },
    }
}

/// Records when a pending entry is due again. Should that fail, the entry stays pending
/// and comes back after the claim idle time, as after any failure.
async fn delay_entry(ctx: &Ctx, group: &str, id: &str, delay: Duration) {
    let due = unix_millis().saturating_add(delay.as_millis() as u64);
    let mut conn = ctx.client.conn.clone();
    let added: redis::RedisResult<i64> = redis::cmd("ZADD")
        .arg(delayed_key(&ctx.stream, group))
        .arg(due)
        .arg(id)
        .query_async(&mut conn)
        .await;
    match added {
        Ok(_) => {
            let at = tokio::time::Instant::now() + delay;
            let mut next = ctx.next_due.lock().unwrap_or_else(|e| e.into_inner());
            *next = Some(next.map_or(at, |n| n.min(at)));
        }
        Err(e) => {
            tracing::warn!(stream = %ctx.stream, entry = %id, error = %e, "redis could not record the delay; the entry comes back after the claim idle time");
        }
    }
}

/// Takes the group's due entries off the delayed set (each goes to the one member whose
/// `ZREM` removed it) and claims them, with their delivery counts.
async fn take_due(ctx: &Ctx, group: &str, consumer: &str) -> redis::RedisResult<Vec<(Entry, u64)>> {
    let mut conn = ctx.client.conn.clone();
    let key = delayed_key(&ctx.stream, group);
    let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(unix_millis())
        .arg("LIMIT")
        .arg(0)
        .arg(ctx.client.config.batch)
        .query_async(&mut conn)
        .await?;
    let mut out = Vec::with_capacity(due.len());
    for id in due {
        let removed: i64 = redis::cmd("ZREM")
            .arg(&key)
            .arg(&id)
            .query_async(&mut conn)
            .await?;
        if removed == 0 {
            continue; // another member took it
        }
        // Counts a delivery; nothing comes back when the entry was acknowledged or
        // deleted meanwhile.
        let v: redis::Value = redis::cmd("XCLAIM")
            .arg(ctx.stream.as_bytes())
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(&id)
            .query_async(&mut conn)
            .await?;
        let Some(entry) = reply::entries(v).into_iter().next() else {
            continue;
        };
        let counts: redis::Value = redis::cmd("XPENDING")
            .arg(ctx.stream.as_bytes())
            .arg(group)
            .arg(&entry.0)
            .arg(&entry.0)
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let delivered = reply::delivery_counts(counts)
            .into_iter()
            .next()
            .map_or(2, |(_, n)| n);
        out.push((entry, delivered));
    }
    Ok(out)
}

/// Whether an entry claimed as idle is still waiting for its delay: then it is left
/// pending (idle time reset, delivery count put back) for the delayed set to bring it
/// back.
async fn not_due(
    ctx: &Ctx,
    group: &str,
    consumer: &str,
    ((id, _), delivered): &(Entry, u64),
) -> bool {
    let mut conn = ctx.client.conn.clone();
    let due: redis::RedisResult<Option<f64>> = redis::cmd("ZSCORE")
        .arg(delayed_key(&ctx.stream, group))
        .arg(id)
        .query_async(&mut conn)
        .await;
    let Ok(Some(due)) = due else {
        return false;
    };
    if due <= unix_millis() as f64 {
        // Due: handled here unless another member took it off the set first.
        let removed: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(delayed_key(&ctx.stream, group))
            .arg(id)
            .query_async(&mut conn)
            .await;
        return matches!(removed, Ok(0));
    }
    let kept: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
        .arg(ctx.stream.as_bytes())
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(id)
        .arg("RETRYCOUNT")
        .arg(delivered.saturating_sub(1))
        .arg("JUSTID")
        .query_async(&mut conn)
        .await;
    if let Err(e) = kept {
        tracing::debug!(stream = %ctx.stream, entry = %id, error = %e, "redis could not put a delayed entry back");
    }
    true
}

/// Sends the acknowledgements lanes report, several ids per `XACK`.
async fn ack_loop(
    client: RedisClient,
    stream: String,
    group: Option<(String, String)>,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let Some((group, _)) = group else {
        while rx.recv().await.is_some() {}
        return;
    };
    let mut conn = client.conn.clone();
    while let Some(first) = rx.recv().await {
        let mut ids = vec![first];
        while ids.len() < 1000 {
            match rx.try_recv() {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
        }
        let acked: redis::RedisResult<i64> = redis::cmd("XACK")
            .arg(stream.as_bytes())
            .arg(&group)
            .arg(&ids)
            .query_async(&mut conn)
            .await;
        if let Err(e) = acked {
            // At least once: the entries stay pending and are claimed again.
            tracing::warn!(%stream, entries = ids.len(), error = %e, "redis XACK failed");
        }
    }
}

/// Pending entries idle for the claim time, taken over by this member, with their
/// delivery counts.
async fn claim(ctx: &Ctx, group: &str, consumer: &str) -> redis::RedisResult<Vec<(Entry, u64)>> {
    let mut conn = ctx.client.conn.clone();
    let config = &ctx.client.config;
    let v: redis::Value = redis::cmd("XAUTOCLAIM")
        .arg(ctx.stream.as_bytes())
        .arg(group)
        .arg(consumer)
        .arg(config.claim_idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(config.batch)
        .query_async(&mut conn)
        .await?;
    let (_, claimed) = reply::autoclaim(v);
    let mut out = Vec::with_capacity(claimed.len());
    for entry in claimed {
        let counts: redis::Value = redis::cmd("XPENDING")
            .arg(ctx.stream.as_bytes())
            .arg(group)
            .arg(&entry.0)
            .arg(&entry.0)
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let delivered = reply::delivery_counts(counts)
            .into_iter()
            .next()
            .map_or(2, |(_, n)| n);
        out.push((entry, delivered));
    }
    if !out.is_empty() {
        tracing::debug!(stream = %ctx.stream, entries = out.len(), "claimed pending entries");
    }
    Ok(out)
}

/// Resets an entry's idle time while its handler runs, so no other member claims it.
async fn keep_claim(ctx: &Ctx, id: &str) {
    let Some((group, consumer)) = &ctx.group else {
        return;
    };
    let mut conn = ctx.client.conn.clone();
    let kept: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
        .arg(ctx.stream.as_bytes())
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(id)
        .arg("JUSTID")
        .query_async(&mut conn)
        .await;
    if let Err(e) = kept {
        tracing::debug!(stream = %ctx.stream, entry = %id, error = %e, "redis keep-claim failed");
    }
}

/// Makes an entry read but not handled claimable at once by another member.
async fn release(ctx: &Ctx, id: &str) {
    let Some((group, consumer)) = &ctx.group else {
        return;
    };
    let mut conn = ctx.client.conn.clone();
    let idle = ctx.client.config.claim_idle.as_millis() as u64 + 1;
    let released: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
        .arg(ctx.stream.as_bytes())
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(id)
        .arg("IDLE")
        .arg(idle)
        .arg("JUSTID")
        .query_async(&mut conn)
        .await;
    if let Err(e) = released {
        tracing::debug!(stream = %ctx.stream, entry = %id, error = %e, "redis release failed");
    }
}

/// Removes this member's consumer from the group when it holds nothing pending, so
/// groups do not collect the names of readers long gone.
async fn forget_consumer(client: &RedisClient, stream: &str, group: &str, consumer: &str) {
    let mut conn = client.conn.clone();
    let pending: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg(stream.as_bytes())
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(consumer)
        .query_async(&mut conn)
        .await;
    if matches!(pending, Ok(ref v) if reply::delivery_counts(v.clone()).is_empty()) {
        let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(stream.as_bytes())
            .arg(group)
            .arg(consumer)
            .query_async(&mut conn)
            .await;
    }
}
