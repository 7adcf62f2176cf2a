//! Consuming with manual acknowledgements.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use streams_core::{
    call_handler, retry_after, CancellationToken, Error, Handler, ReadTask, Reader, Result,
    Subscription,
};
use tokio::sync::mpsc;

use crate::{exchange_name, queue_name, wire, AmqpClient, QueueType};

/// Reads RabbitMQ queues; implements [`Reader`].
///
/// A consumer group is a durable queue of its own ([`queue_name`]: `<stream>::<group>`),
/// a quorum queue unless [`AmqpConfig::with_queue_type`](crate::AmqpConfig::with_queue_type)
/// says classic, bound to the stream's exchange: every group receives every message
/// published after the group's queue was made, and the members of a group share it. A
/// task without a group gets an exclusive queue of its own that receives what is
/// published after [`subscribe`](Reader::subscribe) and goes away with its connection.
///
/// Deliveries are acknowledged after their handler succeeded; a failed one is held for
/// the reader's backoff (100 ms doubling per delivery up to 10 s) and then given back
/// to its queue (`basic.nack` with requeue). At most
/// [`AmqpConfig::with_prefetch`](crate::AmqpConfig::with_prefetch) deliveries are
/// unacknowledged at once; handlers run `concurrency` at once on lanes by key.
/// Handlers see `streams-amqp-delivered`, from the quorum queue's `x-delivery-count`,
/// also as [`Message::delivery_attempt`](streams_core::Message::delivery_attempt) (on a
/// classic queue only the first delivery is counted: a redelivery says only that it is
/// one, so a retry layer handing its backoff off retries in the handler there).
///
/// A handler error that asks for a delay ([`RetryAfter`](streams_core::RetryAfter))
/// frees the handler's lane at once; the reader holds the unacknowledged delivery and
/// gives it back to the queue (`basic.nack` with requeue) when the delay is over. Held
/// deliveries count against the prefetch, which bounds how many are held: with
/// `prefetch` of them held, the broker sends nothing new until one is given back. A
/// delay longer than [`MAX_DELAY`] (under RabbitMQ's default consumer timeout of 30
/// minutes, past which the broker closes the channel) is refused with an error log, and
/// the message comes back as after any failure. On shutdown, or when the channel is
/// lost, held deliveries go back to the queue at once: nothing is lost, but a delay is
/// not honoured across a restart.
///
/// # On a bad day
///
/// - `subscribe` fails at once, not retryable, for a stream whose exchange does not
///   exist.
/// - A lost connection or channel is made again in the background and consuming
///   resumes; deliveries not acknowledged when it was lost go back to the queue (at
///   least once). A queue without a group is made anew: what was published meanwhile is
///   not in it.
#[derive(Debug, Clone)]
pub struct AmqpReader {
    client: AmqpClient,
}

impl AmqpReader {
    /// A reader on `client`'s connection.
    pub fn new(client: AmqpClient) -> Self {
        AmqpReader { client }
    }
}

/// The longest delay a handler may ask for: the reader holds the delivery meanwhile, and
/// RabbitMQ closes a channel holding a delivery unacknowledged past its consumer timeout
/// (30 minutes by default).
pub const MAX_DELAY: Duration = Duration::from_secs(25 * 60);

/// Declares what a task reads: checks the exchange, declares and binds the queue, and
/// returns its name.
async fn declare(client: &AmqpClient, channel: &Channel, task: &ReadTask) -> Result<String> {
    let stream = exchange_name(&task.stream)?;
    client
        .timed(
            "check stream",
            &task.stream,
            channel.exchange_declare(
                stream.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    let (queue, options, arguments) = match &task.group {
        Some(group) => {
            let mut arguments = FieldTable::default();
            if client.config.queue_type == QueueType::Quorum {
                arguments.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString(LongString::from("quorum")),
                );
            }
            (
                queue_name(&task.stream, group)?,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
        }
        None => (
            String::new(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    };
    let declared = client
        .timed(
            "declare queue",
            &task.stream,
            channel.queue_declare(queue.as_str().into(), options, arguments),
        )
        .await?;
    let queue = declared.name().as_str().to_owned();
    client
        .timed(
            "bind queue",
            &task.stream,
            channel.queue_bind(
                queue.as_str().into(),
                stream.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    Ok(queue)
}

#[async_trait]
impl Reader for AmqpReader {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        if task.stream.is_empty() {
            return Err(Error::invalid("read task", "stream is empty"));
        }
        task.refuse_partitions("RabbitMQ")?;
        task.refuse_args("RabbitMQ", &[])?;
        let channel = self.client.channel().await?;
        let queue = declare(&self.client, &channel, &task).await?;
        tracing::info!(stream = %task.stream, %queue, "amqp reader attached");
        let client = self.client.clone();
        Ok(Subscription::new(
            task.stream.clone(),
            move |handler, cancel| run(client, channel, queue, task, handler, cancel),
        ))
    }
}

enum Dispatch {
    Inline(Handler),
    Lanes(Vec<mpsc::Sender<Delivery>>, usize),
}

async fn run(
    client: AmqpClient,
    first: Channel,
    queue: String,
    task: ReadTask,
    handler: Handler,
    cancel: CancellationToken,
) -> Result<()> {
    let lanes = task.concurrency.unwrap_or(client.config.concurrency).max(1);
    let stop = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    let mut dispatch = if lanes == 1 {
        Dispatch::Inline(handler)
    } else {
        let mut senders = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel::<Delivery>(1);
            senders.push(tx);
            workers.spawn(lane(
                client.clone(),
                task.stream.clone(),
                rx,
                handler.clone(),
                stop.clone(),
            ));
        }
        Dispatch::Lanes(senders, 0)
    };
    let mut channel = Some(first);
    let mut queue = queue;
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let ch = match channel.take() {
            Some(c) if c.status().connected() => c,
            _ => match reopen(&client, &task).await {
                Ok((c, q)) => {
                    queue = q;
                    c
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(stream = %task.stream, error = %e, "amqp reconnect failed; trying again");
                    backoff(failures, &cancel).await;
                    continue;
                }
            },
        };
        match consume(&client, &ch, &queue, &task.stream, &mut dispatch, &cancel).await {
            Ok(()) => {
                let _ = ch.close(200, "streams reader stopped".into()).await;
                break;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(stream = %task.stream, error = %e, "amqp consumer lost; consuming again");
                backoff(failures, &cancel).await;
            }
        }
    }
    stop.cancel();
    drop(dispatch);
    while workers.join_next().await.is_some() {}
    tracing::info!(stream = %task.stream, group = ?task.group, "amqp reader stopped");
    Ok(())
}

async fn reopen(client: &AmqpClient, task: &ReadTask) -> Result<(Channel, String)> {
    let channel = client.channel().await?;
    let queue = declare(client, &channel, task).await?;
    Ok((channel, queue))
}

async fn backoff(failures: u32, cancel: &CancellationToken) {
    let delay = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// Consumes until `cancel` fires (`Ok`) or the channel is lost (`Err`).
async fn consume(
    client: &AmqpClient,
    channel: &Channel,
    queue: &str,
    stream: &str,
    dispatch: &mut Dispatch,
    cancel: &CancellationToken,
) -> Result<()> {
    client
        .timed(
            "qos",
            stream,
            channel.basic_qos(client.config.prefetch, BasicQosOptions::default()),
        )
        .await?;
    let mut consumer = client
        .timed(
            "consume",
            stream,
            channel.basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(crate::client::amqp_error("consume", stream, &e)),
            None => {
                return Err(Error::driver(
                    crate::client::DRIVER,
                    "consume",
                    true,
                    format!("stream `{stream}`: the consumer was cancelled"),
                ))
            }
        };
        match dispatch {
            Dispatch::Inline(handler) => handle(client, stream, handler, delivery, cancel).await,
            Dispatch::Lanes(lanes, next_lane) => {
                let key = delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(wire::HEADER_KEY).cloned());
                let lane = match key {
                    Some(k) => {
                        let mut h = DefaultHasher::new();
                        format!("{k:?}").hash(&mut h);
                        (h.finish() as usize) % lanes.len()
                    }
                    None => {
                        *next_lane = (*next_lane + 1) % lanes.len();
                        *next_lane
                    }
                };
                tokio::select! {
                    biased;
                    permit = lanes[lane].reserve() => match permit {
                        Ok(permit) => permit.send(delivery),
                        Err(_) => give_back(&delivery).await,
                    },
                    _ = cancel.cancelled() => {
                        give_back(&delivery).await;
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn give_back(d: &Delivery) {
    let _ = d
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

async fn lane(
    client: AmqpClient,
    stream: String,
    mut rx: mpsc::Receiver<Delivery>,
    mut handler: Handler,
    stop: CancellationToken,
) {
    loop {
        let d = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            d = rx.recv() => match d {
                Some(d) => d,
                None => break,
            },
        };
        handle(&client, &stream, &mut handler, d, &stop).await;
    }
    rx.close();
    while let Some(d) = rx.recv().await {
        give_back(&d).await;
    }
}

/// Handles a delivery; `stop` ends the holding of a delivery its handler delayed.
async fn handle(
    client: &AmqpClient,
    stream: &str,
    handler: &mut Handler,
    d: Delivery,
    stop: &CancellationToken,
) {
    let msg = wire::message(stream, d.data.clone(), &d.properties, d.redelivered);
    let delivered: u64 = msg.headers[wire::HEADER_DELIVERED].parse().unwrap_or(1);
    let id = msg.id.clone();
    let settled = match call_handler(handler, msg).await {
        Ok(()) => d.acker.ack(BasicAckOptions::default()).await,
        Err(e) => {
            match retry_after(e.as_ref()) {
                Some(delay) if delay <= MAX_DELAY => {
                    tracing::debug!(%stream, %id, error = %e, ?delay, "handler failed; holding the delivery for the delay it asked for");
                    hold(stream.to_owned(), id, d, delay, stop.clone());
                    return;
                }
                Some(delay) => tracing::error!(
                    %stream, %id, ?delay, max = ?MAX_DELAY,
                    "cannot delay the message as the handler asked: the reader holds it \
                     meanwhile, and RabbitMQ's consumer timeout ends longer holds; it comes \
                     back as after any failure"
                ),
                None => {}
            }
            let delay = client.config.redelivery_delay(delivered);
            tracing::debug!(%stream, %id, error = %e, ?delay, "handler failed; requeueing after a delay");
            tokio::time::sleep(delay).await;
            d.acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(e) = settled {
        // At least once: the broker gives unacknowledged deliveries back when the
        // channel closes.
        tracing::warn!(%stream, %id, error = %e, "amqp acknowledgement failed");
    }
}

/// Gives a delivery back to its queue after `delay`, or at once when `stop` fires.
fn hold(stream: String, id: String, d: Delivery, delay: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {}
        }
        let given = d
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
        if let Err(e) = given {
            // The broker gives it back itself when the channel closes.
            tracing::debug!(%stream, %id, error = %e, "amqp could not give a delayed delivery back");
        }
    });
}
