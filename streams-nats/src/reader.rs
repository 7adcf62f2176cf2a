//! Reading JetStream streams with pull consumers.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{AckKind, Message as JsMessage};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use streams_core::{
    call_handler, CancellationToken, Error, Handler, ReadTask, Reader, Result, Subscription,
};
use tokio::sync::mpsc;

use crate::error::{missing_stream, nats_error};
use crate::wire::{self, Delivery};
use crate::{nats_name, NatsClient};

/// Pull requests stay open this long at most; a new one follows at once.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The server sends a heartbeat this often while a pull request waits, so a lost
/// connection is noticed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// Messages a group's members may hold unacknowledged at once, all members together.
const MAX_ACK_PENDING: i64 = 10_000;
/// How long JetStream keeps the consumer of a read without a group once its reader
/// went away.
const EPHEMERAL_INACTIVE: Duration = Duration::from_secs(60);

/// Reads JetStream streams; implements [`Reader`].
///
/// A read task with a consumer group reads through a durable pull consumer named after
/// the group ([`nats_name`]), created on first use with explicit acknowledgement and
/// delivery from the start of the stream: every group receives every message, and the
/// members of a group share them (each message goes to one member). A task without a
/// group gets a consumer of its own that receives what is published after
/// [`subscribe`](Reader::subscribe) and is removed a minute after its reader stops.
///
/// Each message is acknowledged after its handler succeeded. A failed handler call is a
/// negative acknowledgement with a delay (100 ms doubling per delivery up to 10 s, see
/// [`NatsConfig::with_retry_backoff`](crate::NatsConfig::with_retry_backoff)); the
/// message comes back after it, to this member or another. While a handler runs longer
/// than a third of the ack wait, the reader tells the server it is still working on the
/// message, so it is not delivered twice. A member that dies without acknowledging has
/// its messages delivered again once the ack wait passes. A handler error that asks for
/// a delay ([`RetryAfter`](streams_core::RetryAfter)) is a negative acknowledgement with
/// that delay instead (zero: at once); JetStream keeps the message pending meanwhile,
/// so delayed messages count against the consumer's ack-pending limit. Handlers see
/// the delivery count as [`Message::delivery_attempt`](streams_core::Message::delivery_attempt).
///
/// Handler calls run `concurrency` at once (the task's, else
/// [`NatsConfig::with_concurrency`](crate::NatsConfig::with_concurrency)), on lanes by
/// key: messages with the same key are handled one at a time, in the order this member
/// received them. The reader pulls up to
/// [`NatsConfig::with_prefetch`](crate::NatsConfig::with_prefetch) messages ahead of
/// its handlers (64 by default).
///
/// Handlers see the headers `streams-nats-delivered` (1 on the first delivery) and
/// `streams-nats-sequence` besides the message's own.
///
/// # On a bad day
///
/// - `subscribe` fails at once, not retryable, for a stream that does not exist, and
///   with a retryable error when the server does not answer within the request time-out.
/// - A lost connection is reconnected in the background; pulling resumes, and messages
///   delivered but not acknowledged before the loss come back after the ack wait.
/// - A consumer deleted while reading ends the run with an error naming it.
#[derive(Debug, Clone)]
pub struct NatsReader {
    client: NatsClient,
}

impl NatsReader {
    /// A reader on `client`'s connection.
    pub fn new(client: NatsClient) -> Self {
        NatsReader { client }
    }
}

#[async_trait]
impl Reader for NatsReader {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        if task.stream.is_empty() {
            return Err(Error::invalid("read task", "stream is empty"));
        }
        task.refuse_partitions("NATS")?;
        task.refuse_args("NATS", &[])?;
        let name = nats_name(&task.stream)?;
        let group = match &task.group {
            Some(g) if g.is_empty() => {
                return Err(Error::invalid("read task", "the consumer group is empty"))
            }
            Some(g) => Some(nats_name(g)?),
            None => None,
        };
        let stream = self
            .client
            .jetstream
            .get_stream(&name)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(j) if j.code() == 404 => {
                    missing_stream("subscribe", &task.stream)
                }
                GetStreamErrorKind::InvalidStreamName | GetStreamErrorKind::EmptyName => {
                    nats_error("subscribe", &task.stream, false, &e)
                }
                _ => nats_error("subscribe", &task.stream, true, &e),
            })?;
        let config = &self.client.config;
        let consumer_config = pull::Config {
            durable_name: group.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            deliver_policy: if group.is_some() {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            inactive_threshold: if group.is_some() {
                Duration::ZERO
            } else {
                EPHEMERAL_INACTIVE
            },
            filter_subject: name.clone(),
            ..Default::default()
        };
        let created = match &group {
            Some(g) => stream.get_or_create_consumer(g, consumer_config).await,
            None => stream.create_consumer(consumer_config).await,
        };
        let consumer = created.map_err(|e| {
            let retryable = matches!(
                e.kind(),
                ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request
            );
            nats_error("create consumer", &task.stream, retryable, &e)
        })?;
        tracing::info!(stream = %task.stream, group = ?task.group, "nats reader attached");
        let client = self.client.clone();
        Ok(Subscription::new(
            task.stream.clone(),
            move |handler, cancel| run(client, consumer, task, handler, cancel),
        ))
    }
}

async fn run(
    client: NatsClient,
    consumer: Consumer<pull::Config>,
    task: ReadTask,
    handler: Handler,
    cancel: CancellationToken,
) -> Result<()> {
    let lanes = task.concurrency.unwrap_or(client.config.concurrency).max(1);
    let prefetch = client.config.prefetch.max(lanes);
    let stop = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    // One lane is handled inline, in the pulling task: no hand-off per message.
    let mut dispatch = if lanes == 1 {
        Dispatch::Inline(Box::new((client.clone(), handler)))
    } else {
        let mut senders = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel::<JsMessage>(1);
            senders.push(tx);
            workers.spawn(lane(
                client.clone(),
                task.stream.clone(),
                rx,
                handler.clone(),
                stop.clone(),
            ));
        }
        Dispatch::Lanes(senders)
    };
    let result = pull_loop(&consumer, &task.stream, &mut dispatch, prefetch, &cancel).await;
    // No new work; handler calls in flight finish; queued messages go back at once.
    stop.cancel();
    drop(dispatch);
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            tracing::error!(stream = %task.stream, error = %e, "nats lane worker failed");
        }
    }
    tracing::info!(stream = %task.stream, group = ?task.group, "nats reader stopped");
    result
}

/// Where pulled messages go: handled in the pulling task, or to lanes by key.
enum Dispatch {
    Inline(Box<(NatsClient, Handler)>),
    Lanes(Vec<mpsc::Sender<JsMessage>>),
}

/// Pulls and hands messages to the lanes until `cancel` fires or the consumer is gone.
async fn pull_loop(
    consumer: &Consumer<pull::Config>,
    stream: &str,
    dispatch: &mut Dispatch,
    prefetch: usize,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut next_lane = 0usize;
    let mut failures = 0u32;
    'reopen: while !cancel.is_cancelled() {
        let opened = consumer
            .stream()
            .max_messages_per_batch(prefetch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await;
        let mut messages = match opened {
            Ok(m) => m,
            Err(e) => {
                failures += 1;
                tracing::warn!(%stream, error = %e, "nats pull failed; trying again");
                backoff(failures, cancel).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // Messages already pulled go back at once rather than after the
                    // ack wait.
                    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                    return Ok(());
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(m)) => {
                    failures = 0;
                    let lanes = match dispatch {
                        Dispatch::Inline(inline) => {
                            let (client, handler) = &mut **inline;
                            handle(client, stream, handler, m).await;
                            continue;
                        }
                        Dispatch::Lanes(lanes) => lanes,
                    };
                    let width = lanes.len();
                    let lane = match wire_key(&m) {
                        Some(h) => (h as usize) % width,
                        None => {
                            next_lane = (next_lane + 1) % width;
                            next_lane
                        }
                    };
                    tokio::select! {
                        biased;
                        permit = lanes[lane].reserve() => match permit {
                            Ok(permit) => permit.send(m),
                            Err(_) => {
                                let _ = m.ack_with(AckKind::Nak(None)).await;
                                return Ok(());
                            }
                        },
                        _ = cancel.cancelled() => {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                            continue;
                        }
                    }
                }
                Some(Err(e)) => match e.kind() {
                    MessagesErrorKind::ConsumerDeleted => {
                        return Err(nats_error(
                            "consume",
                            stream,
                            false,
                            "the consumer was deleted",
                        ));
                    }
                    MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::Pull => {
                        tracing::debug!(%stream, error = %e, "nats pull interrupted; going on");
                    }
                    _ => {
                        failures += 1;
                        tracing::warn!(%stream, error = %e, "nats pull failed; pulling again");
                        backoff(failures, cancel).await;
                        continue 'reopen;
                    }
                },
                None => continue 'reopen,
            }
        }
    }
    Ok(())
}

async fn backoff(failures: u32, cancel: &CancellationToken) {
    let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

fn wire_key(m: &JsMessage) -> Option<u64> {
    let key = m.headers.as_ref()?.get(wire::HEADER_KEY)?;
    let mut h = DefaultHasher::new();
    AsRef::<str>::as_ref(key).hash(&mut h);
    Some(h.finish())
}

/// Handles a lane's messages one at a time until the reader stops.
async fn lane(
    client: NatsClient,
    stream: String,
    mut rx: mpsc::Receiver<JsMessage>,
    mut handler: Handler,
    stop: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        handle(&client, &stream, &mut handler, m).await;
    }
    // Queued, never started: back to the stream at once.
    rx.close();
    while let Some(m) = rx.recv().await {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}

async fn handle(client: &NatsClient, stream: &str, handler: &mut Handler, m: JsMessage) {
    let delivery = match m.info() {
        Ok(info) => Delivery {
            sequence: info.stream_sequence,
            delivered: info.delivered,
            published: info.published,
        },
        Err(e) => {
            tracing::warn!(%stream, error = %e, "nats message without JetStream metadata; skipping");
            let _ = m.ack_with(AckKind::Term).await;
            return;
        }
    };
    let msg = wire::message(stream, m.payload.clone(), m.headers.as_ref(), &delivery);
    let id = msg.id.clone();
    let ack_wait = client.config.ack_wait;
    let call = call_handler(handler, msg);
    tokio::pin!(call);
    // Most calls finish at once: a timer for the in-progress signal only when not.
    let outcome = match (&mut call).now_or_never() {
        Some(done) => done,
        None => {
            let mut progress =
                tokio::time::interval_at(tokio::time::Instant::now() + ack_wait / 3, ack_wait / 3);
            loop {
                tokio::select! {
                    done = &mut call => break done,
                    _ = progress.tick() => {
                        if let Err(e) = m.ack_with(AckKind::Progress).await {
                            tracing::debug!(%stream, %id, error = %e, "nats in-progress signal failed");
                        }
                    }
                }
            }
        }
    };
    let ack = match outcome {
        Ok(()) => m.ack().await,
        Err(e) => {
            let delay = streams_core::retry_after(e.as_ref())
                .unwrap_or_else(|| client.config.redelivery_delay(delivery.delivered));
            tracing::debug!(%stream, %id, error = %e, ?delay, "handler failed; redelivering after a delay");
            // A zero delay is a plain nak: delivered again at once.
            let delay = (!delay.is_zero()).then_some(delay);
            m.ack_with(AckKind::Nak(delay)).await
        }
    };
    if let Err(e) = ack {
        // At least once: the server delivers the message again after the ack wait.
        tracing::warn!(%stream, %id, error = %e, "nats acknowledgement failed");
    }
}
