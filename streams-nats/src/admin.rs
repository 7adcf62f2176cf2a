//! Creating and deleting JetStream streams.

use async_nats::jetstream::context::{CreateStreamErrorKind, DeleteStreamErrorKind};
use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
use async_trait::async_trait;
use streams_core::{Result, StreamAdmin};

use crate::error::nats_error;
use crate::{nats_name, NatsClient};

/// Creates `stream` as a JetStream stream capturing its one subject ([`nats_name`]).
///
/// Retention: limits. Messages stay in the stream (on disk) whatever the consumers
/// acknowledge, so every consumer group reads every message, until the stream is
/// deleted or they are older than
/// [`NatsConfig::with_stream_max_age`](crate::NatsConfig::with_stream_max_age) (no age
/// limit by default). Duplicate window for `Nats-Msg-Id`: two minutes. A stream that
/// exists already is left as it is. NATS streams have no partitions; the count is
/// ignored.
///
/// # Errors
///
/// A driver error naming the stream; retryable when the server did not answer.
pub async fn create_stream(client: &NatsClient, stream: &str) -> Result<()> {
    let name = nats_name(stream)?;
    let config = Config {
        name: name.clone(),
        subjects: vec![name],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        max_age: client.config.stream_max_age,
        ..Default::default()
    };
    match client.jetstream.get_or_create_stream(config).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let retryable = matches!(e.kind(), CreateStreamErrorKind::TimedOut);
            Err(nats_error("create stream", stream, retryable, &e))
        }
    }
}

/// Deletes `stream` and its consumers; a missing stream is not an error.
///
/// # Errors
///
/// A driver error naming the stream; retryable when the server did not answer.
pub async fn delete_stream(client: &NatsClient, stream: &str) -> Result<()> {
    let name = nats_name(stream)?;
    match client.jetstream.delete_stream(&name).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            DeleteStreamErrorKind::JetStream(j) if j.code() == 404 => Ok(()),
            DeleteStreamErrorKind::Request => Err(nats_error("delete stream", stream, true, &e)),
            _ => Err(nats_error("delete stream", stream, false, &e)),
        },
    }
}

/// JetStream streams as the streams of a `nats://` connection.
#[derive(Debug, Clone)]
pub(crate) struct NatsAdmin(pub(crate) NatsClient);

#[async_trait]
impl StreamAdmin for NatsAdmin {
    async fn create_stream(&self, stream: &str, _partitions: u32) -> Result<()> {
        create_stream(&self.0, stream).await
    }

    async fn delete_stream(&self, stream: &str) -> Result<()> {
        delete_stream(&self.0, stream).await
    }
}
