//! Creating and deleting streams (exchanges).

use async_trait::async_trait;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use streams_core::{Result, StreamAdmin};

use crate::{exchange_name, AmqpClient};

/// Creates `stream` as a durable fanout exchange ([`exchange_name`]); consumer groups
/// bind their queues to it. An existing one is left as it is. RabbitMQ has no
/// partitions; the count is ignored.
///
/// # Errors
///
/// A driver error naming the stream.
pub async fn create_stream(client: &AmqpClient, stream: &str) -> Result<()> {
    let name = exchange_name(stream)?;
    let channel = client.channel().await?;
    client
        .timed(
            "create stream",
            stream,
            channel.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// Deletes the exchange of `stream`; the queues of its groups stay (they may hold
/// messages). A missing exchange is not an error.
///
/// # Errors
///
/// A driver error naming the stream.
pub async fn delete_stream(client: &AmqpClient, stream: &str) -> Result<()> {
    let name = exchange_name(stream)?;
    let channel = client.channel().await?;
    client
        .timed(
            "delete stream",
            stream,
            channel.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// Exchanges as the streams of an `amqp://` connection.
#[derive(Debug, Clone)]
pub(crate) struct AmqpAdmin(pub(crate) AmqpClient);

#[async_trait]
impl StreamAdmin for AmqpAdmin {
    async fn create_stream(&self, stream: &str, _partitions: u32) -> Result<()> {
        create_stream(&self.0, stream).await
    }

    async fn delete_stream(&self, stream: &str) -> Result<()> {
        delete_stream(&self.0, stream).await
    }
}
