//! Publishing to JetStream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use streams_core::{Error, FailedMessage, Message, Result, Writer};

use crate::error::{missing_stream, DRIVER};
use crate::{nats_name, wire, NatsClient};

/// Publishes to JetStream; implements [`Writer`].
///
/// Each message goes to the subject of its stream ([`nats_name`]) with its id as
/// `Nats-Msg-Id`, so JetStream's duplicate window (two minutes by default) drops a
/// publish that is retried after its acknowledgement was lost. A write sends its
/// messages in order, keeps up to [`NatsConfig::with_max_in_flight`](crate::NatsConfig::with_max_in_flight)
/// of them awaiting their acknowledgement at once, and returns once every message is
/// acknowledged by the stream.
///
/// # On a bad day
///
/// - A message larger than the server's `max_payload` (payload and headers), or with
///   headers NATS cannot carry, is [`Error::Rejected`] before anything is sent.
/// - A stream that does not exist fails the write with a not retryable error naming
///   it; no acknowledgement within the request time-out (server away, reconnecting)
///   is retryable.
/// - When only some messages fail, [`Error::PartialWrite`] names them; the others
///   are stored.
#[derive(Debug)]
pub struct NatsWriter {
    client: NatsClient,
    closed: AtomicBool,
}

impl NatsWriter {
    /// A writer on `client`'s connection.
    pub fn new(client: NatsClient) -> Self {
        NatsWriter {
            client,
            closed: AtomicBool::new(false),
        }
    }

    /// Checks every message before anything is sent.
    fn prepare(&self, batch: &[Message]) -> Result<Vec<(String, PublishMessage)>> {
        let max = self.client.client.server_info().max_payload;
        let mut subjects: HashMap<&str, String> = HashMap::new();
        let mut refused = Vec::new();
        let mut out = Vec::with_capacity(batch.len());
        for msg in batch {
            let subject = match subjects.get(msg.stream.as_str()) {
                Some(s) => s.clone(),
                None => {
                    let s = nats_name(&msg.stream)?;
                    subjects.insert(&msg.stream, s.clone());
                    s
                }
            };
            let headers = match wire::headers(msg) {
                Ok(h) => h,
                Err(reason) => {
                    refused.push(FailedMessage {
                        id: msg.id.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let size = msg.data.len() + header_len(&headers);
            if max > 0 && size > max {
                refused.push(FailedMessage {
                    id: msg.id.clone(),
                    reason: format!(
                        "{size} bytes with headers, over the server's max_payload of {max} bytes"
                    ),
                });
                continue;
            }
            let publish = PublishMessage::build()
                .payload(msg.data.clone())
                .headers(headers);
            out.push((subject, publish));
        }
        if refused.is_empty() {
            Ok(out)
        } else {
            Err(Error::Rejected { failed: refused })
        }
    }
}

/// The size of headers as NATS sends them: `NATS/1.0\r\n`, `name: value\r\n` each,
/// `\r\n`.
fn header_len(h: &async_nats::HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in h.iter() {
        for v in values {
            let v: &str = v.as_ref();
            n += name.to_string().len() + 2 + v.len() + 2;
        }
    }
    n
}

/// Why one publish failed, and whether publishing it again may succeed.
struct Failure {
    reason: String,
    retryable: bool,
    missing_stream: bool,
}

fn failure(kind: PublishErrorKind, e: impl std::fmt::Display) -> Failure {
    match kind {
        PublishErrorKind::StreamNotFound => Failure {
            reason: e.to_string(),
            retryable: false,
            missing_stream: true,
        },
        PublishErrorKind::MaxPayloadExceeded => Failure {
            reason: e.to_string(),
            retryable: false,
            missing_stream: false,
        },
        _ => Failure {
            reason: e.to_string(),
            retryable: true,
            missing_stream: false,
        },
    }
}

#[async_trait]
impl Writer for NatsWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("NATS writer"));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let prepared = self.prepare(&batch)?;
        let window = self.client.config.max_in_flight;
        let js = &self.client.jetstream;
        let mut pending: VecDeque<(usize, PublishAckFuture)> = VecDeque::new();
        let mut failed: Vec<(usize, Failure)> = Vec::new();
        for (i, (subject, publish)) in prepared.into_iter().enumerate() {
            if pending.len() >= window {
                let (j, ack) = pending.pop_front().expect("window is not empty");
                if let Err(e) = ack.await {
                    failed.push((j, failure(e.kind(), &e)));
                }
            }
            match js.send_publish(subject, publish).await {
                Ok(ack) => pending.push_back((i, ack)),
                Err(e) => failed.push((i, failure(e.kind(), &e))),
            }
        }
        let acks = futures::future::join_all(
            pending
                .into_iter()
                .map(|(i, ack)| async move { (i, ack.await) }),
        )
        .await;
        for (i, result) in acks {
            if let Err(e) = result {
                failed.push((i, failure(e.kind(), &e)));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_by_key(|(i, _)| *i);
        if failed.len() == batch.len() {
            let (first, f) = &failed[0];
            let alike = failed.iter().all(|(_, g)| g.reason == f.reason);
            if alike {
                let stream = &batch[*first].stream;
                return Err(if f.missing_stream {
                    missing_stream("publish", stream)
                } else {
                    crate::error::nats_error("publish", stream, f.retryable, &f.reason)
                });
            }
        }
        let retryable = failed.iter().all(|(_, f)| f.retryable);
        Err(Error::PartialWrite {
            failed: failed
                .into_iter()
                .map(|(i, f)| FailedMessage {
                    id: batch[i].id.clone(),
                    reason: if f.missing_stream {
                        format!("stream `{}` does not exist", batch[i].stream)
                    } else {
                        f.reason
                    },
                })
                .collect(),
            retryable,
        })
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.client
            .client
            .flush()
            .await
            .map_err(|e| Error::driver(DRIVER, "flush", true, e))
    }
}
