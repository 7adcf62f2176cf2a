//! Publishing with publisher confirms.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Channel;
use lapin::Confirmation;
use streams_core::{Error, FailedMessage, Message, Result, Writer};
use tokio::sync::Mutex;

use crate::client::DRIVER;
use crate::{exchange_name, wire, AmqpClient};

/// Publishes to RabbitMQ with publisher confirms; implements [`Writer`].
///
/// Each message goes to its stream's exchange ([`exchange_name`]) with its key as the
/// routing key, persistent, `mandatory`; a write returns once the broker confirmed
/// every message of the batch.
///
/// # On a bad day
///
/// - A message no queue receives (the stream has no consumer group yet) is returned by
///   the broker: the write fails naming it, it is not silently dropped.
/// - A stream whose exchange does not exist fails the write, not retryable, naming it.
/// - A lost connection or channel fails the write with a retryable error; the next
///   write opens a new channel (and connection).
/// - A broker nack, or no confirm within the operation time-out, is retryable;
///   [`Error::PartialWrite`] names the failed messages when the others went through.
#[derive(Debug)]
pub struct AmqpWriter {
    client: AmqpClient,
    channel: Mutex<Option<Channel>>,
    closed: AtomicBool,
}

impl AmqpWriter {
    /// A writer on `client`'s connection.
    pub fn new(client: AmqpClient) -> Self {
        AmqpWriter {
            client,
            channel: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    async fn open(&self) -> Result<Channel> {
        let channel = self.client.channel().await?;
        self.client
            .timed(
                "confirm select",
                "",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
        Ok(channel)
    }
}

struct Failure {
    reason: String,
    retryable: bool,
}

#[async_trait]
impl Writer for AmqpWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("AMQP writer"));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let refused: Vec<FailedMessage> = batch
            .iter()
            .filter_map(|m| {
                wire::unsendable(m).map(|reason| FailedMessage {
                    id: m.id.clone(),
                    reason,
                })
            })
            .collect();
        if !refused.is_empty() {
            return Err(Error::Rejected { failed: refused });
        }
        for m in &batch {
            exchange_name(&m.stream)?;
        }
        let mut held = self.channel.lock().await;
        let channel = match held.as_ref() {
            Some(c) if c.status().connected() => c.clone(),
            _ => {
                let c = self.open().await?;
                *held = Some(c.clone());
                c
            }
        };
        let mut confirms = Vec::with_capacity(batch.len());
        let mut failed: Vec<(usize, Failure)> = Vec::new();
        // One operation time-out for the whole batch, publishes and confirms: a broker
        // that stops answering (a partition) fails the write within it, however many
        // messages wait for their confirms.
        let deadline = self.client.deadline();
        for (i, m) in batch.iter().enumerate() {
            let published = self
                .client
                .timed_until(
                    deadline,
                    "publish",
                    &m.stream,
                    channel.basic_publish(
                        m.stream.as_str().into(),
                        m.key.as_deref().unwrap_or_default().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &m.data,
                        wire::properties(m),
                    ),
                )
                .await;
            match published {
                Ok(confirm) => confirms.push((i, confirm)),
                Err(e) => failed.push((i, failure(&e))),
            }
        }
        for (i, confirm) in confirms {
            let stream = &batch[i].stream;
            match self
                .client
                .timed_until(deadline, "publish confirm", stream, confirm)
                .await
            {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
                Ok(Confirmation::Ack(Some(returned))) => failed.push((
                    i,
                    Failure {
                        reason: format!(
                            "returned by the broker ({}): no queue is bound to stream `{stream}` (no consumer group yet)",
                            returned.reply_text
                        ),
                        retryable: false,
                    },
                )),
                Ok(Confirmation::Nack(_)) => failed.push((
                    i,
                    Failure {
                        reason: "the broker did not take it (nack)".into(),
                        retryable: true,
                    },
                )),
                Err(e) => failed.push((i, failure(&e))),
            }
        }
        // A channel that failed for a reason worth retrying (lost, or silent past the
        // time-out while lapin still calls it connected) is not used again: the next write
        // opens another, on a new connection when the old one does not answer.
        if !channel.status().connected() || failed.iter().any(|(_, f)| f.retryable) {
            *held = None;
        }
        drop(held);
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_by_key(|(i, _)| *i);
        if failed.len() == batch.len() && failed.iter().all(|(_, f)| f.reason == failed[0].1.reason)
        {
            let f = &failed[0].1;
            return Err(Error::driver(
                DRIVER,
                "publish",
                f.retryable,
                f.reason.clone(),
            ));
        }
        let retryable = failed.iter().all(|(_, f)| f.retryable);
        Err(Error::PartialWrite {
            failed: failed
                .into_iter()
                .map(|(i, f)| FailedMessage {
                    id: batch[i].id.clone(),
                    reason: f.reason,
                })
                .collect(),
            retryable,
        })
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

fn failure(e: &Error) -> Failure {
    let reason = match e {
        Error::Driver { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    Failure {
        reason,
        retryable: e.is_retryable(),
    }
}
