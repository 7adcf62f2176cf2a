//! Reading streams with consumer groups.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use streams_core::{
    call_handler, CancellationToken, Error, Handler, Message, ReadTask, Reader, Result,
    Subscription,
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
/// `streams-redis-delivered` (1 the first time) and `streams-redis-entry-id`.
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
    while !cancel.is_cancelled() {
        // Entries left pending by a failed handler or a member that died.
        if let (Source::Group { group, consumer }, true) =
            (&*source, tokio::time::Instant::now() >= next_claim)
        {
            next_claim = tokio::time::Instant::now() + config.claim_idle / 2;
            match claim(ctx, group, consumer).await {
                Ok(claimed) => {
                    for item in claimed {
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
        cmd.arg("COUNT")
            .arg(config.batch)
            .arg("BLOCK")
            .arg(config.block.as_millis() as u64)
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
    let msg: Message = wire::message(&ctx.stream, &id, fields, delivered);
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
        Err(e) => tracing::debug!(
            stream = %ctx.stream, entry = %id, error = %e,
            "handler failed; the entry stays pending and is claimed again after the idle time"
        ),
    }
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
